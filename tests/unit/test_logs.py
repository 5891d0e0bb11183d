"""Operational logs as JSON: one object a line, named as the audit log names its fields."""

from __future__ import annotations

import json
import logging

import authz
from authz.observe.logs import JsonFormatter


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    made = logging.LogRecord("mcp_authz", logging.WARNING, "f.py", 1, message, args, info)
    made.created = 1767323045.678  # 2026-01-02T03:04:05.678Z
    return made


def test_a_line_carries_time_level_logger_message_and_version() -> None:
    line = JsonFormatter().format(record("reload failed: %s", "bad\npolicy"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-01-02T03:04:05.678+00:00",
        "level": "WARNING",
        "logger": "mcp_authz",
        "message": "reload failed: bad\npolicy",
        "version": authz.__version__,
    }


def fail() -> None:
    raise ValueError("boom")


def test_an_exception_stays_inside_its_line() -> None:
    try:
        fail()
    except ValueError as e:
        line = JsonFormatter().format(record("failed", exc=e))
    assert "\n" not in line
    assert json.loads(line)["error"].endswith("ValueError: boom")
