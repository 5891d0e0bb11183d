"""Tool-name and identity globs: the meaning of `*` and `?`, and matching that never backtracks."""

from __future__ import annotations

from functools import cache

from hypothesis import given
from hypothesis import strategies as st

from authz.policy.model import Entry, RuleSet
from authz.protocol.bounds import MAX_IDENTITY, MAX_NAME


def reference(glob: str, name: str) -> bool:
    """The model: `*` any run (none included), `?` one character, the rest literal."""

    @cache
    def at(i: int, j: int) -> bool:
        if i == len(glob):
            return j == len(name)
        if glob[i] == "*":
            return at(i + 1, j) or (j < len(name) and at(i, j + 1))
        return j < len(name) and glob[i] in ("?", name[j]) and at(i + 1, j + 1)

    return at(0, 0)


def only(glob: str) -> RuleSet:
    return RuleSet.build({glob: Entry(glob, ())})


# Few letters, so that globs and names overlap often; the regex metacharacters are literal.
ALPHABET = st.sampled_from("ab.[]()\\+$^|{}\n\u00e9\U0001f600")


@given(
    st.lists(st.one_of(ALPHABET, st.sampled_from("*?")), max_size=8).map("".join),
    st.lists(ALPHABET, max_size=12).map("".join),
)
def test_glob_matching_agrees_with_the_model(glob: str, name: str) -> None:
    matched = only(glob).match(name) is not None if glob else False
    assert matched is (reference(glob, name) if glob else False)


def test_many_stars_against_a_near_miss_finish() -> None:
    """Before RE2 this did not finish: backtracking tries every way to split the name among
    the stars (C(128, 16) ways, about 10^19) before it can say no."""
    glob = "a*" * 16 + "b"
    name = "a" * MAX_NAME
    assert only(glob).match(name) is None
    assert only(glob).match(name[:-1] + "b") is not None


def test_identity_globs_share_the_matcher() -> None:
    glob = "ops-*" * 12 + "!"
    identities = only(glob)
    assert identities.match("ops-" * (MAX_IDENTITY // 4)) is None
    assert identities.match("ops-" * 12 + "!") is not None
