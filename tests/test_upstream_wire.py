"""The wire shapes: usage, end of stream and answer ids read from recorded events."""

from __future__ import annotations

import json
from typing import Any

from smartproxy.upstream.sse import StreamTally
from smartproxy.upstream.wire import (
    ANTHROPIC,
    CHAT,
    RESPONSES,
    UNMETERED,
    tokens_of,
)


def ev(name: str | None, payload: dict[str, Any]) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def test_tokens_of_each_usage_family() -> None:
    assert tokens_of({"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}) == (11, 6)
    assert tokens_of({"prompt_tokens": 11, "total_tokens": 17}) == (11, 6)
    responses = {"input_tokens": 21, "input_tokens_details": {"cached_tokens": 5},
                 "output_tokens": 7, "total_tokens": 28}  # fmt: skip
    assert tokens_of(responses) == (21, 7)  # cached input is inside input_tokens
    anthropic = {"input_tokens": 3, "cache_creation_input_tokens": 10,
                 "cache_read_input_tokens": 100, "output_tokens": 9}  # fmt: skip
    assert tokens_of(anthropic) == (113, 9)  # Anthropic's input_tokens leave the cache out
    assert tokens_of({}) == (0, 0)
    # a total above the two counts counts in full (thinking tokens left out of completion)
    assert tokens_of({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 20}) == (10, 10)
    assert tokens_of({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 12}) == (10, 5)


RESPONSE = {"id": "resp_1", "object": "response", "status": "completed",
            "usage": {"input_tokens": 21, "output_tokens": 7, "total_tokens": 28}}  # fmt: skip


def test_responses_stream_id_usage_and_end() -> None:
    tally = StreamTally()
    start = {**RESPONSE, "status": "in_progress", "usage": None}
    events = [
        ev("response.created", {"type": "response.created", "response": start}),
        ev("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        ev("response.output_text.delta", {"type": "response.output_text.delta", "delta": "!"}),
    ]
    for e in events:
        assert RESPONSES.inspect(e, tally) is False  # nothing is ever dropped
    assert tally.response_id == "resp_1" and tally.content_events == 2 and not tally.done
    assert tally.usage is None
    done = ev("response.completed", {"type": "response.completed", "response": RESPONSE})
    RESPONSES.inspect(done, tally)
    assert tally.done and tally.usage == RESPONSE["usage"]


def test_responses_events_without_event_lines_and_failed_end() -> None:
    tally = StreamTally()
    RESPONSES.inspect(ev(None, {"type": "response.created", "response": RESPONSE}), tally)
    failed = {**RESPONSE, "status": "failed"}
    RESPONSES.inspect(ev(None, {"type": "response.failed", "response": failed}), tally)
    assert tally.response_id == "resp_1" and tally.done


def test_responses_body_usage_and_id() -> None:
    body = json.dumps(RESPONSE).encode()
    assert RESPONSES.usage_of_body(body) == RESPONSE["usage"]
    assert RESPONSES.id_of_body is not None and RESPONSES.id_of_body(body) == "resp_1"
    assert RESPONSES.id_of_body(b'{"object": "list"}') is None
    assert not RESPONSES.ask_stream_usage and CHAT.ask_stream_usage


def test_anthropic_stream_usage_is_merged_and_cumulative() -> None:
    tally = StreamTally()
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 25, "cache_read_input_tokens": 100, "output_tokens": 1}}}  # fmt: skip
    ANTHROPIC.inspect(ev("message_start", start), tally)
    ANTHROPIC.inspect(ev("ping", {"type": "ping"}), tally)
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                                   "text": "x"}}  # fmt: skip
    ANTHROPIC.inspect(ev("content_block_delta", delta), tally)
    ANTHROPIC.inspect(ev("message_delta", {"type": "message_delta", "delta": {},
                                           "usage": {"output_tokens": 8}}), tally)  # fmt: skip
    ANTHROPIC.inspect(ev("message_delta", {"type": "message_delta", "delta": {},
                                           "usage": {"output_tokens": 15,
                                                     "input_tokens": None}}), tally)  # fmt: skip
    assert not tally.done
    ANTHROPIC.inspect(ev("message_stop", {"type": "message_stop"}), tally)
    assert tally.done and tally.content_events == 1
    assert tally.usage is not None and tokens_of(tally.usage) == (125, 15)


def test_an_upstream_error_event_ends_the_stream_and_says_why() -> None:
    tally = StreamTally()
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    ANTHROPIC.inspect(ev("error", error), tally)
    assert tally.done and tally.error == "overloaded_error: Overloaded"
    error = {"type": "error", "code": "server_error", "message": "Boom", "param": None,
             "sequence_number": 3}  # fmt: skip
    for name in ("error", None):  # with or without its ``event:`` line
        tally = StreamTally()
        RESPONSES.inspect(ev(name, error), tally)
        assert tally.done and tally.error == "server_error: Boom"
    tally = StreamTally()  # a chat stream has no error event: it ends at [DONE] only
    CHAT.inspect(ev(None, {"error": {"message": "Boom"}}), tally)
    assert not tally.done and tally.error is None


def test_error_events_per_shape() -> None:
    anthropic = json.loads(ANTHROPIC.error_event("cut").split(b"data: ", 1)[1])
    assert anthropic == {"type": "error", "error": {"type": "api_error", "message": "cut"}}
    responses = json.loads(RESPONSES.error_event("cut").split(b"data: ", 1)[1])
    assert responses["type"] == "error" and responses["message"] == "cut"
    chat = json.loads(CHAT.error_event("cut").split(b"data: ", 1)[1])
    assert chat["error"]["message"] == "cut"


def test_unmetered_answers_charge_nothing() -> None:
    assert UNMETERED.usage_of_body(json.dumps(RESPONSE).encode()) == {}
    assert tokens_of(UNMETERED.usage_of_body(b"{}") or {"x": 1}) == (0, 0)
