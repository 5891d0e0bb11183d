"""Our policy format: PolicyLayer's policy document (the seed's `policy.json` is one), with
grants, methods, approvals and dry-run on top.

Rule ids are JSON pointers into the document, as PolicyLayer names them:
`/tools/create_charge`, `/tools/create_charge/deny_if/args.amount-gt`,
`/all_tools/limits/calls-per-minute`.
"""

from __future__ import annotations

from typing import Any

from authz.policy.conditions import Condition
from authz.policy.model import (
    POSTURES,
    Action,
    ApprovalRule,
    Counting,
    Entry,
    Grant,
    Limit,
    Mode,
    Policy,
    Rule,
    RuleSet,
    Scope,
)
from authz.policy.reader import Pairs, Reader, child, kind
from authz.policy.warnings import shadow_warnings
from authz.protocol.identity import SCOPE_CLAIMS

_TOP_KEYS = (
    "version",
    "description",
    "default",
    "mode",
    "tools",
    "methods",
    "grants",
    "hide",
    "all_tools",
    "on_deny",
    "risk",
    "catalogue",
    "tools_list",
)
_RULE_KEYS = (
    "action",
    "reason",
    "on_deny",
    "conditions",
    "require",
    "deny_if",
    "limits",
    "mode",
    "approval",
)
_ALL_TOOLS_KEYS = ("limits",)
_APPROVAL_KEYS = ("when", "lifetime", "approvers", "approver_claims")
_MAX_LIFETIME = 7 * 86400
_LIMIT_KEYS = ("counter", "window", "max", "scope", "increment", "increment_from")
_GRANT_KEYS = ("identities", "claims", "default", "mode", "tools", "risk")


def escape(segment: str) -> str:
    """One JSON pointer segment (RFC 6901)."""
    return segment.replace("~", "~0").replace("/", "~1")


def pointer(path: str, name: str) -> str:
    """The JSON pointer of `name` under the JSON path `path` ('$.grants.ops.tools')."""
    parts = [p for p in path.removeprefix("$").split(".") if p]
    return "/" + "/".join(escape(p) for p in [*parts, name])


def predicate_names(conditions: tuple[Condition, ...]) -> list[str]:
    """PolicyLayer's names for predicates, `args.amount-gt`; a repeat of the same path and
    operator in one list gets `-2`, `-3`... so each rule id stays unique."""
    seen: dict[str, int] = {}
    names = []
    for c in conditions:
        base = f"args.{'.'.join(c.path)}-{c.op.value}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


class NativeReader(Reader):
    def policy(self, raw: Any, source: str, version: str) -> Policy:
        top = self.fields(raw, "$", _TOP_KEYS)
        self.version(top, raw)
        mode = self.mode(top, "$", Mode.ENFORCE)
        on_deny = self.message(top, "$")
        default = self.choice(top.get("default", "deny"), "$.default", Action, POSTURES)
        everyone = Grant(
            "default",
            default or Action.DENY,
            self.rules(top.get("tools", Pairs()), "$.tools", mode),
            self.all_tools(top.get("all_tools", Pairs()), mode),
            mode=mode,
            risk=self.risk(top.get("risk", Pairs()), "$.risk", mode),
        )
        methods = self.rules(top.get("methods", Pairs()), "$.methods", mode)
        if "tools/call" in methods.exact:
            self.fail(child("$.methods", "tools/call"), "tool calls are governed by $.tools")
        grants = self.grants(top.get("grants", Pairs()), mode)
        hidden = self.hide(top.get("hide", []))
        catalogue = self.catalogue(top.get("catalogue", Pairs()))
        policy = Policy(everyone, grants, methods, hidden, version, source)
        self.warnings += shadow_warnings(policy)
        return Policy(
            everyone,
            grants,
            methods,
            hidden,
            version,
            source,
            tuple(self.warnings),
            on_deny,
            catalogue,
            self.list_view(top),
        )

    def message(self, spec: dict[str, Any], path: str) -> str | None:
        """`on_deny` (PolicyLayer's name) or `reason` (ours): what a refused agent is told."""
        if "on_deny" in spec and "reason" in spec:
            self.fail(child(path, "on_deny"), "give on_deny or reason, not both: they are one")
        key = "on_deny" if "on_deny" in spec else "reason"
        return self.text(spec[key], child(path, key)) if key in spec else None

    def all_tools(self, value: Any, mode: Mode) -> tuple[Rule, ...]:
        """`all_tools.limits`: budgets every tool call draws on, after its own rules."""
        spec = self.fields(value, "$.all_tools", _ALL_TOOLS_KEYS)
        if not spec:
            return ()
        counts = self.limits(spec.get("limits", []), "$.all_tools.limits", "/all_tools")
        return (Rule("/all_tools", Action.ALLOW, counts=counts, mode=mode),)

    def mode(self, spec: dict[str, Any], path: str, inherited: Mode) -> Mode:
        if "mode" not in spec:
            return inherited
        return self.choice(spec["mode"], child(path, "mode"), Mode, Mode) or inherited

    def risk(self, value: Any, path: str, mode: Mode) -> dict[str, Entry]:
        """`risk`: rules per risk class, written as a tool's rules are."""
        return {
            name: Entry(pointer(path, name), self.rule(item, where, pointer(path, name), mode))
            for name, item, where in self.risk_entries(value, path)
        }

    def hide(self, value: Any) -> frozenset[str]:
        names = [
            self.text(item, where) for item, where in self.items(value, "$.hide", "tool names")
        ]
        return frozenset(n for n in names if n)

    def rules(self, value: Any, path: str, mode: Mode) -> RuleSet:
        entries = {
            name: Entry(pointer(path, name), self.rule(item, where, pointer(path, name), mode))
            for name, item, where in self.entries(value, path)
        }
        return RuleSet.build(entries)

    def rule(self, value: Any, path: str, rule_id: str, inherited: Mode) -> tuple[Rule, ...]:
        """A tool's rules: each `require` and `deny_if` predicate is a rule of its own (so a
        refusal names it), then the tool's action, conditions and limits."""
        spec = self.fields(value, path, _RULE_KEYS)
        action = self.choice(spec.get("action", "allow"), child(path, "action"), Action, Action)
        reason = self.message(spec, path)
        mode = self.mode(spec, path, inherited)
        predicates = self.predicates(spec, path, rule_id, reason, mode)
        conditions = self.conditions(spec.get("conditions", []), child(path, "conditions"))
        counts = self.limits(spec.get("limits", []), child(path, "limits"), rule_id)
        if action is Action.DENY and (counts or conditions or predicates):
            self.fail(
                path,
                "a denied tool is never counted or checked: remove its limits, "
                "conditions, require and deny_if, or allow it",
            )
        if "approval" in spec and action is not Action.APPROVE:
            self.fail(child(path, "approval"), 'only an "approve" rule asks for approval')
        approval = (
            self.approval(spec.get("approval", Pairs()), child(path, "approval"))
            if action is Action.APPROVE
            else None
        )
        main = Rule(rule_id, action or Action.DENY, reason, conditions, counts, mode, approval)
        return (*predicates, main)

    def conditions(self, value: Any, path: str) -> tuple[Condition, ...]:
        return tuple(
            c
            for item, where in self.items(value, path, "conditions")
            if (c := self.condition(item, where)) is not None
        )

    def predicates(
        self, spec: dict[str, Any], path: str, rule_id: str, reason: str | None, mode: Mode
    ) -> tuple[Rule, ...]:
        """`require` (must hold) and `deny_if` (refuses when it holds or cannot be judged)."""
        rules: list[Rule] = []
        for key in ("require", "deny_if"):
            listed = self.conditions(spec.get(key, []), child(path, key))
            for name, condition in zip(predicate_names(listed), listed, strict=True):
                where = f"{rule_id}/{key}/{escape(name)}"
                held, denies = ((condition,), ()) if key == "require" else ((), (condition,))
                rules.append(Rule(where, Action.ALLOW, reason, held, mode=mode, denies=denies))
        return tuple(rules)

    def limits(self, value: Any, path: str, rule_id: str) -> tuple[Counting, ...]:
        return tuple(
            Counting(c.limit, c.increment, c.increment_from, f"{rule_id}/limits/{escape(name)}")
            for item, where in self.items(value, path, "limits")
            if (c := self.limit(item, where)) is not None
            for name in (c.limit.counter,)
        )

    def approval(self, value: Any, path: str) -> ApprovalRule:
        spec = self.fields(value, path, _APPROVAL_KEYS)
        when = self.conditions(spec.get("when", []), child(path, "when"))
        lifetime = self.count(spec.get("lifetime", 900), child(path, "lifetime"), _MAX_LIFETIME)
        approvers = tuple(
            a
            for item, where in self.items(
                spec.get("approvers", []), child(path, "approvers"), "identities"
            )
            if (a := self.text(item, where))
        )
        claims = self.claims(spec.get("approver_claims", Pairs()), child(path, "approver_claims"))
        return ApprovalRule(when, lifetime or 900, approvers, claims)

    def limit(self, value: Any, path: str) -> Counting | None:
        spec = self.fields(value, path, _LIMIT_KEYS)
        for key in ("counter", "window", "max"):
            if key not in spec:
                self.fail(child(path, key), "missing: every limit needs counter, window and max")
        counter = self.text(spec["counter"], child(path, "counter")) if "counter" in spec else None
        window = self.window(spec["window"], child(path, "window")) if "window" in spec else None
        cap = self.count(spec["max"], child(path, "max")) if "max" in spec else None
        scope = self.choice(spec.get("scope", "grant"), child(path, "scope"), Scope, Scope)
        increment = self.count(spec.get("increment", 1), child(path, "increment"))
        source = spec.get("increment_from")
        where = self.arg_path(source, child(path, "increment_from")) if source is not None else None
        if not (counter and window and cap and scope and increment):
            return None
        if "increment" in spec and source is not None:
            self.fail(path, "give increment or increment_from, not both")
        limit = self.shared(Limit(counter, window, cap, scope), path)
        return Counting(limit, increment, where)

    def grants(self, value: Any, mode: Mode) -> tuple[Grant, ...]:
        return tuple(
            self.grant(name, item, where, mode)
            for name, item, where in self.entries(value, "$.grants")
        )

    def grant(self, name: str, value: Any, path: str, inherited: Mode) -> Grant:
        spec = self.fields(value, path, _GRANT_KEYS)
        if "identities" not in spec and "claims" not in spec:
            self.fail(path, "a grant needs identities or claims to say who it is for")
        identities = {
            n: Entry(n, ())
            for item, where in self.items(
                spec.get("identities", []), child(path, "identities"), "identities"
            )
            if (n := self.text(item, where))
        }
        mode = self.mode(spec, path, inherited)
        default = self.choice(spec.get("default", "deny"), child(path, "default"), Action, POSTURES)
        tools = self.rules(spec.get("tools", Pairs()), child(path, "tools"), mode)
        return Grant(
            name,
            default or Action.DENY,
            tools,
            (),
            RuleSet.build(identities),
            self.claims(spec.get("claims", Pairs()), child(path, "claims")),
            mode,
            self.risk(spec.get("risk", Pairs()), child(path, "risk"), mode),
        )

    def claims(self, value: Any, path: str) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for claim, wanted, where in self.entries(value, path):
            values = (
                wanted if isinstance(wanted, list) and not isinstance(wanted, Pairs) else [wanted]
            )
            if not values or not all(
                isinstance(v, str | int) and not isinstance(v, bool) for v in values
            ):
                self.fail(where, f"expected a string or a list of strings, got {kind(wanted)}")
                continue
            if claim in SCOPE_CLAIMS and any(isinstance(v, str) and " " in v for v in values):
                # A token's scopes are matched one by one, so "a b" could never match.
                self.fail(where, "a scope claim is matched per scope: list each scope separately")
                continue
            out[claim] = tuple(values)
        return out
