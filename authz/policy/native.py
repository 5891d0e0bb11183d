"""Our policy format, a superset of the seed product's `policy.json`."""

from __future__ import annotations

from typing import Any

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

_TOP_KEYS = ("version", "description", "default", "mode", "tools", "methods", "grants", "hide")
_RULE_KEYS = ("action", "reason", "conditions", "limits", "mode", "approval")
_APPROVAL_KEYS = ("when", "lifetime", "approvers", "approver_claims")
_MAX_LIFETIME = 7 * 86400
_LIMIT_KEYS = ("counter", "window", "max", "scope", "increment", "increment_from")
_GRANT_KEYS = ("identities", "claims", "default", "mode", "tools")


class NativeReader(Reader):
    def policy(self, raw: Any, source: str, version: str) -> Policy:
        top = self.fields(raw, "$", _TOP_KEYS)
        self.version(top, raw)
        mode = self.mode(top, "$", Mode.ENFORCE)
        default = self.choice(top.get("default", "deny"), "$.default", Action, POSTURES)
        everyone = Grant(
            "default",
            default or Action.DENY,
            self.rules(top.get("tools", Pairs()), "$.tools", mode),
            mode=mode,
        )
        methods = self.rules(top.get("methods", Pairs()), "$.methods", mode)
        if "tools/call" in methods.exact:
            self.fail(child("$.methods", "tools/call"), "tool calls are governed by $.tools")
        grants = self.grants(top.get("grants", Pairs()), mode)
        hidden = self.hide(top.get("hide", []))
        policy = Policy(everyone, grants, methods, hidden, version, source)
        self.warnings += shadow_warnings(policy)
        return Policy(everyone, grants, methods, hidden, version, source, tuple(self.warnings))

    def mode(self, spec: dict[str, Any], path: str, inherited: Mode) -> Mode:
        if "mode" not in spec:
            return inherited
        return self.choice(spec["mode"], child(path, "mode"), Mode, Mode) or inherited

    def hide(self, value: Any) -> frozenset[str]:
        names = [
            self.text(item, where) for item, where in self.items(value, "$.hide", "tool names")
        ]
        if names:
            self.warn(
                "$.hide",
                "hidden tools are refused when called, but still appear in "
                "tools/list: ext_authz cannot rewrite the server's answers",
            )
        return frozenset(n for n in names if n)

    def rules(self, value: Any, path: str, mode: Mode) -> RuleSet:
        entries = {
            name: Entry(
                child(path[2:], name), (self.rule(item, where, child(path[2:], name), mode),)
            )
            for name, item, where in self.entries(value, path)
        }
        return RuleSet.build(entries)

    def rule(self, value: Any, path: str, rule_id: str, inherited: Mode) -> Rule:
        spec = self.fields(value, path, _RULE_KEYS)
        action = self.choice(spec.get("action", "allow"), child(path, "action"), Action, Action)
        reason = self.text(spec["reason"], child(path, "reason")) if "reason" in spec else None
        conditions = tuple(
            c
            for item, where in self.items(
                spec.get("conditions", []), child(path, "conditions"), "conditions"
            )
            if (c := self.condition(item, where)) is not None
        )
        counts = tuple(
            c
            for item, where in self.items(spec.get("limits", []), child(path, "limits"), "limits")
            if (c := self.limit(item, where)) is not None
        )
        if action is Action.DENY and (counts or conditions):
            self.fail(
                path,
                "a denied tool is never counted or checked: remove its limits and "
                "conditions, or allow it",
            )
        if "approval" in spec and action is not Action.APPROVE:
            self.fail(child(path, "approval"), 'only an "approve" rule asks for approval')
        approval = (
            self.approval(spec.get("approval", Pairs()), child(path, "approval"))
            if action is Action.APPROVE
            else None
        )
        mode = self.mode(spec, path, inherited)
        return Rule(rule_id, action or Action.DENY, reason, conditions, counts, mode, approval)

    def approval(self, value: Any, path: str) -> ApprovalRule:
        spec = self.fields(value, path, _APPROVAL_KEYS)
        when = tuple(
            c
            for item, where in self.items(spec.get("when", []), child(path, "when"), "conditions")
            if (c := self.condition(item, where)) is not None
        )
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
