"""The admin commands of `mcp-authz`: approvals, usage, counters, policy-status, grants, tools.

They talk to a running gateway's admin API (`serve --admin-listen`) with a token from a
file. Every option has an environment twin: --admin-address is MCP_AUTHZ_ADMIN_ADDRESS,
--admin-token-file MCP_AUTHZ_ADMIN_TOKEN_FILE, and so on (named apart from the `serve`
flags, so one environment can hold both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from authz._gen.mcpauthz.admin.v1 import admin_pb2 as pb
from authz._gen.mcpauthz.admin.v1 import admin_pb2_grpc

DEFAULT_ADDRESS: Final = "127.0.0.1:9192"
TIMEOUT: Final = 10.0
EXIT_REFUSED: Final = 1
EXIT_BAD_INPUT: Final = 2
Run = Callable[[Any, argparse.Namespace], Message]


def add_commands(commands: Any) -> None:
    """Add the admin commands to the `mcp-authz` sub-command parser."""
    approvals = commands.add_parser("approvals", help="list, show, approve or deny approvals")
    actions = approvals.add_subparsers(required=True, metavar="ACTION")
    listing = _command(
        actions, "list", "approval requests waiting for a person", _list, _print_list
    )
    listing.add_argument(
        "--page-size",
        type=int,
        default=0,
        help="approvals fetched per call (default 100, at most 200); every page is listed",
    )
    show = _command(actions, "show", "one approval request", _show, _print_approval)
    show.add_argument("id", metavar="ID")
    for name, verb, run in (
        ("approve", "let the call through once", _approve),
        ("deny", "refuse the call", _deny),
    ):
        decide = _command(actions, name, verb, run, _print_approval)
        decide.add_argument("id", metavar="ID")
        decide.add_argument("--note", default="", help="why, for the audit log")
    usage = _command(commands, "usage", "how much of a budget is spent", _usage, _print_usage)
    _counter_arguments(usage)
    counters = commands.add_parser("counters", help="reset a budget")
    counter_actions = counters.add_subparsers(required=True, metavar="ACTION")
    reset = _command(counter_actions, "reset", "forget a budget's spend", _reset, _print_usage)
    _counter_arguments(reset)
    _command(commands, "policy-status", "the policy in force", _status, _print_status)
    grants = commands.add_parser("grants", help="create, list, rotate or revoke grant tokens")
    grant_actions = grants.add_subparsers(required=True, metavar="ACTION")
    create = _command(
        grant_actions, "create", "a new grant; prints its token once", _create, _print_token
    )
    create.add_argument("--label", required=True, help="who the token is for: alice-laptop")
    own = create.add_mutually_exclusive_group()
    own.add_argument("--policy", type=Path, help="the grant's own policy file")
    own.add_argument("--grant", default="", help="a grant of the server's policy")
    _command(grant_actions, "list", "every grant (never a token)", _list_grants, _print_grants)
    grant_steps: tuple[tuple[str, str, Run, Callable[[Any], str]], ...] = (
        ("rotate", "a new token for the grant; the old one stops", _rotate, _print_token),
        ("revoke", "the grant's token stops working", _revoke, _print_grant),
    )
    for name, verb, step, printer in grant_steps:
        one = _command(grant_actions, name, verb, step, printer)
        one.add_argument("label", metavar="LABEL")
    _tool_commands(commands)


def _tool_commands(commands: Any) -> None:
    tools = commands.add_parser("tools", help="the tool catalogue: list, show, accept a change")
    actions = tools.add_subparsers(required=True, metavar="ACTION")
    listing = _command(
        actions, "list", "every catalogued tool, its pin and any drift", _list_tools, _print_tools
    )
    listing.add_argument("--upstream", default="", help="one upstream's tools (default: all)")
    show = _command(
        actions,
        "show",
        "a tool's pinned and pending definitions, to review",
        _list_tools,
        _show_tool,
    )
    show.add_argument("name", metavar="TOOL")
    show.add_argument("--upstream", default="", help="the tool's upstream (default: all)")
    accept = _command(
        actions, "accept", "pin a tool to the definition it changed to", _accept_tool, _print_tool
    )
    accept.add_argument("name", metavar="TOOL")
    accept.add_argument("fingerprint", metavar="FINGERPRINT", help="the pending definition's")
    accept.add_argument("--upstream", default="default", help="the tool's upstream")
    accept.add_argument("--note", default="", help="why, for the audit log")


def _command(
    parent: Any, name: str, help_: str, run: Run, show: Callable[[Any], str]
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_)

    def opt(flag: str, help_text: str, **kw: Any) -> None:
        env = "MCP_AUTHZ_" + flag.lstrip("-").replace("-", "_").upper()
        default = os.environ.get(env, kw.pop("default", None))
        p.add_argument(flag, default=default, help=f"{help_text} [env {env}]", **kw)

    opt("--admin-address", "host:port of the admin API", default=DEFAULT_ADDRESS)
    opt("--admin-token-file", "file holding the admin token")
    opt("--admin-ca-file", "CA of the admin API's certificate (turns TLS on)")
    opt("--admin-client-cert", "client certificate, when the admin API asks for one (mTLS)")
    opt("--admin-client-key", "the client certificate's key")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(handler=lambda args: _run(args, run, show))
    return p


def _counter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--counter", required=True, help="the policy's counter name")
    p.add_argument("--scope", default="", help="grant, identity, session or global (checked)")
    p.add_argument(
        "--subject",
        nargs="*",
        default=[],
        metavar="PART",
        help="grant: GRANT IDENTITY; identity: IDENTITY; session: IDENTITY SESSION; global: none",
    )


def _run(args: argparse.Namespace, run: Run, show: Callable[[Any], str]) -> int:
    try:
        token = _token(args.admin_token_file)
        channel = _channel(args)
    except ValueError as e:
        print(f"mcp-authz: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply = run(_Authorized(stub, token), args)
        except ValueError as e:
            print(f"mcp-authz: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except grpc.RpcError as e:
            code = e.code().name if isinstance(e, grpc.Call) else "ERROR"
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            print(f"mcp-authz: {code}: {details}", file=sys.stderr)
            return EXIT_REFUSED
    print(json.dumps(_as_dict(reply), indent=2, ensure_ascii=False) if args.json else show(reply))
    return 0


class _Authorized:
    """The stub's calls, each with the bearer token and a deadline."""

    def __init__(self, stub: Any, token: str) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __getattr__(self, method: str) -> Callable[[Message], Any]:
        call = getattr(self._stub, method)
        return lambda request: call(request, metadata=self._metadata, timeout=TIMEOUT)


def _token(path: str | None) -> str:
    if not path:
        raise ValueError("--admin-token-file (or MCP_AUTHZ_ADMIN_TOKEN_FILE) is required")
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ValueError(f"cannot read the admin token file {path}: {e.strerror}") from None
    if not token or len(token.split()) != 1:
        raise ValueError(f"the admin token file {path} must hold one token")
    return token


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.admin_ca_file:
        if args.admin_client_cert or args.admin_client_key:
            raise ValueError("a client certificate needs --admin-ca-file (TLS) too")
        return grpc.insecure_channel(args.admin_address)
    try:
        ca = Path(args.admin_ca_file).read_bytes()
        key = Path(args.admin_client_key).read_bytes() if args.admin_client_key else None
        cert = Path(args.admin_client_cert).read_bytes() if args.admin_client_cert else None
    except OSError as e:
        raise ValueError(f"cannot read the admin TLS files: {e}") from None
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    return grpc.secure_channel(args.admin_address, credentials)


def _list(stub: Any, args: argparse.Namespace) -> Message:
    """Every page, gathered into one answer (each call's cost stays bounded on the server)."""
    listed = pb.ListApprovalsResponse()
    token = ""
    while True:
        page = stub.ListApprovals(
            pb.ListApprovalsRequest(page_size=args.page_size, page_token=token)
        )
        listed.approvals.extend(page.approvals)
        token = page.next_page_token
        if not token:
            return listed


def _show(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.GetApproval(pb.GetApprovalRequest(id=args.id))
    return reply


def _approve(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.Approve(pb.DecideRequest(id=args.id, note=args.note))
    return reply


def _deny(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.Deny(pb.DecideRequest(id=args.id, note=args.note))
    return reply


def _counter(args: argparse.Namespace) -> pb.CounterRequest:
    return pb.CounterRequest(counter=args.counter, scope=args.scope, subject=args.subject)


def _usage(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.GetUsage(_counter(args))
    return reply


def _reset(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.ResetCounter(_counter(args))
    return reply


def _status(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.GetPolicyStatus(pb.GetPolicyStatusRequest())
    return reply


def _create(stub: Any, args: argparse.Namespace) -> Message:
    try:
        text = args.policy.read_text(encoding="utf-8") if args.policy else ""
    except OSError as e:
        raise ValueError(f"cannot read the policy file {args.policy}: {e.strerror}") from None
    request = pb.CreateGrantRequest(label=args.label, policy_text=text, policy_grant=args.grant)
    reply: Message = stub.CreateGrant(request)
    return reply


def _list_grants(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.ListGrants(pb.ListGrantsRequest())
    return reply


def _rotate(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.RotateGrant(pb.GrantRequest(label=args.label))
    return reply


def _revoke(stub: Any, args: argparse.Namespace) -> Message:
    reply: Message = stub.RevokeGrant(pb.GrantRequest(label=args.label))
    return reply


def _list_tools(stub: Any, args: argparse.Namespace) -> Message:
    reply: pb.ListToolsResponse = stub.ListTools(pb.ListToolsRequest(upstream=args.upstream))
    if getattr(args, "name", None) is not None:
        # `tools show`: the one tool (of every upstream that lists it).
        tools = [t for t in reply.tools if t.name == args.name]
        if not tools:
            raise ValueError(f"no catalogued tool {args.name!r}")
        return pb.ListToolsResponse(tools=tools)
    return reply


def _accept_tool(stub: Any, args: argparse.Namespace) -> Message:
    request = pb.AcceptToolRequest(
        upstream=args.upstream, name=args.name, fingerprint=args.fingerprint, note=args.note
    )
    reply: Message = stub.AcceptTool(request)
    return reply


def _print_tool(t: pb.Tool) -> str:
    state = "removed" if t.removed else "listed"
    line = f"{t.name}  upstream {t.upstream}  {t.risk}  pinned {t.fingerprint[:12]}  {state}"
    if t.accepted_by:
        line += f"  (accepted by {t.accepted_by})"
    if t.pending_fingerprint:
        too_big = "  over the size bound, cannot be accepted" if t.oversized else ""
        line += (
            f"\n  CHANGED to {t.pending_fingerprint}{too_big}: calls are judged by on_change;"
            f" review with `mcp-authz tools show {t.name} --upstream {t.upstream}`"
        )
    return line


def _print_tools(reply: pb.ListToolsResponse) -> str:
    return "\n".join(_print_tool(t) for t in reply.tools) or "no tools catalogued"


def _show_tool(reply: pb.ListToolsResponse) -> str:
    shown = []
    for t in reply.tools:
        lines = [_print_tool(t), "  pinned definition:", _indented(t.definition_json)]
        if t.pending_json:
            lines += ["  pending definition:", _indented(t.pending_json)]
        shown.append("\n".join(lines))
    return "\n\n".join(shown)


def _indented(definition: str) -> str:
    text = json.dumps(json.loads(definition), indent=2, ensure_ascii=False, sort_keys=True)
    return "\n".join("    " + line for line in text.splitlines())


def _print_grant(g: pb.GrantInfo) -> str:
    policy = (
        "its own policy"
        if g.has_own_policy
        else f"grant {g.policy_grant}"
        if g.policy_grant
        else "the server's policy"
    )
    rotated = f", rotated {_when(g.rotated_at)}" if g.HasField("rotated_at") else ""
    return f"{g.label}  ({policy}; created {_when(g.created_at)}{rotated})"


def _print_grants(reply: pb.ListGrantsResponse) -> str:
    return "\n".join(_print_grant(g) for g in reply.grants) or "no grants"


def _print_token(reply: pb.GrantWithToken) -> str:
    return (
        f"{_print_grant(reply.grant)}\n\n{reply.token}\n\n"
        "This token is shown once: give it to the client now (Authorization: Bearer TOKEN)."
    )


def _as_dict(message: Message) -> dict[str, Any]:
    data = MessageToDict(message, preserving_proto_field_name=True)
    # JSON inside JSON reads badly: give the arguments and claims as objects.
    for item in [data, *data.get("approvals", []), *data.get("tools", [])]:
        for key in ("arguments_json", "approver_claims_json", "definition_json", "pending_json"):
            if item.get(key):
                item[key.removesuffix("_json")] = json.loads(item.pop(key))
    return data


def _print_list(reply: pb.ListApprovalsResponse) -> str:
    if not reply.approvals:
        return "no approval requests pending"
    return "\n".join(
        f"{a.id}  {a.tool}  by {a.identity}  expires {_when(a.expires_at)}  {a.arguments_json}"
        for a in reply.approvals
    )


def _print_approval(a: pb.Approval) -> str:
    who = ", ".join([*a.approvers, *_claims(a.approver_claims_json)]) or "anyone but the caller"
    lines = [
        f"{a.id}: {pb.ApprovalStatus.Name(a.status).removeprefix('APPROVAL_STATUS_').lower()}",
        f"  tool:       {a.tool}",
        f"  arguments:  {a.arguments_json}",
        f"  identity:   {a.identity} (grant {a.grant})",
        f"  rule:       {a.rule}",
        f"  reason:     {a.reason}",
        f"  approvers:  {who}",
        f"  requested:  {_when(a.requested_at)}",
        f"  expires:    {_when(a.expires_at)}",
    ]
    if a.decided_by:
        lines.append(f"  decided by: {a.decided_by}")
    return "\n".join(lines)


def _claims(text: str) -> list[str]:
    claims: dict[str, list[Any]] = json.loads(text or "{}")
    return [f"{k}={v}" for k, values in claims.items() for v in values]


def _print_usage(u: pb.Usage) -> str:
    subject = " ".join(u.subject) or "everyone"
    wait = (
        "never fits"
        if u.retry_after_seconds < 0
        else "fits now"
        if u.retry_after_seconds == 0
        else f"next unit in {u.retry_after_seconds:.1f}s"
    )
    return (
        f"{u.counter} ({u.scope}: {subject}): {u.used} of {u.limit} used per "
        f"{u.window_seconds}s, {u.remaining} left; {wait}"
    )


def _print_status(s: pb.PolicyStatus) -> str:
    lines = [f"policy {s.source} ({s.version})"]
    lines += [f"  warning: {w}" for w in s.warnings]
    if s.reload_failed:
        lines.append("  the file on disk was refused at the last reload (the policy above stays):")
        lines += [f"    {e}" for e in s.reload_errors]
    return "\n".join(lines)


def _when(stamp: Any) -> str:
    return str(stamp.ToDatetime(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
