"""The plain request every layer below the Envoy adapter works with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# Client-chosen header values kept for the audit log are cut to this many characters.
MAX_ORIGIN_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from, for the audit log: the client's address as Envoy saw it,
    Envoy's `x-request-id` and the `:authority`."""

    client_address: str = ""
    envoy_request_id: str = ""
    authority: str = ""


UNKNOWN_ORIGIN: Final = Origin()


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
    # host:port of the downstream client Envoy saw; "" when the transport does not say.
    client_address: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def origin(self) -> Origin:
        headers = self.headers
        authority = headers.get(":authority") or headers.get("host") or ""
        return Origin(
            self.client_address[:MAX_ORIGIN_CHARS],
            (headers.get("x-request-id") or "")[:MAX_ORIGIN_CHARS],
            authority[:MAX_ORIGIN_CHARS],
        )
