"""Anthropic channels (SmartAIProxy's ``claude``): OpenAI chat requests over the Messages API.

The provider sends to ``{base}/v1/messages`` (``endpoint`` default ``https://api.anthropic.com``;
SmartAIProxy's ``.../v1`` form means the same base) with ``x-api-key`` and ``anthropic-version``.
``ChatToMessages`` is the dispatcher's per-attempt adapter (``base.Adapter``); the translations
themselves are pure functions in ``anthropic_request`` (request) and ``anthropic_answer``
(answer, stream events, error bodies).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from multidict import CIMultiDict

from ..config import ChannelConfig
from ..upstream.errors import UpstreamConnectError
from .anthropic_answer import MessagesStreamToChat, error_to_openai, message_to_chat
from .anthropic_request import chat_to_messages
from .base import OutgoingRequest
from .openai import OpenAIProvider

MESSAGES_PATH = "/messages"


class AnthropicProvider(OpenAIProvider):
    name = "anthropic"

    def url(self, channel: ChannelConfig, request: OutgoingRequest) -> str:
        base = channel.endpoint.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        url = f"{base}/v1{request.path}"
        return f"{url}?{request.query_string}" if request.query_string else url

    def headers(self, channel: ChannelConfig, request: OutgoingRequest) -> CIMultiDict[str]:
        headers = CIMultiDict(request.headers)
        headers.setdefault("anthropic-version", channel.anthropic_version)
        for k, v in channel.headers.items():
            headers[k] = v
        headers.popall("Authorization", None)
        if channel.api_key:
            headers["x-api-key"] = channel.api_key
        headers["Content-Type"] = "application/json"
        return headers


class ChatToMessages:
    """OpenAI chat completions (the client) on an Anthropic channel (the upstream)."""

    def request(
        self, body: dict[str, Any], *, model: str, channel: ChannelConfig
    ) -> tuple[str, bytes]:
        out = chat_to_messages(body, model=model, default_max_tokens=channel.default_max_tokens)
        return MESSAGES_PATH, orjson.dumps(out)

    def answer(self, body: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            msg = orjson.loads(body)
        except ValueError:
            msg = None
        if not isinstance(msg, dict) or msg.get("type") != "message":
            raise UpstreamConnectError("upstream answer is not a Messages API message")
        chat = message_to_chat(msg, int(time.time()))
        return orjson.dumps(chat), chat.get("usage")

    def error(self, status: int, body: bytes) -> bytes:
        return error_to_openai(status, body)

    def stream(self, *, include_usage: bool) -> MessagesStreamToChat:
        return MessagesStreamToChat(include_usage=include_usage, created=int(time.time()))
