"""MinuteClock: the server-local minute of an instant, converted once per minute."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from smartproxy.localtime import MinuteClock
from smartproxy.storage.base import window_keys


@pytest.mark.parametrize(
    ("zone", "utc", "hhmm", "day"),
    [
        ("UTC", datetime(2026, 11, 26, 23, 59, 30, tzinfo=UTC), time(23, 59), date(2026, 11, 26)),
        # +08:00: UTC 16:00 is local midnight of the next day
        ("Asia/Shanghai", datetime(2026, 11, 26, 16, 0, 5, tzinfo=UTC), time(0, 0), date(2026, 11, 27)),
        ("Asia/Shanghai", datetime(2026, 11, 26, 15, 59, 59, tzinfo=UTC), time(23, 59), date(2026, 11, 26)),
        # +05:30: a half-hour offset still maps whole UTC minutes to whole local minutes
        ("Asia/Kolkata", datetime(2026, 11, 26, 18, 29, 59, tzinfo=UTC), time(23, 59), date(2026, 11, 26)),
        ("Asia/Kolkata", datetime(2026, 11, 26, 18, 30, 0, tzinfo=UTC), time(0, 0), date(2026, 11, 27)),
        # New York in summer time (-04:00) on the day clocks go back
        ("America/New_York", datetime(2026, 11, 1, 5, 59, tzinfo=UTC), time(1, 59), date(2026, 11, 1)),
        ("America/New_York", datetime(2026, 11, 1, 6, 0, tzinfo=UTC), time(1, 0), date(2026, 11, 1)),
    ],
)
def test_local_minute_and_day(zone: str, utc: datetime, hhmm: time, day: date) -> None:
    minute = MinuteClock(ZoneInfo(zone)).at(utc)
    assert minute.hhmm == hhmm
    assert minute.day == day
    assert minute.local == utc.astimezone(ZoneInfo(zone)).replace(second=0, microsecond=0)
    local = utc.astimezone(ZoneInfo(zone))
    assert (minute.day_key, minute.hour_key) == (f"{local:%Y-%m-%d}", f"{local:%Y-%m-%dT%H}")
    assert (minute.day_key, minute.hour_key) == window_keys(utc, ZoneInfo(zone))


def test_the_minute_is_remembered_until_it_ends_and_recomputed_after() -> None:
    clock = MinuteClock(ZoneInfo("Asia/Shanghai"))
    start = datetime(2026, 11, 26, 15, 59, tzinfo=UTC)
    first = clock.at(start)
    assert clock.at(start + timedelta(seconds=59.999)) is first  # same minute: no conversion
    nxt = clock.at(start + timedelta(seconds=60))
    assert nxt is not first and nxt.hhmm == time(0, 0) and nxt.day == date(2026, 11, 27)
    back = clock.at(start + timedelta(seconds=1))  # a clock set back: converted again, right
    assert back.hhmm == time(23, 59) and back.day == date(2026, 11, 26)
    assert clock.at_epoch(start.timestamp()).hhmm == time(23, 59)


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        MinuteClock(UTC).at(datetime(2026, 11, 26, 12, 0))
