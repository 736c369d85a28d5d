"""``memory`` backend: counters, reservations and a bounded request log in this process only.

Nothing survives a restart. Useful for tests, demos and throw-away gateways; the counting itself is
``CounterBook``'s, identical to the sqlite backend's.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, tzinfo

from .base import (
    BucketRow,
    RequestRecord,
    Reservation,
    aggregate,
    epoch,
    group_column,
)
from .buckets import SLOT, SlotSums, sum_into_buckets
from .counters import CounterBook, InProcessCounters
from .responses import ResponseBook

DEFAULT_LOG_LIMIT = 100_000


class MemoryStore(InProcessCounters):
    """A ``UsageStore`` that keeps everything in memory; the request log keeps the last
    ``log_limit`` records (older ones fall off, the counters keep counting them)."""

    backend = "memory"

    def __init__(self, tz: tzinfo, *, log_limit: int = DEFAULT_LOG_LIMIT) -> None:
        if log_limit < 1:
            raise ValueError(f"log_limit must be at least 1, got {log_limit}")
        self.tz = tz
        self._book = CounterBook(tz)
        self._log: deque[RequestRecord] = deque(maxlen=log_limit)
        self._responses = ResponseBook()
        self._sums = SlotSums()  # the log per 15 minutes, for timeseries

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def settle_now(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> None:
        if self._book.settle(reservation, record, now) is not None:
            if len(self._log) == self._log.maxlen:
                self._sums.remove(self._log[0])  # about to fall off the log
            self._log.append(record)
            self._sums.add(record)

    async def query(
        self, start: datetime | None, end: datetime | None, group_by: str
    ) -> list[dict[str, object]]:
        group_column(group_by)  # a bad group_by fails even on an empty log
        lo, hi = epoch(start, self.tz), epoch(end, self.tz)
        records = (r for r in self._log if (lo is None or r.ts >= lo) and (hi is None or r.ts < hi))
        return aggregate(records, group_by)

    async def remember_response(
        self, response_id: str, channel: str, now: datetime, key: str = ""
    ) -> None:
        self._responses.put(response_id, channel, now.timestamp(), key)

    async def response_channel(
        self, response_id: str, now: datetime, key: str = ""
    ) -> str | None:
        return self._responses.get(response_id, now.timestamp(), key)
    async def timeseries(self, edges: list[float], group_by: str) -> list[BucketRow]:
        if all(e % SLOT == 0 for e in edges):
            return self._sums.rows(edges, group_by)
        return sum_into_buckets(self._log, edges, group_by)

    def status(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "ok": True,
            "path": None,
            "pending_writes": 0,
            "last_error": None,
            "reservations": self._book.reservations,
            "log_records": len(self._log),
            "log_limit": self._log.maxlen,
        }
