"""Prices at an instant: discount windows in the server's time zone, and the cost of a request.

Every public function takes a timezone-aware instant and the zone of ``server.timezone`` and
converts itself, so callers never have to remember which clock a window is written in. The
``*_local`` variants take the local wall-clock time already computed, for the router, which
prices every channel at the same instant.

Price rules (contract §4, issue [2]):
- inside any ``discount_time`` window (start inclusive, end exclusive, may cross midnight,
  ``00:00-00:00`` = all day) a channel with a ``discount_price`` costs ``discount_price`` for
  every token, prompt and completion alike;
- outside, a prompt token costs ``price_per_prompt_token`` and a completion token
  ``price_per_completion_token`` when those are set, otherwise ``price_per_token``.
The effective price, used to rank channels, is ``discount_price`` inside a window, else
``price_per_token``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

from ..config import ChannelConfig, TimeWindow


def local_time(at: datetime, tz: tzinfo) -> datetime:
    """``at`` as wall-clock time in ``tz``; a naive instant is refused, its zone is unknowable."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"instant {at.isoformat()} has no time zone")
    return at.astimezone(tz)


def minute_of(local: datetime) -> time:
    """The local HH:MM a window is compared with (seconds do not move a minute edge)."""
    return time(local.hour, local.minute)


# ----------------------------------------------------------------------------- local variants
def discount_active_local(channel: ChannelConfig, hhmm: time) -> bool:
    if channel.discount_price is None:
        return False
    return any(window.contains(hhmm) for window in channel.discount_time)


def effective_price_local(channel: ChannelConfig, hhmm: time) -> float:
    if channel.discount_price is not None and discount_active_local(channel, hhmm):
        return channel.discount_price
    return channel.price_per_token


def token_prices_local(channel: ChannelConfig, hhmm: time) -> tuple[float, float]:
    if channel.discount_price is not None and discount_active_local(channel, hhmm):
        return channel.discount_price, channel.discount_price
    prompt = channel.price_per_prompt_token
    completion = channel.price_per_completion_token
    return (
        channel.price_per_token if prompt is None else prompt,
        channel.price_per_token if completion is None else completion,
    )


# ----------------------------------------------------------------------------- at an instant
def discount_active(channel: ChannelConfig, at: datetime, tz: tzinfo) -> bool:
    """Whether ``at`` falls in one of the channel's discount windows (and it has a discount)."""
    return discount_active_local(channel, minute_of(local_time(at, tz)))


def effective_price(channel: ChannelConfig, at: datetime, tz: tzinfo) -> float:
    """USD per token used to rank channels: ``discount_price`` in a window, else the list price."""
    return effective_price_local(channel, minute_of(local_time(at, tz)))


def token_prices(channel: ChannelConfig, at: datetime, tz: tzinfo) -> tuple[float, float]:
    """(prompt, completion) USD per token at ``at``."""
    return token_prices_local(channel, minute_of(local_time(at, tz)))


def cost(
    channel: ChannelConfig,
    prompt_tokens: int,
    completion_tokens: int,
    at: datetime,
    tz: tzinfo,
) -> float:
    """USD for one request, priced at ``at`` (the request's start, so a window closing mid-stream
    does not change what the client was quoted)."""
    return cost_local(channel, prompt_tokens, completion_tokens, minute_of(local_time(at, tz)))


def cost_local(
    channel: ChannelConfig, prompt_tokens: int, completion_tokens: int, hhmm: time
) -> float:
    """``cost`` at a local minute already computed (``MinuteClock``)."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(f"token counts must not be negative: {prompt_tokens}, {completion_tokens}")
    prompt_price, completion_price = token_prices_local(channel, hhmm)
    return prompt_tokens * prompt_price + completion_tokens * completion_price


# ----------------------------------------------------------------------------- the next change
@dataclass(frozen=True, slots=True)
class DiscountChange:
    """A channel's discount seen from an instant: the window in effect (``active``) and when it
    ends, or the window that starts next and when. ``at`` is None for an all-day window."""

    active: bool
    window: TimeWindow
    at: datetime | None


def next_discount_change(channel: ChannelConfig, at: datetime, tz: tzinfo) -> DiscountChange | None:
    """When the channel's discount next ends (inside a window) or starts; None without one."""
    if channel.discount_price is None or not channel.discount_time:
        return None
    local = local_time(at, tz)
    hhmm = minute_of(local)

    def next_local(t: time) -> datetime:
        """The next instant after ``at`` whose local wall clock reads ``t``."""
        for days in (0, 1, 2):
            day = local.date() + timedelta(days=days)
            candidate = datetime(day.year, day.month, day.day, t.hour, t.minute, tzinfo=tz)
            if candidate.astimezone(UTC) > at:
                return candidate
        raise AssertionError("unreachable: a wall-clock time recurs within two days")

    for window in channel.discount_time:
        if window.contains(hhmm):
            if window.start == window.end:
                return DiscountChange(True, window, None)
            return DiscountChange(True, window, next_local(window.end))
    starts = [(next_local(w.start).astimezone(UTC), w) for w in channel.discount_time]
    when, window = min(starts, key=lambda s: s[0])
    return DiscountChange(False, window, when.astimezone(tz))
