"""Run by smoke.sh with the python of a fresh venv holding the compiled wheel: every module
build_support/mcp_authz_build.py lists is an extension module there, and no class of an
interpreted module subclasses a compiled class (mypyc checks a compiled class's instances by
exact type, so such a subclass fails at run time, e.g. a CircuitOpen in a StoreUnavailable
handler). smoke.sh then serves from that venv and sends a real Check through it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Only the listing's directory: the repository's own authz/ must not shadow the installed one.
sys.path.insert(0, str(REPO / "build_support"))

from mcp_authz_build import COMPILED  # noqa: E402

import authz  # noqa: E402

# Modules that run something when imported (__main__), generated code, and `mcp-authz scan`,
# which needs the optional extra `mcp-authz[scan]`.
SKIP = ("authz.__main__", "authz._gen", "authz.scan")


def main() -> int:
    if Path(authz.__file__ or "").resolve().is_relative_to(REPO):
        print(f"authz is imported from {authz.__file__}, not from the installed wheel")
        return 1
    listed = {p.removesuffix(".py").replace("/", ".") for p in COMPILED}
    modules = [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(authz.__path__, "authz.")
        if not m.name.startswith(SKIP)
    ]
    compiled = {m.__name__ for m in modules if (m.__file__ or "").endswith(".so")}
    problems = [f"{name}: not compiled" for name in sorted(listed - compiled)]
    for module in modules:
        if module.__name__ in compiled:
            continue
        for name, cls in vars(module).items():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            problems += [
                f"{module.__name__}.{name}: interpreted subclass of compiled "
                f"{base.__module__}.{base.__qualname__}"
                for base in cls.__mro__[1:]
                if base.__module__ in compiled
            ]
    print("\n".join(problems) or f"compiled: {len(compiled)} modules, no interpreted subclass")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
