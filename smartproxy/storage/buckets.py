"""Time buckets of the request log in the server timezone, and summing records into them.

A bucket is one local hour or one local day of ``server.timezone``. Its edges are instants (epoch
seconds), so a day with a DST change lasts 23 or 25 hours, the repeated autumn hour is two hourly
buckets (01:00-04:00 and 01:00-05:00 in New York) and a zone at +05:30 starts its hours at :30 UTC.
``bucket_edges`` rounds the asked range out to whole buckets: ``from`` down to the start of its
bucket, ``to`` up to the end of its bucket.

``sum_into_buckets`` is the Python implementation (the memory backend); the sqlite backend sums the
same way in SQL over the same edges, and both return ``BucketRow``s in the same order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TypedDict

from .base import BucketRow, RequestRecord, group_column

BUCKETS = ("hour", "day")
SLOT = 900  # seconds: every zone offset and DST change in use falls on a quarter hour
MAX_BUCKETS = 10_000  # a year of hours (8,784) fits; more is a mistake or an attack


def _floor(local: datetime, bucket: str) -> datetime:
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _next_edge(edge: float, bucket: str, tz: tzinfo) -> float:
    local = datetime.fromtimestamp(edge, tz)
    if bucket == "day":
        day = (local + timedelta(days=1)).date()
        # A midnight that DST skips resolves (fold=0) to the first instant of that day.
        return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
    step = datetime.fromtimestamp(edge + 3600, UTC).astimezone(tz)
    nxt = _floor(step, "hour").timestamp()
    return nxt if nxt > edge else edge + 3600  # a half-hour DST shift (Lord Howe)


def bucket_edges(start: datetime, end: datetime, bucket: str, tz: tzinfo) -> list[float]:
    """Epoch edges of the buckets covering ``start <= t < end`` (aware datetimes), rounded out.

    Raises ValueError naming ``bucket`` (unknown, or too many buckets) or ``from`` (not before
    ``to``)."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
    if start >= end:
        raise ValueError("'from' must be before 'to'")
    edge = _floor(start.astimezone(tz), bucket).timestamp()
    stop = end.timestamp()
    edges = [edge]
    while edge < stop:
        edge = _next_edge(edge, bucket, tz)
        edges.append(edge)
        if len(edges) > MAX_BUCKETS + 1:
            raise ValueError(
                f"bucket: {bucket!r} gives more than {MAX_BUCKETS} buckets for this range; "
                "use bucket=day or a shorter range"
            )
    return edges


def sum_into_buckets(
    records: Iterable[RequestRecord], edges: list[float], group_by: str
) -> list[BucketRow]:
    """Sum records into the buckets of ``edges`` grouped by ``group_by``, ordered by (bucket,
    key): what the sqlite backend's SQL returns."""
    column = group_column(group_by)
    lo, hi = edges[0], edges[-1]
    sums: dict[tuple[int, str], list[float]] = {}
    for r in records:
        if not lo <= r.ts < hi:
            continue
        i = bisect_right(edges, r.ts) - 1
        s = sums.setdefault((i, str(getattr(r, column))), [0, 0, 0, 0.0, 0])
        s[0] += 1
        s[1] += r.prompt_tokens
        s[2] += r.completion_tokens
        s[3] += r.cost
        s[4] += r.status >= 400
    return [
        BucketRow(bucket=i, key=key, requests=int(n), prompt_tokens=int(p),
                  completion_tokens=int(c), cost=cost, errors=int(e))
        for (i, key), (n, p, c, cost, e) in sorted(sums.items())
    ]  # fmt: skip


_GROUP_INDEX = {"channel": 0, "api_key": 1, "model": 2}


class SlotSums:
    """The request log summed per 15-minute slot and (channel, key name, model), kept next to a
    bounded in-memory log (``add`` what is appended, ``remove`` what falls off), so buckets on
    slot boundaries are summed over slots, not records: the memory backend's rollup."""

    def __init__(self) -> None:
        self._slots: dict[int, dict[tuple[str, str, str], list[float]]] = {}

    def add(self, r: RequestRecord, sign: int = 1) -> None:
        slot = int(r.ts // SLOT) * SLOT
        groups = self._slots.setdefault(slot, {})
        key = (r.channel, r.api_key_name, r.model)
        s = groups.setdefault(key, [0, 0, 0, 0.0, 0])
        s[0] += sign
        s[1] += sign * r.prompt_tokens
        s[2] += sign * r.completion_tokens
        s[3] += sign * r.cost
        s[4] += sign * (r.status >= 400)
        if s[0] == 0:
            del groups[key]
            if not groups:
                del self._slots[slot]

    def remove(self, r: RequestRecord) -> None:
        self.add(r, -1)

    def rows(self, edges: list[float], group_by: str) -> list[BucketRow]:
        """``sum_into_buckets`` for edges that all fall on slot boundaries."""
        group_column(group_by)
        index = _GROUP_INDEX[group_by]
        lo, hi = edges[0], edges[-1]
        sums: dict[tuple[int, str], list[float]] = {}
        for slot, groups in self._slots.items():
            if not lo <= slot < hi:
                continue
            i = bisect_right(edges, slot) - 1
            for key, (n, p, c, cost, e) in groups.items():
                s = sums.setdefault((i, key[index]), [0, 0, 0, 0.0, 0])
                s[0] += n
                s[1] += p
                s[2] += c
                s[3] += cost
                s[4] += e
        return [
            BucketRow(bucket=i, key=key, requests=int(n), prompt_tokens=int(p),
                      completion_tokens=int(c), cost=cost, errors=int(e))
            for (i, key), (n, p, c, cost, e) in sorted(sums.items())
        ]  # fmt: skip


class _Totals(TypedDict):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    errors: int


def _zero() -> _Totals:
    return _Totals(requests=0, prompt_tokens=0, completion_tokens=0, total_tokens=0, cost=0.0,
                   errors=0)  # fmt: skip


def _add(into: _Totals, row: BucketRow) -> None:
    into["requests"] += row["requests"]
    into["prompt_tokens"] += row["prompt_tokens"]
    into["completion_tokens"] += row["completion_tokens"]
    into["total_tokens"] += row["prompt_tokens"] + row["completion_tokens"]
    into["cost"] += row["cost"]
    into["errors"] += row["errors"]


def timeseries_document(
    edges: list[float], rows: list[BucketRow], *, bucket: str, group_by: str, tz: tzinfo
) -> dict[str, object]:
    """The ``GET /api/usage/timeseries`` answer: every bucket (empty ones too, so a chart's x axis
    is continuous), its totals and its groups; local ISO times with their UTC offset."""
    buckets: list[dict[str, object]] = []
    groups: dict[int, dict[str, _Totals]] = {}
    totals: dict[int, _Totals] = {}
    overall = _zero()
    for row in rows:
        g = groups.setdefault(row["bucket"], {}).setdefault(row["key"], _zero())
        _add(g, row)
        _add(totals.setdefault(row["bucket"], _zero()), row)
        _add(overall, row)
    for i in range(len(edges) - 1):
        buckets.append(
            {
                "start": _iso(edges[i], tz),
                "end": _iso(edges[i + 1], tz),
                **totals.get(i, _zero()),
                "groups": groups.get(i, {}),
            }
        )
    return {
        "bucket": bucket,
        "group_by": group_by,
        "timezone": str(tz),
        "from": _iso(edges[0], tz),
        "to": _iso(edges[-1], tz),
        "keys": sorted({row["key"] for row in rows}),
        "totals": overall,
        "buckets": buckets,
    }


def _iso(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()
