"""The console's HTTP server: uvicorn, inside the gateway's own event loop.

The gateway owns SIGTERM and SIGINT (it drains Checks first), so this server installs no
signal handlers of its own and stops when the gateway says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

# Seconds requests in flight get at most once the gateway stops the console.
GRACE = 2.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(GRACE),
            # Forwarded headers are not read: the public URL is configured, not inferred.
            proxy_headers=False,
        )
        self._server = _Server(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve([self._sock]), name="console")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the console server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, grace: float = GRACE) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then end
        whatever is left."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


def bind(listen: str) -> socket.socket:
    """A listening socket on HOST:PORT (port 0 picks a free one); raises ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--console-listen {listen!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means every address
    try:
        return socket.create_server((host, int(port)), family=_family(host), reuse_port=False)
    except OSError as e:
        raise ValueError(f"--console-listen {listen}: cannot listen there: {e.strerror}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
