"""The Envoy edge: CheckRequest in, CheckResponse out. Nothing else imports Envoy protos."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

from authz.outcome import Outcome
from authz.request import HttpRequest
from authz.response import Reply

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
_DENIED = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)


def to_http_request(check: Any) -> HttpRequest:
    attributes = check.attributes
    http = attributes.request.http
    return HttpRequest(
        method=http.method,
        path=http.path,
        headers=_headers(http),
        # pack_as_bytes puts the body in raw_body, untouched; without it Envoy sends a UTF-8
        # string in which invalid bytes are already replaced, which can only be a guess.
        body=http.raw_body or http.body.encode("utf-8"),
        peer_principal=attributes.source.principal,
        metadata={
            namespace: json_format.MessageToDict(struct)
            for namespace, struct in attributes.metadata_context.filter_metadata.items()
        },
    )


def _headers(http: Any) -> dict[str, str]:
    if http.headers:
        return dict(http.headers)
    # With encode_raw_headers Envoy sends a list, repeated names included; join them as it
    # does for the map so a repeated Mcp-Method can never hide behind its first value.
    joined: dict[str, str] = {}
    for h in http.header_map.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def to_check_response(outcome: Outcome, reply: Reply) -> Any:
    metadata = _metadata(outcome)
    if outcome.allowed:
        return external_auth_pb2.CheckResponse(
            status=_OK,
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=_options(reply.upstream_headers),
                response_headers_to_add=_options(reply.headers),
            ),
            dynamic_metadata=metadata,
        )
    return external_auth_pb2.CheckResponse(
        status=_DENIED,
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=reply.status),
            headers=_options(reply.headers),
            body=reply.body.decode("utf-8"),
        ),
        dynamic_metadata=metadata,
    )


def _options(headers: Iterable[tuple[str, str]]) -> list[Any]:
    # Overwrite, never append: a client must not be able to pre-set a header we vouch for.
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE
        )
        for k, v in headers
    ]


def _metadata(outcome: Outcome) -> Any:
    fields: dict[str, Any] = {
        "decision_id": outcome.decision_id,
        "decision": outcome.label,
        "rule": outcome.rule,
        "policy_version": outcome.policy_version,
    }
    if outcome.subject is not None and outcome.subject.tool is not None:
        fields["tool"] = outcome.subject.tool
    metadata = struct_pb2.Struct()
    metadata.update(fields)
    return metadata
