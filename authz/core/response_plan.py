"""What the response side (ext_proc) must do with a request's answer, as ext_authz decided it.

ext_authz judges the request and ext_proc sees the answer; they are two Envoy filters and may
be served by two processes. The plan travels between them in one request header that
ext_authz sets on every request it allows (or removes, when there is no plan), after the
client's headers and before ext_proc's, so the client can never choose it; ext_proc reads it
and removes it before the request goes upstream. It says:

- which caller's grant a `tools/list` answer (or a GET event stream) is filtered for, and
  whether the request asked for a later page (then the answer is not the whole list);
- what the request counted, and when, so a 5xx answer gives exactly that back
  (CounterStore.refund), once, under the decision id, while it is still in its window.

Decoding is strict: a plan that does not parse is an error the edge fails closed on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson

from authz.core.outcome import Outcome
from authz.limits.base import CounterKey, Hit

PLAN_HEADER: Final = "x-mcp-authz-response"
# Envoy's request headers are capped at 60 KiB in all; a plan over this leaves out its
# refund (a counted call then stays counted: the strict side) rather than break the request.
MAX_PLAN_CHARS: Final = 16384
_REFUND_BUDGET: Final = MAX_PLAN_CHARS - 512


class PlanError(ValueError):
    """A plan header that is not one ext_authz wrote."""


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    decision_id: str
    # The caller's grant, when the answer may list tools: filter it for this grant.
    grant: str | None = None
    # The request asked for a later page (params.cursor): its answer is not the whole list.
    paged: bool = False
    # The units the request counted, given back when the upstream answers 5xx.
    refund: tuple[Hit, ...] = ()
    # When ext_authz counted them (epoch seconds); None when unknown, then nothing is given
    # back (the stores refund from a key's newest entries, so a unit that already left the
    # window would take back a later call's).
    counted_at: float | None = None

    @property
    def filters(self) -> bool:
        return self.grant is not None

    def encode(self) -> str:
        return _encode(self.decision_id, self.grant, self.paged, self.refund, self.counted_at)

    @classmethod
    def decode(cls, value: str) -> ResponsePlan:
        if len(value) > MAX_PLAN_CHARS:
            raise PlanError(f"the plan header is over {MAX_PLAN_CHARS} characters")
        try:
            doc = json.loads(value)
            grant = doc.get("g")
            plan = cls(
                _text(doc["d"]),
                None if grant is None else _text(grant),
                doc.get("p", False) is True,
                tuple(_hit(item) for item in doc.get("r", ())),
                None if doc.get("t") is None else _stamp(doc["t"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"the plan header does not parse: {e}") from None
        return plan


def plan_header(outcome: Outcome) -> str | None:
    """The encoded plan of an allowed outcome (every allowed request writes one, so no
    ResponsePlan is built for it); None when its answer needs no processing."""
    grant, limits = outcome.view_grant, outcome.limits
    if grant is None and not limits:
        return None
    paged = grant is not None and any(c.paged for c in outcome.calls if c.method == "tools/list")
    refund = tuple(state.hit for state in limits)
    return _encode(outcome.decision_id, grant, paged, refund, time.time() if refund else None)


def _encode(
    decision_id: str,
    grant: str | None,
    paged: bool,
    refund: tuple[Hit, ...],
    counted_at: float | None,
) -> str:
    doc: dict[str, Any] = {"d": decision_id}
    if grant is not None:
        doc["g"], doc["p"] = grant, paged
    if not refund or counted_at is None:
        return _json(doc)
    rows = [
        [h.key.counter, h.key.scope, list(h.key.subject), h.limit, h.window, h.cost] for h in refund
    ]
    # To the millisecond; round(t, 3) costs as much as the rest of the plan.
    whole = _json(doc | {"r": rows, "t": int(counted_at * 1000 + 0.5) / 1000})
    # The refund is a part of the whole: only a long whole needs the refund measured apart.
    if len(whole) <= _REFUND_BUDGET or len(_json(rows)) <= _REFUND_BUDGET:
        return whole
    return _json(doc)


# Built once: json.dumps with options builds an encoder per call.
_ascii_json: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def _json(doc: Any) -> str:
    """`doc` as compact ASCII JSON, a header value: orjson's text (every allowed request
    writes a plan), or the standard library's escapes for what is not ASCII."""
    try:
        raw = orjson.dumps(doc)
    except TypeError:
        return _ascii_json(doc)
    return raw.decode("ascii") if raw.isascii() else _ascii_json(doc)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def _stamp(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"expected a time, got {value!r}")
    return float(value)


def _hit(item: Any) -> Hit:
    counter, scope, subject, limit, window, cost = item
    key = CounterKey(_text(counter), _text(scope), tuple(_text(s) for s in subject))
    return Hit(key, _count(limit), _count(window), _count(cost))
