"""Each API key's spend today, for ``daily_budget_usd``.

Why an in-process book and not the usage store: the budget is checked on every request of a
budgeted key, before dispatch. Asking the store means a query over the request log (an SQLite read
off the event loop, and one that only sees rows the batch writer has flushed); the book is one dict
read. It is filled from the store's request log once at start (``seed``) so a restart does not hand
every key a fresh budget, and then kept current by the proxy at each request's settlement.

The day is the server-local day (``server.timezone``) of the request's *start*, the same rule the
request log's ``ts`` follows, so the seed and the live counts agree. Only today is kept: the first
cost of a new day drops yesterday's numbers, and a late settlement of yesterday's request is not
counted against today.

Limits, documented for users: the check compares settled spend with the budget, so requests already
in flight when the budget is reached may overshoot it by their own cost; with several worker
processes each process keeps its own book (the seed at start sees all of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from ..errors import QuotaExceeded


def local_day(now: datetime, tz: tzinfo) -> date:
    return now.astimezone(tz).date()


def day_start(now: datetime, tz: tzinfo) -> datetime:
    """Local midnight at the start of ``now``'s day, as an aware datetime."""
    return datetime.combine(local_day(now, tz), time(0), tzinfo=tz)


def seconds_to_next_day(now: datetime, tz: tzinfo) -> float:
    start = day_start(now, tz)
    # Add a calendar day in local terms, then resolve: right across DST changes too.
    following = datetime.combine(start.date() + timedelta(days=1), time(0), tzinfo=tz)
    # Both in UTC: aware datetimes sharing one tzinfo would subtract as naive wall times.
    return max(0.0, (following.astimezone(UTC) - now.astimezone(UTC)).total_seconds())


class DailySpend:
    """Cost (USD) per key name for the current server-local day."""

    __slots__ = ("_day", "_costs")

    def __init__(self) -> None:
        self._day: date | None = None
        self._costs: dict[str, float] = {}

    def add(self, key_name: str, cost: float, day: date) -> None:
        if cost <= 0 or not key_name:
            return  # free traffic costs nothing to track
        if day != self._day:
            if self._day is not None and day < self._day:
                return  # a late settlement of yesterday's request: not today's money
            self._day, self._costs = day, {}
        self._costs[key_name] = self._costs.get(key_name, 0.0) + cost

    def spent(self, key_name: str, day: date) -> float:
        return self._costs.get(key_name, 0.0) if day == self._day else 0.0

    def seed(self, rows: Iterable[Mapping[str, object]], day: date) -> None:
        """Add today's request-log totals (``store.query(..., group_by="api_key")`` rows)."""
        for row in rows:
            name, cost = row.get("api_key"), row.get("cost")
            if isinstance(name, str) and isinstance(cost, (int, float)):
                self.add(name, float(cost), day)

    def __len__(self) -> int:
        return len(self._costs)


def check_budget(
    spend: DailySpend, key_name: str, budget: float | None, now: datetime, tz: tzinfo
) -> None:
    """Raise ``QuotaExceeded`` (429 ``insufficient_quota``) when the key has spent its budget.

    ``None`` or 0 means no budget, like every other limit in the config.
    """
    if not budget:
        return
    spent = spend.spent(key_name, local_day(now, tz))
    if spent < budget:
        return
    raise budget_spent(key_name, spent, budget, now, tz)


def budget_spent(
    key_name: str, spent: float, budget: float, now: datetime, tz: tzinfo
) -> QuotaExceeded:
    """The 429 ``insufficient_quota`` of a key that has spent its daily budget."""
    wait = seconds_to_next_day(now, tz)
    return QuotaExceeded(
        f"key {key_name!r} has used its daily budget: ${spent:.4f} of ${budget:g} today; "
        f"it resets at local midnight",
        headers={
            "Retry-After": str(max(1, math.ceil(wait))),
            # OpenAI's SDKs retry 429s by default; retrying cannot help until the day ends.
            "x-should-retry": "false",
        },
    )
