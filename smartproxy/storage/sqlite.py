"""``sqlite`` backend (the default): counters and the request log in one WAL-mode file.

The event loop never waits for SQLite on the request path. ``try_reserve``, ``settle`` and ``usage``
work on an in-memory ``CounterBook`` (the same counting as the memory backend); ``settle`` also
appends the record to a pending list. A flush task hands that list to a worker thread every
``flush_interval`` seconds, which writes it in one transaction: counter deltas as UPSERTs (summed
per window key first), one request-log row per record, and the log's 15-minute rollup (``rollup``,
what ``timeseries`` reads). A crashed process loses at most the last
interval's records; ``close`` flushes the rest.

If a write fails (disk full, database locked for too long, file removed...), the batch is put back
in front of the pending list and retried at the next interval on a fresh connection; the error is
logged and shown by ``status()``, and the gateway keeps serving from memory meanwhile.

On ``start`` the current and previous day/hour counters and the totals are loaded back. Reservations
live in memory only: they belong to in-flight requests, which die with the process that made them.
Response ids (``remember_response``) are kept in memory and in a ``responses`` table written by
the same flush; a lookup that misses memory reads the table (another process may have written
it). Rows older than ``RESPONSE_TTL`` are deleted at start.

Counters are exact within one process; processes sharing the file add to the same rows but each
checks quotas against its own view (the redis backend is the one for several processes).

The schema, its migration and the row writer (what the worker thread runs) are in ``sqlite_rows``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TypeVar

from ..files import ensure_private_file
from .base import (
    DAY,
    HOUR,
    TOTAL,
    BucketRow,
    Clock,
    RequestRecord,
    Reservation,
    StorageError,
    epoch,
    group_column,
    window_keys,
)
from .buckets import SLOT
from .counters import Counter, CounterBook, InProcessCounters
from .responses import ResponseBook, visible
from .rollup import (
    ROLLUP_BACKFILL,
    ROLLUP_SCHEMA,
    timeseries_sql,
)
from .sqlite_rows import (
    _LOAD,
    _ROW_ERRORS,
    _SCHEMA,
    Answer,
    Pending,
    _migrate,
    _put_responses,
    _select_sql,
    _show,
    _write_rows,
    repair_record,
)

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL = 0.5
MAX_PENDING = 200_000  # while the file is unwritable; beyond this the oldest writes are dropped

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


PAGE_CACHE_KIB = 512


class SqliteStore(InProcessCounters):
    """A ``UsageStore`` persisted to the SQLite file at ``path`` (its folder is created)."""

    backend = "sqlite"
    count_windows = True  # False: the request log only (the redis backend keeps the counters)

    def __init__(
        self,
        path: str | Path,
        tz: tzinfo,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock: Clock | None = None,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0, got {flush_interval}")
        self.path = Path(path)
        self.tz = tz
        self._interval = flush_interval
        self._clock = clock or _utcnow
        self._book = CounterBook(tz)
        self._pending: list[Pending] = []
        self._responses = ResponseBook()
        self._pending_responses: list[Answer] = []
        self._writing = 0  # records of the batch a worker thread is writing now
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()  # one thread at a time on the connection
        self._flush_lock = asyncio.Lock()  # batches are written in the order they were taken
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._write_errors = 0
        self._dropped = 0
        self._repaired = 0  # request-log rows whose text or numbers had to be repaired
        self._rejected = 0  # rows the database refused alone (the rest of their batch kept)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # The previous day/hour too: a store started just after midnight can still be asked about
        # the day that just ended, and a clock slightly behind must not start from zero.
        now = self._clock()
        since_day = window_keys(now - timedelta(days=1), self.tz)[0]
        since_hour = window_keys(now - timedelta(hours=1), self.tz)[1]
        try:
            rows = await asyncio.to_thread(
                self._run,
                lambda c: c.execute(_LOAD, (TOTAL, DAY, since_day, HOUR, since_hour)).fetchall(),
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open usage database {self.path}: {exc}") from exc
        for channel, window, key, *values in rows:
            self._book.load(channel, window, key, Counter(*values))
        self._closing.clear()
        self._task = asyncio.create_task(self._flush_loop(), name="usage-store-flush")

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        if self._pending:
            log.error("usage store closed with %d unwritten records", len(self._pending))
        await asyncio.to_thread(self._disconnect)

    async def _flush_loop(self) -> None:
        while not self._closing.is_set():
            try:
                await asyncio.wait_for(self._closing.wait(), self._interval)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except Exception as exc:  # a bug must not stop later flushes; the batch is logged lost
                log.exception("usage store: flush failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._last_error_at = self._clock().isoformat()

    # ------------------------------------------------------------------ the UsageStore protocol
    def settle_now(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> None:
        keys = self._book.settle(reservation, record, now)
        if keys is not None:
            self._pending.append((record, *keys))
            if len(self._pending) > MAX_PENDING:
                drop = len(self._pending) - MAX_PENDING
                del self._pending[:drop]
                self._dropped += drop

    async def query(
        self, start: datetime | None, end: datetime | None, group_by: str
    ) -> list[dict[str, object]]:
        column = group_column(group_by)
        lo, hi = epoch(start, self.tz), epoch(end, self.tz)
        await self.flush()
        try:
            rows = await asyncio.to_thread(
                self._run, lambda c: c.execute(_select_sql(column), (lo, lo, hi, hi)).fetchall()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read usage database {self.path}: {exc}") from exc
        return [
            {
                group_by: key,
                "requests": n,
                "prompt_tokens": p,
                "completion_tokens": c,
                "total_tokens": p + c,
                "cost": cost,
                "errors": errors,
            }
            for key, n, p, c, cost, errors in rows
        ]

    async def remember_response(
        self, response_id: str, channel: str, now: datetime, key: str = ""
    ) -> None:
        expires = self._responses.put(response_id, channel, now.timestamp(), key)
        self._pending_responses.append((response_id, channel, expires, key))

    async def response_channel(
        self, response_id: str, now: datetime, key: str = ""
    ) -> str | None:
        at = now.timestamp()
        if self._responses.known(response_id, at):
            return self._responses.get(response_id, at, key)
        try:
            row = await asyncio.to_thread(
                self._run,
                lambda c: c.execute(
                    "SELECT channel, expires, owner FROM responses WHERE id = ? AND expires > ?",
                    (response_id, at),
                ).fetchone(),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read usage database {self.path}: {exc}") from exc
        if row is None:
            return None
        owner = str(row[2] or "")  # NULL: a row from before owners were kept
        self._responses.load(response_id, row[0], owner, row[1])
        return str(row[0]) if visible(owner, key) else None

    async def timeseries(self, edges: list[float], group_by: str) -> list[BucketRow]:
        column = group_column(group_by)
        sql = timeseries_sql(column, rollup=all(e % SLOT == 0 for e in edges))
        await self.flush()
        try:
            rows = await asyncio.to_thread(
                self._run, lambda c: c.execute(sql, (json.dumps(edges),)).fetchall()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read usage database {self.path}: {exc}") from exc
        return [
            BucketRow(bucket=i, key=str(key), requests=n, prompt_tokens=p, completion_tokens=c,
                      cost=cost, errors=errors)
            for i, key, n, p, c, cost, errors in rows
        ]  # fmt: skip

    def status(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "ok": self._last_error is None,
            "path": str(self.path),
            "pending_writes": len(self._pending) + self._writing,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "write_errors": self._write_errors,
            "dropped_writes": self._dropped,
            "repaired_rows": self._repaired,
            "rejected_rows": self._rejected,
            "reservations": self._book.reservations,
            "flushing": self._task is not None and not self._task.done(),
        }

    # ------------------------------------------------------------------ writing
    async def flush(self) -> bool:
        """Write everything pending now; False (the batch kept for a retry) if the write failed."""
        async with self._flush_lock:
            if not self._pending and not self._pending_responses:
                return True
            batch, self._pending = self._pending, []
            answers, self._pending_responses = self._pending_responses, []
            self._writing = len(batch)
            try:
                await asyncio.to_thread(self._write, batch, answers)
            except Exception as exc:  # the file, or a bug: keep the batch, never lose it here
                self._pending[:0] = batch
                self._pending_responses[:0] = answers
                self._write_errors += 1
                if self._last_error is None:  # log a failure once, not every interval
                    log.error("usage store: cannot write to %s: %s (will retry)", self.path, exc)
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._last_error_at = self._clock().isoformat()
                return False
            finally:
                self._writing = 0
            if self._last_error is not None:
                log.warning("usage store: writing to %s works again", self.path)
                self._last_error = None
            return True

    def _write(
        self, batch: list[Pending], answers: list[Answer] | None = None
    ) -> None:
        """Write ``batch`` in one transaction. Rows are repaired first (``repair_record``); if
        the batch is still refused for what one row holds, the rows are written one by one and
        only the refused ones are dropped (counted and logged): one bad request never costs the
        other clients' usage. A refused *file* (locked, full, read-only) raises to the caller,
        which keeps the whole batch for the next round. ``answers``: response ids to keep."""
        records: list[Pending] = []
        for record, day, hour in batch:
            fixed = repair_record(record)
            if fixed is not record:
                self._repaired += 1
                log.warning(
                    "usage store: repaired a request-log row with invalid text or "
                    "numbers (request %s)",
                    _show(fixed.request_id),
                )
            records.append((fixed, day, hour))
        try:
            self._run(lambda conn: _write_rows(conn, records, self.count_windows))
        except _ROW_ERRORS:
            for one in records:
                try:
                    self._run(
                        lambda conn: _write_rows(conn, [one], self.count_windows)  # noqa: B023
                    )
                except _ROW_ERRORS as exc:
                    self._rejected += 1
                    log.error(
                        "usage store: dropped one request-log row the database refuses "
                        "(request %s): %s: %s",
                        _show(one[0].request_id),
                        type(exc).__name__,
                        _show(str(exc)),
                    )
        if answers:
            self._run(lambda conn: _put_responses(conn, answers))

    # ------------------------------------------------------------------ worker-thread helpers
    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection (opened on first use) in the calling worker thread."""
        with self._conn_lock:
            try:
                return work(self._connection())
            except sqlite3.Error:
                self._drop_connection()  # the next round starts from a fresh connection
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # 0600 before SQLite creates it (its -wal/-shm files take the database file's mode).
            ensure_private_file(self.path)
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
                # A 512 KiB page cache, not SQLite's 2 MB: the log is appended to, and its
                # queries read the rollup or go through the OS's cache. Measured: +2.2 -> +0.3 MB
                # RSS after 45,000 rows, in each process that writes the file (``--workers``).
                conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
                had_rollup = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage_rollup'"
                ).fetchone()
                conn.executescript(_SCHEMA + ROLLUP_SCHEMA)
                if had_rollup is None:
                    with conn:
                        conn.execute(ROLLUP_BACKFILL)
                _migrate(conn)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _disconnect(self) -> None:
        with self._conn_lock:
            self._drop_connection()
