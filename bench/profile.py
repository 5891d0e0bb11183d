"""Profile mcp-authz under the benchmark's load with py-spy.

    make profile ARGS="[--transport grpc|http] [--seconds 10] [--native]"

Starts Redis, mcp-authz and Envoy as bench/run.py does, drives them with wrk (16
connections by default) and records the service with `py-spy record` (speedscope JSON and a flat
top-functions summary in bench/results/). `--native` includes the C frames of grpcio/uvloop.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from run import HOST, IDENTITIES, RESULTS, authz, envoy, need_tools, redis_server, wrk


def _frame(frame: dict[str, str]) -> str:
    return f"{frame['name']} ({Path(frame.get('file', '?')).name})"


def summarize(speedscope: Path, top: int = 40) -> str:
    """Self and total share of the hottest frames of a speedscope profile."""
    doc = json.loads(speedscope.read_text())
    frames = doc["shared"]["frames"]
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    count = 0
    for profile in doc["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            count += weight
            names = [_frame(frames[i]) for i in stack]
            if names:
                own[names[-1]] += weight
            for name in set(names):
                total[name] += weight
    lines = [f"{count} samples", "", "self%  total%  frame"]
    for name, weight in own.most_common(top):
        lines.append(f"{100 * weight / count:5.1f}  {100 * total[name] / count:6.1f}  {name}")
    lines += ["", "total%  frame (inclusive)"]
    lines += [f"{100 * w / count:6.1f}  {n}" for n, w in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    need_tools()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    out = RESULTS.parent / f"profile-{args.transport}.speedscope.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mcp-authz-profile-") as tmp:
        workdir = Path(tmp)
        with (
            redis_server(workdir) as redis_url,
            authz(workdir, redis_url, args.transport) as service,
            envoy(workdir, f"authz-{args.transport}", service.port) as (port, _, _),
        ):
            url = f"http://{HOST}:{port}/mcp"
            wrk(url, 16, 1, str(IDENTITIES))
            load = threading.Thread(
                target=wrk,
                args=(url, args.connections, args.seconds + 1, str(IDENTITIES)),
                daemon=True,
            )
            load.start()
            argv = [
                py_spy, "record", "--pid", str(service.process.popen.pid), "--duration",
                str(args.seconds), "--rate", "250", "--format", "speedscope", "--output",
                str(out), *(["--native"] if args.native else ["--nonblocking"]),
            ]  # fmt: skip
            subprocess.run(argv, check=True, capture_output=True)
            load.join()
    text = summarize(out)
    (out.with_suffix(".txt")).write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} (open in https://www.speedscope.app) and {out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
