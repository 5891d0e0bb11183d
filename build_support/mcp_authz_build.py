"""The build backend: setuptools', deciding what is compiled (setup.py) and what a build needs.

A wheel is built with the hot path compiled by mypyc unless MCP_AUTHZ_PURE=1 or no C
compiler is found (then it is the pure-Python package, as it is if compiling fails). Editable
installs and the sdist are always pure: an editable install must run the .py files being
edited (a compiled module next to its source would shadow it), and an sdist is sources.
Compiling needs mypy and everything the compiled modules import, with their type stubs, in
the build environment (mypyc compiles what mypy infers): the `compile` dependency group of
pyproject.toml, asked for only when compiling, so a pure build needs setuptools alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the hooks this backend leaves as they are
    get_requires_for_build_sdist,
    prepare_metadata_for_build_wheel,
)

PURE = "MCP_AUTHZ_PURE"

# The request's path, per check: what measured -30 % instructions per check compiled. Not
# here: limits/redis*.py (mypyc 2.4 fails on their keyword-only signatures), edges/extproc.py
# (async generators), edges/authz_grpc.py (its asyncio.Future subclass, compiled, crashes in
# Future.__init__), observe/spans.py (it compiles, but tracing cost the same: 75 vs 72 us).
# A class in an interpreted module must not subclass one compiled here (mypyc checks compiled
# classes' instances by exact type): tests/install/compiled_check.py looks for any.
COMPILED = [
    "authz/core/decision.py",
    "authz/core/outcome.py",
    "authz/core/reply.py",
    "authz/core/response_plan.py",
    "authz/core/tool_check.py",
    "authz/edges/authz_http.py",
    "authz/edges/envoy.py",
    "authz/limits/base.py",
    "authz/limits/breaker.py",
    "authz/limits/memory.py",
    "authz/observe/audit.py",
    "authz/observe/telemetry.py",
    "authz/policy/conditions.py",
    "authz/policy/evaluate.py",
    "authz/policy/model.py",
    "authz/protocol/bounds.py",
    "authz/protocol/identity.py",
    "authz/protocol/mcp.py",
    "authz/protocol/request.py",
    "authz/protocol/tools.py",
]
Settings = dict[str, Any] | None


def compiling() -> bool:
    """Whether a wheel built now gets the compiled modules: not asked to be pure, and a C
    compiler is there (without one the build would download mypy to fail later)."""
    if os.environ.get(PURE, "") == "1":
        return False
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(compiler)[0]) is not None


@contextmanager
def _pure() -> Iterator[None]:
    saved = os.environ.get(PURE)
    os.environ[PURE] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[PURE]
        else:
            os.environ[PURE] = saved


def get_requires_for_build_wheel(config_settings: Settings = None) -> list[str]:
    needs = _setuptools.get_requires_for_build_wheel(config_settings)
    if not compiling():
        return needs
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))
    return [*needs, *project["project"]["dependencies"], *project["dependency-groups"]["compile"]]


def build_wheel(
    wheel_directory: str, config_settings: Settings = None, metadata_directory: str | None = None
) -> str:
    # setuptools reuses ./build and packs all of build/lib: an extension module left there by
    # an earlier compiled build (or one of another module list) would land in this wheel.
    shutil.rmtree("build", ignore_errors=True)
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_editable(config_settings: Settings = None) -> list[str]:
    with _pure():
        return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Settings = None
) -> str:
    with _pure():
        return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: Settings = None, metadata_directory: str | None = None
) -> str:
    with _pure():
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: Settings = None) -> str:
    with _pure():
        return _setuptools.build_sdist(sdist_directory, config_settings)
