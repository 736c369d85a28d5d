"""The sqlite request log's 15-minute rollup, and the SQL that sums either into time buckets.

``usage_rollup`` holds the request log summed per 15-minute slot (aligned on UTC) and per
channel, key name and model; the sqlite store writes it in the same transaction as the log rows,
and builds it once from the log when it opens a file written before the rollup existed. Every
zone offset and DST change in use falls on a quarter hour, so a local hour or day is a whole
number of slots: ``GET /api/usage/timeseries`` then reads a few thousand rollup rows for 30 days
however many requests there were, instead of every log row. Bucket edges that are not on a slot
boundary (a historical local-mean-time offset) are summed from the log itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import RequestRecord
from .buckets import SLOT

ROLLUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_rollup (
    slot INTEGER NOT NULL, channel TEXT NOT NULL, api_key_name TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL, errors INTEGER NOT NULL,
    PRIMARY KEY (slot, channel, api_key_name, model)
) WITHOUT ROWID;
"""
ROLLUP_UPSERT = """
INSERT INTO usage_rollup (slot, channel, api_key_name, model, requests, prompt_tokens,
    completion_tokens, cost, errors)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (slot, channel, api_key_name, model) DO UPDATE SET
    requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cost = cost + excluded.cost, errors = errors + excluded.errors
"""
ROLLUP_BACKFILL = f"""
INSERT INTO usage_rollup
SELECT CAST(ts / {SLOT} AS INTEGER) * {SLOT}, COALESCE(channel, ''), COALESCE(api_key_name, ''),
    COALESCE(model, ''), COUNT(*), COALESCE(SUM(prompt_tokens), 0),
    COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost), 0.0), COALESCE(SUM(status >= 400), 0)
FROM request_log GROUP BY 1, 2, 3, 4
"""

RollupRow = tuple[int, str, str, str, int, int, int, float, int]


def rollup_rows(records: Iterable[RequestRecord]) -> list[RollupRow]:
    """``ROLLUP_UPSERT`` parameters for a batch: one row per (slot, channel, key, model)."""
    sums: dict[tuple[int, str, str, str], list[float]] = {}
    for r in records:
        group = (int(r.ts // SLOT) * SLOT, r.channel, r.api_key_name, r.model)
        s = sums.setdefault(group, [0, 0, 0, 0.0, 0])
        s[0] += 1
        s[1] += r.prompt_tokens
        s[2] += r.completion_tokens
        s[3] += r.cost
        s[4] += r.status >= 400
    return [(*g, int(n), int(p), int(c), cost, int(e)) for g, (n, p, c, cost, e) in sums.items()]


def timeseries_sql(column: str, *, rollup: bool) -> str:
    """Sums per (bucket, group), ordered so. The edges arrive as one JSON array parameter; each
    bucket is one range scan of the rollup's primary key (``rollup``: every edge on a slot
    boundary) or of the log's ``ts`` index. ``column`` comes from GROUP_COLUMNS, never from the
    caller's text."""
    if rollup:
        table, at, sums = "usage_rollup", "slot", "SUM(r.requests)"
        sums += ", SUM(r.prompt_tokens), SUM(r.completion_tokens), SUM(r.cost), SUM(r.errors)"
    else:
        table, at, sums = "request_log", "ts", "COUNT(*)"
        sums += (", COALESCE(SUM(r.prompt_tokens), 0), COALESCE(SUM(r.completion_tokens), 0),"
                 " COALESCE(SUM(r.cost), 0.0), COALESCE(SUM(r.status >= 400), 0)")  # fmt: skip
    return (
        "WITH e AS (SELECT CAST(key AS INTEGER) AS i, value AS lo FROM json_each(?)),"
        " b AS (SELECT e1.i AS i, e1.lo AS lo, e2.lo AS hi FROM e e1 JOIN e e2 ON e2.i = e1.i + 1)"
        f" SELECT b.i, r.{column}, {sums}"
        f" FROM b JOIN {table} r ON r.{at} >= b.lo AND r.{at} < b.hi"
        f" GROUP BY b.i, r.{column} ORDER BY b.i, r.{column}"
    )
