"""What a provider module gives the upstream client: how to send one request to one channel.

A provider turns (channel, endpoint path, query, headers, body) into an ``UpstreamReply``: status,
headers and a body that can be read whole or iterated chunk by chunk as it arrives. The OpenAI
provider sends over the shared ``aiohttp.ClientSession``; azure and anthropic reuse it with their
own URL and auth rules; the mock provider answers in-process. A channel that speaks another API
shape than the client gets an ``Adapter`` (below) for each attempt, which translates the request,
the answer, the stream events and the error bodies with pure functions.

Failures are translated where they enter: a provider raises only ``upstream.errors.AttemptError``
(``UpstreamConnectError`` / ``UpstreamTimeoutError``) from ``send``, ``read`` and
``iter_chunks``; an HTTP error status is an answer, not an exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from ..config import ChannelConfig

if TYPE_CHECKING:
    from ..upstream.sse import StreamTally


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """An outbound HTTP proxy: its URL without credentials, and the headers it needs
    (``Proxy-Authorization``). Chosen per channel by ``upstream.proxyconf``."""

    url: str
    headers: Mapping[str, str]


@dataclass(slots=True)  # built per request: a frozen init costs ~0.16 µs a field
class OutgoingRequest:
    """One attempt's request, already rewritten for the channel (model mapping, usage option)."""

    method: str
    path: str  # below /v1, e.g. "/chat/completions"
    query_string: str
    headers: CIMultiDict[str]  # client headers minus hop-by-hop/auth/host/content-length
    body: bytes
    stream: bool
    proxy: ProxyRoute | None = None  # send through this HTTP proxy (None: direct)
    model: str = ""  # the upstream model name (after model_mapping): Azure's deployment


class UpstreamReply(Protocol):
    # Read-only members, so that a reply may keep either multidict flavour (protocols are
    # invariant in mutable attributes).
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str] | CIMultiDict[str]: ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive from the provider."""
        ...

    async def read(self) -> bytes: ...

    def close(self) -> None:
        """Abort/release the connection; safe to call more than once."""
        ...


class Provider(Protocol):
    name: str

    def send(
        self, channel: ChannelConfig, request: OutgoingRequest, timeouts: Timeouts
    ) -> Awaitable[UpstreamReply]:
        """Raises the AttemptError that stops the attempt, now or when awaited."""
        ...


@dataclass(slots=True)  # built per request: a frozen init costs ~0.16 µs a field
class Timeouts:
    total: float  # one attempt, first byte to last
    connect: float
    first_byte: float  # headers (and the first chunk of a stream) must arrive within this


def channel_headers(channel: ChannelConfig, request: OutgoingRequest) -> CIMultiDict[str]:
    """Client headers plus the channel's own headers and key (the client's key never goes up)."""
    headers = CIMultiDict(request.headers)
    for k, v in channel.headers.items():
        headers[k] = v
    if channel.api_key:
        headers["Authorization"] = f"Bearer {channel.api_key}"
    return headers


def join_url(endpoint: str, path: str, query_string: str) -> str:
    url = endpoint.rstrip("/") + path
    return f"{url}?{query_string}" if query_string else url


def proxy_args(request: OutgoingRequest, url: str, headers: CIMultiDict[str]) -> dict[str, Any]:
    """aiohttp's ``proxy``/``proxy_headers`` for ``request.proxy``. An ``http://`` upstream gets
    absolute-form requests, on which aiohttp sends no ``proxy_headers``: the proxy's
    ``Proxy-Authorization`` then goes in ``headers`` (an https tunnel carries it on CONNECT only)."""
    proxy = request.proxy
    if proxy is None:
        return {}
    if url.startswith("http:"):
        headers.update(proxy.headers)
    return {"proxy": proxy.url, "proxy_headers": proxy.headers or None}


# ----------------------------------------------------------------------------- API shapes
class StreamAdapter(Protocol):
    """One attempt's stream translation: upstream SSE events in, client SSE events out.

    ``feed`` takes one whole upstream event (``EventSplitter`` output) and returns the client's
    events (complete, each ending with its blank line; often one, maybe none). It fills ``tally``
    from the upstream's own numbers (usage normalised to OpenAI's ``prompt_tokens`` /
    ``completion_tokens``, ``content_events``, and ``done`` once the stream ended as it should).
    An error reported inside the stream raises ``AttemptError``: before any byte reached the
    client the dispatcher fails over; after, the relay ends the stream with its SSE error event.
    """

    tally: StreamTally

    def feed(self, event: bytes) -> list[bytes]: ...


class Adapter(Protocol):
    """The per-attempt hook for a channel that speaks another API shape than the client.

    Looked up per (channel type, client path) with ``providers.adapter_for``; ``None`` means
    the shapes are the same and bytes pass through untouched. All methods are pure (no I/O):

    - ``request``: the client's parsed body -> (upstream path below the channel's base, body
      bytes). ``model`` is the upstream model (after ``model_mapping``). A field that cannot be
      expressed raises ``errors.Untranslatable`` (a 400 naming it; the channel is skipped).
    - ``answer``: a 2xx non-stream upstream body -> (client body, usage as OpenAI
      ``prompt_tokens``/``completion_tokens`` or None). An unreadable body raises AttemptError.
    - ``error``: an upstream error body (any status >= 400) -> the client's error shape.
    - ``stream``: a fresh ``StreamAdapter`` for one attempt; ``include_usage`` says whether the
      client asked for a usage chunk (usage is counted either way).
    """

    def request(
        self, body: dict[str, Any], *, model: str, channel: ChannelConfig
    ) -> tuple[str, bytes]: ...

    def answer(self, body: bytes) -> tuple[bytes, dict[str, Any] | None]: ...

    def error(self, status: int, body: bytes) -> bytes: ...

    def stream(self, *, include_usage: bool) -> StreamAdapter: ...
