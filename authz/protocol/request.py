"""The plain request every layer below the Envoy adapter works with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    # Lower-cased names; Envoy joins repeated headers with ",".
    headers: Mapping[str, str]
    body: bytes
    # The mTLS peer principal Envoy verified (URI SAN or subject), "" without mTLS.
    peer_principal: str = ""
    # Envoy filter metadata by namespace, e.g. the jwt_authn filter's verified payload.
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)
