"""A starter policy from an MCP server's tool catalogue (what `mcp-authz scan` writes).

Pure: a list of classified tools in, a policy document out. The document follows the seed's
advice: deny by default, allow `read` tools, cap `write` tools at 30 calls a minute per grant,
and put `destructive` tools behind a person's approval. Each rule carries the tool's own
description (first line, bounded) as its reason, so a reviewer reading the file, and an agent
reading a refusal, see what the tool is for.

A tool whose name contains `*` or `?` is left out: as a policy key it would be a pattern that
matches other tools, and a server must not be able to write a rule for tools it did not list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

from authz.protocol.tools import RiskClass, ToolDefinition, classify

# The seed's recommended cap for a write tool: 30 calls a minute, per grant.
WRITE_LIMIT = {"window": "minute", "max": 30, "scope": "grant"}
# A reason is shown to agents and kept in audit lines: one line, of a readable length.
MAX_REASON = 200
_GLOB = re.compile(r"[*?]")
# Control characters (newlines, ANSI escapes) a server might put in a description.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Format(StrEnum):
    """The syntaxes a starter policy can be written in."""

    NATIVE = "native"  # the seed's JSON
    YAML = "yaml"  # the same document as YAML
    INTERCEPT = "intercept"  # PolicyLayer Intercept's YAML


@dataclass(frozen=True, slots=True)
class ScannedTool:
    """A tool as listed, with the class the gateway gives it."""

    tool: ToolDefinition
    risk: RiskClass


def classify_tools(tools: Iterable[ToolDefinition], *, trusted: bool) -> list[ScannedTool]:
    """Each tool with its class; with no operator baseline, an untrusted server's tool is at
    least `write` (see `classify`)."""
    return [ScannedTool(t, classify(t.annotations, None, trusted=trusted)) for t in tools]


def expressible(tool: ToolDefinition) -> bool:
    """Whether a policy key can name exactly this tool (and no other)."""
    return _GLOB.search(tool.name) is None


def strictest(tools: Iterable[ScannedTool]) -> list[ScannedTool]:
    """One entry per name: a server listing a name twice gets the stricter of its classes."""
    by_name: dict[str, ScannedTool] = {}
    for item in tools:
        seen = by_name.get(item.tool.name)
        if seen is None or item.risk > seen.risk:
            by_name[item.tool.name] = item
    return list(by_name.values())


def summary(description: str) -> str:
    """The description's first non-empty line, without control characters, bounded."""
    line = next((s.strip() for s in description.splitlines() if s.strip()), "")
    line = _CONTROL.sub(" ", line)
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


def scaffold(tools: Sequence[ScannedTool], fmt: Format, *, source: str, trusted: bool) -> str:
    """The starter policy for `tools` in `fmt`, as the text of the file to write."""
    kept = strictest(t for t in tools if expressible(t.tool))
    hints = "trusted" if trusted else "untrusted (no tool is read from its hints alone)"
    description = (
        f"Starter policy written by `mcp-authz scan` from {source}; the server's hints were "
        f"{hints}. Review every rule before use."
    )
    if fmt is Format.INTERCEPT:
        document = _intercept(kept, description)
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    document = _native(kept, description)
    if fmt is Format.YAML:
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _reason(item: ScannedTool) -> str:
    what = summary(item.tool.description) or "no description given"
    return f"{item.risk.label} tool: {what}"


def _native(tools: Sequence[ScannedTool], description: str) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for item in tools:
        rule: dict[str, Any] = {"reason": _reason(item)}
        if item.risk is RiskClass.WRITE:
            rule["limits"] = [{"counter": f"{item.tool.name}_rate", **WRITE_LIMIT}]
        elif item.risk is RiskClass.DESTRUCTIVE:
            rule["action"] = "approve"
        rules[item.tool.name] = rule
    return {"version": "1", "description": description, "default": "deny", "tools": rules}


def _intercept(tools: Sequence[ScannedTool], description: str) -> dict[str, Any]:
    # Intercept has no approvals: a destructive tool is denied, and the reason says so.
    # Its counters are global here (docs/policy.md), so the write cap is one for everyone.
    rules: dict[str, Any] = {}
    for item in tools:
        reason = _reason(item)
        if item.risk is RiskClass.READ:
            rules[item.tool.name] = {"rules": []}
            continue
        rule: dict[str, Any] = {"name": f"{item.risk.label} tool"}
        if item.risk is RiskClass.WRITE:
            rule["rate_limit"] = f"{WRITE_LIMIT['max']}/{WRITE_LIMIT['window']}"
            rule["on_deny"] = f"{reason} (rate limit reached)"
        else:
            rule["action"] = "deny"
            rule["on_deny"] = f"{reason} (needs approval, which Intercept's format cannot express)"
        rules[item.tool.name] = {"rules": [rule]}
    return {"version": "1", "description": description, "default": "deny", "tools": rules}
