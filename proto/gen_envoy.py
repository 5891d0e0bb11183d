"""Generate the Envoy API messages the service uses into authz/_gen (run by `make proto`).

xds-protos ships generated Python but no .proto sources, and its wheel overwrites
opentelemetry-proto's files (grpc/grpc#42926), so it may serve at build time only. Each of its
modules carries its file's serialized FileDescriptorProto: this script collects the files the
roots below need, hands them to grpcio-tools' protoc as a descriptor set (no upstream .proto text
ever enters the repository), and rewrites the output so that

- the modules import one another as `authz._gen.<package>`, never the top-level `envoy`,
  `udpa`, `xds`, `validate` or `google.rpc` that xds-protos or googleapis-common-protos own;
- they register in authz._gen._pool's descriptor pool, not the default one, so a process
  that also imports xds-protos's own modules (same full names, maybe another version) does
  not fail with a duplicate-symbol error.

Output is deterministic for pinned xds-protos, googleapis-common-protos and grpcio-tools
(pyproject.toml's dev extra); `make proto-check` regenerates and diffs.
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from grpc_tools import protoc

# The services and messages the service speaks; everything they import follows.
ROOTS = (
    "envoy.service.auth.v3.external_auth_pb2",
    "envoy.service.ext_proc.v3.external_processor_pb2",
    "envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2",
    # The status codes a CheckResponse carries (googleapis-common-protos has it at build time).
    "google.rpc.code_pb2",
)
# The protobuf runtime's own well-known types stay where they are (authz._gen._pool adds them).
RUNTIME_PREFIX = "google/protobuf/"
# Top-level packages the generated modules import each other by; rewritten under authz._gen.
REWRITTEN = ("envoy", "udpa", "xds", "validate", "google.rpc")
PACKAGE = "authz._gen"
# What this script owns under authz/_gen (mcpauthz/ is our own API's, from proto/).
TOP_DIRS = ("envoy", "udpa", "xds", "validate", "google")
_IMPORT = re.compile(rf"^(from|import) ({'|'.join(re.escape(p) for p in REWRITTEN)})([. ])", re.M)
_DEFAULT_POOL = "_descriptor_pool.Default()"


def closure(roots: tuple[str, ...]) -> list[FileDescriptor]:
    """Every file the roots need, dependencies first, the runtime's well-known types left out."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for root in roots:
        visit(importlib.import_module(root).DESCRIPTOR)
    return ordered


def descriptor_set(files: list[FileDescriptor]) -> bytes:
    result = descriptor_pb2.FileDescriptorSet()
    for file in files:
        result.file.add().ParseFromString(file.serialized_pb)
    return result.SerializeToString(deterministic=True)


def generate(files: list[FileDescriptor], out: Path) -> None:
    wanted = [f.name for f in files if not f.name.startswith(RUNTIME_PREFIX)]
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp, "envoy.pb")
        descriptors.write_bytes(descriptor_set(files))
        generated = Path(tmp, "out")
        generated.mkdir()
        args = [
            "protoc",
            f"--descriptor_set_in={descriptors}",
            f"--python_out={generated}",
            f"--pyi_out={generated}",
            f"--grpc_python_out={generated}",
            *wanted,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {len(wanted)} Envoy API files")
        with_services = {f.name.removesuffix(".proto") for f in files if f.services_by_name}
        for path in sorted(generated.rglob("*.py*")):
            relative = path.relative_to(generated)
            stem = str(relative).removesuffix(".py").removesuffix("_pb2_grpc")
            if relative.name.endswith("_pb2_grpc.py") and stem not in with_services:
                continue  # the gRPC plugin writes an empty module for files without services
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite(path.read_text()))
    # setuptools packages only what has an __init__.py; every directory up to authz/_gen gets one.
    for module in out.rglob("*.py*"):
        for package in module.relative_to(out).parents:
            if package != Path():
                (out / package / "__init__.py").touch()


def rewrite(source: str) -> str:
    source = _IMPORT.sub(rf"\1 {PACKAGE}.\2\3", source)
    if _DEFAULT_POOL in source:
        source = source.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            f"from {PACKAGE} import _pool\n",
        ).replace(_DEFAULT_POOL, "_pool.POOL")
    return source


def main() -> None:
    gen = Path(sys.argv[1] if len(sys.argv) > 1 else "authz/_gen")
    for top in TOP_DIRS:
        shutil.rmtree(gen / top, ignore_errors=True)
    generate(closure(ROOTS), gen)


if __name__ == "__main__":
    main()
