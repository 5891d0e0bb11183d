"""The SSE reader: whole events out of arbitrary chunks, bounded, bytes kept as received."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.protocol.sse import Event, SseError, SseReader, encode

# Field values: anything but line ends (they would end the line).
_VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))
_FIELD = st.one_of(
    st.tuples(st.just("data"), _VALUE),
    st.tuples(st.just("event"), _VALUE),
    st.tuples(st.just("id"), _VALUE),
    st.tuples(st.just(""), _VALUE),  # a comment line
)
_EVENT = st.lists(_FIELD, min_size=1, max_size=5)
_EOL = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A valid stream: events of field lines, each line and event ended by any line end."""
    out = []
    for fields in draw(st.lists(_EVENT, max_size=6)):
        for name, value in fields:
            out.append(f"{name}: {value}" if name else f":{value}")
            out.append(draw(_EOL))
        out.append(draw(_EOL))
    return "".join(out).encode()


def read(chunks: list[bytes]) -> list[Event]:
    reader = SseReader()
    events = [e for chunk in chunks for e in reader.feed(chunk)]
    return events + reader.finish()


@given(streams(), st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_stream_gives_the_same_events(stream: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert read(chunks) == read([stream])
    # Every byte is accounted for, in order: events pass through unchanged.
    assert b"".join(e.raw for e in read(chunks)) == stream


@given(streams())
def test_one_byte_at_a_time_gives_the_same_events(stream: bytes) -> None:
    assert read([stream[i : i + 1] for i in range(len(stream))]) == read([stream])


def test_fields_are_read_as_the_standard_says() -> None:
    stream = b'\xef\xbb\xbfid: 7\r\nevent: message\r\ndata: {"a":\r\ndata:1}\r\n: ping\r\n\r\n'
    [event] = read([stream])
    assert event == Event(stream, '{"a":\n1}', "message", "7")


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    reader = SseReader()
    assert reader.feed(b"data: x\r") == []
    # Had the CR ended the line, the LF would be an empty line that ends the event here.
    assert reader.feed(b"\n") == []
    assert [e.data for e in reader.feed(b"\r\n")] == ["x"]


def test_a_cr_at_the_end_of_the_stream_ends_its_line() -> None:
    assert [e.data for e in read([b"data: x\r\r"])] == ["x"]


def test_an_event_without_data_is_kept_but_carries_none() -> None:
    [event] = read([b": keep-alive\n\n"])
    assert event.data is None


def test_the_unterminated_tail_is_returned_at_the_end() -> None:
    assert [e.data for e in read([b"data: a\n\ndata: b"])] == ["a", "b"]


def test_an_event_over_the_bound_is_refused_before_it_ends() -> None:
    reader = SseReader(max_event_bytes=16)
    reader.feed(b"data: 0123456\n")
    with pytest.raises(SseError, match="over 16 bytes"):
        reader.feed(b"data: 0123456789\n")


def test_completed_events_free_their_bytes() -> None:
    reader = SseReader(max_event_bytes=32)
    for _ in range(100):  # 100 events of 20 bytes: only the one in progress counts
        assert len(reader.feed(b"data: 0123456789ab\n\n")) == 1


def test_encode_reads_back_with_type_and_id() -> None:
    raw = encode('{"x":\n1}', event="message", event_id="e-1")
    [event] = read([raw])
    assert (event.data, event.event, event.id) == ('{"x":\n1}', "message", "e-1")


def test_only_cr_and_lf_end_lines() -> None:
    [event] = read(["data: a\u2028b\x85c\x0bd\n\n".encode()])
    assert event.data == "a\u2028b\x85c\x0bd"
