"""The Envoy messages in authz/_gen stand alone and live beside a user's own xds-protos.

xds-protos is installed only into .venv/proto-tools (`make setup`), so these run it in a
subprocess with that directory on PYTHONPATH: the same process then holds both packages, as a
user's would who has xds-protos installed for other reasons.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_TOOLS = ROOT / ".venv" / "proto-tools"


def _python(code: str, *, with_xds_protos: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if with_xds_protos:
        env["PYTHONPATH"] = str(PROTO_TOOLS)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


def test_the_service_imports_no_top_level_envoy_api_package() -> None:
    # The runner pulls in every module the service runs; none may reach xds-protos's packages
    # (google.rpc is googleapis-common-protos's, which the OTLP exporter imports itself).
    code = (
        "import sys, authz.runner, authz._gen.envoy.service.ext_proc.v3.external_processor_pb2\n"
        "from authz._gen.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('envoy', 'udpa', 'xds', 'validate'))\n"
        "print(bad)\n"
    )
    result = _python(code, with_xds_protos=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_both_copies_load_in_one_process_and_speak_the_same_wire_format() -> None:
    assert (PROTO_TOOLS / "envoy" / "service" / "auth" / "v3").is_dir(), "run `make setup`"
    # xds-protos first, so its messages own the default pool's full names.
    code = """
from envoy.service.auth.v3 import external_auth_pb2 as theirs
from authz._gen.envoy.service.auth.v3 import external_auth_pb2 as ours
from authz._gen.envoy.service.ext_proc.v3 import external_processor_pb2
from authz.edges import envoy

request = theirs.CheckRequest()
request.attributes.request.http.method = "POST"
request.attributes.request.http.raw_body = b'{"jsonrpc":"2.0"}'
request.attributes.metadata_context.filter_metadata["jwt"].update({"sub": "agent-7"})
http = envoy.to_http_request(ours.CheckRequest.FromString(request.SerializeToString()))
print(http.method, http.body.decode(), http.metadata)
assert theirs.CheckRequest is not ours.CheckRequest
print(external_processor_pb2.ProcessingRequest.DESCRIPTOR.full_name)
"""
    result = _python(code, with_xds_protos=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "POST {\"jsonrpc\":\"2.0\"} {'jwt': {'sub': 'agent-7'}}",
        "envoy.service.ext_proc.v3.ProcessingRequest",
    ]
