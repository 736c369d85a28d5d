"""What one client request carries through the upstream layer, and what each attempt leaves.

``Exchange`` (the request), ``AttemptLog`` (one attempt's outcome), ``Verdict`` (one attempt's
breaker permit) and ``header_safe``. The dispatcher (``client``) and the stream relay (``relay``)
both use them; ``client`` re-exports them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict

from .. import fastjson
from ..config import ChannelConfig
from ..routing.router import RequestFacts
from ..state import Gateway, Snapshot
from ..storage.base import RequestRecord, Reservation
from .breaker import Permit
from .health import ChannelHealth
from .wire import CHAT, Wire


@dataclass(slots=True)
class Verdict:
    """One attempt's breaker permit and where its outcome goes (exactly one verdict is given)."""

    health: ChannelHealth
    permit: Permit

    def success(self) -> None:
        self.health.success(self.permit)

    def failure(self) -> None:
        self.health.failure(self.permit)

    def release(self) -> None:
        self.health.release(self.permit)

    def rate_limited(self, retry_after: float | None, default: float) -> None:
        self.health.rate_limited(retry_after, default, self.permit)


@dataclass(slots=True)
class AttemptLog:
    """One attempt: an HTTP status, or an error ``kind`` ("error" | "timeout") and its message."""

    channel: str
    status: int | None
    error: str | None
    seconds: float
    kind: str = "http"

    @property
    def timed_out(self) -> bool:
        return self.kind == "timeout"

    def short(self) -> str:
        """``channel:status`` (or ``channel:error|timeout``) for ``x-smartproxy-attempts``."""
        outcome = self.status if self.status is not None else self.kind
        return f"{header_safe(self.channel)}:{outcome}"

    def describe(self) -> str:
        """``channel: outcome after N ms`` for the message of a gateway-made 502/503/504."""
        if self.status is not None:
            outcome = f"HTTP {self.status}"
        else:
            outcome = f"{self.kind} ({self.error})" if self.timed_out else f"{self.error}"
        return f"{self.channel}: {outcome} after {self.seconds * 1000:.0f} ms"


@dataclass(slots=True)
class Exchange:
    """Everything one client request carries through the upstream layer."""

    request: web.Request
    snap: Snapshot
    facts: RequestFacts
    path: str  # below /v1
    body: dict[str, Any] | None  # parsed JSON (None for GET)
    raw_body: bytes
    headers: CIMultiDict[str]
    request_id: str
    started: datetime
    started_mono: float
    reserve_tokens: int
    client_wants_usage: bool
    key_name: str = ""  # the gateway key's name ("" when unauthenticated)
    # The client key's x-ratelimit-* headers (on an upstream answer, for names it does not carry).
    limit_headers: dict[str, str] = field(default_factory=dict)
    attempts: list[AttemptLog] = field(default_factory=list)
    settled: bool = False  # usage recorded (and the breaker told) for this request
    # Told each settled record (the proxy charges the key's token bucket and daily spend).
    on_settle: Callable[[RequestRecord], None] | None = None
    wire: Wire = CHAT  # the API shape of the answer (usage, end of stream, error events)
    endpoint: str = ""  # the client-facing route, for the request log ("/v1/chat/completions")
    # Told (channel, id) once an answer's id is known (Responses: previous_response_id stickiness).
    on_answer_id: Callable[[str, str], None] | None = None
    # ``body`` is ``raw_body`` parsed, nothing changed: it is let go once an attempt has been
    # built from it (a chat history's dict is ~1.7x its JSON, held while the upstream answers)
    # and read again only when another attempt needs it (``json_body``).
    rereadable: bool = False

    def json_body(self) -> dict[str, Any] | None:
        """The parsed JSON body (None for GET)."""
        if self.body is None and self.rereadable:
            body: dict[str, Any] = fastjson.loads(self.raw_body)
            return body
        return self.body

    def reserve_on(self, ch: ChannelConfig) -> int:
        """Tokens to hold on ``ch``: ``reserve_tokens``, except that an ``anthropic`` channel sends
        its own ``default_max_tokens`` for a chat request without ``max_tokens`` (n > 1 cannot be
        translated there), so that is what the answer may use."""
        facts = self.facts
        if facts.max_tokens is None and ch.type in _OWN_DEFAULT and self.path == "/chat/completions":
            return facts.prompt_tokens + ch.default_max_tokens
        return self.reserve_tokens


_OWN_DEFAULT = frozenset({"anthropic", "claude"})  # channel types that fill in max_tokens


def header_safe(value: str) -> str:
    """Channel names may be any Unicode (免费渠道A); in headers they are percent-encoded UTF-8."""
    return value if value.isascii() and value.isprintable() else quote(value, safe=" -_.~")


class Settler(Protocol):
    """What the stream relay needs of the dispatcher (``client.Dispatcher``), without importing it:
    the gateway, the answer's headers, and settling the request's usage."""

    gw: Gateway

    def _response_headers(
        self, ex: Exchange, ch: ChannelConfig | None, upstream: Any
    ) -> CIMultiDict[str]: ...

    def _settle(
        self,
        ex: Exchange,
        ch: ChannelConfig,
        reservation: Reservation,
        status: int,
        usage: dict[str, Any] | None,
        completion_estimate: int,
        error: str | None = None,
    ) -> asyncio.Future[None] | None: ...
