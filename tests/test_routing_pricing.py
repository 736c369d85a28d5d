"""Prices at an instant: discount windows (minute edges, midnight, time zones) and cost."""

from __future__ import annotations

from datetime import UTC, datetime, time, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from smartproxy.config import ChannelConfig, TimeWindow, parse_hhmm
from smartproxy.routing.pricing import (
    cost,
    discount_active,
    effective_price,
    token_prices,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def window(text: str) -> TimeWindow:
    start, _, end = text.partition("-")
    return TimeWindow(parse_hhmm(start), parse_hhmm(end))


def channel(
    *windows: str, discount: float | None = 0.5, price: float = 2.0, **kw: Any
) -> ChannelConfig:
    return ChannelConfig(
        name="c",
        type="openai",
        endpoint="https://x.test/v1",
        price_per_token=price,
        discount_time=tuple(window(w) for w in windows),
        discount_price=discount,
        **kw,
    )


def at(hhmm: str, second: int = 0, tz: timezone | ZoneInfo = UTC) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(2025, 3, 10, h, m, second, tzinfo=tz)


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize(
    ("windows", "now", "inside"),
    [
        # plain window: start inclusive, end exclusive, seconds do not move the edge
        (("00:00-06:00",), "00:00", True),
        (("00:00-06:00",), "05:59", True),
        (("00:00-06:00",), "06:00", False),
        (("00:00-06:00",), "12:00", False),
        (("09:30-09:31",), "09:29", False),
        (("09:30-09:31",), "09:30", True),
        (("09:30-09:31",), "09:31", False),
        # crossing midnight
        (("22:00-02:00",), "21:59", False),
        (("22:00-02:00",), "22:00", True),
        (("22:00-02:00",), "23:59", True),
        (("22:00-02:00",), "00:00", True),
        (("22:00-02:00",), "01:59", True),
        (("22:00-02:00",), "02:00", False),
        (("22:00-02:00",), "12:00", False),
        # the whole day, and "24:00" as an end
        (("00:00-00:00",), "13:37", True),
        (("18:00-24:00",), "23:59", True),
        (("18:00-24:00",), "00:00", False),
        # several windows
        (("01:00-02:00", "13:00-14:00"), "01:30", True),
        (("01:00-02:00", "13:00-14:00"), "13:00", True),
        (("01:00-02:00", "13:00-14:00"), "02:00", False),
        (("01:00-02:00", "13:00-14:00"), "12:59", False),
        ((), "03:00", False),
    ],
)
def test_discount_window_minute_edges(windows: tuple[str, ...], now: str, inside: bool) -> None:
    ch = channel(*windows)
    for second in (0, 59):
        assert discount_active(ch, at(now, second), UTC) is inside
        assert effective_price(ch, at(now, second), UTC) == (0.5 if inside else 2.0)


def test_no_discount_price_means_no_discount() -> None:
    ch = channel("00:00-00:00", discount=None)
    assert discount_active(ch, at("03:00"), UTC) is False
    assert effective_price(ch, at("03:00"), UTC) == 2.0


def test_time_window_contains_accepts_aware_and_second_precise_times() -> None:
    w = window("22:00-02:00")
    assert w.contains(time(22, 0, tzinfo=UTC)) is True
    assert w.contains(time(1, 59, 59, 999999)) is True
    assert w.contains(time(2, 0, tzinfo=UTC)) is False


# ----------------------------------------------------------------------------- time zones
@pytest.mark.parametrize(
    ("instant", "tz", "inside"),
    [
        # 17:00 UTC is 01:00 next day in Shanghai (UTC+8): inside 00:00-06:00 there only
        (datetime(2025, 3, 10, 17, 0, tzinfo=UTC), SHANGHAI, True),
        (datetime(2025, 3, 10, 17, 0, tzinfo=UTC), UTC, False),
        # 03:00 UTC is 11:00 in Shanghai
        (datetime(2025, 3, 10, 3, 0, tzinfo=UTC), UTC, True),
        (datetime(2025, 3, 10, 3, 0, tzinfo=UTC), SHANGHAI, False),
        # the same instant written in another zone gives the same answer
        (datetime(2025, 3, 11, 1, 0, tzinfo=SHANGHAI), SHANGHAI, True),
        (datetime(2025, 3, 11, 1, 0, tzinfo=SHANGHAI), UTC, False),
        # edge: 22:00 UTC is 06:00 Shanghai, the window's exclusive end
        (datetime(2025, 3, 10, 21, 59, tzinfo=UTC), SHANGHAI, True),
        (datetime(2025, 3, 10, 22, 0, tzinfo=UTC), SHANGHAI, False),
    ],
)
def test_windows_are_read_in_the_server_zone(
    instant: datetime, tz: timezone | ZoneInfo, inside: bool
) -> None:
    assert discount_active(channel("00:00-06:00"), instant, tz) is inside


def test_dst_local_wall_clock() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    ch = channel("02:00-03:00")
    # 2025-10-26: 02:00-03:00 local happens twice (CEST then CET); both are inside
    assert discount_active(ch, datetime(2025, 10, 26, 0, 30, tzinfo=UTC), berlin) is True
    assert discount_active(ch, datetime(2025, 10, 26, 1, 30, tzinfo=UTC), berlin) is True
    assert discount_active(ch, datetime(2025, 10, 26, 2, 0, tzinfo=UTC), berlin) is False


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        effective_price(channel("00:00-06:00"), datetime(2025, 1, 1, 3, 0), UTC)


# ----------------------------------------------------------------------------- prices and cost
@pytest.mark.parametrize(
    ("kw", "now", "prices"),
    [
        ({}, "03:00", (0.5, 0.5)),
        ({}, "12:00", (2.0, 2.0)),
        ({"price_per_prompt_token": 1.0, "price_per_completion_token": 3.0}, "12:00", (1.0, 3.0)),
        ({"price_per_prompt_token": 1.0, "price_per_completion_token": 3.0}, "03:00", (0.5, 0.5)),
        ({"price_per_prompt_token": 1.0}, "12:00", (1.0, 2.0)),
        ({"price_per_completion_token": 0.0}, "12:00", (2.0, 0.0)),
    ],
)
def test_token_prices(kw: dict[str, float], now: str, prices: tuple[float, float]) -> None:
    assert token_prices(channel("00:00-06:00", **kw), at(now), UTC) == prices


def test_cost_uses_the_discount_inside_a_window() -> None:
    ch = channel("00:00-06:00", discount=0.000001, price=0.00001)
    assert cost(ch, 300, 700, at("05:59", 59), UTC) == pytest.approx(1000 * 0.000001)
    assert cost(ch, 300, 700, at("06:00"), UTC) == pytest.approx(1000 * 0.00001)


def test_cost_with_split_prices_and_free_channel() -> None:
    split = channel(price=1.0, price_per_prompt_token=0.5, price_per_completion_token=2.0)
    assert cost(split, 10, 5, at("12:00"), UTC) == pytest.approx(10 * 0.5 + 5 * 2.0)
    free = channel(price=0.0, discount=None)
    assert cost(free, 10_000, 10_000, at("12:00"), UTC) == 0.0
    with pytest.raises(ValueError, match="negative"):
        cost(free, -1, 0, at("12:00"), UTC)
