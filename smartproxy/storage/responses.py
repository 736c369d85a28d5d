"""``ResponseBook``: which channel answered an OpenAI Responses request, kept in this process.

The in-process backends (memory, sqlite) keep ``response id -> (channel, owner, expiry)`` here,
bounded by count (``RESPONSE_KEEP``, oldest dropped first) and by age (``base.RESPONSE_TTL``).
The owner is the gateway key name that made the response: another key is told the id is unknown
(``visible``). A row written before owners were kept (owner "") stays visible to every key.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import RESPONSE_TTL

RESPONSE_KEEP = 100_000  # ids an in-process backend keeps in memory


def visible(owner: str | None, key: str) -> bool:
    """May gateway key ``key`` use a response made by ``owner``? ("" / None: an old row, no owner)."""
    return not owner or owner == key


class ResponseBook:
    """Response id -> (channel, owner key, expiry epoch) in this process: bounded by count and
    by age."""

    __slots__ = ("_ids", "_keep", "_ttl")

    def __init__(self, *, keep: int = RESPONSE_KEEP, ttl: float = RESPONSE_TTL) -> None:
        self._ids: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._keep = keep
        self._ttl = ttl

    def __len__(self) -> int:
        return len(self._ids)

    def put(self, response_id: str, channel: str, now: float, key: str = "") -> float:
        """Remember it; returns its expiry (epoch seconds)."""
        expires = now + self._ttl
        self._ids[response_id] = (channel, key, expires)
        self._ids.move_to_end(response_id)
        while len(self._ids) > self._keep:
            self._ids.popitem(last=False)
        return expires

    def load(self, response_id: str, channel: str, owner: str, expires: float) -> None:
        self._ids[response_id] = (channel, owner, expires)

    def get(self, response_id: str, now: float, key: str = "") -> str | None:
        """The channel, if the id is known, unexpired and ``visible`` to ``key``."""
        hit = self._ids.get(response_id)
        if hit is None:
            return None
        if hit[2] <= now:
            del self._ids[response_id]
            return None
        return hit[0] if visible(hit[1], key) else None

    def known(self, response_id: str, now: float) -> bool:
        """Is the id here (unexpired), whoever owns it (sqlite: no need to read the file)."""
        hit = self._ids.get(response_id)
        return hit is not None and hit[2] > now
