"""The HTTP edge: Envoy's ext_authz `http_service`, on the same decision core as gRPC.

Envoy sends the agent's request as it came, less what its allow-lists drop: the original
method, `path_prefix` + the original path, the allowed headers (`allowed_headers`), and the
buffered body (`with_request_body`) as the request body. We answer:

- allowed: 200, no body; the decision id (and the upstream's own credential, when set) for
  the upstream request (Envoy copies them over the request's own, via
  `allowed_upstream_headers`), `x-envoy-auth-headers-to-remove: authorization` so the agent's
  credential never goes upstream, and the rate-limit headers for the client
  (`allowed_client_headers_on_success`);
- refused: the gRPC path's status, headers and JSON-RPC body. Envoy takes any status but 200
  as a refusal and passes it on, so a refusal that must reach the agent as 200 (see
  authz/core/reply.py) goes out as REFUSAL_STATUS, which deploy/envoy/envoy-http.yaml's
  `local_reply_config` turns back into 200.

What http_service cannot carry: Envoy's dynamic metadata (the jwt_authn payload) and the mTLS
peer certificate. So the `jwt` and `mtls` identity sources are refused when this transport is
built, and the decision's metadata reaches Envoy only as response headers.

The server is an asyncio protocol on uvloop with httptools' C parser: per check it costs a
small fraction of what a gRPC call does (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, Final, cast

import httptools

from authz.core.decision import Decider
from authz.core.reply import Reply, UpstreamCredential, reply_for
from authz.observe.audit import AuditLog
from authz.observe.telemetry import Telemetry
from authz.protocol.identity import IdentitySourceKind
from authz.protocol.request import HttpRequest

log = logging.getLogger("mcp_authz.http")

# A refusal answered with HTTP 200 (see authz/core/reply.py) leaves here with this status:
# to Envoy's http_service only 200 allows. Still 2xx, so a proxy without the mapping that
# restores 200 delivers it as a JSON-RPC answer the SDK clients read.
REFUSAL_STATUS: Final = 299
# Envoy's with_request_body caps what it buffers (1 MiB in deploy/envoy); this caps what a
# misconfigured or foreign client can make us hold.
MAX_BODY: Final = 8 * 1024 * 1024
# Envoy's http_service removes the headers this response header lists from the request it
# forwards upstream (the gRPC path's `headers_to_remove`).
HEADERS_TO_REMOVE: Final = "x-envoy-auth-headers-to-remove"
UNSUPPORTED_IDENTITY: Final = frozenset({IdentitySourceKind.JWT, IdentitySourceKind.MTLS})
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    413: "Payload Too Large",
    REFUSAL_STATUS: "Refused",
    503: "Service Unavailable",
}

Check = Callable[[HttpRequest], Awaitable[bytes]]


def require_http_identity(kind: IdentitySourceKind) -> None:
    """Raises ValueError for an identity source whose input http_service never forwards."""
    if kind in UNSUPPORTED_IDENTITY:
        what = {
            IdentitySourceKind.JWT: "the jwt_authn payload, which Envoy passes only as "
            "dynamic metadata",
            IdentitySourceKind.MTLS: "the client certificate's principal, which Envoy "
            "passes only in a gRPC CheckRequest",
        }[kind]
        raise ValueError(
            f"--identity-source {kind.value} needs {what}; Envoy's http_service forwards "
            "neither. Use --transport grpc, or --identity-source header with a header Envoy "
            "sets (and strips from clients)"
        )


class HttpCheck:
    """One check over HTTP: decide, observe, and encode the whole HTTP response."""

    def __init__(
        self,
        decider: Decider,
        audit: AuditLog,
        telemetry: Telemetry,
        identity_source: IdentitySourceKind,
        upstream: UpstreamCredential | None = None,
    ) -> None:
        require_http_identity(identity_source)
        self._upstream = upstream
        self._decider = decider
        self._audit = audit
        self._telemetry = telemetry

    async def __call__(self, request: HttpRequest) -> bytes:
        started = perf_counter()
        with self._telemetry.check(request.headers) as span:
            outcome = await self._decider.decide(request)
            latency = perf_counter() - started
            self._telemetry.finish(span, outcome, latency)
            self._audit.record(outcome, latency, span.get_span_context())
        return encode(reply_for(outcome, self._upstream), allowed=outcome.allowed)


def encode(reply: Reply, *, allowed: bool) -> bytes:
    """The HTTP/1.1 response Envoy's http_service reads: 200 allows, anything else refuses."""
    if allowed:
        removed = (
            ((HEADERS_TO_REMOVE, ",".join(reply.upstream_removed)),)
            if reply.upstream_removed
            else ()
        )
        return _response(200, (*reply.upstream_headers, *reply.headers, *removed), b"")
    status = REFUSAL_STATUS if reply.status == 200 else reply.status
    return _response(status, reply.headers, reply.body)


def _response(status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> bytes:
    head = "".join(
        [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Refused')}\r\n",
            *[f"{name}: {value}\r\n" for name, value in headers],
            f"content-length: {len(body)}\r\n\r\n",
        ]
    )
    # Our values are ids, numbers and media types; never let one end the header block. The
    # block has exactly one line break per line it should have: any more came from a value.
    if head.count("\n") != len(headers) + 3 or head.count("\r") != len(headers) + 3:
        _refuse_line_breaks(headers)
    # Names and the status line are ASCII: a value's other characters become "?".
    return head.encode("ascii", "replace") + body


def _refuse_line_breaks(headers: tuple[tuple[str, str], ...]) -> None:
    broken = next(f"{n}: {v}" for n, v in headers if "\r" in n + v or "\n" in n + v)
    raise ValueError(f"header {broken!r} contains a line break")


_FAILED: Final = _response(503, (), b"")
_TOO_LARGE: Final = _response(413, (), b"")
_BAD_REQUEST: Final = _response(400, (), b"")


class _Connection(asyncio.Protocol):
    """One connection from Envoy: requests parsed by httptools, answered in order."""

    def __init__(self, check: Check, connections: set[_Connection]) -> None:
        self._check = check
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._last: asyncio.Task[None] | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            # httptools wraps what a callback raises: on_body's refusal included.
            self._fail(_TOO_LARGE if self._size > MAX_BODY else _BAD_REQUEST)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("utf-8", "replace")
        # Joined as Envoy joins them for gRPC, so a repeated header cannot hide a value.
        self._headers[key] = f"{self._headers[key]},{text}" if key in self._headers else text

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            raise _TooLargeError(self._size)
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = HttpRequest(
            method=self._parser.get_method().decode("ascii", "replace"),
            path=self._url.decode("utf-8", "replace"),
            headers=self._headers,
            body=b"".join(self._body),
        )
        keep_alive = self._parser.should_keep_alive()
        self._last = asyncio.get_running_loop().create_task(
            self._answer(request, self._last, keep_alive)
        )

    # answering

    async def _answer(
        self, request: HttpRequest, previous: asyncio.Task[None] | None, keep_alive: bool
    ) -> None:
        try:
            response = await self._check(request)
        except Exception:
            log.exception("check failed; answering 503 (Envoy refuses the request)")
            response, keep_alive = _FAILED, False
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # answers leave in the order requests came
        transport = self._transport
        if transport is None:
            return
        transport.write(response)
        if not keep_alive:
            transport.close()

    def _fail(self, response: bytes) -> None:
        if self._transport is not None:
            self._transport.write(response)
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def busy(self) -> bool:
        return self._last is not None and not self._last.done()


class _TooLargeError(Exception):
    pass


class HttpServer:
    """A started HTTP ext_authz server, stopped like grpc.aio's: refuse new work, drain."""

    def __init__(self, server: asyncio.Server, connections: set[_Connection]) -> None:
        self._server = server
        self._connections = connections

    async def stop(self, grace: float | None) -> None:
        self._server.close()
        deadline = asyncio.get_running_loop().time() + (grace or 0)
        while any(c.busy() for c in self._connections):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.01)
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()


async def create_http_server(
    listen: str, check: Check, *, reuse_port: bool = False
) -> tuple[HttpServer, int]:
    """A started server bound to `listen` (port 0 picks a free one) and the bound port."""
    host, _, port = listen.rpartition(":")
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(check, connections),
        host.strip("[]") or None,
        int(port),
        reuse_port=reuse_port or None,
        family=socket.AF_UNSPEC,
    )
    # Read untyped: uvloop's Server.sockets is a list where typeshed says tuple, and the
    # compiled module (mypyc) checks the declared type: the HTTP transport failed to start.
    listening: Any = cast(Any, server).sockets
    bound: int = listening[0].getsockname()[1]
    return HttpServer(server, connections), bound
