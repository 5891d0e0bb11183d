"""Adversarial review of the console's trusted-header sign-in and of what its pages show.

A proxy that adds its identity header instead of replacing the client's leaves two copies;
whichever one the console read, a client could choose it. Two copies are ambiguous: nobody.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.test_console import USER, Console, make_console, shown

GROUPS = "x-forwarded-groups"


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for c in make_console(tmp_path):
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        [(USER, "ada@example.com"), (USER, "mallory@example.com")],
        [(USER, "mallory@example.com"), (USER, "ada@example.com")],
        [(USER, "ada@example.com"), (USER, "ada@example.com")],
        [(USER, "bob@example.com"), (GROUPS, "treasury"), (GROUPS, "nobody")],
        [(USER, "bob@example.com"), (GROUPS, "nobody"), (GROUPS, "treasury")],
    ],
)
async def test_a_repeated_identity_or_groups_header_signs_nobody_in(
    console: Console, headers: list[tuple[str, str]]
) -> None:
    page = await console.http.get("/approvals", headers=headers)
    assert page.status_code == 401, headers


async def test_one_identity_header_still_signs_in(console: Console) -> None:
    assert (await console.http.get("/approvals", headers=[(USER, "ada@example.com")])).is_success
    with_group = [(USER, "bob@example.com"), (GROUPS, "treasury")]
    assert (await console.http.get("/approvals", headers=with_group)).is_success


async def test_tool_names_and_arguments_are_shown_escaped(console: Console) -> None:
    script = "<script>alert(1)</script>"
    await console.call("withdraw", amount=500, memo=script)
    # A name no policy allows: refused, and on the Decisions page as the agent wrote it.
    await console.call(script)
    pages = ["/approvals", "/decisions"]
    listing = shown(await console.get("/approvals", "ada@example.com"))
    pages += sorted(set(re.findall(r'href="(/approvals/[^"/]+)"', listing)))
    assert len(pages) == 3, listing
    for path in pages:
        page = await console.get(path, "ada@example.com")
        assert page.status_code == 200, path
        assert script not in page.text, path
    assert html.escape(script) in (await console.get(pages[2], "ada@example.com")).text
    assert html.escape(script) in (await console.get("/decisions", "ada@example.com")).text
