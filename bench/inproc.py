"""Our own work per check, in process: no Envoy, no network but Redis (when asked).

    .venv/bin/python bench/inproc.py [--checks 20000] [--redis] [--audit FILE|off]
                                     [--concurrency 16] [--profile] [--catalogue]

Runs the HTTP transport's `HttpCheck` (decide, observe, encode) on bench/mcp.lua's requests
(a `tools/call` of `bench_tool` from 1,000 identities in rotation) against bench/policy.json,
with telemetry off, the audit log written to a file, and the in-process store or a private
redis-server (`--redis`); with `--catalogue`, each call is also looked up in the tool catalogue
(in process, or in that Redis) and its arguments validated against bench_tool's schema. Prints
CPU microseconds per check (process time, so another process's load barely moves it), median
and minimum of `--repeat` rounds: on a shared machine the minimum is the steadier figure to
compare. `--callgrind` counts instructions instead. `--profile` prints cProfile's
top functions instead. Compare two trees by running this in each, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import redis_server  # noqa: E402 - the benchmark's own redis-server launcher

from authz.catalogue.base import Catalogue  # noqa: E402
from authz.catalogue.memory import MemoryCatalogue  # noqa: E402
from authz.core.decision import Decider  # noqa: E402
from authz.core.tool_check import ToolCheck  # noqa: E402
from authz.edges.authz_http import HttpCheck  # noqa: E402
from authz.limits.base import CounterStore  # noqa: E402
from authz.limits.memory import MemoryStore  # noqa: E402
from authz.observe.audit import ArgumentAudit, AuditLog  # noqa: E402
from authz.observe.metrics import Metrics  # noqa: E402
from authz.observe.spans import SpanQueue  # noqa: E402
from authz.observe.telemetry import Telemetry  # noqa: E402
from authz.policy.load import load_policy  # noqa: E402
from authz.policy.reload import PolicyHolder  # noqa: E402
from authz.protocol.identity import FromHeader, IdentitySourceKind  # noqa: E402
from authz.protocol.request import HttpRequest  # noqa: E402
from authz.protocol.tools import parse_tool  # noqa: E402
from authz.runner import new_decision_id  # noqa: E402

IDENTITIES = 1000


def requests(traced: bool, identities: int = IDENTITIES) -> list[HttpRequest]:
    """bench/mcp.lua's requests, as the HTTP transport hands them to the check; `traced`
    adds a sampled `traceparent`, as a tracing Envoy sends."""
    out = []
    for i in range(1, identities + 1):
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "bench_tool", "arguments": {"text": "hello"}},
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "host": "127.0.0.1",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
            "x-agent-id": f"agent-{i:04d}",
            "x-request-id": f"req-{i}",
            "content-length": str(len(body)),
        }
        if traced:
            headers["traceparent"] = f"00-{i:032x}-{i:016x}-01"
        out.append(HttpRequest("POST", "/check/mcp", headers, body))
    return out


async def rounds(
    check: HttpCheck, args: argparse.Namespace, drain: Callable[[], object]
) -> list[float]:
    batch = requests(args.traced, args.identities)
    per_worker = args.checks // args.concurrency

    async def worker(offset: int) -> None:
        for n in range(per_worker):
            await check(batch[(offset + n) % len(batch)])

    async def one_round() -> float:
        started = time.process_time()
        await asyncio.gather(*(worker(w * 61) for w in range(args.concurrency)))
        # The export thread's work on this round's spans belongs to the round.
        drain()
        return (time.process_time() - started) / (per_worker * args.concurrency) * 1e6

    await one_round()  # warm-up
    if args.callgrind:
        # Instructions are what a shared machine cannot blur: count one round's only.
        _callgrind("on")
        await one_round()
        _callgrind("off")
        print(f"callgrind: counted {per_worker * args.concurrency} checks")
        return []
    if args.profile:
        cprofile, pstats = _stdlib_profilers()
        profiler = cprofile.Profile()
        profiler.enable()
        await one_round()
        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "30"))
        )
        return []
    return [await one_round() for _ in range(args.repeat)]


def lease_options(life: float | None) -> dict[str, Any]:
    """RedisStore's options for `--lease-life`: none without it (the store's defaults)."""
    from authz.limits.lease import LeasePolicy  # noqa: PLC0415 - with --redis only

    if life is None:
        return {}
    return {"lease": LeasePolicy(min_limit=0) if life == 0 else LeasePolicy(share=life)}


def _script_calls(url: str, args: argparse.Namespace) -> tuple[float, float]:
    """EVALSHA calls and Redis's own us in them per check, over every round (the warm-up
    too): what quota leases save Redis."""
    import redis  # noqa: PLC0415 - with --redis only

    rounds = 2 if args.callgrind or args.profile else 1 + args.repeat
    checks = rounds * (args.checks // args.concurrency) * args.concurrency
    evalsha = redis.Redis.from_url(url).info("commandstats").get("cmdstat_evalsha", {})
    return int(evalsha.get("calls", 0)) / checks, int(evalsha.get("usec", 0)) / checks


def _callgrind(state: str) -> None:
    subprocess.run(
        ["callgrind_control", "-i", state, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


def _stdlib_profilers() -> tuple[Any, Any]:
    # bench/profile.py (py-spy) would shadow the standard library's `profile`, which
    # cProfile imports: look the two up without this directory on the path.
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    try:
        return importlib.import_module("cProfile"), importlib.import_module("pstats")
    finally:
        sys.path[:] = saved


# bench_tool as the demo server lists it: one string argument.
BENCH_TOOL = {
    "name": "bench_tool",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


async def listed(catalogue: Catalogue | None) -> ToolCheck | None:
    if catalogue is None:
        return None
    await catalogue.observe("default", [parse_tool(BENCH_TOOL)], complete=True)
    return ToolCheck(catalogue)


async def measure(
    store: CounterStore, audit_path: str, args: argparse.Namespace, catalogue: Catalogue | None
) -> list[float]:
    await store.ready()
    telemetry, spans, drain = traced() if args.traced else (Telemetry.off(), None, _nothing)
    observed = telemetry.observe(store, "redis" if args.redis else "memory")
    policy = PolicyHolder(load_policy(BENCH / "policy.json"))
    decider = Decider(
        policy,
        FromHeader("x-agent-id"),
        observed,
        new_id=new_decision_id,
        tools=await listed(catalogue),
    )
    audit = AuditLog.open(audit_path, ArgumentAudit(b"k" * 32))
    check = HttpCheck(decider, audit, telemetry, IdentitySourceKind.HEADER)
    try:
        return await rounds(check, args, drain)
    finally:
        audit.close()
        await store.close()
        if spans is not None:
            telemetry.shutdown(5.0)
            print(f"traced: {spans.requests} OTLP requests ({spans.bytes} bytes)")


class EncodingTransport:
    """Takes every serialized OTLP request, as the OTLP/HTTP exporter does, and sends nothing:
    what tracing costs this process short of the network write."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    def send(self, request: bytes) -> bool:
        self.requests += 1
        self.bytes += len(request)
        return True

    def shutdown(self) -> None:
        return None


def _nothing() -> None:
    return None


def traced() -> tuple[Telemetry, EncodingTransport, Callable[[], object]]:
    """Telemetry as `Telemetry.start` builds it for traces (the decision span queue, the
    default parent-based sampler), with the transport above in place of OTLP's."""
    transport = EncodingTransport()
    resource = Resource.create({"service.name": "inproc"})
    metrics = Metrics(NoOpMeter("mcp_authz"))
    spans = SpanQueue(transport, metrics, resource, InstrumentationScope("mcp_authz"))
    telemetry = Telemetry(None, metrics, [spans.close], spans)
    return telemetry, transport, lambda: spans.flush(30.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--identities", type=int, default=IDENTITIES, help="callers in rotation (one key each)"
    )
    parser.add_argument(
        "--lease-life",
        type=float,
        default=None,
        help="the Redis store's --lease-life, 0 for no leases (callgrind slows time ~50x: a "
        "lease lives as many checks as one 50x shorter would natively)",
    )
    parser.add_argument("--redis", action="store_true", help="count in a private redis-server")
    parser.add_argument("--audit", default="", help="audit log file, or off (default: a temp file)")
    parser.add_argument("--profile", action="store_true", help="cProfile one round instead")
    parser.add_argument(
        "--traced", action="store_true", help="trace every check, spans encoded as OTLP"
    )
    parser.add_argument("--catalogue", action="store_true", help="look each tool up, validate")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count one round's instructions (run under valgrind --tool=callgrind "
        "--instr-atstart=no; then callgrind_annotate)",
    )
    args = parser.parse_args()
    import uvloop  # noqa: PLC0415 - as the HTTP transport runs

    with tempfile.TemporaryDirectory(prefix="mcp-authz-inproc-") as tmp:
        audit = args.audit or str(Path(tmp) / "audit.jsonl")
        if args.redis:
            from authz.catalogue.redis import RedisCatalogue  # noqa: PLC0415
            from authz.limits.redis import RedisStore  # noqa: PLC0415

            with redis_server(Path(tmp)) as url:
                catalogue = RedisCatalogue.from_url(url) if args.catalogue else None
                store = RedisStore.from_url(url, **lease_options(args.lease_life))
                samples = uvloop.run(measure(store, audit, args, catalogue))
                calls, usec = _script_calls(url, args)
                print(f"Redis per check: {calls:.3f} script calls, {usec:.2f} us of Redis's time")
        else:
            catalogue = MemoryCatalogue() if args.catalogue else None
            samples = uvloop.run(measure(MemoryStore(), audit, args, catalogue))
    if samples:
        shown = " ".join(f"{s:.1f}" for s in samples)
        print(
            f"CPU us/check: median {statistics.median(samples):.1f} min {min(samples):.1f} "
            f"(rounds: {shown})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
