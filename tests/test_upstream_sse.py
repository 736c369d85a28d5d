"""EventSplitter, usage detection and the error event of smartproxy.upstream.sse."""

from __future__ import annotations

import json

import pytest

from smartproxy.upstream.sse import (
    EventSplitter,
    StreamTally,
    error_event,
    event_data,
    inspect_event,
    usage_of_body,
)

CONTENT = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}'
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}'


def split_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    events = [e for chunk in chunks for e in splitter.feed(chunk)]
    return events, splitter.rest()


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_splits_whole_events_keeping_their_separator(sep: bytes) -> None:
    stream = b"data: one" + sep + b"data: two" + sep + b"data: [DONE]" + sep
    events, rest = split_all([stream])
    assert events == [b"data: one" + sep, b"data: two" + sep, b"data: [DONE]" + sep]
    assert rest == b""
    assert b"".join(events) == stream  # nothing added, nothing lost


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_events_split_across_chunks_byte_by_byte(sep: bytes) -> None:
    stream = b"event: message" + sep[: len(sep) // 2] + b"data: a" + sep + b"data: b" + sep
    events, rest = split_all([stream[i : i + 1] for i in range(len(stream))])
    assert events == [b"event: message" + sep[: len(sep) // 2] + b"data: a" + sep, b"data: b" + sep]
    assert rest == b""


def test_separator_split_between_two_chunks() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\n\r") == []
    assert splitter.feed(b"\ndata: b\n") == [b"data: a\r\n\r\n"]
    assert splitter.feed(b"\n") == [b"data: b\n\n"]


def test_rest_returns_an_unfinished_event_once() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: whole\n\ndata: half") == [b"data: whole\n\n"]
    assert splitter.rest() == b"data: half"
    assert splitter.rest() == b""


def test_event_data_joins_data_lines_and_ignores_the_rest() -> None:
    event = b"event: x\nid: 7\n: comment\ndata: line1\ndata:line2\n\n"
    assert event_data(event) == b"line1\nline2"
    assert event_data(b": keep-alive\n\n") == b""


def test_usage_only_chunk_is_detected_and_recorded() -> None:
    tally = StreamTally()
    assert inspect_event(CONTENT + b"\n\n", tally) is False
    assert inspect_event(USAGE + b"\n\n", tally) is True  # the one the gateway may strip
    assert inspect_event(b"data: [DONE]\n\n", tally) is False
    assert tally.usage == {"prompt_tokens": 5, "completion_tokens": 2}
    assert tally.content_events == 1
    assert tally.done


def test_usage_on_a_content_chunk_is_kept_and_counted() -> None:
    tally = StreamTally()
    event = b'data: {"choices": [{"delta": {"content": "x"}}], "usage": {"total_tokens": 9}}\n\n'
    assert inspect_event(event, tally) is False  # it carries content: never stripped
    assert tally.usage == {"total_tokens": 9}
    assert tally.content_events == 1


def test_comments_bad_json_and_plain_chunks() -> None:
    tally = StreamTally()
    assert inspect_event(b": ping\n\n", tally) is False
    assert tally.content_events == 0
    assert inspect_event(b'data: {"usage": oops\n\n', tally) is False
    assert inspect_event(b'data: {"choices": [{"text": "a"}]}\n\n', tally) is False
    assert tally.content_events == 2 and tally.usage is None and not tally.done


def test_usage_of_body() -> None:
    assert usage_of_body(b'{"id": 1, "usage": {"prompt_tokens": 3}}') == {"prompt_tokens": 3}
    assert usage_of_body(b'{"id": 1}') is None
    assert usage_of_body(b'{"usage": null}') is None
    assert usage_of_body(b'"usage" but not json') is None
    assert usage_of_body(b'["usage"]') is None


def test_error_event_is_an_sse_error_with_an_openai_shaped_body() -> None:
    event = error_event("upstream stream broke: reset")
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    (only,) = split_all([event])[0]
    body = json.loads(event_data(only))
    assert body == {
        "error": {
            "message": "upstream stream broke: reset",
            "type": "upstream_error",
            "code": "upstream_stream_error",
            "param": None,
        }
    }


def test_many_events_in_one_chunk_with_every_separator() -> None:
    """A chunk holding thousands of events (a burst the upstream wrote at once) is split in one
    pass; LF, CRLF and CR blank lines each end an event, mixed or not."""
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        events = [b": keep-alive" + sep] * 5000 + [b"data: [DONE]" + sep]
        splitter = EventSplitter()
        assert splitter.feed(b"".join(events)) == events
        assert splitter.rest() == b""
    mixed = [b"data: 1\n\n", b"data: 2\r\n\r\n", b"data: 3\r\r", b"data: 4\n\n"]
    splitter = EventSplitter()
    got = splitter.feed(b"".join(mixed) + b"data: 5")
    assert got == mixed and splitter.rest() == b"data: 5"
