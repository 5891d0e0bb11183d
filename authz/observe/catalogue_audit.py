"""The catalogue as the edges and the admin side use it: every change a `tools/list` answer
makes (added, changed, removed, rejected) is written to the audit log as it is recorded.

The runner wraps the configured backend once, so the ext_proc edge only calls `observe` and
no caller can record a change the log misses.
"""

from __future__ import annotations

from collections.abc import Sequence

from authz.catalogue.base import Catalogue, CatalogueEntry, Observed
from authz.observe.audit import AuditLog
from authz.protocol.tools import ToolDefinition


class AuditedCatalogue:
    def __init__(self, inner: Catalogue, audit: AuditLog) -> None:
        self._inner = inner
        self._audit = audit

    async def observe(
        self, upstream: str, tools: Sequence[ToolDefinition], *, complete: bool
    ) -> list[Observed]:
        observed = await self._inner.observe(upstream, tools, complete=complete)
        self._audit.record_catalogue(upstream, observed)
        return observed

    async def lookup(self, upstream: str, name: str) -> CatalogueEntry | None:
        return await self._inner.lookup(upstream, name)

    async def accept(
        self, upstream: str, name: str, fingerprint: str, *, by: str
    ) -> CatalogueEntry:
        # Audited by the admin API (AdminActions), which knows who asked and from where.
        return await self._inner.accept(upstream, name, fingerprint, by=by)

    async def entries(self, upstream: str | None = None) -> list[CatalogueEntry]:
        return await self._inner.entries(upstream)

    async def close(self) -> None:
        await self._inner.close()
