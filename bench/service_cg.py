"""A whole gRPC service's instructions per Check, under callgrind: load cannot blur them.

    .venv/bin/python bench/service_cg.py authz|noop [--checks 2000] [--identities 1]
                                         [--out /tmp/NAME.cg]

Starts a private redis-server and the service (`authz`: mcp-authz serve --transport grpc on
bench/policy.json, Redis-counted, audit to a file, as `make bench`'s Check-only row; `noop`:
bench/reference.py's do-nothing grpc.aio server) under `valgrind --tool=callgrind` with
instrumentation off, warms it up with h2load, then counts every instruction of every thread
(grpc's poller included) while h2load sends exactly `--checks` raw CheckRequests (16 streams
over 4 connections, as bench/run.py's Check-only mode), and prints instructions per check.
With `--identities N` (N > 1) a grpc.aio client sends them instead, 16 at a time, from N
identities in rotation as `make bench` does through Envoy (h2load repeats one request): then
each identity's quota lease holds far fewer checks.
The service runs some 50 times slower under valgrind, so more requests wait in each event-loop
turn than at full speed: compare A against B on the same tree, not with the µs of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # bench/run.py's helpers
    BENCH,
    CHECK_PATH,
    HOST,
    POLICY,
    check_request_file,
    free_port,
    grpc_serving,
    redis_server,
)

STARTUP = 300.0  # seconds: importing under valgrind is slow


def h2load(port: int, data: Path, checks: int) -> str:
    argv = [
        "h2load", "-c4", "-t1", "-m4", "-n", str(checks), "-d", str(data),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{HOST}:{port}{CHECK_PATH}",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done = re.search(r"status codes: (\d+) 2xx", out)
    if done is None or int(done.group(1)) != checks:
        raise RuntimeError(f"h2load: not every check answered 2xx:\n{out}")
    return out


def rotated(port: int, data: Path, checks: int, identities: int) -> None:
    """`checks` CheckRequests like `data`'s, from `identities` identities in rotation."""
    template = data.read_bytes()[5:]  # past gRPC's length prefix
    requests = [
        template.replace(b"agent-0001", f"agent-{i % 10000:04d}".encode())
        for i in range(1, identities + 1)
    ]

    async def send() -> None:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            check = channel.unary_unary(CHECK_PATH)  # bytes in, bytes out
            turn = iter(range(checks))

            async def stream() -> None:
                for n in turn:
                    await check(requests[n % identities], timeout=600)

            await asyncio.gather(*(stream() for _ in range(16)))

    asyncio.run(send())


def instrument(pid: int, switch: str) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(pid)], check=True, capture_output=True)


def script_calls(url: str) -> int:
    """EVALSHA and EVAL calls Redis has served: how well the checks shared script calls."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in ("evalsha", "eval"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("service", choices=["authz", "noop"])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--identities", type=int, default=1)
    parser.add_argument("--out", default=None, help="callgrind output file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="service-cg-") as tmp:
        workdir = Path(tmp)
        out = args.out or str(workdir / "service.cg")
        port = free_port()
        with redis_server(workdir) as redis_url:
            if args.service == "authz":
                service = [
                    sys.executable, "-m", "authz", "serve", "--policy", str(POLICY),
                    "--listen", f"{HOST}:{port}", "--redis-url", redis_url,
                    "--identity-source", "header", "--identity-header", "x-agent-id",
                    "--audit-log", str(workdir / "audit.jsonl"), "--log-level", "WARNING",
                ]  # fmt: skip
            else:
                service = [sys.executable, str(BENCH / "reference.py"), "grpc", str(port)]
            argv = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", *service,
            ]  # fmt: skip
            log = workdir / "service.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
            try:
                ready, deadline = grpc_serving(port), time.monotonic() + STARTUP
                while not ready():
                    if process.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"the service did not start:\n{log.read_text()[-3000:]}")
                    time.sleep(0.5)
                data = check_request_file(workdir)
                h2load(port, data, 400)  # warm-up: imports, caches, connections
                before = script_calls(redis_url)
                instrument(process.pid, "on")
                if args.identities > 1:
                    rotated(port, data, args.checks, args.identities)
                else:
                    h2load(port, data, args.checks)
                instrument(process.pid, "off")
                calls = script_calls(redis_url) - before
            finally:
                process.terminate()
                process.wait(120)
            collected = re.findall(r"Collected : (\d+)", log.read_text())
            if not collected:
                sys.exit(f"no callgrind total in the log:\n{log.read_text()[-3000:]}")
            total = int(collected[-1])
    print(f"{args.service}: {total:,} instructions for {args.checks} checks")
    print(f"{args.service}: {total / args.checks / 1000:,.0f}k instructions per check")
    if calls:
        print(f"{args.service}: {args.checks / calls:.2f} checks per Redis script call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
