"""PolicyLayer Intercept's YAML policy format, read into our model as it is.

Where the two differ on purpose (see docs/policy.md, "Intercept files"): windows roll rather
than reset on the calendar, counters are never rolled back after the upstream fails (ext_authz
never sees the response), and hidden tools are refused but not removed from tools/list. A
feature we cannot enforce is refused with its path, never silently weakened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from authz.policy.conditions import Op, is_number
from authz.policy.model import (
    NAMED_WINDOWS,
    POSTURES,
    Action,
    Counting,
    Entry,
    Grant,
    Limit,
    Policy,
    Rule,
    RuleSet,
    Scope,
)
from authz.policy.reader import Pairs, Reader, child, get
from authz.policy.warnings import shadow_warnings

_TOP_KEYS = (
    "version",
    "description",
    "default",
    "hide",
    "tools",
    "tools_list",
    "risk",
    "catalogue",
)
_RULE_KEYS = ("name", "action", "conditions", "on_deny", "rate_limit", "state")
_STATE_KEYS = ("counter", "window", "increment", "increment_from")
_WINDOWS = ("minute", "hour", "day")
GLOBAL_SCOPE = "_global"


def is_intercept(raw: Any) -> bool:
    """Intercept files list `rules` under each tool; ours never do."""
    tools = get(raw, "tools")
    return isinstance(tools, Pairs) and any(
        isinstance(v, Pairs) and "rules" in dict(v) for _, v in tools
    )


class _Verb(StrEnum):
    EVALUATE = "evaluate"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class _State:
    counter: str
    window: int
    increment: int
    increment_from: tuple[str, ...] | None
    path: str


class InterceptReader(Reader):
    def policy(self, raw: Any, source: str, version: str) -> Policy:
        top = self.fields(raw, "$", _TOP_KEYS)
        self.version(top, raw)
        # Intercept's posture is allow unless the file says deny.
        default = self.choice(top.get("default", "allow"), "$.default", Action, POSTURES)
        entries: dict[str, Entry] = {}
        for name, item, where in self.entries(top.get("tools", Pairs()), "$.tools"):
            entries[name] = self.entry(name, item, where)
        wildcard = entries.pop("*", None)
        everyone = Grant(
            "default",
            default or Action.DENY,
            RuleSet(entries),
            wildcard.rules if wildcard else (),
            risk=self.risk(top.get("risk", Pairs())),
        )
        hidden = self.hide(top.get("hide", []))
        catalogue = self.catalogue(top.get("catalogue", Pairs()))
        policy = Policy(everyone, hidden=hidden, version=version, source=source)
        self.warnings += shadow_warnings(policy)
        return Policy(
            everyone,
            hidden=hidden,
            version=version,
            source=source,
            warnings=tuple(self.warnings),
            catalogue=catalogue,
            list_view=self.list_view(top),
        )

    def risk(self, value: Any) -> dict[str, Entry]:
        """`risk`: rules per risk class, each written as a tool's `rules` are; its counters
        are `state._risk_CLASS.NAME`."""
        return {
            name: self.entry(name, item, where, section="risk")
            for name, item, where in self.risk_entries(value, "$.risk")
        }

    def hide(self, value: Any) -> frozenset[str]:
        names: list[str] = []
        for item, where in self.items(value, "$.hide", "tool names"):
            name = self.text(item, where)
            if name in names:
                self.fail(where, f'duplicate entry "{name}"')
            elif name:
                names.append(name)
        return frozenset(names)

    def entry(self, tool: str, value: Any, path: str, section: str = "tools") -> Entry:
        spec = self.fields(value, path, ("rules",))
        scope = GLOBAL_SCOPE if tool == "*" else tool
        if section == "risk":
            scope = f"_risk_{tool}"
        items = self.items(spec.get("rules", []), child(path, "rules"), "rules")
        states = self.states(scope, items)
        rule_id = child(section, tool)
        rules = tuple(
            self.rule(scope, item, where, f"{rule_id}.rules[{i}]", states=states)
            for i, (item, where) in enumerate(items)
        )
        for state in states.values():
            if not any(
                c.limit.counter == f"{scope}.{state.counter}" for r in rules for c in r.counts
            ):
                self.warn(
                    state.path,
                    f'counter "{state.counter}" is counted but no condition '
                    "limits it, so it has no effect",
                )
        return Entry(rule_id, rules)

    def states(self, scope: str, items: list[tuple[Any, str]]) -> dict[str, _State]:
        """The counters a tool's rules define: its `state` blocks and `rate_limit` shorthands."""
        found: dict[str, _State] = {}
        for item, where in items:
            state = (
                self.state(get(item, "state"), child(where, "state"))
                if get(item, "state") is not None
                else None
            )
            if state is None:
                continue
            if state.counter in found:
                self.fail(
                    child(where, "state"),
                    f'duplicate state counter "{state.counter}" '
                    f"(also defined at {found[state.counter].path})",
                )
            found[state.counter] = state
        return found

    def state(self, value: Any, path: str) -> _State | None:
        spec = self.fields(value, path, _STATE_KEYS)
        counter = self.text(spec.get("counter"), child(path, "counter"))
        window = self.window(spec.get("window"), child(path, "window"), named_only=True)
        if window == 1:
            self.fail(child(path, "window"), 'expected "minute", "hour" or "day"')
        increment = self.count(spec.get("increment", 1), child(path, "increment"))
        source = spec.get("increment_from")
        where = self.arg_path(source, child(path, "increment_from")) if source is not None else None
        if counter and window and increment:
            return _State(counter, window, increment, where, path)
        return None

    def rule(
        self, scope: str, value: Any, path: str, rule_id: str, *, states: dict[str, _State]
    ) -> Rule:
        spec = self.fields(value, path, _RULE_KEYS)
        name = self.text(spec.get("name"), child(path, "name"))
        action = self.choice(spec.get("action", "evaluate"), child(path, "action"), _Verb, _Verb)
        reason = self.text(spec["on_deny"], child(path, "on_deny")) if "on_deny" in spec else None
        label = f"{rule_id} ({name})" if name else rule_id
        if action is _Verb.DENY:
            if "conditions" in spec or "rate_limit" in spec or "state" in spec:
                self.fail(path, "deny rules must not have conditions, rate_limit or state")
            return Rule(label, Action.DENY, reason or f"{label} denies this tool")
        if "rate_limit" in spec:
            return self.rate_limit(scope, spec, path, label=label, reason=reason, states=states)
        raw_conditions = self.items(
            spec.get("conditions", []), child(path, "conditions"), "conditions"
        )
        if not raw_conditions:
            self.fail(path, "evaluate rules must have at least one condition (or a rate_limit)")
        conditions, counts = [], []
        for item, where in raw_conditions:
            if str(get(item, "path") or "").startswith("state."):
                counts.append(self.state_condition(scope, item, where, states))
            else:
                conditions.append(self.condition(item, where))
        return Rule(
            label,
            Action.ALLOW,
            reason,
            tuple(c for c in conditions if c),
            tuple(c for c in counts if c),
        )

    def rate_limit(
        self,
        scope: str,
        spec: dict[str, Any],
        path: str,
        *,
        label: str,
        reason: str | None,
        states: dict[str, _State],
    ) -> Rule:
        if "conditions" in spec or "state" in spec:
            self.fail(path, "rate_limit cannot be combined with conditions or state")
        count, _, window_name = str(spec["rate_limit"]).partition("/")
        where = child(path, "rate_limit")
        cap = self.count(int(count) if count.isdigit() else count, where)
        if window_name not in _WINDOWS:
            self.fail(
                where, f'rate_limit window must be "minute", "hour" or "day", got {window_name!r}'
            )
            return Rule(label, Action.ALLOW, reason)
        counter = f"_rate_{window_name}"
        if counter in states:
            self.fail(where, f'duplicate counter "{counter}" (also used at {states[counter].path})')
        states[counter] = _State(counter, NAMED_WINDOWS[window_name], 1, None, where)
        reason = reason or f"Rate limit of {cap} per {window_name} reached. Try again later."
        if cap is None:
            return Rule(label, Action.ALLOW, reason)
        limit = self.shared(
            Limit(f"{scope}.{counter}", NAMED_WINDOWS[window_name], cap, Scope.GLOBAL), where
        )
        return Rule(label, Action.ALLOW, reason, counts=(Counting(limit),))

    def state_condition(
        self, scope: str, value: Any, path: str, states: dict[str, _State]
    ) -> Counting | None:
        spec = self.fields(value, path, ("path", "op", "value"))
        _, _, rest = str(spec.get("path")).partition(".")
        owner, _, counter = rest.partition(".")
        state = states.get(counter)
        if owner != scope or state is None:
            self.fail(
                child(path, "path"),
                f"condition references state.{owner}.{counter} but no "
                f"matching state block found for {scope}",
            )
            return None
        op = spec.get("op")
        bound: Any = spec.get("value")
        # A cap is what a counter can enforce atomically: "after this call, at most N".
        if op not in (Op.LT.value, Op.LTE.value) or not is_number(bound):
            self.fail(
                child(path, "op"),
                'state conditions can only cap a counter with "lt" or '
                f'"lte" and a number; {op!r} cannot be enforced before the call',
            )
            return None
        cap = math.ceil(bound) - 1 if op == Op.LT.value else math.floor(bound)
        if cap < 1:
            self.fail(child(path, "value"), "the cap admits no call at all: use action deny")
            return None
        limit = self.shared(Limit(f"{scope}.{counter}", state.window, cap, Scope.GLOBAL), path)
        return Counting(limit, state.increment, state.increment_from)
