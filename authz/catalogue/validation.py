"""Strict validation of a `tools/call`'s arguments against the tool's own `inputSchema`.

Strict means JSON types as sent: `"2"` is a string, never the integer a lax server (pydantic
in lax mode) would read it as, so a condition the gateway judged on a string cannot be
passed by a value the server then takes for a number. The `jsonschema` library does the
validating (every draft it knows, chosen by `$schema`; 2020-12 when absent); each schema is
compiled once per fingerprint, in a bounded cache.

The server writes the schema, so it is hostile input too: its regular expressions run on
RE2 (linear time) instead of Python's backtracking `re`, a remote `$ref` is never fetched,
and a schema that is not valid, or names a dialect nobody knows, cannot judge anything, so
the call is refused rather than waved through.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, cast

import re2
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from authz.protocol.tools import ToolDefinition

# Compiled schemas kept per process; a fingerprint names one schema forever.
MAX_COMPILED: Final = 1024
# How much of a schema's own value a refusal quotes.
MAX_QUOTE: Final = 120
# The validator recurses per level of schema: a few hundred levels (a few KB, well inside the
# definition bound) exhaust Python's stack. Such a schema cannot judge, so the call is refused.
TOO_DEEP: Final = "the tool's inputSchema is nested too deep for the gateway to check"
# jsonschema's `unevaluatedProperties` matches the `patternProperties` it looks through with
# Python's backtracking `re`, out of reach of the RE2 keywords below: a server's "^(a+)+$"
# and a 40-character argument name would hold the event loop for hours.
_PYTHON_RE: Final = frozenset({"unevaluatedProperties", "patternProperties"})
PYTHON_RE: Final = (
    "the tool's inputSchema combines unevaluatedProperties with patternProperties, "
    "which the gateway cannot check in linear time"
)
# What a `$ref` may resolve to beyond the schema itself: the drafts' meta-schemas only (the
# validators add those), nothing retrieved. jsonschema's default registry would still fetch
# a remote `$ref` with a blocking urlopen: a request from the gateway to any address the
# server names, holding the event loop for as long as that address holds the socket.
_OFFLINE: Final[Registry[Any]] = Registry()


@dataclass(frozen=True, slots=True)
class ArgumentProblem:
    """Why a call's arguments cannot pass: the failing JSON path ("$" for the arguments
    object, or for a schema that cannot judge) and the sentence the agent is shown."""

    path: str
    message: str


class Schemas:
    """Argument checks for any tool: `problem(tool, arguments)` is None when they validate."""

    def __init__(self, capacity: int = MAX_COMPILED) -> None:
        self._capacity = capacity
        self._compiled: OrderedDict[str, Validator | str] = OrderedDict()

    def problem(self, tool: ToolDefinition, arguments: Mapping[str, Any]) -> ArgumentProblem | None:
        """Why `arguments` do not validate against the tool's schema; None when they do."""
        check = self._compile(tool)
        if isinstance(check, str):
            return ArgumentProblem("$", check)
        budget = _BUDGET.set([MATCH_BUDGET])
        try:
            error = best_match(check.iter_errors(arguments))
            # Inside the budget too: naming the unexpected properties matches their names.
            return None if error is None else ArgumentProblem(error.json_path, describe(error))
        except _BudgetSpentError as e:
            path = _path_of(arguments, e.text)
            why = (
                f"arguments at {path} cannot be checked: the tool's inputSchema's patterns cost "
                f"more than the gateway spends on one call (pattern: {_quote(e.pattern)})"
            )
            return ArgumentProblem(path, why)
        except RecursionError:
            return ArgumentProblem("$", TOO_DEEP)
        except Unresolvable as e:
            why = f"the tool's inputSchema refers to {e} which the gateway does not fetch"
            return ArgumentProblem("$", why)
        except re2.error as e:
            why = f"the tool's inputSchema has a pattern the gateway cannot run ({e})"
            return ArgumentProblem("$", why)
        finally:
            _BUDGET.reset(budget)

    def __len__(self) -> int:
        """How many compiled schemas are kept."""
        return len(self._compiled)

    def _compile(self, tool: ToolDefinition) -> Validator | str:
        found = self._compiled.get(tool.fingerprint)
        if found is None:
            found = compile_schema(tool.input_schema)
            self._compiled[tool.fingerprint] = found
            while len(self._compiled) > self._capacity:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(tool.fingerprint)
        return found


def compile_schema(schema: Mapping[str, Any]) -> Validator | str:
    """A validator for `schema`, or why it cannot judge anything."""
    dialect = schema.get("$schema")
    strict = _DEFAULT if dialect is None else _DIALECTS.get(str(dialect).rstrip("#"))
    if strict is None:
        return (
            "the tool's inputSchema names a JSON Schema dialect the gateway does not know: "
            + _quote(dialect)
        )
    if _keywords_in(schema) >= _PYTHON_RE:
        return PYTHON_RE
    try:
        strict.check_schema(dict(schema))
    except RecursionError:
        return TOO_DEEP
    except SchemaError as e:
        return (
            f"the tool's inputSchema is not a valid JSON Schema at {e.json_path}: "
            + e.message[:MAX_QUOTE]
        )
    return strict(dict(schema), registry=_OFFLINE)


def _keywords_in(schema: Mapping[str, Any]) -> set[str]:
    """Which of _PYTHON_RE's names occur as keys anywhere in `schema` (a walk with its own
    stack: the schema's depth is the server's choice)."""
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            found.update(k for k in node if k in _PYTHON_RE)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def describe(error: ValidationError) -> str:
    """The failing path and the schema's own rule, never the argument's value: refusals reach
    the audit log, which keeps argument names only."""
    return f"arguments at {error.json_path} do not match the tool's inputSchema ({_rule(error)})"


def _rule(error: ValidationError) -> str:
    instance, schema, value = error.instance, error.schema, error.validator_value
    rule = f"{error.validator}: {_quote(value)}"
    if not isinstance(instance, Mapping):
        return rule
    if error.validator == "required" and isinstance(value, list):
        # Only the names missing (the schema's own names, not the caller's values).
        return f"required: {_quote([k for k in value if k not in instance])}"
    if error.validator == "additionalProperties" and isinstance(schema, Mapping):
        extras = sorted(str(k)[:64] for k in _extras(instance, schema))[:8]
        return f"{rule} (unexpected: {', '.join(extras)})"
    return rule


def _quote(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


# RE2's memory per pattern (its program and the DFA caches that grow while matching); the
# default 8 MiB, times MAX_COMPILED cached patterns a hostile server can fill, is gigabytes.
# 1 MiB holds some 40,000 instructions, past MAX_PROGRAM_SIZE below; a larger one cannot run.
MAX_PATTERN_MEMORY: Final = 1 << 20
_OPTIONS: Final = re2.Options()
_OPTIONS.max_mem = MAX_PATTERN_MEMORY
# A refused pattern is reported in the refusal; RE2's own stderr line would let a server
# write to our logs once per call.
_OPTIONS.log_errors = False


# RE2 is linear, but in len(text) x the program's size: the review's unanchored
# `[\s\S]{1000}[\s\S]{1000}[\s\S]{1000}x` (21,005 instructions) took 3.2 s on a 100 KB string
# here, holding the event loop for every agent. Two bounds make each call's cost known before
# any match runs. A pattern above MAX_PROGRAM_SIZE cannot run (a UUID pattern is 70, a
# hostname one 2,655, `^[\s\S]{0,1000}$` 8,002); and one call's matches, summed, may cost at
# most MATCH_BUDGET units of len(text) x programsize (so 2,000 characters for a pattern at the
# cap, 5 MB for `^[a-z ]*$`). Measured on this 2-core machine under load (RE2's slowest case, the
# DFA out of memory and the NFA running): 1.5 ns a unit, so the budget is ~30 ms a call.
MAX_PROGRAM_SIZE: Final = 10_000
MATCH_BUDGET: Final = 20_000_000
# What is left of the current call's MATCH_BUDGET (one cell, spent by `_search`); set by
# `Schemas.problem` for each call, since the compiled validators are shared between calls.
_BUDGET: Final[ContextVar[list[int]]] = ContextVar("_BUDGET")


class _BudgetSpentError(Exception):
    """A match the call's budget cannot pay for; it runs through every keyword (a yielded
    error could be turned into a pass by `not`)."""

    def __init__(self, pattern: str, text: str) -> None:
        super().__init__(pattern)
        self.pattern, self.text = pattern, text


@lru_cache(maxsize=MAX_COMPILED)
def _compiled(pattern: str) -> Any:
    """The RE2 program for `pattern`, or why it cannot run (cached too: a refused pattern is
    not compiled again on every call)."""
    try:
        regex = re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        return str(e)
    if regex.programsize > MAX_PROGRAM_SIZE:
        return f"{regex.programsize} RE2 instructions, over the gateway's {MAX_PROGRAM_SIZE}"
    return regex


def _search(pattern: str, text: str) -> bool:
    """Whether `pattern` occurs in `text`, charged to the call's budget before it runs."""
    regex = _compiled(pattern)
    if isinstance(regex, str):
        raise re2.error(f"{_quote(pattern)}: {regex}")
    left = _BUDGET.get()
    cost = len(text) * regex.programsize
    if cost > left[0]:
        raise _BudgetSpentError(pattern, text)
    left[0] -= cost
    return regex.search(text) is not None


def _path_of(arguments: Mapping[str, Any], text: str) -> str:
    """The JSON path of the argument value `text` is, or of the object with the key `text`
    ("$" when not found): the keywords are handed the value, not where it is."""
    stack: list[tuple[Any, str]] = [(arguments, "$")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key is text:
                    return path
                if value is text:
                    return f"{path}.{key}"
                stack.append((value, f"{path}.{key}"))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if value is text:
                    return f"{path}[{i}]"
                stack.append((value, f"{path}[{i}]"))
    return "$"


# The keyword functions get the concrete validator, whose `descend` the protocol leaves out.
def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _extras(instance, schema)
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif extra is False and extras:
        yield ValidationError(f"unexpected properties: {', '.join(sorted(extras))}")


def _extras(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    return [
        key
        for key in instance
        if key not in properties and not any(_search(p, key) for p in patterns)
    ]


def _strict(cls: type[Validator]) -> type[Validator]:
    """`cls` with its regular expressions on RE2."""
    keywords = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    return cast(type[Validator], validators.extend(cls, keywords))  # type: ignore[no-untyped-call]


_DEFAULT: Final = _strict(Draft202012Validator)
# Every dialect the library knows, by its meta-schema URL with or without the trailing "#".
_DIALECTS: Final = {
    url.rstrip("#"): strict
    for cls in (
        validators.Draft202012Validator,
        validators.Draft201909Validator,
        validators.Draft7Validator,
        validators.Draft6Validator,
        validators.Draft4Validator,
    )
    for strict in (_DEFAULT if cls is Draft202012Validator else _strict(cls),)
    for url in {cls.META_SCHEMA["$schema"], cls.META_SCHEMA.get("$id", "")}
    if url
}
