"""Per-key daily spend (smartproxy/security/budget.py): the book, the local day, the refusal."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from smartproxy.errors import QuotaExceeded
from smartproxy.security.budget import (
    DailySpend,
    check_budget,
    day_start,
    local_day,
    seconds_to_next_day,
)

D1, D2 = date(2026, 11, 26), date(2026, 11, 27)


def test_spend_adds_per_key_and_per_day():
    book = DailySpend()
    book.add("a", 0.5, D1)
    book.add("a", 0.25, D1)
    book.add("b", 1.0, D1)
    book.add("c", 0.0, D1)  # free traffic is not tracked
    assert book.spent("a", D1) == 0.75 and book.spent("b", D1) == 1.0 and len(book) == 2
    assert book.spent("a", D2) == 0.0  # another day: nothing spent
    book.add("a", 0.1, D2)  # the first cost of a new day drops the old one
    assert book.spent("a", D2) == 0.1 and book.spent("b", D2) == 0.0 and len(book) == 1
    book.add("b", 5.0, D1)  # a late settlement of yesterday's request
    assert book.spent("b", D2) == 0.0 and book.spent("b", D1) == 0.0


def test_seed_takes_request_log_rows():
    book = DailySpend()
    book.seed(
        [
            {"api_key": "a", "cost": 0.3, "requests": 3},
            {"api_key": "", "cost": 1.0},
            {"api_key": None, "cost": 2.0},
            {"api_key": "b", "cost": 0},
        ],
        D1,
    )
    assert book.spent("a", D1) == pytest.approx(0.3) and len(book) == 1


@pytest.mark.parametrize(
    ("tz", "utc_now", "day", "seconds"),
    [
        ("UTC", datetime(2026, 11, 26, 12, 0, tzinfo=UTC), D1, 12 * 3600),
        # 17:00 UTC is already 01:00 the next day in Shanghai (UTC+8).
        ("Asia/Shanghai", datetime(2026, 11, 26, 17, 0, tzinfo=UTC), D2, 23 * 3600),
        # 2026-03-08 is 23 hours long in New York (DST starts): midnight to midnight.
        ("America/New_York", datetime(2026, 3, 8, 5, 0, tzinfo=UTC), date(2026, 3, 8), 23 * 3600),
        ("America/New_York", datetime(2026, 11, 1, 4, 0, tzinfo=UTC), date(2026, 11, 1), 25 * 3600),
    ],
)
def test_local_day_and_time_to_the_next_one(tz, utc_now, day, seconds):
    zone = ZoneInfo(tz)
    assert local_day(utc_now, zone) == day
    assert day_start(utc_now, zone).date() == day
    assert seconds_to_next_day(utc_now, zone) == seconds


def test_check_budget():
    book = DailySpend()
    now = datetime(2026, 11, 26, 18, 0, tzinfo=UTC)
    check_budget(book, "a", 1.0, now, UTC)
    book.add("a", 1.0, D1)
    check_budget(book, "a", None, now, UTC)  # no budget
    check_budget(book, "a", 0, now, UTC)  # 0 = no budget, like every other limit
    check_budget(book, "a", 1.5, now, UTC)
    with pytest.raises(QuotaExceeded) as err:
        check_budget(book, "a", 1.0, now, UTC)
    assert err.value.status == 429
    assert err.value.body()["error"]["type"] == "insufficient_quota"
    assert err.value.headers == {"Retry-After": str(6 * 3600), "x-should-retry": "false"}
    assert "'a'" in err.value.message and "$1.0000 of $1" in err.value.message
