"""Adversarial review: a call naming a listed tool in another spelling (case, whitespace,
Unicode compatibility forms, invisible characters), which a lax server may resolve to that
tool, is never judged as some other, unlisted tool that passes.

Under a deny-list policy (`default: allow`, one tool denied) each variant misses the denial
by name; the catalogue must then refuse it as never listed (the default `on_unknown: deny`).
"""

from __future__ import annotations

import pytest

from authz.protocol.errors import Refusal
from tests.unit.test_tool_check import call, decider, listed, policy, tool

VARIANTS = [
    "forbidden ",
    " forbidden",
    "Forbidden",
    "FORBIDDEN",
    "".join(chr(ord(c) + 0xFEE0) for c in "forbidden"),  # fullwidth: NFKC folds it back
    "forbidden\u200b",
    "forb\u0131dden",  # dotless i
]


@pytest.mark.parametrize("name", VARIANTS)
async def test_another_spelling_of_a_denied_tool_is_refused(name: str) -> None:
    catalogue = await listed(tool("forbidden"), tool("transfer"))
    outcome = await decider(catalogue, policy(default="allow")).decide(call(name, amount=5))
    assert not outcome.allowed, name
    assert outcome.refusal in (Refusal.DENIED, Refusal.INVALID_REQUEST), outcome


async def test_the_denied_tool_itself_is_refused_and_a_listed_one_passes() -> None:
    catalogue = await listed(tool("forbidden"), tool("transfer"))
    judge = decider(catalogue, policy(default="allow"))
    assert (await judge.decide(call("forbidden", amount=5))).refusal is Refusal.DENIED
    assert (await judge.decide(call("transfer", amount=5))).allowed
