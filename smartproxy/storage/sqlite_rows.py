"""The ``sqlite`` backend's file: schema, migration, and the rows its worker thread writes.

Everything here runs on a ``sqlite3.Connection`` in the flush thread of ``sqlite.SqliteStore``:
``_migrate`` brings an older file up to ``_SCHEMA``; ``_write_rows`` writes one batch (counter
deltas, request-log rows, rollup rows) in one transaction; ``repair_record`` makes a record's
text and numbers storable first. The store itself (counters in memory, the flush loop, queries)
is in ``sqlite``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import time

from .base import DAY, HOUR, TOTAL, TOTAL_KEY, RequestRecord
from .rollup import ROLLUP_UPSERT, rollup_rows

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
    id TEXT PRIMARY KEY, channel TEXT NOT NULL, expires REAL NOT NULL, owner TEXT
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

_PUT_RESPONSE = (
    "INSERT OR REPLACE INTO responses (id, channel, expires, owner) VALUES (?, ?, ?, ?)"
)
Answer = tuple[str, str, float, str]  # response id, channel, expires, owner (gateway key name)
Pending = tuple[RequestRecord, str, str]  # the record and the day/hour keys it was counted in


def _put_responses(conn: sqlite3.Connection, answers: list[Answer]) -> None:
    with conn:
        conn.executemany(_PUT_RESPONSE, answers)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file written by an older version up to this schema; drop expired response ids."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(request_log)")}
    if "endpoint" not in columns:
        conn.execute("ALTER TABLE request_log ADD COLUMN endpoint TEXT")
    if "owner" not in {row[1] for row in conn.execute("PRAGMA table_info(responses)")}:
        conn.execute("ALTER TABLE responses ADD COLUMN owner TEXT")  # old rows: NULL, any key
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
