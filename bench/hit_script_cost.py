"""Redis's own time per counter hit for hit.lua, now vs an older revision of it.

    .venv/bin/python -m bench.hit_script_cost [--old 4d9cba3] [--calls 20000] [--rounds 3]

Starts its own redis-server, loads the current script and `git show OLD:authz/limits/lua/hit.lua`,
and calls each with one request of one hit over `--calls` keys' worth of calls, interleaved in
`--rounds`. It prints Redis's usec_per_call for EVALSHA (INFO commandstats, reset before each
cell), so the client, the network and Python are left out. The old script takes 1 key and 4
arguments per hit; the current one 2 keys and 6, measured both not session-scoped (most=0) and
session-scoped (most=8, one session per identity). Docs: docs/performance.md.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import redis

from bench.bench_store import start_redis

SCRIPT = Path(__file__).resolve().parent.parent / "authz" / "limits" / "lua" / "hit.lua"
_US = 1_000_000
_LIMIT, _WINDOW = 10**9, 60 * _US
_QUANTUM = _WINDOW // 60
_HIT = (_LIMIT, _WINDOW, 1, _QUANTUM)
# No lease wanted, none to give back (hit.lua's last four arguments per hit).
_NO_LEASE = (0, 0, 0, 0)
_IDENTITIES = 64


def cell(client: redis.Redis, call: Callable[[int], object], calls: int) -> float:
    client.config_resetstat()
    for i in range(calls):
        call(i)
    stats = client.info("commandstats")["cmdstat_evalsha"]
    return float(stats["usec_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", default="4d9cba3", help="git revision of the old hit.lua")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    old_text = subprocess.run(
        ["git", "show", f"{args.old}:authz/limits/lua/hit.lua"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        server, port = start_redis(workdir)
        try:
            client = redis.Redis(port=port)
            old, new = client.script_load(old_text), client.script_load(SCRIPT.read_text())

            def run_old(i: int) -> object:
                key = f"old:{i % _IDENTITIES}"
                return client.evalsha(old, 1, key, 1, "", 1, *_HIT)

            def run_new(i: int) -> object:
                key = f"new:{i % _IDENTITIES}"
                return client.evalsha(new, 2, key, key, 1, "", 1, *_HIT, 0, "", *_NO_LEASE)

            def run_session(i: int) -> object:
                n = i % _IDENTITIES
                keys = (f"ses:{n}:s{n}", f"idx:{n}")
                return client.evalsha(new, 2, *keys, 1, "", 1, *_HIT, 8, f"s{n}", *_NO_LEASE)

            cells = {"old": run_old, "new, plain": run_new, "new, session": run_session}
            results: dict[str, list[float]] = {name: [] for name in cells}
            for _ in range(args.rounds):
                for name, call in cells.items():
                    results[name].append(cell(client, call, args.calls))
            client.close()
        finally:
            server.kill()
            server.wait()
    for name, us in results.items():
        print(f"{name:22} usec_per_call per round: {', '.join(f'{u:.2f}' for u in us)}")


if __name__ == "__main__":
    main()
