"""What pyproject.toml cannot say: a wheel's extension modules, compiled by mypyc from the
modules build_support/mcp_authz_build.py lists, when it says to compile."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp_authz_build import COMPILED, PURE, compiling
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError


class OptionalBuildExt(build_ext):
    """A compile that fails leaves the pure-Python package, which is the same program."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError, OSError) as e:
            print(f"mcp-authz: compiling failed ({e}); building the pure-Python package")
            # None or all: a compiled class's interpreted subclass would fail its type checks.
            for extension in self.extensions:
                Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            self.extensions = []


def extensions() -> list[Extension]:
    # Only a wheel's build compiles: metadata and egg_info runs need no C.
    if not compiling() or "bdist_wheel" not in sys.argv:
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 - a pure build has no mypy

    print(f"mcp-authz: compiling {len(COMPILED)} modules with mypyc (set {PURE}=1 for pure Python)")
    return mypycify(COMPILED, group_name="authz_compiled")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
