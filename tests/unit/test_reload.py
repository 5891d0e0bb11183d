"""Hot reload: valid swaps take effect, invalid files are kept out, counters survive."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from authz.core.decision import Decider
from authz.limits.memory import MemoryStore
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
    setup.path.write_text(policy(2, extra_tool="new"))
    assert setup.watcher.check() is True
    assert setup.holder.current.version != before
    assert (await setup.decider.decide(request("new"))).allowed
    # One call was counted under the old policy; the new cap of 2 leaves room for one more.
    assert (await setup.decider.decide(request("t"))).allowed
    assert (await setup.decider.decide(request("t"))).refusal is Refusal.RATE_LIMITED
    assert setup.results == [True]


def test_an_unchanged_file_is_not_reloaded(setup: Setup) -> None:
    assert setup.watcher.check() is None
    setup.path.write_text(setup.path.read_text())
    assert setup.watcher.check() is None


def test_an_invalid_file_is_refused_once_and_the_last_good_policy_kept(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    good = setup.holder.current
    setup.path.write_text('{"version": "1", "tools": {"t": {"action": "perhaps"}}}')
    with caplog.at_level(logging.ERROR, "mcp_authz.policy"):
        assert setup.watcher.check() is False
        assert setup.watcher.check() is None  # the same bad content is not re-reported
    assert setup.holder.current is good
    assert setup.holder.last_error is not None
    assert f"{setup.path}: $.tools.t.action: expected" in caplog.text
    assert caplog.text.count("reload refused") == 1
    setup.path.write_text(policy(5))
    assert setup.watcher.check() is True
    assert setup.holder.last_error is None
    assert setup.results == [False, True]


def test_a_deleted_file_keeps_the_policy(setup: Setup) -> None:
    good = setup.holder.current
    setup.path.unlink()
    assert setup.watcher.check() is None
    assert setup.holder.current is good


def test_configmap_symlink_swap_is_followed(tmp_path: Path) -> None:
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
    assert setup.watcher.check() is True
    assert setup.holder.current.tools.match("added") is not None
