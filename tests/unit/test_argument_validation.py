"""Strict argument validation against a tool's inputSchema (authz/catalogue/validation.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.catalogue import validation
from authz.catalogue.validation import Schemas
from authz.protocol.tools import ToolDefinition, parse_tool

PAYMENT = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer", "minimum": 1},
        "currency": {"type": "string", "enum": ["usd", "eur"]},
        "dry_run": {"type": "boolean"},
        "rate": {"type": "number"},
        "memo": {"type": "string", "pattern": "^[a-z ]*$"},
    },
    "required": ["amount", "currency"],
    "additionalProperties": False,
}


def tool(schema: dict[str, Any], name: str = "pay") -> ToolDefinition:
    return parse_tool({"name": name, "inputSchema": schema})


def problem(arguments: dict[str, Any], schema: dict[str, Any] = PAYMENT) -> str | None:
    found = Schemas().problem(tool(schema), arguments)
    if found is not None:
        # The path is given apart too (the refusal's `data.path`) and always in the message.
        assert f" {found.path} " in f" {found.message} " or found.path == "$"
    return None if found is None else found.message


def test_valid_arguments_pass() -> None:
    assert problem({"amount": 5, "currency": "usd", "dry_run": True, "rate": 1.5}) is None


@pytest.mark.parametrize(
    ("arguments", "path", "rule"),
    [
        ({"amount": "5", "currency": "usd"}, "$.amount", 'type: "integer"'),
        ({"amount": 5.5, "currency": "usd"}, "$.amount", 'type: "integer"'),
        ({"amount": True, "currency": "usd"}, "$.amount", 'type: "integer"'),
        ({"amount": 5, "currency": "usd", "dry_run": "true"}, "$.dry_run", 'type: "boolean"'),
        ({"amount": 5, "currency": "usd", "rate": "1e6"}, "$.rate", 'type: "number"'),
        ({"amount": 0, "currency": "usd"}, "$.amount", "minimum: 1"),
        ({"amount": 5}, "$", 'required: ["currency"]'),
        ({"amount": 5, "currency": "usd", "to": "x"}, "$", "unexpected: to"),
        ({"amount": 5, "currency": "usd", "memo": "DROP"}, "$.memo", "pattern"),
    ],
)
def test_invalid_arguments_name_the_path_and_the_rule(
    arguments: dict[str, Any], path: str, rule: str
) -> None:
    found = problem(arguments)
    assert found is not None
    assert f"arguments at {path} " in found
    assert rule in found


def test_a_refusal_never_quotes_the_argument_value() -> None:
    found = problem({"amount": 5, "currency": "secret-value-123"})
    assert found is not None
    assert "secret-value-123" not in found
    assert "$.currency" in found


# What a lax server (pydantic in lax mode) turns into the declared type: each must be refused.
LAX = {
    "integer": st.integers().map(str) | st.booleans() | st.integers().map(float).map(str),
    "number": st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.booleans(),
    "boolean": st.sampled_from(["true", "false", "1", "0", "yes", "no", 1, 0, 1.0]),
    "string": st.integers() | st.floats(allow_nan=False) | st.booleans(),
}
STRICT = {
    "integer": st.integers(),
    "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "string": st.text(alphabet="abc xyz-19\u00e9\u4e2d", max_size=20),
}


@given(st.sampled_from(sorted(LAX)).flatmap(lambda t: st.tuples(st.just(t), LAX[t])))
def test_coercible_values_are_refused(case: tuple[str, Any]) -> None:
    kind, value = case
    schema = {"type": "object", "properties": {"x": {"type": kind}}}
    found = problem({"x": value}, schema)
    assert found is not None
    assert "$.x" in found


@given(st.sampled_from(sorted(STRICT)).flatmap(lambda t: st.tuples(st.just(t), STRICT[t])))
def test_values_of_the_declared_type_pass(case: tuple[str, Any]) -> None:
    kind, value = case
    schema = {"type": "object", "properties": {"x": {"type": kind}}}
    # As the gateway reads them: through JSON.
    assert problem(json.loads(json.dumps({"x": value})), schema) is None


def test_the_dialect_comes_from_dollar_schema() -> None:
    # Draft-07's array form of `items` is a tuple; 2020-12 has no such form.
    tuple_items = {"type": "array", "items": [{"type": "integer"}, {"type": "string"}]}
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"pair": tuple_items},
    }
    assert problem({"pair": [1, "a"]}, draft7) is None
    found = problem({"pair": ["a", 1]}, draft7)
    assert found is not None
    assert "$.pair[" in found
    # The same schema without $schema is read as 2020-12, where it is not a valid schema.
    default = {"type": "object", "properties": {"pair": tuple_items}}
    found = problem({"pair": [1, "a"]}, default)
    assert found is not None
    assert "not a valid JSON Schema" in found


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"$schema": "https://example.com/my-dialect"}, "dialect the gateway does not know"),
        ({"type": "object", "properties": {"x": {"type": "int"}}}, "not a valid JSON Schema"),
        (
            {"type": "object", "properties": {"x": {"$ref": "https://evil.example/s.json"}}},
            "does not fetch",
        ),
        (
            {"type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}},
            "cannot run",
        ),
    ],
)
def test_a_schema_that_cannot_judge_refuses(schema: dict[str, Any], expected: str) -> None:
    found = problem({"x": "b"}, schema)
    assert found is not None
    assert expected in found


def test_server_patterns_run_in_linear_time() -> None:
    # Catastrophic for a backtracking engine: exponential in the length of the 'a's.
    schema = {
        "type": "object",
        "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(b+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    found = problem({"x": "a" * 64 + "!"}, schema)
    assert found is not None
    assert "$.x" in found
    found = problem({"b" * 64 + "!": 1}, schema)
    assert found is not None
    assert "unexpected" in found


def test_compiled_schemas_are_kept_per_fingerprint_and_bounded() -> None:
    schemas = Schemas(capacity=2)
    one = tool({"type": "object", "properties": {"a": {"type": "integer"}}})
    for _ in range(3):
        assert schemas.problem(one, {"a": 1}) is None
    assert len(schemas) == 1
    for i in range(5):
        schemas.problem(tool({"type": "object"}, name=f"t{i}"), {})
    assert len(schemas) == 2
    # A swapped schema under the same name is another fingerprint, compiled afresh.
    swapped = tool({"type": "object", "properties": {"a": {"type": "string"}}})
    assert schemas.problem(swapped, {"a": 1}) is not None
    assert schemas.problem(one, {"a": 1}) is None


# The adversarial review's pattern: unanchored, 21,005 RE2 instructions, seconds on 100 KB.
REVIEWED = r"[\s\S]{1000}[\s\S]{1000}[\s\S]{1000}x"
# Under the size cap (2,665 instructions) but 100 KB of text costs 266 million units.
COSTLY = r"[\s\S]{190}[\s\S]{190}x"


@pytest.mark.parametrize("text", ["short", "a" * 100_000])
def test_a_pattern_over_the_program_size_cap_refuses_the_call(text: str) -> None:
    schema = {"type": "object", "properties": {"note": {"type": "string", "pattern": REVIEWED}}}
    found = problem({"note": text}, schema)
    assert found is not None
    assert "cannot run" in found
    assert f"over the gateway's {validation.MAX_PROGRAM_SIZE}" in found


def test_matches_over_the_call_budget_refuse_naming_the_path() -> None:
    schema = {
        "type": "object",
        "properties": {"doc": {"type": "object", "properties": {"note": {"pattern": COSTLY}}}},
    }
    found = Schemas().problem(tool(schema), {"doc": {"note": "a" * 100_000}})
    assert found is not None
    assert found.path == "$.doc.note"
    assert "cost more than the gateway spends on one call" in found.message
    # A name matched by patternProperties is charged too; the object holding it is named.
    keyed = {"type": "object", "patternProperties": {COSTLY: {"type": "integer"}}}
    found = Schemas().problem(tool(keyed), {"k" * 100_000: 1})
    assert found is not None
    assert found.path == "$"
    assert "cost more than the gateway spends on one call" in found.message


def test_the_budget_is_per_call_not_per_match(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each match costs 4 x 1,000 (programsize of "^[a-z ]*$" is 4); the budget pays for 3.
    monkeypatch.setattr(validation, "MATCH_BUDGET", 12_000)
    fields = {f"f{i}": {"type": "string", "pattern": "^[a-z ]*$"} for i in range(4)}
    schema = {"type": "object", "properties": fields}
    three = {f"f{i}": "a" * 1000 for i in range(3)}
    assert problem(three, schema) is None
    found = problem({**three, "f3": "b" * 1000}, schema)
    assert found is not None
    assert "cost more than the gateway spends on one call" in found
    # Every call starts afresh: the three pass again.
    assert problem(three, schema) is None


def test_an_ordinary_pattern_on_ordinary_input_still_validates() -> None:
    assert problem({"amount": 5, "currency": "usd", "memo": "rent for march"}) is None
