"""Every operator, type mismatches and missing paths, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from authz.policy.conditions import ConditionError, Op, compile_condition

ARGS: dict[str, Any] = {
    "amount": 500,
    "price": 12.5,
    "currency": "usd",
    "branch": "feat/login",
    "tags": ["urgent", "billing", 7],
    "flag": True,
    "metadata": {"key": "val", "depth": {"n": 3}},
    "nothing": None,
}


@pytest.mark.parametrize(
    ("path", "op", "value", "holds"),
    [
        ("amount", Op.EQ, 500, True),
        ("amount", Op.EQ, 500.0, True),
        ("amount", Op.EQ, "500", False),
        ("flag", Op.EQ, 1, False),
        ("currency", Op.EQ, "usd", True),
        ("currency", Op.EQ, "USD", False),
        ("currency", Op.NEQ, "eur", True),
        ("amount", Op.NEQ, 500, False),
        ("currency", Op.IN, ["usd", "eur"], True),
        ("currency", Op.IN, ["gbp"], False),
        ("amount", Op.IN, [1, 500], True),
        ("currency", Op.NOT_IN, ["gbp"], True),
        ("currency", Op.NOT_IN, ["usd"], False),
        ("amount", Op.LT, 501, True),
        ("amount", Op.LT, 500, False),
        ("amount", Op.LTE, 500, True),
        ("amount", Op.LTE, 499, False),
        ("amount", Op.GT, 499, True),
        ("amount", Op.GT, 500, False),
        ("price", Op.GTE, 12.5, True),
        ("price", Op.GTE, 13, False),
        ("branch", Op.REGEX, "^(feat|fix)/", True),
        ("branch", Op.REGEX, "^main$", False),
        ("branch", Op.CONTAINS, "login", True),
        ("branch", Op.CONTAINS, "logout", False),
        ("tags", Op.CONTAINS, "billing", True),
        ("tags", Op.CONTAINS, 7, True),
        ("tags", Op.CONTAINS, "bill", False),
        ("amount", Op.EXISTS, True, True),
        ("nothing", Op.EXISTS, True, True),
        ("missing", Op.EXISTS, True, False),
        ("missing", Op.EXISTS, False, True),
        ("metadata.key", Op.EQ, "val", True),
        ("metadata.depth.n", Op.LTE, 3, True),
        ("metadata.key.deeper", Op.EXISTS, True, False),
    ],
)
def test_operators(path: str, op: Op, value: Any, holds: bool) -> None:
    condition = compile_condition(tuple(path.split(".")), op, value)
    assert condition.judge(ARGS)[0] is holds


@pytest.mark.parametrize(
    ("path", "op", "value", "why"),
    [
        ("currency", Op.LT, 5, "args.currency is a string, not a number"),
        ("flag", Op.GTE, 1, "args.flag is a boolean, not a number"),
        ("amount", Op.REGEX, "^5", "args.amount is a number, not a string"),
        ("metadata", Op.CONTAINS, "key", "args.metadata is an object, not a string or a list"),
        ("missing", Op.EQ, 1, "args.missing is missing"),
        ("missing", Op.NEQ, 1, "args.missing is missing"),
        ("missing", Op.NOT_IN, [1], "args.missing is missing"),
        ("nothing", Op.LT, 1, "args.nothing is null, not a number"),
    ],
)
def test_what_cannot_be_judged_fails_with_a_reason(path: str, op: Op, value: Any, why: str) -> None:
    holds, reason = compile_condition(tuple(path.split(".")), op, value).judge(ARGS)
    assert (holds, reason) == (False, why)


def test_failure_reasons_never_repeat_the_argument_value() -> None:
    secret = {"card": "4242-4242-4242-4242"}
    _, reason = compile_condition(("card",), Op.REGEX, "^5").judge(secret)
    assert "4242" not in reason


@pytest.mark.parametrize(
    ("op", "value", "message"),
    [
        (Op.IN, "usd", 'operator "in" needs a list value'),
        (Op.NOT_IN, 5, 'operator "not_in" needs a list value'),
        (Op.LT, "5", 'operator "lt" needs a number value'),
        (Op.GTE, True, 'operator "gte" needs a number value'),
        (Op.EXISTS, "yes", 'operator "exists" needs true or false'),
        (Op.REGEX, 5, 'operator "regex" needs a string value'),
        (Op.REGEX, "(a)\\1", "invalid regex"),
        (Op.REGEX, "(?=lookahead)", "invalid regex"),
    ],
)
def test_bad_expected_values_are_load_errors(op: Op, value: Any, message: str) -> None:
    with pytest.raises(ConditionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_condition(("x",), op, value)


def test_regex_matching_is_linear_time() -> None:
    # (a+)+$ against "aaaa…b" backtracks exponentially in a backtracking engine; RE2 is linear.
    condition = compile_condition(("s",), Op.REGEX, "^(a+)+$")
    assert condition.judge({"s": "a" * 50_000 + "b"}) == (False, 'args.s fails regex "^(a+)+$"')
