"""The ``/v1/messages`` front (Anthropic Messages) on OpenAI-compatible channels: the
dispatcher's per-attempt adapter (``base.Adapter``) for (openai | azure | mock, ``/messages``).

The translations are pure functions: the request in ``messages_request``, answers, stream events
and error bodies in ``messages_answer``. Usage is counted from the upstream's own (OpenAI) numbers.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import ChannelConfig
from ..errors import Untranslatable
from ..upstream.errors import UpstreamConnectError
from ..upstream.sse import StreamTally, event_data
from .messages_answer import ChatToMessagesStream, chat_error_to_anthropic, chat_to_message
from .messages_request import Json, TranslationError, messages_to_chat

CHAT_PATH = "/chat/completions"


# ----------------------------------------------------------------------------- the adapter
class MessagesToChat:
    """The ``/v1/messages`` front (the client) on an OpenAI-compatible channel (``base.Adapter``)."""

    def request(
        self, body: dict[str, Any], *, model: str, channel: ChannelConfig
    ) -> tuple[str, bytes]:
        try:
            out = messages_to_chat(body)
        except TranslationError as exc:
            raise Untranslatable(str(exc), param=exc.param) from None
        out["model"] = model
        return CHAT_PATH, orjson.dumps(out)

    def answer(self, body: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            answer = orjson.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamConnectError("upstream answer is not a chat completion")
        usage = answer.get("usage")
        message = chat_to_message(answer, str(answer.get("model") or ""))
        return orjson.dumps(message), usage if isinstance(usage, dict) else None

    def error(self, status: int, body: bytes) -> bytes:
        return chat_error_to_anthropic(status, body)

    def stream(self, *, include_usage: bool) -> ChatStreamToMessages:
        return ChatStreamToMessages()


class ChatStreamToMessages:
    """One attempt's chat SSE events -> Anthropic SSE events (``base.StreamAdapter``)."""

    def __init__(self) -> None:
        self.tally = StreamTally()
        self._events: ChatToMessagesStream | None = None

    def feed(self, event: bytes) -> list[bytes]:
        data = event_data(event)
        if not data:
            return []
        if data.strip() == b"[DONE]":
            self.tally.done = True
            return self._stream({}).finish()
        try:
            chunk = orjson.loads(data)
        except ValueError:
            raise UpstreamConnectError("upstream sent an unreadable stream event") from None
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            text = error.get("message") if isinstance(error, dict) else error
            raise UpstreamConnectError(f"upstream stream error: {text}")
        if isinstance(chunk.get("usage"), dict):
            self.tally.usage = chunk["usage"]
        if chunk.get("choices"):
            self.tally.content_events += 1
        return self._stream(chunk).feed(chunk)

    def _stream(self, chunk: Json) -> ChatToMessagesStream:
        if self._events is None:
            self._events = ChatToMessagesStream(str(chunk.get("model") or ""))
        return self._events
