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
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TypeVar

from ..files import ensure_private_file
from .base import (
    DAY,
    HOUR,
    TOTAL,
    TOTAL_KEY,
    BucketRow,
    Clock,
    Counter,
    CounterBook,
    InProcessCounters,
    RequestRecord,
    Reservation,
    StorageError,
    epoch,
    group_column,
    window_keys,
)
from .buckets import SLOT
from .responses import ResponseBook
from .rollup import (
    ROLLUP_BACKFILL,
    ROLLUP_SCHEMA,
    ROLLUP_UPSERT,
    rollup_rows,
    timeseries_sql,
)

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL = 0.5
MAX_PENDING = 200_000  # while the file is unwritable; beyond this the oldest writes are dropped

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    channel TEXT NOT NULL, "window" TEXT NOT NULL, key TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, "window", key)
);
CREATE TABLE IF NOT EXISTS request_log (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT, api_key_name TEXT, channel TEXT,
    model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, status INTEGER,
    latency_ms REAL, stream INTEGER, usage_source TEXT, error TEXT, endpoint TEXT
);
CREATE INDEX IF NOT EXISTS request_log_ts ON request_log (ts);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, channel TEXT NOT NULL, expires REAL NOT NULL
);
"""
_UPSERT = """
INSERT INTO counters
    (channel, "window", key, tokens, prompt_tokens, completion_tokens, requests, cost)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (channel, "window", key) DO UPDATE SET
    tokens = tokens + excluded.tokens, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    requests = requests + excluded.requests, cost = cost + excluded.cost
"""
_INSERT_LOG = """
INSERT INTO request_log (ts, request_id, api_key_name, channel, model, prompt_tokens,
    completion_tokens, cost, status, latency_ms, stream, usage_source, error, endpoint)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_LOAD = """
SELECT channel, "window", key, tokens, prompt_tokens, completion_tokens, requests, cost
FROM counters WHERE "window" = ? OR ("window" = ? AND key >= ?) OR ("window" = ? AND key >= ?)
"""

_PUT_RESPONSE = "INSERT OR REPLACE INTO responses (id, channel, expires) VALUES (?, ?, ?)"

T = TypeVar("T")
Pending = tuple[RequestRecord, str, str]  # the record and the day/hour keys it was counted in


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        self._pending_responses: list[tuple[str, str, float]] = []  # id, channel, expires
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

    async def remember_response(self, response_id: str, channel: str, now: datetime) -> None:
        expires = self._responses.put(response_id, channel, now.timestamp())
        self._pending_responses.append((response_id, channel, expires))

    async def response_channel(self, response_id: str, now: datetime) -> str | None:
        at = now.timestamp()
        hit = self._responses.get(response_id, at)
        if hit is not None:
            return hit
        try:
            row = await asyncio.to_thread(
                self._run,
                lambda c: c.execute(
                    "SELECT channel, expires FROM responses WHERE id = ? AND expires > ?",
                    (response_id, at),
                ).fetchone(),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read usage database {self.path}: {exc}") from exc
        if row is None:
            return None
        self._responses.load(response_id, row[0], row[1])
        return str(row[0])

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
        self, batch: list[Pending], answers: list[tuple[str, str, float]] | None = None
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


def _put_responses(conn: sqlite3.Connection, answers: list[tuple[str, str, float]]) -> None:
    with conn:
        conn.executemany(_PUT_RESPONSE, answers)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file written by an older version up to this schema; drop expired response ids."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(request_log)")}
    if "endpoint" not in columns:
        conn.execute("ALTER TABLE request_log ADD COLUMN endpoint TEXT")
    with conn:
        conn.execute("DELETE FROM responses WHERE expires <= ?", (time.time(),))


def _select_sql(column: str) -> str:
    # ``column`` comes from GROUP_COLUMNS, never from the caller's text.
    return (
        f"SELECT {column}, COUNT(*), COALESCE(SUM(prompt_tokens), 0),"
        " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost), 0.0),"
        " COALESCE(SUM(status >= 400), 0) FROM request_log"
        " WHERE (? IS NULL OR ts >= ?) AND (? IS NULL OR ts < ?)"
        f" GROUP BY {column} ORDER BY {column}"
    )


# A row the database (or the sqlite3 module) refuses for its values, not for the file's state.
_ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    ValueError,
    TypeError,
    OverflowError,
)


def _write_rows(conn: sqlite3.Connection, batch: list[Pending], count_windows: bool = True) -> None:
    """One transaction: counter deltas (unless another store counts), log rows, rollup rows."""
    deltas: dict[tuple[str, str, str], list[float]] = {}
    for record, day, hour in batch if count_windows else ():
        for window, key in ((DAY, day), (HOUR, hour), (TOTAL, TOTAL_KEY)):
            d = deltas.setdefault((record.channel, window, key), [0, 0, 0, 0, 0.0])
            d[0] += record.total_tokens
            d[1] += record.prompt_tokens
            d[2] += record.completion_tokens
            d[3] += 1
            d[4] += record.cost
    log_rows = [
        (r.ts, r.request_id, r.api_key_name, r.channel, r.model, r.prompt_tokens,
         r.completion_tokens, r.cost, r.status, r.latency_ms, int(r.stream),
         r.usage_source, r.error, r.endpoint)
        for r, _, _ in batch
    ]  # fmt: skip
    rollup = rollup_rows(r for r, _, _ in batch)
    with conn:  # one transaction: all of the batch or none of it
        conn.executemany(_UPSERT, [(*k, *d) for k, d in deltas.items()])
        conn.executemany(_INSERT_LOG, log_rows)
        conn.executemany(ROLLUP_UPSERT, rollup)


_SURROGATE = re.compile("[\ud800-\udfff]")
_TEXT_FIELDS = (
    "request_id", "api_key_name", "channel", "model", "usage_source", "error", "endpoint",
)  # fmt: skip
_INT_FIELDS = ("prompt_tokens", "completion_tokens", "status")
_SQLITE_INT = 2**63 - 1


def repair_record(record: RequestRecord) -> RequestRecord:
    """``record`` with text made valid UTF-8 (a lone surrogate becomes U+FFFD) and numbers made
    storable (non-finite -> 0, integers clamped to SQLite's 64 bits); the same object if it was
    fine already."""
    changes: dict[str, object] = {}
    for name in _TEXT_FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        text = value if isinstance(value, str) else str(value)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = _SURROGATE.sub("\ufffd", text)
        if text is not value:
            changes[name] = text
    for name in ("ts", "cost", "latency_ms"):
        value = getattr(record, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            changes[name] = 0.0
    for name in _INT_FIELDS:
        value = getattr(record, name)
        if not isinstance(value, int) or not -_SQLITE_INT <= value <= _SQLITE_INT:
            try:
                changes[name] = max(-_SQLITE_INT, min(_SQLITE_INT, int(value)))
            except (TypeError, ValueError, OverflowError):
                changes[name] = 0
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore[arg-type]


def _show(text: str | None) -> str:
    """A value for a log line: printable ASCII only (no forged lines, no encoding errors)."""
    return ascii(text)[1:-1] if isinstance(text, str) else str(text)
