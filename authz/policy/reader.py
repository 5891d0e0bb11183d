"""What every policy reader shares: the raw document as written, JSON paths, and a Reader that
records every problem with its path and carries on, so one pass reports them all.

Both syntaxes (ours and Intercept's) build on it; the loader picks one and never the reverse.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from authz.policy.conditions import ConditionError, Op, compile_condition
from authz.policy.conditions import kind as kind_of
from authz.policy.model import (
    NAMED_WINDOWS,
    POSTURES,
    RISK_LABELS,
    Action,
    CatalogueRules,
    Entry,
    Limit,
    ListView,
    OnChange,
    Policy,
    RuleSet,
)
from authz.protocol.tools import RiskClass

MAX_LIMIT = 1_000_000_000_000
_CATALOGUE_KEYS = ("on_change", "on_unknown", "upstreams", "baseline")
_UPSTREAM_KEYS = ("trusted",)
_CLASSES = tuple(c.label for c in RiskClass)
MAX_WINDOW = 366 * 86400


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str


class Pairs(list[tuple[Any, Any]]):
    """A mapping as written, duplicates included, so they can be reported with their path."""


def child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def kind(value: Any) -> str:
    return "an object" if isinstance(value, Pairs) else kind_of(value)


def did_you_mean(value: Any, options: Iterable[str]) -> str:
    """` (did you mean "X"?)` when `value` is a near miss of one option, else nothing."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(options), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def get(value: Any, key: str) -> Any:
    """A key of a raw object, for format detection before validation."""
    return dict(value).get(key) if isinstance(value, Pairs) else None


@dataclass
class Reader:
    """Validation helpers shared by both formats: each records problems and carries on, so
    one pass reports them all."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Where each counter was first defined, so a shared budget means the same everywhere.
    counters: dict[str, tuple[str, Limit]] = field(default_factory=dict)

    def policy(self, raw: Any, source: str, version: str) -> Policy:
        raise NotImplementedError

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def fields(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """An object's entries, reporting duplicates, unknown keys and non-objects."""
        if not isinstance(value, Pairs):
            self.fail(path, f"expected an object, got {kind(value)}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value:
            if key in out:
                self.fail(child(path, str(key)), "duplicate key: keep only one")
            elif key not in allowed:
                expected = ", ".join(allowed)
                hint = did_you_mean(key, allowed)
                self.fail(child(path, str(key)), f"unknown key{hint} (expected one of: {expected})")
            else:
                out[key] = item
        return out

    def entries(self, value: Any, path: str) -> Iterator[tuple[str, Any, str]]:
        """Name → item entries of a free-form map such as `tools`."""
        if not isinstance(value, Pairs):
            self.fail(path, f"expected an object, got {kind(value)}")
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

    def items(self, value: Any, path: str, what: str) -> list[tuple[Any, str]]:
        if not isinstance(value, list) or isinstance(value, Pairs):
            self.fail(path, f"expected a list of {what}, got {kind(value)}")
            return []
        return [(item, child(path, i)) for i, item in enumerate(value)]

    def choice(self, value: Any, path: str, enum: Callable[[Any], Any], options: Any) -> Any:
        """`value` as a member of `enum`, which must be one of `options`."""
        try:
            member = enum(value)
        except ValueError:
            member = None
        if member is None or member not in list(options):
            names = " or ".join(f'"{o.value}"' for o in options)
            hint = did_you_mean(value, (str(o.value) for o in options))
            self.fail(path, f"expected {names}, got {json.dumps(value, default=str)}{hint}")
            return None
        return member

    def list_view(self, top: dict[str, Any]) -> ListView:
        """`tools_list`: "filtered" (the default) or "whole"; the same key in both syntaxes."""
        value = top.get("tools_list", ListView.FILTERED.value)
        return self.choice(value, "$.tools_list", ListView, ListView) or ListView.FILTERED

    def text(self, value: Any, path: str) -> str | None:
        if isinstance(value, str) and value.strip():
            return value
        self.fail(path, f"expected a non-empty string, got {kind(value)}")
        return None

    def version(self, top: dict[str, Any], raw: Any) -> None:
        if isinstance(raw, Pairs) and "version" not in top:
            self.fail("$.version", 'missing: add "version": "1"')
        elif "version" in top and top["version"] not in ("1", 1):
            self.fail("$.version", f'unsupported version {top["version"]!r}: use "1"')

    def window(self, value: Any, path: str, named_only: bool = False) -> int | None:
        if isinstance(value, str) and value in NAMED_WINDOWS:
            return NAMED_WINDOWS[value]
        seconds_ok = (
            isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_WINDOW
        )
        if seconds_ok and not named_only:
            return int(value)
        names = ", ".join(f'"{n}"' for n in NAMED_WINDOWS)
        seconds = "" if named_only else f" or seconds (1 to {MAX_WINDOW})"
        self.fail(
            path, f"expected {names}{seconds}, got {value!r}{did_you_mean(value, NAMED_WINDOWS)}"
        )
        return None

    def count(self, value: Any, path: str, ceiling: int = MAX_LIMIT) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= ceiling:
            return value
        self.fail(path, f"expected a whole number from 1 to {ceiling}, got {value!r}")
        return None

    def arg_path(self, value: Any, path: str) -> tuple[str, ...] | None:
        if isinstance(value, str) and value.startswith("args.") and all(value[5:].split(".")):
            return tuple(value[5:].split("."))
        self.fail(path, f'expected a path like "args.amount", got {value!r}')
        return None

    def condition(
        self, value: Any, path: str, keys: tuple[str, ...] = ("path", "op", "value")
    ) -> Any:
        spec = self.fields(value, path, keys)
        for key in ("path", "op"):
            if key not in spec:
                self.fail(child(path, key), "missing: a condition needs path, op and value")
        if "value" not in spec and spec.get("op") != Op.EXISTS.value:
            self.fail(child(path, "value"), "missing: a condition needs path, op and value")
        op = self.choice(spec.get("op"), child(path, "op"), Op, Op) if "op" in spec else None
        where = self.arg_path(spec["path"], child(path, "path")) if "path" in spec else None
        if op is None or where is None:
            return None
        try:
            return compile_condition(where, op, spec.get("value", True))
        except ConditionError as e:
            self.fail(child(path, "value"), str(e))
            return None

    def risk_entries(self, value: Any, path: str) -> Iterator[tuple[str, Any, str]]:
        """The entries of a `risk` map whose keys name a class; any other key is reported."""
        for name, item, where in self.entries(value, path):
            if name in RISK_LABELS:
                yield name, item, where
            else:
                expected = ", ".join(RISK_LABELS)
                hint = did_you_mean(name, RISK_LABELS)
                self.fail(where, f"unknown risk class{hint} (expected one of: {expected})")

    def catalogue(self, value: Any, path: str = "$.catalogue") -> CatalogueRules:
        """`catalogue`: what a drifted or never-listed tool gets, trusted upstreams, and the
        operator's class per tool (both syntaxes read it the same way)."""
        spec = self.fields(value, path, _CATALOGUE_KEYS)
        on_change = self.choice(
            spec.get("on_change", "deny"), child(path, "on_change"), OnChange, OnChange
        )
        on_unknown = self.choice(
            spec.get("on_unknown", "deny"), child(path, "on_unknown"), Action, POSTURES
        )
        trusted = frozenset(
            name
            for name, item, where in self.entries(
                spec.get("upstreams", Pairs()), child(path, "upstreams")
            )
            if self.trusted(item, where)
        )
        baselines = {
            name: Entry(label, ())
            for name, label, where in self.entries(
                spec.get("baseline", Pairs()), child(path, "baseline")
            )
            if self.risk_class(label, where)
        }
        return CatalogueRules(
            on_change or OnChange.DENY,
            on_unknown or Action.DENY,
            trusted,
            RuleSet.build(baselines),
        )

    def trusted(self, value: Any, path: str) -> bool:
        spec = self.fields(value, path, _UPSTREAM_KEYS)
        trusted = spec.get("trusted", False)
        if not isinstance(trusted, bool):
            self.fail(child(path, "trusted"), f"expected true or false, got {kind(trusted)}")
            return False
        return trusted

    def risk_class(self, value: Any, path: str) -> str | None:
        if value in _CLASSES:
            return str(value)
        names = ", ".join(f'"{c}"' for c in _CLASSES)
        hint = did_you_mean(value, _CLASSES)
        self.fail(
            path, f"expected a risk class ({names}), got {json.dumps(value, default=str)}{hint}"
        )
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
