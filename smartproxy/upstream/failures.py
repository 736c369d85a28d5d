"""``RecentFailures``: the latest failed upstream attempts, kept in memory for the dashboard.

The dispatcher adds one entry per failed attempt (an HTTP answer it fails over on, a connection
error or a timeout). Only the newest ``limit`` are kept, so the ring costs a bounded few KB however
long the gateway runs; a restart empties it (the request log keeps what was billed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Protocol


class Attempt(Protocol):
    """What the ring reads of an attempt (``exchange.AttemptLog``; that module sits above
    ``state``, which holds the ring, so it is described here rather than imported)."""

    @property
    def channel(self) -> str: ...
    @property
    def status(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def seconds(self) -> float: ...
    @property
    def kind(self) -> str: ...

DEFAULT_LIMIT = 50
_MESSAGE_CHARS = 300  # an upstream error text can be long; the ring stays small


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    at: str  # ISO 8601 UTC
    channel: str
    model: str
    status: int | None  # the HTTP status, or None for a connection error / timeout
    kind: str  # http | error | timeout
    error: str | None
    latency_ms: float
    request_id: str


class RecentFailures:
    """The newest failed attempts first (``latest()``); bounded by ``limit``."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._ring: deque[FailedAttempt] = deque(maxlen=limit)
        self.total = 0  # every failure seen since start, kept or not

    def add(self, attempt: Attempt, *, model: str, request_id: str, now: datetime) -> None:
        error = attempt.error[:_MESSAGE_CHARS] if attempt.error else None
        self._ring.append(
            FailedAttempt(
                at=now.isoformat(),
                channel=attempt.channel,
                model=model,
                status=attempt.status,
                kind=attempt.kind,
                error=error,
                latency_ms=round(attempt.seconds * 1000, 1),
                request_id=request_id,
            )
        )
        self.total += 1

    def latest(self, n: int | None = None) -> list[dict[str, object]]:
        items = list(reversed(self._ring))
        return [asdict(f) for f in (items if n is None else items[:n])]
