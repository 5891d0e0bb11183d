"""Grants in a JSON file: the embedded default, for one process without Redis.

Written whole to a temporary file and renamed over the old one (readers never see half a
file), mode 0600. Every lookup compares the file's identity (inode, size, mtime) with the
copy in memory and rereads it when it changed, so a grant revoked by another process holds
from the next request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from authz.grants.base import Grant, rotated, taken, unknown


class FileGrants:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._by_label: dict[str, Grant] = {}
        self._by_digest: dict[str, Grant] = {}

    async def by_digest(self, digest: str) -> Grant | None:
        self._refresh()
        return self._by_digest.get(digest)

    async def get(self, label: str) -> Grant | None:
        self._refresh()
        return self._by_label.get(label)

    async def all(self) -> Sequence[Grant]:
        self._refresh()
        return list(self._by_label.values())

    async def add(self, grant: Grant) -> None:
        self._refresh()
        if grant.label in self._by_label:
            raise taken(grant.label)
        self._write([*self._by_label.values(), grant])

    async def replace_digest(self, label: str, digest: str, at: int) -> Grant:
        self._refresh()
        if label not in self._by_label:
            raise unknown(label)
        grant = rotated(self._by_label[label], digest, at)
        self._write([grant if g.label == label else g for g in self._by_label.values()])
        return grant

    async def remove(self, label: str) -> Grant:
        self._refresh()
        grant = self._by_label.get(label)
        if grant is None:
            raise unknown(label)
        self._write([g for g in self._by_label.values() if g.label != label])
        return grant

    async def close(self) -> None:
        return None

    def _refresh(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._index([])
            self._seen = None
            return
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen == self._seen:
            return
        data = json.loads(self._path.read_text(encoding="utf-8"))
        self._index([Grant.from_dict(g) for g in data["grants"]])
        self._seen = seen

    def _index(self, grants: list[Grant]) -> None:
        self._by_label = {g.label: g for g in grants}
        self._by_digest = {g.digest: g for g in grants}

    def _write(self, grants: list[Grant]) -> None:
        text = json.dumps({"grants": [g.to_dict() for g in grants]}, ensure_ascii=False)
        temporary = self._path.with_name(self._path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        temporary.replace(self._path)
        self._refresh()
