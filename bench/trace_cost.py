"""What exporting every Check's span costs mcp-authz itself, without Envoy: CPU per check.

    .venv/bin/python bench/trace_cost.py [--seconds 5] [--runs 3] [--compiled] [--delay MS]

Runs two HTTP-transport services on one private redis-server (one exporting spans over
OTLP/gRPC to bench/run.py's span sink, one not) and sends both the same paced load (16
connections near bench/run.py's PACED_RATE, every request with a sampled traceparent, as
Envoy's tracing sends), alternating, and prints each run's CPU per check and the median
difference; --compiled runs both from the compiled wheel `make bench` builds
(bench/results/compiled); --delay sets the traced service's OTEL_BSP_SCHEDULE_DELAY (the
bench's 500 ms by default; each export has a fixed cost, so a longer delay costs less per
check, docs/performance.md). Through Envoy (`make bench`'s paced `*-traced` rows) the
difference also holds what Envoy's own tracing and the span sink take from the same 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # bench/run.py's helpers
    COMPILED_SITE,
    HOST,
    IDENTITIES,
    PACED_LUA,
    PACED_RATE,
    authz,
    measured,
    need_tools,
    redis_server,
    span_sink,
    traced_env,
    wrk,
)

CONNECTIONS = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="run the compiled wheel")
    parser.add_argument("--delay", type=int, help="OTEL_BSP_SCHEDULE_DELAY of the traced one, ms")
    args = parser.parse_args()
    if args.compiled and not (COMPILED_SITE / "authz").is_dir():
        sys.exit(f"--compiled runs {COMPILED_SITE}: build it with `make bench/results/compiled`")
    need_tools()
    site = {"PYTHONPATH": str(COMPILED_SITE)} if args.compiled else {}
    pause = str(CONNECTIONS * 1000 // PACED_RATE)
    per_check: dict[str, list[float]] = {"plain": [], "traced": []}
    with tempfile.TemporaryDirectory(prefix="trace-cost-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        redis_url = stack.enter_context(redis_server(workdir))
        sink, sink_port = stack.enter_context(span_sink())
        exporting = traced_env(sink_port, "t")
        if args.delay is not None:
            exporting["OTEL_BSP_SCHEDULE_DELAY"] = str(args.delay)
        # Long enough for the exporter's last, partial batch (sent after the delay).
        quiet = max(1.0, int(exporting["OTEL_BSP_SCHEDULE_DELAY"]) / 1000 + 0.5)
        services = {
            "plain": stack.enter_context(
                authz(workdir, redis_url, "http", tag="-plain", env=site or None)
            ),
            "traced": stack.enter_context(
                authz(workdir, redis_url, "http", tag="-traced", env=exporting | site)
            ),
        }
        for run in range(args.runs):
            for name, service in services.items():
                url = f"http://{HOST}:{service.port}/check/mcp"

                def load(url: str = url) -> dict[str, int]:
                    lua = (str(IDENTITIES), "bench_tool", "/mcp", "agent", "1", pause)
                    result = wrk(url, CONNECTIONS, args.seconds, *lua, script=PACED_LUA)
                    sink.settle(quiet)  # the last batch's export counts in this run
                    return result

                result, cpu, _ = measured(load, service.process.popen.pid, None)
                if cpu is None or not result["requests"] or result["non2xx"]:
                    sys.exit(f"{name}: the run failed: {result}")
                per_check[name].append(cpu / result["requests"] * 1e6)
                rate = result["requests"] / (result["duration_us"] / 1e6)
                print(
                    f"run {run + 1} {name:<6} {rate:5.0f} req/s  "
                    f"{per_check[name][-1]:5.0f} us/check"
                )
        spans = sink.spans["mcp-authz-t"]
    plain, traced = (statistics.median(per_check[n]) for n in ("plain", "traced"))
    print(f"spans exported: {spans}")
    print(
        f"median: plain {plain:.0f} us/check, traced {traced:.0f}: "
        f"tracing adds {traced - plain:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
