"""Adversarial review: a client's own copy of the response plan header, through real Envoy.

The plan (`x-mcp-authz-response`) tells ext_proc what to refund and which grant a list is
filtered for. A client sends forged copies, once, twice and in another case, on a counted call
the upstream answers 503 (so a refund happens) and on an uncounted one (no plan: ext_authz
removes the header). The forged plan refunds 1000 units; no forged plan may ever be acted on,
and the upstream never sees the header.
"""

from __future__ import annotations

import http.client
import json
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from authz.core.response_plan import PLAN_HEADER
from tests.e2e.conftest import GatewayFactory, UpstreamRequests
from tests.e2e.test_http import ACCEPT, modern_call, modern_headers

pytestmark = pytest.mark.e2e

POLICY = Path(__file__).parent / "policies" / "refund.json"
FORGED_ID = "forged-by-client"
FORGED = json.dumps(
    {
        "d": FORGED_ID,
        "g": "default",
        "r": [["unavailable_rate", "grant", ["default", "anonymous"], 2, 60, 1000]],
    },
    separators=(",", ":"),
)
COPIES = {
    "once": [(PLAN_HEADER, FORGED)],
    "twice": [(PLAN_HEADER, FORGED), (PLAN_HEADER, FORGED)],
    "cases": [(PLAN_HEADER.upper(), FORGED), (PLAN_HEADER, FORGED)],
}


def post_with(url: str, message: dict[str, Any], headers: list[tuple[str, str]]) -> int:
    """POST with repeated header names, which a dict of headers cannot carry."""
    parts = urlsplit(url)
    body = json.dumps(message).encode()
    with closing(http.client.HTTPConnection(parts.netloc, timeout=10)) as conn:
        conn.putrequest("POST", parts.path)
        for name, value in [
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("content-length", str(len(body))),
            *headers,
        ]:
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read()
        return response.status


def response_events(log: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if "response_event" in line]


@pytest.mark.parametrize("copies", sorted(COPIES))
def test_a_clients_plan_is_never_acted_on(
    gateway_for: GatewayFactory,
    upstream_requests: UpstreamRequests,
    tmp_path: Path,
    copies: str,
) -> None:
    forged = COPIES[copies]
    with gateway_for(POLICY) as url:
        for rid, tool in enumerate(("unavailable", "binance_us_create_listen_key", "unavailable")):
            post_with(
                url, modern_call(tool, rid), [*modern_headers("tools/call", tool).items(), *forged]
            )
    events = response_events(tmp_path / "mcp-authz.log")
    assert all(e["decision_id"] != FORGED_ID for e in events), events
    # Each 503 of the two counted calls gives back its own one unit, nothing forged.
    refunded = [e for e in events if e["response_event"] == "refunded"]
    assert [e["units"] for e in refunded] == [1, 1], events
    for seen in upstream_requests.seen():
        assert PLAN_HEADER not in {name.lower() for name, _ in seen["headers"]}, seen
