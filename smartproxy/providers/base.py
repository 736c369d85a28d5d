"""What a provider module gives the upstream client: how to send one request to one channel.

A provider turns (channel, endpoint path, query, headers, body) into an ``UpstreamReply``: status,
headers and a body that can be read whole or iterated chunk by chunk as it arrives. The OpenAI
provider sends over the shared ``aiohttp.ClientSession``; the mock provider answers in-process.
Later providers (azure, anthropic) add URL/auth rules or translate bodies in their own module.

Failures are translated where they enter: a provider raises only ``upstream.errors.AttemptError``
(``UpstreamConnectError`` / ``UpstreamTimeoutError``) from ``send``, ``read`` and
``iter_chunks``; an HTTP error status is an answer, not an exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from ..config import ChannelConfig


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

    async def send(
        self, channel: ChannelConfig, request: OutgoingRequest, timeouts: Timeouts
    ) -> UpstreamReply: ...


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
