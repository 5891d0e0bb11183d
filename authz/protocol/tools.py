"""What an MCP server says a tool is: one entry of a `tools/list` result, and its risk class.

The catalogue (pinning), the list filter, schema validation and `mcp-authz scan` all read a
tool through `ToolDefinition`, so they agree on what "the same definition" means: the
fingerprint covers every field an agent or the server acts on (name, title, description,
input and output schemas, annotations), in a canonical JSON form, so a reordered but equal
schema keeps its fingerprint and any change of meaning changes it.

Annotations (`readOnlyHint`, `destructiveHint`, `idempotentHint`, `openWorldHint`) are hints
the server chooses. The MCP specification calls them untrusted unless the server is, so
`classify` lets an untrusted server's hints only make a class stricter than the operator's
baseline, never looser.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from authz.protocol.bounds import MAX_NAME, bounded
from authz.protocol.errors import RequestRefused

# The fields of a tool that define it. `_meta` and `icons` are presentation and are left out.
_DEFINING_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


class RiskClass(IntEnum):
    """Ordered from least to most dangerous: max() of two classes is the stricter one."""

    READ = 0
    WRITE = 1
    DESTRUCTIVE = 2

    @property
    def label(self) -> str:
        """The name used in policies, audit lines, spans and metric labels."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """One tool as a server listed it, with the fingerprint of its defining fields."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any] | None
    annotations: Mapping[str, Any]
    fingerprint: str

    def fields(self) -> dict[str, Any]:
        """The definition in MCP's own field names, as stored and as an operator reviews it."""
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": self.annotations,
        }

    @property
    def open_world(self) -> bool:
        """The `openWorldHint` signal; the specification's default is true."""
        return self.annotations.get("openWorldHint", True) is not False


class ToolDefinitionError(ValueError):
    """A `tools/list` entry that is not a tool the gateway can reason about."""


def parse_tool(entry: Any) -> ToolDefinition:
    """A `ToolDefinition` from one element of a `tools/list` result's `tools` array."""
    if not isinstance(entry, Mapping):
        raise ToolDefinitionError(f"a tool is a JSON object, not {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ToolDefinitionError("a tool has no string `name`")
    try:
        bounded(name, MAX_NAME, "tool name")
    except RequestRefused as e:
        # The server's entry, not the agent's request: the entry is unreadable, the rest of
        # its list is not.
        raise ToolDefinitionError(f"a listed {e.message}") from None
    return ToolDefinition(
        name=name,
        description=_optional(entry, "description", str, ""),
        input_schema=_optional(entry, "inputSchema", Mapping, {}),
        output_schema=_optional(entry, "outputSchema", Mapping, None),
        annotations=_optional(entry, "annotations", Mapping, {}),
        fingerprint=fingerprint(entry),
    )


def fingerprint(entry: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the tool's defining fields."""
    defining = {k: entry[k] for k in _DEFINING_FIELDS if k in entry}
    canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def classify(
    annotations: Mapping[str, Any], baseline: RiskClass | None, *, trusted: bool
) -> RiskClass:
    """The tool's class from its annotations and the operator's `baseline` for it.

    With no baseline, an untrusted server's tool is `destructive` unless it says otherwise
    (the specification's defaults: not read-only, destructive); its hints may then narrow
    nothing below the operator's word. A trusted server's hints are taken as they are, and an
    operator's baseline then only tightens them.
    """
    hinted = _hinted(annotations)
    if trusted:
        return hinted if baseline is None else max(hinted, baseline)
    # An untrusted server cannot make its own tool `read`: that takes the operator's word.
    return max(hinted, RiskClass.WRITE if baseline is None else baseline)


def _hinted(annotations: Mapping[str, Any]) -> RiskClass:
    # Only the literal `true` of readOnlyHint counts: a string "true" is not a hint the
    # specification defines, so it is read as the stricter default.
    if annotations.get("readOnlyHint") is True:
        return RiskClass.READ
    if annotations.get("destructiveHint") is False:
        return RiskClass.WRITE
    return RiskClass.DESTRUCTIVE


def _optional(entry: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = entry.get(key, default)
    if value is not default and value is not None and not isinstance(value, kind):
        raise ToolDefinitionError(f"tool {entry['name']!r}: `{key}` is not a {kind.__name__}")
    return default if value is None else value
