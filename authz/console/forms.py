"""Reading the console's forms within bounds: the body, the fields and each value are capped
before anything is parsed, so a hostile POST costs a fixed amount of memory."""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.requests import Request

# The largest form the console has is the "try a call" box: a tool name and its arguments.
MAX_FORM_BYTES: Final = 64 * 1024
MAX_FIELDS: Final = 16
MAX_NOTE_CHARS: Final = 1000


class FormError(ValueError):
    """A form the console will not read; the message says which field and why."""


async def read_form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        raise FormError("expected an HTML form (application/x-www-form-urlencoded)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
    try:
        pairs = parse_qsl(body.decode(), max_num_fields=MAX_FIELDS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormError(f"the form cannot be read: {e}") from None
    return dict(pairs)


def text(form: dict[str, str], name: str, limit: int, *, required: bool = True) -> str:
    value = form.get(name, "").strip()
    if required and not value:
        raise FormError(f"{name}: required")
    if len(value) > limit:
        raise FormError(f"{name}: longer than {limit} characters")
    if not all(c.isprintable() or c in "\n\r\t" for c in value):
        raise FormError(f"{name}: holds control characters")
    return value


def json_field(form: dict[str, str], name: str, kind: type, default: str) -> Any:
    raw = form.get(name, "").strip() or default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise FormError(f"{name}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise FormError(f"{name}: nested too deeply") from None
    if not isinstance(value, kind):
        raise FormError(f"{name}: must be a JSON {kind.__name__.replace('dict', 'object')}")
    return value
