"""``ResponseBook``: which channel answered an OpenAI Responses request, kept in this process.

The in-process backends (memory, sqlite) keep ``response id -> (channel, expiry)`` here, bounded
by count (``RESPONSE_KEEP``, oldest dropped first) and by age (``base.RESPONSE_TTL``).
"""

from __future__ import annotations

from collections import OrderedDict

from .base import RESPONSE_TTL

RESPONSE_KEEP = 100_000  # ids an in-process backend keeps in memory


class ResponseBook:
    """Response id -> (channel, expiry epoch) in this process: bounded by count and by age."""

    __slots__ = ("_ids", "_keep", "_ttl")

    def __init__(self, *, keep: int = RESPONSE_KEEP, ttl: float = RESPONSE_TTL) -> None:
        self._ids: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._keep = keep
        self._ttl = ttl

    def __len__(self) -> int:
        return len(self._ids)

    def put(self, response_id: str, channel: str, now: float) -> float:
        """Remember it; returns its expiry (epoch seconds)."""
        expires = now + self._ttl
        self._ids[response_id] = (channel, expires)
        self._ids.move_to_end(response_id)
        while len(self._ids) > self._keep:
            self._ids.popitem(last=False)
        return expires

    def load(self, response_id: str, channel: str, expires: float) -> None:
        self._ids[response_id] = (channel, expires)

    def get(self, response_id: str, now: float) -> str | None:
        hit = self._ids.get(response_id)
        if hit is None:
            return None
        if hit[1] <= now:
            del self._ids[response_id]
            return None
        return hit[0]
