"""Bucket edges in the server timezone (DST days, the repeated autumn hour, +05:30) and the
Python and SQL sums over them agreeing record for record."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from smartproxy.storage import MemoryStore, RequestRecord, SqliteStore
from smartproxy.storage.buckets import MAX_BUCKETS, bucket_edges, sum_into_buckets

NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_labels(edges: list[float], tz: ZoneInfo) -> list[str]:
    return [datetime.fromtimestamp(e, tz).isoformat() for e in edges]


def test_hours_across_the_autumn_change_repeat_one_o_clock():
    # 2026-11-01 in New York: 02:00 EDT becomes 01:00 EST (06:00 UTC).
    edges = bucket_edges(utc(2026, 11, 1, 4), utc(2026, 11, 1, 9), "hour", NY)
    assert local_labels(edges, NY) == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
        "2026-11-01T04:00:00-05:00",
    ]
    assert all(b - a == 3600 for a, b in zip(edges, edges[1:], strict=False))


def test_hours_across_the_spring_change_skip_two_o_clock():
    # 2026-03-08 in New York: 02:00 EST becomes 03:00 EDT (07:00 UTC).
    edges = bucket_edges(utc(2026, 3, 8, 5), utc(2026, 3, 8, 9), "hour", NY)
    assert local_labels(edges, NY) == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
        "2026-03-08T05:00:00-04:00",
    ]


def test_days_with_a_dst_change_last_23_and_25_hours():
    spring = bucket_edges(utc(2026, 3, 8, 12), utc(2026, 3, 9, 12), "day", NY)
    assert local_labels(spring, NY)[:2] == ["2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"]
    assert spring[1] - spring[0] == 23 * 3600
    autumn = bucket_edges(utc(2026, 11, 1, 12), utc(2026, 11, 1, 13), "day", NY)
    assert local_labels(autumn, NY) == ["2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"]
    assert autumn[1] - autumn[0] == 25 * 3600


def test_half_hour_zone_starts_hours_and_days_at_half_past_utc():
    edges = bucket_edges(utc(2026, 11, 26, 18, 0), utc(2026, 11, 26, 19, 0), "hour", KOLKATA)
    assert [datetime.fromtimestamp(e, UTC).strftime("%H:%M") for e in edges] == [
        "17:30", "18:30", "19:30"
    ]  # fmt: skip
    assert local_labels(edges, KOLKATA)[1] == "2026-11-27T00:00:00+05:30"
    days = bucket_edges(utc(2026, 11, 26, 18, 29), utc(2026, 11, 26, 18, 31), "day", KOLKATA)
    assert local_labels(days, KOLKATA) == [
        "2026-11-26T00:00:00+05:30",
        "2026-11-27T00:00:00+05:30",
        "2026-11-28T00:00:00+05:30",
    ]
    assert datetime.fromtimestamp(days[1], UTC) == utc(2026, 11, 26, 18, 30)


def test_range_is_rounded_out_to_whole_buckets():
    edges = bucket_edges(utc(2026, 11, 26, 10, 15), utc(2026, 11, 26, 12, 0), "hour", UTC)
    assert local_labels(edges, UTC) == [
        "2026-11-26T10:00:00+00:00", "2026-11-26T11:00:00+00:00", "2026-11-26T12:00:00+00:00"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "start,end,bucket,message",
    [
        (utc(2026, 1, 2), utc(2026, 1, 1), "hour", "'from' must be before 'to'"),
        (utc(2026, 1, 1), utc(2026, 1, 1), "day", "'from' must be before 'to'"),
        (utc(2026, 1, 1), utc(2026, 1, 2), "week", "bucket must be one of hour, day"),
        (utc(2020, 1, 1), utc(2026, 1, 1), "hour", f"more than {MAX_BUCKETS} buckets"),
    ],
)
def test_bad_ranges_are_refused(start, end, bucket, message):
    with pytest.raises(ValueError, match=message):
        bucket_edges(start, end, bucket, UTC)


def rounded(rows: list) -> list:
    return [{**r, "cost": round(r["cost"], 12)} for r in rows]


def records(n: int, start: datetime, span: timedelta, seed: int = 7) -> list[RequestRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ts = (start + span * rnd.random()).timestamp()
        out.append(
            RequestRecord(
                ts=ts, request_id=str(i), api_key_name=rnd.choice(["dev", "team", "ünï"]),
                channel=rnd.choice(["a", "b", "c"]), model=rnd.choice(["m1", "m2"]),
                prompt_tokens=rnd.randint(0, 500), completion_tokens=rnd.randint(0, 500),
                cost=rnd.random() / 1000, status=rnd.choice([200, 200, 200, 502]),
                latency_ms=1.0,
            )
        )  # fmt: skip
    return out


@pytest.mark.parametrize("shift", [0, 7])  # 7 s: edges off the rollup's slots, read from the log
@pytest.mark.parametrize("group_by", ["channel", "api_key", "model"])
@pytest.mark.parametrize("bucket", ["hour", "day"])
async def test_sqlite_sums_in_sql_what_memory_sums_in_python(
    tmp_path: Path, group_by, bucket, shift
):
    start = utc(2026, 10, 31, 0)
    log = records(400, start, timedelta(days=3))
    memory = MemoryStore(NY)
    sqlite = SqliteStore(tmp_path / "u.db", NY, clock=lambda: start)
    await sqlite.start()
    try:
        for r in log:
            memory.settle_now(None, r, start)
            sqlite.settle_now(None, r, start)
        edges = bucket_edges(start + timedelta(hours=5), start + timedelta(days=2), bucket, NY)
        edges = [e + shift for e in edges]
        from_sql = await sqlite.timeseries(edges, group_by)
        from_python = await memory.timeseries(edges, group_by)
    finally:
        await sqlite.close()
    assert [{**r, "cost": round(r["cost"], 12)} for r in from_sql] == [
        {**r, "cost": round(r["cost"], 12)} for r in from_python
    ]
    # (float sums in another order may differ in the last bits)
    assert rounded(from_python) == rounded(sum_into_buckets(log, edges, group_by))
    inside = [r for r in log if edges[0] <= r.ts < edges[-1]]
    assert sum(row["requests"] for row in from_sql) == len(inside) > 0
    assert sum(row["errors"] for row in from_sql) == sum(r.status >= 400 for r in inside)


async def test_a_log_written_before_the_rollup_is_summed_into_it_once(tmp_path: Path):
    import sqlite3

    start = utc(2026, 10, 31, 0)
    log = records(300, start, timedelta(days=2), seed=3)
    store = SqliteStore(tmp_path / "u.db", KOLKATA, clock=lambda: start)
    await store.start()
    for r in log[:200]:
        store.settle_now(None, r, start)
    await store.close()
    with sqlite3.connect(tmp_path / "u.db") as conn:  # as an older version left the file
        conn.execute("DROP TABLE usage_rollup")
    store = SqliteStore(tmp_path / "u.db", KOLKATA, clock=lambda: start)
    await store.start()
    try:
        for r in log[200:]:
            store.settle_now(None, r, start)
        edges = bucket_edges(start, start + timedelta(days=3), "hour", KOLKATA)
        rows = await store.timeseries(edges, "model")
    finally:
        await store.close()
    expected = sum_into_buckets(log, edges, "model")
    assert [{**r, "cost": round(r["cost"], 12)} for r in rows] == [
        {**r, "cost": round(r["cost"], 12)} for r in expected
    ]
    assert sum(r["requests"] for r in rows) == 300


async def test_memory_rollup_forgets_what_falls_off_the_log():
    start = utc(2026, 10, 31, 0)
    log = records(120, start, timedelta(days=2), seed=5)
    memory = MemoryStore(KOLKATA, log_limit=50)
    for r in log:
        memory.settle_now(None, r, start)
    edges = bucket_edges(start - timedelta(days=1), start + timedelta(days=3), "hour", KOLKATA)
    for group_by in ("channel", "api_key", "model"):
        rows = await memory.timeseries(edges, group_by)
        expected = sum_into_buckets(log[-50:], edges, group_by)
        assert [{**r, "cost": round(r["cost"], 12)} for r in rows] == [
            {**r, "cost": round(r["cost"], 12)} for r in expected
        ]
    assert sum(r["requests"] for r in rows) == 50
