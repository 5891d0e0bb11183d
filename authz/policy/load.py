"""Read a policy file (JSON or YAML) into a Policy, or say everything that is wrong with it.

Every problem names the file, the JSON path and what to do; all problems are reported at
once so one `mcp-authz validate` run shows the whole list. Unknown keys are errors: a typo
in a security policy must never silently mean "no rule".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authz.policy.model import NAMED_WINDOWS, Action, Limit, Policy, Rule, RuleSet, Scope

_TOP_KEYS = ("version", "default", "tools", "methods")
_RULE_KEYS = ("action", "reason", "limits")
_LIMIT_KEYS = ("counter", "window", "max", "scope")
_MAX_LIMIT = 1_000_000_000
_MAX_WINDOW = 366 * 86400


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str


class PolicyError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p.path}: {p.message}" for p in problems))


class _Pairs(list[tuple[Any, Any]]):
    """A mapping as written, duplicates included, so they can be reported with their path."""


def load_policy(path: Path) -> Policy:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PolicyError(str(path), [Problem("$", f"cannot read the file: {e.strerror}")]) from e
    return parse_policy(data, str(path))


def parse_policy(data: bytes, source: str) -> Policy:
    raw = _parse_text(data, source)
    checker = _Checker()
    policy = checker.policy(raw, source, "sha256:" + hashlib.sha256(data).hexdigest()[:16])
    if checker.problems:
        raise PolicyError(source, checker.problems)
    return policy


def _parse_text(data: bytes, source: str) -> Any:
    try:
        text = data.decode("utf-8")
        if source.endswith((".yaml", ".yml")):
            return yaml.load(text, Loader=_PairsLoader)  # noqa: S506 - a SafeLoader subclass
        return json.loads(text, object_pairs_hook=_Pairs)
    except UnicodeDecodeError as e:
        raise PolicyError(source, [Problem("$", f"not UTF-8: {e.reason}")]) from e
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise PolicyError(source, [Problem("$", f"invalid JSON at {where}: {e.msg}")]) from e
    except yaml.YAMLError as e:
        raise PolicyError(source, [Problem("$", f"invalid YAML: {e}")]) from e


class _PairsLoader(yaml.SafeLoader):
    pass


def _construct_pairs(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Pairs:
    loader.flatten_mapping(node)
    return _Pairs(
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
        for k, v in node.value
    )


_PairsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_pairs)


def child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _kind(value: Any) -> str:
    if isinstance(value, _Pairs):
        return "an object"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
    }.get(type(value), "null" if value is None else type(value).__name__)


@dataclass
class _Checker:
    problems: list[Problem] = field(default_factory=list)
    # Where each counter was first defined, so a shared budget must mean the same everywhere.
    counters: dict[str, tuple[str, Limit]] = field(default_factory=dict)

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def fields(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """An object's entries, reporting duplicates, unknown keys and non-objects."""
        if not isinstance(value, _Pairs):
            self.fail(path, f"expected an object, got {_kind(value)}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value:
            if key in out:
                self.fail(child(path, str(key)), "duplicate key: keep only one")
            elif key not in allowed:
                expected = ", ".join(allowed)
                self.fail(child(path, str(key)), f"unknown key (expected one of: {expected})")
            else:
                out[key] = item
        return out

    def entries(self, value: Any, path: str) -> Iterator[tuple[str, Any, str]]:
        """Name → item entries of a free-form map such as `tools`."""
        if not isinstance(value, _Pairs):
            self.fail(path, f"expected an object, got {_kind(value)}")
            return
        seen: set[str] = set()
        for key, item in value:
            where = child(path, str(key))
            if not isinstance(key, str) or not key:
                self.fail(where, "names must be non-empty strings")
            elif key in seen:
                self.fail(where, "duplicate key: keep only one")
            else:
                seen.add(key)
                yield key, item, where

    def choice(self, value: Any, path: str, enum: Callable[[str], Any], options: Any) -> Any:
        try:
            return enum(value)
        except ValueError:
            names = " or ".join(f'"{o.value}"' for o in options)
            self.fail(path, f"expected {names}, got {json.dumps(value, default=str)}")
            return None

    def policy(self, raw: Any, source: str, version: str) -> Policy:
        top = self.fields(raw, "$", _TOP_KEYS)
        if isinstance(raw, _Pairs) and "version" not in top:
            self.fail("$.version", 'missing: add "version": "1"')
        elif "version" in top and top["version"] not in ("1", 1):
            self.fail("$.version", f'unsupported version {top["version"]!r}: use "1"')
        default = self.choice(top.get("default", "deny"), "$.default", Action, Action)
        tools = self.rules(top.get("tools", _Pairs()), "$.tools", "tools")
        methods = self.rules(top.get("methods", _Pairs()), "$.methods", "methods")
        if "tools/call" in methods.exact:
            self.fail(child("$.methods", "tools/call"), "tool calls are governed by $.tools")
        return Policy(default or Action.DENY, tools, methods, version, source)

    def rules(self, value: Any, path: str, section: str) -> RuleSet:
        rules = {
            name: self.rule(item, where, child(section, name))
            for name, item, where in self.entries(value, path)
        }
        return RuleSet.build(rules)

    def rule(self, value: Any, path: str, rule_id: str) -> Rule:
        spec = self.fields(value, path, _RULE_KEYS)
        action = self.choice(spec.get("action", "allow"), child(path, "action"), Action, Action)
        reason = spec.get("reason")
        if reason is not None and not (isinstance(reason, str) and reason.strip()):
            self.fail(child(path, "reason"), f"expected a non-empty string, got {_kind(reason)}")
            reason = None
        limits = self.limits(spec.get("limits", []), child(path, "limits"))
        if action is Action.DENY and limits:
            self.fail(child(path, "limits"), "a denied tool is never counted: remove the limits")
        return Rule(rule_id, action or Action.DENY, reason, limits)

    def limits(self, value: Any, path: str) -> tuple[Limit, ...]:
        if not isinstance(value, list) or isinstance(value, _Pairs):
            self.fail(path, f"expected a list of limits, got {_kind(value)}")
            return ()
        found = (self.limit(item, child(path, i)) for i, item in enumerate(value))
        return tuple(limit for limit in found if limit is not None)

    def limit(self, value: Any, path: str) -> Limit | None:
        spec = self.fields(value, path, _LIMIT_KEYS)
        missing = [k for k in ("counter", "window", "max") if k not in spec]
        for key in missing:
            self.fail(child(path, key), "missing: every limit needs counter, window and max")
        counter = spec.get("counter")
        if "counter" in spec and not (isinstance(counter, str) and counter):
            self.fail(child(path, "counter"), "expected a non-empty string naming the counter")
        window = (
            self.window(spec.get("window"), child(path, "window")) if "window" in spec else None
        )
        cap = self.count(spec.get("max"), child(path, "max"), _MAX_LIMIT) if "max" in spec else None
        scope = self.choice(spec.get("scope", "grant"), child(path, "scope"), Scope, Scope)
        if not (isinstance(counter, str) and counter and window and cap and scope):
            return None
        return self.shared(Limit(counter, window, cap, scope), path)

    def window(self, value: Any, path: str) -> int | None:
        if isinstance(value, str) and value in NAMED_WINDOWS:
            return NAMED_WINDOWS[value]
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_WINDOW:
            return value
        names = ", ".join(f'"{n}"' for n in NAMED_WINDOWS)
        self.fail(path, f"expected {names} or seconds (1 to {_MAX_WINDOW}), got {value!r}")
        return None

    def count(self, value: Any, path: str, ceiling: int) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= ceiling:
            return value
        self.fail(path, f"expected a whole number from 1 to {ceiling}, got {value!r}")
        return None

    def shared(self, limit: Limit, path: str) -> Limit:
        first = self.counters.setdefault(limit.counter, (path, limit))
        if first[1] != limit:
            self.fail(
                path,
                f'counter "{limit.counter}" is one shared budget but is defined differently '
                f"at {first[0]} ({first[1].describe()} vs {limit.describe()}): make them equal "
                "or rename one",
            )
        return limit
