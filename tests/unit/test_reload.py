"""Hot reload: valid swaps take effect, invalid files are kept out, counters survive."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from authz.core.decision import Decider
from authz.limits.memory import MemoryStore
from authz.policy import reload as reload_module
from authz.policy.load import load_policy
from authz.policy.reload import PolicyHolder, PolicyWatcher
from authz.protocol.errors import Refusal
from authz.protocol.identity import Anonymous
from authz.protocol.request import HttpRequest


def policy(max_calls: int, extra_tool: str | None = None) -> str:
    tools: dict[str, Any] = {"t": {"limits": [{"counter": "c", "window": 60, "max": max_calls}]}}
    if extra_tool:
        tools[extra_tool] = {}
    return json.dumps({"version": "1", "default": "deny", "tools": tools})


def request(tool: str) -> HttpRequest:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    return HttpRequest(
        "POST", "/mcp", {"content-type": "application/json"}, json.dumps(body).encode()
    )


def replace(path: Path, text: str) -> None:
    """Write as editors and `kubectl apply` of a ConfigMap do: a new file renamed over the old."""
    fresh = path.with_name(path.name + ".tmp")
    fresh.write_text(text)
    os.replace(fresh, path)


class Setup:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.holder = PolicyHolder(load_policy(path))
        self.results: list[bool] = []
        self.watcher = PolicyWatcher(path, self.holder, self.results.append)
        self.decider = Decider(self.holder, Anonymous(), MemoryStore(lambda: 0.0))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    path = tmp_path / "policy.json"
    path.write_text(policy(3))
    return Setup(path)


async def test_a_valid_change_applies_to_the_next_request_and_counters_survive(
    setup: Setup,
) -> None:
    assert (await setup.decider.decide(request("t"))).allowed
    assert (await setup.decider.decide(request("new"))).refusal is Refusal.DENIED
    before = setup.holder.current.version
    replace(setup.path, policy(2, extra_tool="new"))
    assert await setup.watcher.check() is True
    assert setup.holder.current.version != before
    assert (await setup.decider.decide(request("new"))).allowed
    # One call was counted under the old policy; the new cap of 2 leaves room for one more.
    assert (await setup.decider.decide(request("t"))).allowed
    assert (await setup.decider.decide(request("t"))).refusal is Refusal.RATE_LIMITED
    assert setup.results == [True]


async def test_an_unchanged_file_is_not_reloaded(setup: Setup) -> None:
    assert await setup.watcher.check() is None
    setup.path.write_text(setup.path.read_text())
    assert await setup.watcher.check() is None


async def test_an_invalid_file_is_refused_once_and_the_last_good_policy_kept(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    good = setup.holder.current
    replace(setup.path, '{"version": "1", "tools": {"t": {"action": "perhaps"}}}')
    with caplog.at_level(logging.ERROR, "mcp_authz.policy"):
        assert await setup.watcher.check() is False
        assert await setup.watcher.check() is None  # the same bad content is not re-reported
    assert setup.holder.current is good
    assert setup.holder.last_error is not None
    assert f"{setup.path}: $.tools.t.action: expected" in caplog.text
    assert caplog.text.count("reload refused") == 1
    replace(setup.path, policy(5))
    assert await setup.watcher.check() is True
    assert setup.holder.last_error is None
    assert setup.results == [False, True]


async def test_a_deleted_file_keeps_the_policy(setup: Setup) -> None:
    good = setup.holder.current
    setup.path.unlink()
    assert await setup.watcher.check() is None
    assert setup.holder.current is good


async def test_configmap_symlink_swap_is_followed(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as policy.json -> ..data/policy.json, ..data -> ..<timestamp>,
    # and updates it by pointing ..data at a new directory in one rename.
    first, second = tmp_path / "..2026_01", tmp_path / "..2026_02"
    first.mkdir()
    second.mkdir()
    (first / "policy.json").write_text(policy(3))
    (second / "policy.json").write_text(policy(3, extra_tool="added"))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "policy.json").symlink_to("..data/policy.json")
    setup = Setup(tmp_path / "policy.json")
    assert setup.holder.current.tools.match("added") is None
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert await setup.watcher.check() is True
    assert setup.holder.current.tools.match("added") is not None


# A policy rewritten in place, caught after its first two lines: valid YAML, and it allows
# everything the whole file denies.
TORN_PREFIX = 'version: "1"\ndefault: allow\n'
WHOLE = TORN_PREFIX + "tools:\n  t:\n    action: deny\n    reason: never\n"


async def test_a_change_in_place_applies_only_once_it_is_stable(tmp_path: Path) -> None:
    """Fails before the fix: the first look loaded the half-written prefix, allowing `t`."""
    path = tmp_path / "policy.yaml"
    path.write_text('version: "1"\ndefault: deny\n')
    setup = Setup(path)
    with path.open("r+") as f:
        f.truncate()
        f.write(TORN_PREFIX)
        f.flush()
        assert await setup.watcher.check() is None
        assert (await setup.decider.decide(request("t"))).refusal is Refusal.DENIED
        f.write(WHOLE[len(TORN_PREFIX) :])
    # The finished file is new content again: seen once, then applied when seen unchanged.
    assert await setup.watcher.check() is None
    assert await setup.watcher.check() is True
    outcome = await setup.decider.decide(request("t"))
    assert (outcome.refusal, outcome.reason) == (Refusal.DENIED, "never")
    assert setup.results == [True]


async def test_a_replaced_file_applies_at_once(setup: Setup) -> None:
    # Renamed over the old file: complete before it became visible, so no wait.
    replace(setup.path, policy(3, extra_tool="added"))
    assert await setup.watcher.check() is True
    assert setup.holder.current.tools.match("added") is not None


def large_policy(tools: int) -> str:
    rules = {
        f"tool_{i}": {
            "conditions": [{"path": "args.amount", "op": "lte", "value": i}],
            "limits": [{"counter": f"c{i}", "window": 60, "max": 10}],
        }
        for i in range(tools)
    }
    return json.dumps({"version": "1", "tools": rules})


async def test_the_event_loop_keeps_answering_while_a_large_policy_is_parsed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails before the fix: parsing ran on the loop, so no check was answered meanwhile."""
    answered = 0
    # How many checks had been answered when the parse began, and when it ended.
    marks: list[int] = []
    parse = reload_module.parse_policy

    def observed_parse(data: bytes, source: str) -> Any:
        marks.append(answered)
        try:
            return parse(data, source)
        finally:
            marks.append(answered)

    monkeypatch.setattr(reload_module, "parse_policy", observed_parse)
    replace(setup.path, large_policy(5000))
    reloading = asyncio.create_task(setup.watcher.check())
    while not reloading.done():
        await setup.decider.decide(request("t"))
        answered += 1
        await asyncio.sleep(0)
    assert await reloading is True
    assert setup.holder.current.tools.match("tool_4999") is not None
    begun, ended = marks
    assert ended - begun >= 10, marks
