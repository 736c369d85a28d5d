"""Answers an upstream compressed although the gateway asked for ``Accept-Encoding: identity``.

A whole answer is relayed as it came, bytes and ``Content-Encoding`` both (contract §3); a copy
is decoded only to read its usage (``decoded``). A stream is decoded as it comes (``inflated``),
because the relay parses its events (usage, the usage chunk it strips), and is relayed decoded,
without ``Content-Encoding``. gzip and deflate are read (zlib); any other coding (br, zstd, ...)
is not: such an answer is relayed untouched and its usage estimated (``readable`` is False).

Decoding is bounded: a whole answer, or one chunk of a stream, that decodes to more than
``limit`` bytes (``server.max_body_mb``) is not decoded (a small compressed body must not
inflate into gigabytes in the gateway's memory).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping

from .errors import UpstreamConnectError

_GZIP = frozenset(("gzip", "x-gzip"))


def content_coding(headers: Mapping[str, str]) -> str | None:
    """The answer's ``Content-Encoding``, lower-cased; None when it has none (or ``identity``)."""
    value = headers.get("Content-Encoding")
    if not value:
        return None
    coding = value.strip().lower()
    return None if coding in ("", "identity") else coding


def readable(coding: str) -> bool:
    return coding in _GZIP or coding == "deflate"


class Inflater:
    """Incremental gzip/deflate decoding; ``feed`` raises ``UpstreamConnectError`` on a corrupt
    body or one chunk decoding to more than ``limit`` bytes."""

    __slots__ = ("_coding", "_limit", "_z", "_head")

    def __init__(self, coding: str, limit: int) -> None:
        self._coding = coding
        self._limit = limit
        # gzip: its own header; deflate: decided on the first two bytes (``_start``).
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS) if coding in _GZIP else None
        self._head = b""

    def feed(self, data: bytes) -> bytes:
        z = self._z
        if z is None:
            z = self._start(data)
            if z is None:
                return b""
            data, self._head = self._head, b""
        try:
            out = z.decompress(data, self._limit)
        except zlib.error as exc:
            raise UpstreamConnectError(f"answer is not valid {self._coding}: {exc}") from exc
        if z.unconsumed_tail:
            raise UpstreamConnectError(
                f"{self._coding} answer decodes to more than {self._limit} bytes"
            )
        return out

    def flush(self) -> bytes:
        """What is left once the body ended (a deflate body of one byte: nothing)."""
        if self._z is None:
            return b""
        try:
            return self._z.flush()
        except zlib.error as exc:
            raise UpstreamConnectError(f"answer is not valid {self._coding}: {exc}") from exc

    def _start(self, data: bytes) -> zlib._Decompress | None:
        """HTTP's deflate is zlib-wrapped (RFC 9110 8.4.1.2), but some servers send raw deflate:
        a zlib header (CM 8, FCHECK) says which, as browsers and aiohttp decide."""
        head = self._head = self._head + data
        if len(head) < 2:
            return None
        wrapped = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return self._z


def decoded(body: bytes, coding: str, limit: int) -> bytes | None:
    """A whole answer decoded, or None: a coding the gateway cannot read, a corrupt body, or
    one that decodes to more than ``limit`` bytes."""
    if not readable(coding):
        return None
    inflater = Inflater(coding, limit)
    try:
        return inflater.feed(body) + inflater.flush()
    except UpstreamConnectError:
        return None


async def inflated(chunks: AsyncIterator[bytes], inflater: Inflater) -> AsyncIterator[bytes]:
    """A stream's chunks decoded as they come (chunks that decode to nothing yet are skipped)."""
    async for chunk in chunks:
        if out := inflater.feed(chunk):
            yield out
    if out := inflater.flush():
        yield out
