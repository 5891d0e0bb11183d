"""The `scan` subcommand: flags and headers, the catalogue table, the starter policy file."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from authz.policy.load import PolicyError, parse_policy
from authz.policy.scaffold import (
    Format,
    ScannedTool,
    classify_tools,
    expressible,
    scaffold,
    summary,
)
from authz.scan import Catalogue, ScanError

# The same names as client.MODES, which cannot be imported before a scan runs.
PROTOCOLS: Final = ("auto", "2025-11-25", "2026-07-28")
DEFAULT_PROTOCOL: Final = "auto"
DEFAULT_TIMEOUT: Final = 30.0
EXIT_OK: Final = 0
EXIT_FAILED: Final = 2
_TABLE_CELL: Final = 60
_HINTS: Final = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def add_command(commands: Any) -> None:
    scan = commands.add_parser(
        "scan", help="list a live MCP server's tools with risk classes and write a starter policy"
    )
    scan.add_argument("url", metavar="URL", help="the server's streamable HTTP endpoint")
    scan.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="a request header, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    scan.add_argument(
        "--header-file",
        type=Path,
        metavar="FILE",
        help="headers as 'NAME: VALUE' lines (# comments), so a token is not on the command line",
    )
    scan.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default=DEFAULT_PROTOCOL,
        help="MCP revision: auto (discover, else the 2025-11-25 handshake) or a pinned one",
    )
    scan.add_argument(
        "--trust-annotations",
        action="store_true",
        help="take the server's readOnly/destructive hints as true (otherwise they only tighten)",
    )
    scan.add_argument("--output", type=Path, metavar="FILE", help="write a starter policy here")
    scan.add_argument(
        "--format",
        choices=[f.value for f in Format],
        default=Format.NATIVE.value,
        help="the starter policy's syntax: native (the seed's JSON), yaml, or intercept",
    )
    scan.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    scan.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds for it all")
    scan.set_defaults(handler=_scan)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        # Nothing of it is echoed: a header without its name is likely a bare token.
        raise argparse.ArgumentTypeError("expected 'NAME: VALUE', e.g. 'Authorization: Bearer ...'")
    if _CONTROL.search(text):
        # httpx's own refusal would quote the value.
        raise argparse.ArgumentTypeError(f"header {name!r}: its value has a control character")
    return name, value.strip()


def read_header_file(path: Path) -> list[tuple[str, str]]:
    """The headers of a `--header-file`; a bad line names the file and line, never the value."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ScanError(f"{path}: cannot read the header file: {e}") from e
    headers = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            headers.append(_header(line))
        except argparse.ArgumentTypeError as e:
            raise ScanError(f"{path}:{number}: {e}") from None
    return headers


def table(tools: Sequence[ScannedTool]) -> str:
    """The catalogue as aligned columns: name, class, open_world, annotations, description."""
    rows = [("NAME", "CLASS", "OPEN_WORLD", "ANNOTATIONS", "DESCRIPTION")]
    for item in tools:
        # Only the hints that class a tool: the rest of `annotations` is the server's to fill.
        hints = {k: v for k, v in item.tool.annotations.items() if k in _HINTS}
        cells = (
            summary(item.tool.name),
            item.risk.label,
            str(item.tool.open_world).lower(),
            _cell(json.dumps(hints, separators=(",", ":"), sort_keys=True)),
            _cell(summary(item.tool.description)),
        )
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        for row in rows
    )


def _cell(text: str) -> str:
    return text if len(text) <= _TABLE_CELL else text[: _TABLE_CELL - 1] + "…"


def _scan(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ScanError as e:
        print(f"mcp-authz scan: {e}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if args.output is not None and args.output.exists() and not args.force:
        raise ScanError(f"{args.output}: exists; pass --force to overwrite it")
    _check_suffix(args.output, Format(args.format))
    headers = list(args.header)
    if args.header_file is not None:
        headers += read_header_file(args.header_file)
    if headers and _in_clear(args.url):
        print(
            f"note: {args.url} is plain http: the headers cross the network unencrypted",
            file=sys.stderr,
        )
    catalogue = _list(args.url, headers, args.protocol, args.timeout)
    scanned = classify_tools(catalogue.tools, trusted=args.trust_annotations)
    print(f"{args.url}: {len(scanned)} tools (protocol {catalogue.protocol})")
    print(table(scanned))
    for note in _notes(scanned, catalogue.skipped, trusted=args.trust_annotations):
        print(f"note: {note}")
    if args.output is not None:
        fmt = Format(args.format)
        text = scaffold(scanned, fmt, source=args.url, trusted=args.trust_annotations)
        _check_loads(text, args.output)
        args.output.write_text(text, encoding="utf-8")
        print(
            f"wrote {args.output} ({fmt.value}); check it with `mcp-authz validate {args.output}`"
        )
    return EXIT_OK


def _list(url: str, headers: list[tuple[str, str]], protocol: str, seconds: float) -> Catalogue:
    try:
        from authz.scan import client  # noqa: PLC0415 - the SDK is optional and slow to import
    except ImportError as e:
        raise ScanError(f"scan needs the MCP SDK: pip install 'mcp-authz[scan]' ({e})") from e
    try:
        return client.scan(url, headers, protocol, seconds)
    except ScanError:
        raise
    except BaseException as e:  # the SDK raises groups of transport and protocol errors
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        # The cause may quote the server: one line, no control characters, bounded.
        raise ScanError(f"cannot list the tools of {url}: {summary(_cause(e))}") from e


def _notes(tools: Sequence[ScannedTool], skipped: Sequence[str], *, trusted: bool) -> list[str]:
    notes = []
    if not trusted:
        notes.append(
            "annotations are untrusted hints: no tool is classed read from them alone, so "
            "readOnlyHint tools show as write; pass --trust-annotations if you trust this server"
        )
    notes += [f"skipped {s}" for s in skipped]
    notes += [
        f"{item.tool.name[:64]!r} is left out of the policy: `*` or `?` would make it a pattern"
        for item in tools
        if not expressible(item.tool)
    ]
    return notes


def _in_clear(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1")


def _check_suffix(output: Path | None, fmt: Format) -> None:
    # The loader reads `.yaml`/`.yml` as YAML and anything else as JSON (docs/policy.md).
    if output is not None and fmt is not Format.NATIVE and output.suffix not in (".yaml", ".yml"):
        raise ScanError(f"{output}: --format {fmt.value} writes YAML: name the file .yaml or .yml")


def _check_loads(text: str, output: Path) -> None:
    # A scaffold that does not load is our bug; refuse to write it rather than hand it over.
    try:
        parse_policy(text.encode(), str(output))
    except PolicyError as e:
        raise ScanError(f"the starter policy would not load (a bug, please report it): {e}") from e


def _cause(error: BaseException) -> str:
    """The innermost message of an exception group, as the person scanning needs it."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, TimeoutError):
        return "no answer within the timeout"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
