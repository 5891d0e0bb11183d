"""Conditions on a tool call's arguments: `args.amount lte 500`, `args.currency in [...]`.

Compiled at load time; judged without I/O. Regular expressions use RE2, whose matching time
is linear in the input, so an agent cannot stall the gateway with a pathological argument.
A condition that cannot be judged (a missing path, a string where a number is compared)
fails: in a security policy "cannot tell" must never read as "passes".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import re2

_RE2_OPTIONS = re2.Options()
# Errors are raised to the loader, which reports them with their path; RE2's own stderr
# logging would only repeat them without the path.
_RE2_OPTIONS.log_errors = False


class Op(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    IN = "in"
    NOT_IN = "not_in"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    REGEX = "regex"
    CONTAINS = "contains"
    EXISTS = "exists"


ORDERING = (Op.LT, Op.LTE, Op.GT, Op.GTE)


class ConditionError(ValueError):
    """A condition whose expected value does not suit its operator (a load-time error)."""


_MISSING = object()


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve(arguments: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at `path` in the arguments, or _MISSING. Each step descends one object."""
    node: Any = arguments
    for step in path:
        if not isinstance(node, dict) or step not in node:
            return _MISSING
        node = node[step]
    return node


@dataclass(frozen=True, slots=True)
class Condition:
    path: tuple[str, ...]
    op: Op
    value: Any
    # RE2 pattern for `regex`; None otherwise.
    pattern: Any = None

    @property
    def text(self) -> str:
        return f"args.{'.'.join(self.path)} {self.op.value} {_show(self.value)}"

    def judge(self, arguments: Mapping[str, Any]) -> tuple[bool, str]:
        """(holds, why not): the second part is a sentence for the agent when it fails."""
        actual = resolve(arguments, self.path)
        where = "args." + ".".join(self.path)
        if self.op is Op.EXISTS:
            present = actual is not _MISSING
            return present is self.value, f"{where} is {'present' if present else 'missing'}"
        if actual is _MISSING:
            return False, f"{where} is missing"
        problem = _type_problem(self.op, actual)
        if problem:
            return False, f"{where} is {problem}"
        # The argument's value stays out of the sentence: it reaches the audit log, which
        # never holds arguments in clear.
        return _OPS[self.op](actual, self), f"{where} fails {self.op.value} {_show(self.value)}"


def fires(condition: Condition, arguments: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a condition that refuses when it holds (PolicyLayer's `deny_if`) refuses.

    "Cannot tell" refuses too: an argument that is missing or of another type than the
    operator compares is exactly what a server may default or coerce past the rule.
    """
    holds, why = condition.judge(arguments)
    if holds:
        return True, condition.text
    if condition.op is Op.EXISTS:
        return False, why
    actual = resolve(arguments, condition.path)
    judged = actual is not _MISSING and _type_problem(condition.op, actual) is None
    return not judged, why


def compile_condition(path: tuple[str, ...], op: Op, value: Any) -> Condition:
    """A checked, compiled condition; ConditionError says what is wrong with `value`."""
    if op in (Op.IN, Op.NOT_IN) and not isinstance(value, list):
        raise ConditionError(f'operator "{op}" needs a list value')
    if op in ORDERING and not is_number(value):
        raise ConditionError(f'operator "{op}" needs a number value')
    if op is Op.EXISTS and not isinstance(value, bool):
        raise ConditionError('operator "exists" needs true or false')
    if op is Op.REGEX:
        if not isinstance(value, str):
            raise ConditionError('operator "regex" needs a string value')
        try:
            return Condition(path, op, value, re2.compile(value, _RE2_OPTIONS))
        except re2.error as e:
            raise ConditionError(f"invalid regex {value!r}: {_decode(e)}") from None
    return Condition(path, op, value)


def _type_problem(op: Op, actual: Any) -> str | None:
    if op in ORDERING and not is_number(actual):
        return f"{kind(actual)}, not a number"
    if op is Op.REGEX and not isinstance(actual, str):
        return f"{kind(actual)}, not a string"
    if op is Op.CONTAINS and not isinstance(actual, str | list):
        return f"{kind(actual)}, not a string or a list"
    return None


def _equal(a: Any, b: Any) -> bool:
    # JSON has one number type: 5 and 5.0 are equal, but true is not 1 and "5" is not 5.
    if is_number(a) and is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _contains(actual: Any, c: Condition) -> bool:
    if isinstance(actual, str):
        return isinstance(c.value, str) and c.value in actual
    return any(_equal(item, c.value) for item in actual)


_OPS: dict[Op, Callable[[Any, Condition], bool]] = {
    Op.EQ: lambda a, c: _equal(a, c.value),
    Op.NEQ: lambda a, c: not _equal(a, c.value),
    Op.IN: lambda a, c: any(_equal(a, v) for v in c.value),
    Op.NOT_IN: lambda a, c: not any(_equal(a, v) for v in c.value),
    Op.LT: lambda a, c: bool(a < c.value),
    Op.LTE: lambda a, c: bool(a <= c.value),
    Op.GT: lambda a, c: bool(a > c.value),
    Op.GTE: lambda a, c: bool(a >= c.value),
    Op.REGEX: lambda a, c: c.pattern.search(a) is not None,
    Op.CONTAINS: _contains,
}


def kind(value: Any) -> str:
    """How a JSON value is named in messages to agents and operators."""
    if isinstance(value, bool):
        return "a boolean"
    if is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _decode(error: Exception) -> str:
    arg = error.args[0] if error.args else error
    return arg.decode() if isinstance(arg, bytes) else str(arg)
