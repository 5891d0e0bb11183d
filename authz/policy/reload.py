"""The policy in force, and the watcher that swaps in a new one when the file changes.

Kubernetes updates a mounted ConfigMap by swapping a symlink (`..data`) to a new directory,
so the watcher never trusts inotify on the file or its mtime: it re-reads the path (following
links) and compares content hashes. A file that fails to load is logged once per version and
the last good policy stays; counters live in the store and are never reset by a reload.

Torn writes. A file rewritten in place (same inode: an editor saving over it, `kubectl cp`,
a shell redirect) can be read half-written, and a prefix of a policy may well be a valid,
weaker policy. So a change in place is applied only once it is stable: the same content hash
on two consecutive looks. A file *replaced* (a new inode or a new real path behind the link:
the ConfigMap's `..data` swap, or a write to a temporary file renamed over the old one) was
complete before the one atomic rename that made it visible, so it is applied at once.

Reading, hashing, parsing and compiling run in a worker thread (a 5 MB policy takes seconds to
parse): the event loop keeps answering checks meanwhile, and the new policy replaces the old
in one assignment, so a request sees one policy or the other, never a mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authz.policy.load import PolicyError, parse_policy
from authz.policy.model import Policy

log = logging.getLogger("mcp_authz.policy")


@dataclass(frozen=True, slots=True)
class _Look:
    """What one look at the policy path found."""

    # The file behind the path: its real path, device and inode. Any change means it was
    # replaced by a rename, never written in place.
    file: tuple[str, int, int]
    digest: str
    data: bytes


class PolicyHolder:
    """The policy in force; callers take `holder()` once per request."""

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.current = policy
        self.last_error: PolicyError | None = None
        self._clock = clock
        # Unix seconds: when the policy in force was loaded, and when a reload was last
        # refused (None: never since), for the admin API's and the console's status.
        self.loaded_at = clock()
        self.refused_at: float | None = None

    def swap(self, policy: Policy) -> None:
        self.current, self.last_error, self.loaded_at = policy, None, self._clock()

    def refuse(self, error: PolicyError) -> None:
        self.last_error, self.refused_at = error, self._clock()

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
        first = self._look_or_none()
        # The content in force (or refused) and the file it came from.
        self._seen = first.digest if first else None
        self._file = first.file if first else None
        # A change in place seen once, waiting to be seen again unchanged.
        self._pending: str | None = None

    async def check(self) -> bool | None:
        """Reload if the content changed and is complete: True swapped in, False refused,
        None unchanged (or still settling)."""
        look = await asyncio.to_thread(self._look_or_none)
        if look is None or look.digest == self._seen:
            self._pending = None
            return None
        replaced = look.file != self._file
        if not replaced and look.digest != self._pending:
            # Changed in place: it may be half-written. Apply it once it holds still.
            self._pending = look.digest
            log.info("policy %s changed in place; applying it once it is stable", self._path)
            return None
        self._seen, self._file, self._pending = look.digest, look.file, None
        return await self._load(look.data)

    def _look_or_none(self) -> _Look | None:
        try:
            return _look(self._path)
        except OSError as e:
            # Mid-swap, or deleted: keep the policy and look again next time.
            log.warning(
                "policy %s unreadable (%s); keeping %s",
                self._path,
                e.strerror,
                self._holder.current.version,
            )
            return None

    async def _load(self, data: bytes) -> bool:
        old = self._holder.current.version
        try:
            policy = await asyncio.to_thread(parse_policy, data, str(self._path))
        except PolicyError as e:
            self._holder.refuse(e)
            # The problems are the message; a traceback would only bury them.
            log.error("policy reload refused, keeping %s:\n%s", old, e)  # noqa: TRY400
            self._on_result(False)
            return False
        self._holder.swap(policy)
        log.info("policy reloaded: %s (was %s)", policy.version, old)
        for warning in policy.warnings:
            log.warning("policy %s: %s", self._path, warning)
        self._on_result(True)
        return True

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                # A bug here must not end reloading for the life of the process.
                log.exception("policy reload failed unexpectedly; keeping the current policy")


def _look(path: Path) -> _Look:
    """The file behind `path` and its content, from one open file, so the identity and the
    bytes cannot come from two different files."""
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return _Look((os.path.realpath(path), st.st_dev, st.st_ino), _sha256(data), data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
