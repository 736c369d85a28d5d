"""How long ``GET /api/usage/timeseries`` takes to sum the request log (sqlite in SQL, memory in
Python), for the dashboard's four series, over a log of N requests spread over 30 days.

    taskset -c 1 python benchmarks/timeseries_bench.py --records 500000

The store is filled directly (the request path is not what is measured here), then each query is
run ``--repeat`` times and the median is printed. Rows marked ``*`` use edges one second off the
15-minute slots, so they are summed from the log itself: the cost without the rollup.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from smartproxy.storage import MemoryStore, RequestRecord, SqliteStore
from smartproxy.storage.buckets import bucket_edges

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Shanghai")


def log(n: int, keys: int, channels: int, models: int) -> list[RequestRecord]:
    rnd = random.Random(1)
    start = (NOW - timedelta(days=30)).timestamp()
    span = 30 * 86400
    return [
        RequestRecord(
            ts=start + rnd.random() * span, request_id=str(i),
            api_key_name=f"key-{rnd.randrange(keys)}", channel=f"ch-{rnd.randrange(channels)}",
            model=f"model-{rnd.randrange(models)}", prompt_tokens=rnd.randrange(2000),
            completion_tokens=rnd.randrange(800), cost=rnd.random() / 1000, status=200,
            latency_ms=1.0,
        )
        for i in range(n)
    ]  # fmt: skip


async def run(records: int, repeat: int, keys: int, channels: int, models: int) -> None:
    rows = sorted(log(records, keys, channels, models), key=lambda r: r.ts)  # appended in order
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(Path(tmp) / "u.db", TZ, clock=lambda: NOW)
        await sqlite.start()
        memory = MemoryStore(TZ, log_limit=records)
        for i, r in enumerate(rows):
            sqlite.settle_now(None, r, NOW)
            memory.settle_now(None, r, NOW)
            if i % 50_000 == 0:
                await sqlite.flush()  # the store keeps at most 200,000 unwritten records
        await sqlite.flush()
        queries = [
            ("hour, 48 h, channel", bucket_edges(NOW - timedelta(hours=48), NOW, "hour", TZ),
             "channel"),
            ("day, 30 d, channel", bucket_edges(NOW - timedelta(days=30), NOW, "day", TZ),
             "channel"),
            ("day, 30 d, api_key", bucket_edges(NOW - timedelta(days=30), NOW, "day", TZ),
             "api_key"),
            ("day, 30 d, model", bucket_edges(NOW - timedelta(days=30), NOW, "day", TZ), "model"),
        ]  # fmt: skip
        logged, rollup = await asyncio.to_thread(
            sqlite._run,
            lambda c: c.execute(
                "SELECT (SELECT COUNT(*) FROM request_log), (SELECT COUNT(*) FROM usage_rollup)"
            ).fetchone(),
        )
        assert logged == records, (logged, records)
        print(f"request log: {records:,} records over 30 days ({keys} keys x {channels} channels"
              f" x {models} models at random); rollup: {rollup:,} rows")
        runs = [("sqlite", sqlite, 0), ("memory", memory, 0)]
        # edges 1 s off the 15-minute slots: what the rollup saves (each store then reads its log)
        runs += [("sqlite*", sqlite, 1), ("memory*", memory, 1)]
        for name, store, shift in runs:
            for label, slot_edges, group_by in queries:
                edges = [e + shift for e in slot_edges]
                times = []
                for _ in range(repeat if not shift else 1):
                    t0 = time.perf_counter()
                    await store.timeseries(edges, group_by)
                    times.append(time.perf_counter() - t0)
                print(f"{name:7} {label:22} median {statistics.median(times) * 1000:8.1f} ms")
        await sqlite.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.records, args.repeat, args.keys, args.channels, args.models))
