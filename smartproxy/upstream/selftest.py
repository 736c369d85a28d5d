"""``POST /api/channels/{name}/test``: one tiny real request to one channel, now.

The request is a chat completion with ``max_tokens: 1`` (one token of answer: the cheapest call
every OpenAI-shaped provider has), sent straight to the channel's provider: no routing, no quota
check, no breaker permit — a disabled channel or one with an open circuit can be tested, which is
the point (test, then enable). What it costs is still counted: usage counters, metrics and a line
in the request log whose ``request_id`` starts with ``test-`` and whose key is ``(channel test)``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from .. import __version__
from ..audit import config_secrets, scrub
from ..config import ChannelConfig
from ..providers import adapter_for
from ..providers.base import OutgoingRequest, Timeouts
from ..routing.pricing import cost_local
from ..state import Gateway
from ..storage.base import RequestRecord
from .encoding import content_coding, decoded
from .errors import AttemptError
from .proxyconf import proxy_route
from .sse import usage_of_body

TEST_KEY_NAME = "(channel test)"  # the request log's api_key_name for self-tests
PROMPT = "Reply with one word: ok"


@dataclass(frozen=True, slots=True)
class ChannelTestResult:
    ok: bool
    status: int | None  # upstream's HTTP status; None when no answer came
    latency_ms: float
    model: str  # the model asked of upstream (after model_mapping)
    error: str | None
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": self.status, "latency_ms": self.latency_ms,
                "model": self.model, "error": self.error, "request_id": self.request_id}


def default_model(ch: ChannelConfig) -> str | None:
    """The model a test asks for when none is given: the channel's first named one."""
    if ch.models:
        return ch.models[0]
    if ch.model_mapping:
        return next(iter(ch.model_mapping))
    return "mock-1" if ch.type == "mock" else None


def _timeouts(gw: Gateway, ch: ChannelConfig) -> Timeouts:
    server = gw.config.server
    total = ch.timeout or server.timeout
    return Timeouts(total=total, connect=ch.connect_timeout or min(server.connect_timeout, total),
                    first_byte=ch.first_byte_timeout or total)


LISTS_MODELS = ("openai", "anthropic")  # GET {base}/models lists what the key may call


async def discover_model(gw: Gateway, ch: ChannelConfig) -> tuple[str | None, str | None]:
    """For a channel that serves any model: the first model its upstream's ``GET /models``
    lists (OpenAI and Anthropic both have it), or None and why not."""
    outgoing = OutgoingRequest(
        method="GET", path="/models", query_string="",
        headers=CIMultiDict({"User-Agent": f"SmartProxy/{__version__} (channel test)"}),
        body=b"", stream=False, model="", proxy=proxy_route(ch, gw.config.server),
    )
    try:
        reply = await gw.providers[ch.provider].send(ch, outgoing, _timeouts(gw, ch))
        try:
            status, answer = reply.status, await reply.read()
        finally:
            reply.close()
    except AttemptError as exc:
        return None, f"listing its models: {exc.message}"
    if not 200 <= status < 300:
        return None, f"listing its models: HTTP {status}: {_error_message(answer)}"
    try:
        data = json.loads(answer).get("data")
        first = next(m["id"] for m in data if isinstance(m.get("id"), str) and m["id"])
    except (ValueError, AttributeError, TypeError, KeyError, StopIteration):
        return None, "listing its models: the answer names none"
    return str(first), None


async def run_channel_test(gw: Gateway, ch: ChannelConfig, model: str) -> ChannelTestResult:
    """Send the test request and record what it cost; never raises for upstream failures."""
    server = gw.config.server
    timeouts = _timeouts(gw, ch)
    upstream_model = ch.upstream_model(model)
    body = {"model": upstream_model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 1}
    # A channel of another API shape (anthropic) gets the same request in its own words.
    adapter = adapter_for(ch.provider, "/chat/completions")
    path, raw = ("/chat/completions", json.dumps(body).encode())
    if adapter is not None:
        path, raw = adapter.request(body, model=upstream_model, channel=ch)
    outgoing = OutgoingRequest(
        method="POST", path=path, query_string="",
        headers=CIMultiDict({"Content-Type": "application/json",
                             "User-Agent": f"SmartProxy/{__version__} (channel test)"}),
        body=raw, stream=False, model=upstream_model, proxy=proxy_route(ch, server),
    )
    request_id = f"test-{os.urandom(8).hex()}"
    started, t0 = gw.clock(), time.monotonic()
    status: int | None = None
    answer = b""
    error: str | None = None
    try:
        reply = await gw.providers[ch.provider].send(ch, outgoing, timeouts)
        try:
            status, answer = reply.status, await reply.read()
            if (coding := content_coding(reply.headers)) is not None:  # compressed anyway
                answer = decoded(answer, coding, gw.config.server.max_body_bytes) or b""
        finally:
            reply.close()
    except AttemptError as exc:
        error = exc.message
    seconds = time.monotonic() - t0
    ok = status is not None and 200 <= status < 300
    usage: dict[str, Any] | None = None
    if ok:
        try:
            answer, usage = adapter.answer(answer) if adapter else (answer, usage_of_body(answer))
        except AttemptError as exc:
            ok, error = False, f"unreadable answer: {exc.message}"
    elif status is not None:
        shown = adapter.error(status, answer) if adapter else answer
        error = f"HTTP {status}: {_error_message(shown)}"
    error = scrub(error, config_secrets(gw.config)) if error else None
    gw.metrics.observe_upstream(ch.name, status if status is not None else "error", seconds)
    prompt = int((usage or {}).get("prompt_tokens") or 0)
    completion = int((usage or {}).get("completion_tokens") or 0)
    cost = cost_local(ch, prompt, completion, gw.snapshot.minutes.at(started).hhmm)
    gw.metrics.add_usage(ch.name, prompt, completion, cost)
    record = RequestRecord(
        ts=started.timestamp(), request_id=request_id, api_key_name=TEST_KEY_NAME,
        channel=ch.name, model=model, prompt_tokens=prompt, completion_tokens=completion,
        cost=cost, status=status if status is not None else 502, latency_ms=seconds * 1000,
        usage_source="upstream" if usage else "none", error=error,
    )
    await gw.store.settle(None, record, gw.clock())
    return ChannelTestResult(ok=ok, status=status, latency_ms=round(seconds * 1000, 1),
                      model=upstream_model, error=error, request_id=request_id)


def _error_message(body: bytes) -> str:
    """Upstream's own error text (OpenAI ``error.message``, or the start of the body)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace") or "(empty body)"
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:500]
    if isinstance(err, str):
        return err[:500]
    return json.dumps(obj)[:200]
