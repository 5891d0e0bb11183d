"""The policy in force, and the watcher that swaps in a new one when the file changes.

Kubernetes updates a mounted ConfigMap by swapping a symlink (`..data`) to a new directory,
so the watcher never trusts inotify on the file or its mtime: it re-reads the path (following
links) and compares content hashes. A file that fails to load is logged once per version and
the last good policy stays; counters live in the store and are never reset by a reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from authz.policy.load import PolicyError, parse_policy
from authz.policy.model import Policy

log = logging.getLogger("mcp_authz.policy")


class PolicyHolder:
    """The policy in force; callers take `holder()` once per request."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy
        self.last_error: PolicyError | None = None

    def __call__(self) -> Policy:
        return self.current


class PolicyWatcher:
    def __init__(
        self,
        path: Path,
        holder: PolicyHolder,
        on_result: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self._path = path
        self._holder = holder
        self._on_result = on_result
        self._seen = _digest(path)

    def check(self) -> bool | None:
        """Reload if the content changed: True swapped in, False refused, None unchanged."""
        try:
            data = self._path.read_bytes()
        except OSError as e:
            # Mid-swap, or deleted: keep the policy and look again next time.
            log.warning(
                "policy %s unreadable (%s); keeping %s",
                self._path,
                e.strerror,
                self._holder.current.version,
            )
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._seen:
            return None
        self._seen = digest
        return self._load(data)

    def _load(self, data: bytes) -> bool:
        old = self._holder.current.version
        try:
            policy = parse_policy(data, str(self._path))
        except PolicyError as e:
            self._holder.last_error = e
            # The problems are the message; a traceback would only bury them.
            log.error("policy reload refused, keeping %s:\n%s", old, e)  # noqa: TRY400
            self._on_result(False)
            return False
        self._holder.current = policy
        self._holder.last_error = None
        log.info("policy reloaded: %s (was %s)", policy.version, old)
        for warning in policy.warnings:
            log.warning("policy %s: %s", self._path, warning)
        self._on_result(True)
        return True

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:
                # A bug here must not end reloading for the life of the process.
                log.exception("policy reload failed unexpectedly; keeping the current policy")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
