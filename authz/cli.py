"""The `mcp-authz` command: serve, validate, check, and the admin API's commands.

Every `serve` flag has an environment twin, MCP_AUTHZ_<FLAG> (e.g. --redis-url and
MCP_AUTHZ_REDIS_URL); a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from authz import __version__
from authz.admin.client import add_commands as add_admin_commands
from authz.admin.probe import add_command as add_probe_command
from authz.core.decision import FailMode
from authz.limits.lease import LeasePolicy
from authz.observe.logs import LogFormat
from authz.observe.logs import configure as configure_logs
from authz.policy.explain import explain
from authz.policy.load import PolicyError, load_policy
from authz.policy.model import RISK_LABELS, UNKNOWN_RISK
from authz.protocol.identity import ANONYMOUS, Caller, IdentitySourceKind
from authz.protocol.mcp import McpCall
from authz.scan.command import add_command as add_scan_command
from authz.settings import Settings, Transport

EXIT_DENIED = 1
EXIT_BAD_INPUT = 2
# What a shell reports for a process its closed pipe's SIGPIPE ended: 128 + 13.
EXIT_CLOSED_PIPE = 141
# The defaults, read off a Settings so the two can never disagree.
_D = Settings(policy=Path())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except BrokenPipeError:
        # The reader went away (`mcp-authz check ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-authz", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mcp-authz {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _serve_parser(commands.add_parser("serve", help="run the ext_authz gRPC service"))
    validate = commands.add_parser("validate", help="check policy files and list every problem")
    validate.add_argument("policies", nargs="+", type=Path, metavar="POLICY")
    validate.add_argument("--strict", action="store_true", help="treat warnings as errors")
    validate.set_defaults(handler=_validate)
    check = commands.add_parser("check", help="explain how a policy decides a call, offline")
    check.add_argument("policy", type=Path, metavar="POLICY")
    check.add_argument("--tool", help="the tool of a tools/call")
    check.add_argument("--method", default="tools/call", help="the JSON-RPC method")
    check.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
    check.add_argument("--identity", default=ANONYMOUS)
    check.add_argument("--session")
    check.add_argument("--claims", default="{}", help="verified JWT claims as a JSON object")
    check.add_argument(
        "--risk",
        default=UNKNOWN_RISK,
        choices=RISK_LABELS,
        help="the tool's risk class, as the catalogue would give it (default: unknown)",
    )
    check.add_argument("--json", action="store_true", help="print the explanation as JSON")
    check.set_defaults(handler=_check)
    add_admin_commands(commands)
    add_probe_command(commands)
    add_scan_command(commands)
    return parser


def _serve_parser(p: argparse.ArgumentParser) -> None:
    def opt(flag: str, help_: str, **kw: Any) -> None:
        env = "MCP_AUTHZ_" + flag.lstrip("-").replace("-", "_").upper()
        default = os.environ.get(env, kw.pop("default", None))
        p.add_argument(flag, default=default, help=f"{help_} [env {env}]", **kw)

    opt("--policy", "policy file (JSON or YAML)", required="MCP_AUTHZ_POLICY" not in os.environ)
    opt("--listen", "ext_authz address", default=_D.listen)
    opt(
        "--transport",
        "ext_authz protocol Envoy speaks: grpc (grpc_service) or http (http_service)",
        default=_D.transport.value,
        choices=[t.value for t in Transport],
    )
    opt(
        "--extproc",
        "serve Envoy's ext_proc (tools/list filtering, quota refunds): on or off",
        default="on",
        choices=["on", "off"],
    )
    opt(
        "--extproc-listen",
        "ext_proc's own gRPC address with --transport http (with grpc it shares --listen)",
        default=_D.extproc_listen,
    )
    opt("--workers", "processes sharing the port (more than 1 needs --redis-url)", default=1)
    opt("--redis-url", "Redis URL; without one the in-process store is used")
    opt("--redis-prefix", "prefix of every Redis key", default=_D.redis_prefix)
    opt("--redis-timeout", "seconds per Redis call", default=_D.redis_timeout, type=float)
    opt(
        "--fail-mode",
        "when the counter store is down: closed (deny) or open (allow)",
        default=_D.fail_mode.value,
        choices=[m.value for m in FailMode],
    )
    opt(
        "--max-sessions-per-identity",
        "most sessions of one identity with live session budgets; new ones are refused",
        default=_D.max_sessions_per_identity,
        type=int,
    )
    _lease_options(opt)
    opt(
        "--memory-store-max-keys",
        "most live budgets the in-process store keeps (no --redis-url); new ones are refused",
        default=_D.memory_store_max_keys,
        type=int,
    )
    opt(
        "--identity-source",
        "where the caller's identity comes from",
        default=_D.identity_source.value,
        choices=[k.value for k in IdentitySourceKind],
    )
    # No defaults here: a value given for a source that is not chosen is an error (see
    # _identity_flags), so the parser must tell "given" from "defaulted".
    opt(
        "--identity-header",
        f"header Envoy sets to the caller's identity "
        f"(source: header; default {_D.identity_header})",
    )
    opt(
        "--identity-claim",
        f"JWT claim naming the caller (source: jwt; default {_D.identity_claim})",
    )
    opt(
        "--jwt-payload-key",
        f"jwt_authn payload_in_metadata key (source: jwt; default {_D.jwt_payload_key})",
    )
    opt("--audit-log", "audit log: - for stdout, off, or a file", default=_D.audit_log)
    opt(
        "--audit-args",
        "comma-separated argument paths logged in clear: PATH or NAME:PATH (a.b.c)",
        default="",
    )
    opt(
        "--audit-hash-key-file",
        "key of the audit log's argument hashes (default: one per process)",
        type=Path,
    )
    opt("--metrics-listen", "host:port of a Prometheus /metrics endpoint (default: none)")
    opt(
        "--health-listen",
        "host:port of an HTTP health endpoint, GET /ready and /live (default: none)",
    )
    opt("--admin-listen", "host:port of the admin gRPC API (default: none; needs a tokens file)")
    opt("--admin-tokens-file", "admin API tokens: lines of TOKEN IDENTITY [claim=value,...]")
    opt("--admin-tls-cert", "the admin API's TLS certificate (with --admin-tls-key)", type=Path)
    opt("--admin-tls-key", "the admin API's TLS key", type=Path)
    opt("--admin-tls-client-ca", "require admin clients' certificates from this CA", type=Path)
    opt("--approval-webhook", "URL POSTed every new approval request (default: none)")
    opt("--approval-webhook-secret-file", "key signing the webhook's POSTs (HMAC)", type=Path)
    opt(
        "--approvals-max-pending",
        "most pending approval requests in total; more are refused (-32007)",
        default=_D.approvals_max_pending,
        type=int,
    )
    opt(
        "--approvals-max-pending-per-identity",
        "most pending approval requests of one identity; more are refused (-32007)",
        default=_D.approvals_max_pending_per_identity,
        type=int,
    )
    opt(
        "--reload-interval",
        "seconds between looks at the policy file; 0 = never reload",
        default=_D.reload_interval,
        type=float,
    )
    opt("--grace", "seconds to drain in-flight checks on SIGTERM", default=_D.grace, type=float)
    opt("--grant-key-file", "key of the grant tokens' hashes (source: token)", type=Path)
    opt("--grants-file", "grants file when there is no --redis-url (source: token)", type=Path)
    opt(
        "--upstream-header",
        "header carrying the upstream MCP server's own credential",
        default=_D.upstream_header,
    )
    opt("--upstream-bearer-file", "file holding the upstream's credential", type=Path)
    _console_options(opt)
    opt(
        "--catalogue",
        "pin tool definitions, validate arguments, class tools by risk (needs ext_proc)",
        default="off",
        choices=["off", "on"],
    )
    opt(
        "--catalogue-upstream",
        'the upstream\'s catalogue name, or ":authority" to name each by its host',
        default=_D.catalogue_upstream,
    )
    opt(
        "--catalogue-max-upstreams",
        "most upstreams catalogued",
        default=_D.catalogue_max_upstreams,
        type=int,
    )
    opt(
        "--catalogue-max-tools",
        "most tools catalogued per upstream",
        default=_D.catalogue_max_tools,
        type=int,
    )
    opt(
        "--catalogue-max-definition-bytes",
        "largest tool definition catalogued (JSON bytes)",
        default=_D.catalogue_max_definition_bytes,
        type=int,
    )
    opt("--log-level", "DEBUG, INFO, WARNING or ERROR", default=_D.log_level)
    opt(
        "--log-format",
        "operational logs on stderr: text, or json (one object a line)",
        default=_D.log_format.value,
        choices=[f.value for f in LogFormat],
    )
    p.set_defaults(handler=_serve)


Option = Callable[..., None]


def _lease_options(opt: Option) -> None:
    """Which Redis-counted limits are leased, and how much (docs/limits.md, "Leases")."""
    opt(
        "--lease-min-limit",
        "with --redis-url, limits of at least this many units are leased (0: none)",
        default=_D.lease.min_limit,
        type=int,
    )
    opt(
        "--lease-fraction",
        "a lease's share of its limit (at most 0.1)",
        default=_D.lease.fraction,
        type=float,
    )
    opt("--lease-max", "the most units one lease takes", default=_D.lease.most, type=int)
    opt(
        "--lease-life",
        "the share of its window a lease is spent for (at most 0.1)",
        default=_D.lease.share,
        type=float,
    )


def _console_options(opt: Option) -> None:
    """The web console's flags (docs/console.md)."""
    opt("--console-listen", "host:port of the web console (default: none; docs/console.md)")
    opt("--console-public-url", "the URL people open the console at (default http://LISTEN)")
    opt("--console-roles-file", "who holds which console role (YAML)", type=Path)
    opt("--console-oidc-issuer", "OIDC issuer URL for console sign-in")
    opt("--console-oidc-client-id", "the console's OIDC client id")
    opt("--console-oidc-client-secret-file", "file holding the OIDC client secret", type=Path)
    opt(
        "--console-trusted-header",
        "header an auth proxy sets to the person (only where the proxy alone can connect)",
    )
    opt("--console-trace-url", "trace link template with {trace_id} (Grafana, Jaeger)")
    opt(
        "--console-session-secret-file",
        "key signing console sessions (default: per process)",
        type=Path,
    )
    opt(
        "--console-redact-args",
        "comma-separated argument paths the console never shows: PATH or NAME:PATH",
        default="",
    )


def _serve(args: argparse.Namespace) -> int:
    from authz.runner import run  # noqa: PLC0415 - keeps validate/check free of gRPC start-up

    configure_logs(args.log_level, LogFormat(args.log_format))
    try:
        _identity_flags(args)
        settings = Settings(
            policy=Path(args.policy),
            listen=args.listen,
            redis_url=args.redis_url or None,
            redis_prefix=args.redis_prefix,
            redis_timeout=float(args.redis_timeout),
            fail_mode=FailMode(args.fail_mode),
            max_sessions_per_identity=int(args.max_sessions_per_identity),
            memory_store_max_keys=int(args.memory_store_max_keys),
            lease=LeasePolicy(
                int(args.lease_min_limit),
                float(args.lease_fraction),
                int(args.lease_max),
                float(args.lease_life),
            ),
            identity_source=IdentitySourceKind(args.identity_source),
            identity_header=args.identity_header or _D.identity_header,
            identity_claim=args.identity_claim or _D.identity_claim,
            jwt_payload_key=args.jwt_payload_key or _D.jwt_payload_key,
            audit_log=args.audit_log,
            audit_args=_paths(args.audit_args),
            audit_hash_key_file=args.audit_hash_key_file,
            metrics_listen=args.metrics_listen or None,
            health_listen=args.health_listen or None,
            admin_listen=args.admin_listen or None,
            admin_tokens_file=Path(args.admin_tokens_file) if args.admin_tokens_file else None,
            admin_tls_cert=args.admin_tls_cert,
            admin_tls_key=args.admin_tls_key,
            admin_tls_client_ca=args.admin_tls_client_ca,
            approval_webhook=args.approval_webhook or None,
            approval_webhook_secret_file=args.approval_webhook_secret_file,
            approvals_max_pending=int(args.approvals_max_pending),
            approvals_max_pending_per_identity=int(args.approvals_max_pending_per_identity),
            reload_interval=float(args.reload_interval),
            grace=float(args.grace),
            log_level=args.log_level,
            log_format=LogFormat(args.log_format),
            transport=Transport(args.transport),
            extproc=args.extproc == "on",
            extproc_listen=args.extproc_listen,
            workers=int(args.workers),
            grant_key_file=args.grant_key_file,
            grants_file=args.grants_file,
            upstream_header=args.upstream_header,
            upstream_bearer_file=args.upstream_bearer_file,
            console_listen=args.console_listen or None,
            console_public_url=args.console_public_url or None,
            console_roles_file=args.console_roles_file,
            console_oidc_issuer=args.console_oidc_issuer or None,
            console_oidc_client_id=args.console_oidc_client_id or None,
            console_oidc_client_secret_file=args.console_oidc_client_secret_file,
            console_trusted_header=args.console_trusted_header or None,
            console_trace_url=args.console_trace_url or None,
            console_session_secret_file=args.console_session_secret_file,
            console_redact_args=_paths(args.console_redact_args),
            catalogue=args.catalogue == "on",
            catalogue_upstream=args.catalogue_upstream,
            catalogue_max_upstreams=int(args.catalogue_max_upstreams),
            catalogue_max_tools=int(args.catalogue_max_tools),
            catalogue_max_definition_bytes=int(args.catalogue_max_definition_bytes),
        )
        return run(settings)
    except PolicyError as e:
        print(f"mcp-authz: refusing to start, the policy is invalid:\n{e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:
        print(f"mcp-authz: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _paths(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


# Which --identity-source each identity flag belongs to.
_IDENTITY_FLAGS = {
    "identity_header": IdentitySourceKind.HEADER,
    "identity_claim": IdentitySourceKind.JWT,
    "jwt_payload_key": IdentitySourceKind.JWT,
}


def _identity_flags(args: argparse.Namespace) -> None:
    """Raises ValueError for an identity flag its source would ignore: every caller would be
    one identity and a per-agent budget one shared budget, without a word."""
    source = IdentitySourceKind(args.identity_source)
    for name, needs in _IDENTITY_FLAGS.items():
        value = getattr(args, name)
        if value and source is not needs:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} {value} has no effect with --identity-source {source.value}: "
                f"add --identity-source {needs.value} "
                f"(or MCP_AUTHZ_IDENTITY_SOURCE={needs.value}), or drop {flag}"
            )


def _validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.policies:
        try:
            policy = load_policy(path)
        except PolicyError as e:
            failed = True
            print(e, file=sys.stderr)
            continue
        for warning in policy.warnings:
            print(f"{path}: warning: {warning}", file=sys.stderr)
        failed = failed or (args.strict and bool(policy.warnings))
        grants = f", {len(policy.grants)} grants" if policy.grants else ""
        print(
            f"{path}: ok ({len(policy.tools)} tool rules{grants}, default {policy.default}, "
            f"{policy.version})"
        )
    return EXIT_BAD_INPUT if failed else 0


def _check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
        call = _call_from(args)
        claims = json_object("--claims", args.claims)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, TypeError) as e:
        print(f"mcp-authz check: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    caller = Caller(identity=args.identity, session=args.session, claims=claims)
    explanation = explain(policy, call, caller, args.risk)
    print(
        json.dumps(explanation, indent=2, ensure_ascii=False)
        if args.json
        else _explain(explanation)
    )
    return 0 if explanation["decision"] == "allow" else EXIT_DENIED


def _call_from(args: argparse.Namespace) -> McpCall:
    arguments = json_object("--args", args.args)
    if args.method == "tools/call" and args.tool is None:
        raise ValueError("--tool is required for tools/call")
    return McpCall(method=args.method, id=1, target=args.tool, arguments=arguments)


def json_object(flag: str, text: str) -> dict[str, Any]:
    """A flag's value as a JSON object; the error names the flag and where the JSON broke."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise TypeError(f"{flag} must be a JSON object, got {type(value).__name__}: {text}")
    return value


def _explain(e: dict[str, Any]) -> str:
    what = f'tool "{e["tool"]}"' if e["tool"] is not None else f"method {e['method']}"
    lines = [
        f"{e['decision'].upper()}: {what} for identity {e['identity']!r} (grant {e['grant']})",
        f"  rule:    {e['rule']}",
        f"  reason:  {e['reason']}",
        f"  policy:  {e['policy']} ({e['policy_version']})",
    ]
    for rule in e["rules"]:
        lines.append(f"  checked: {rule['rule']} ({rule['action']}, {rule['mode']})")
        lines += [
            f"           {'holds' if c['holds'] else 'FAILS'}: {c['condition']} "
            f"(value: {json.dumps(c['value'], ensure_ascii=False)})"
            for c in rule["conditions"]
        ]
    for c in e["counters"] + e["dry_run_counters"]:
        dry = " (dry run)" if c in e["dry_run_counters"] else ""
        lines.append(
            f"  counts:  {c['cost']} on {c['counter']}{dry} ({c['max']} per "
            f"{c['window_seconds']}s, scope {c['scope']}, subject {c['subject']})"
        )
    if e["decision"] == "allow" and e["counters"]:
        lines.append("  (allowed if the counters above have budget left at call time)")
    return "\n".join(lines)
