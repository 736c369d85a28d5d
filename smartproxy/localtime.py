"""The server-local minute of an instant, computed once per minute.

Routing compares discount windows with the local HH:MM, pricing does the same for the cost of a
settled request, and a key's daily budget counts in the local day. A zone conversion
(``astimezone`` through ``zoneinfo``) on each of those, on every request, is needless: every
zone offset in use is a whole number of minutes, so all instants of one UTC minute share one local
minute. ``MinuteClock.at(now)`` converts on the first call of a minute and then answers from a
float comparison. The usage counters take their day and hour window keys from it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo


@dataclass(frozen=True, slots=True)
class LocalMinute:
    start: float  # epoch seconds at which this minute starts
    local: datetime  # wall-clock time in the zone at the start of the minute
    hhmm: time  # what discount windows are compared with
    day: date
    day_key: str  # the usage counters' windows: "YYYY-MM-DD" and "YYYY-MM-DDTHH"
    hour_key: str


def window_keys_of(local: datetime) -> tuple[str, str]:
    """The (day, hour) usage window keys of a local wall-clock time."""
    day = f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return day, f"{day}T{local.hour:02d}"


class MinuteClock:
    """``at(now)``: the local minute of ``now`` in ``tz``, remembered until the minute ends."""

    __slots__ = ("tz", "_last")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._last: LocalMinute | None = None

    def at(self, now: datetime) -> LocalMinute:
        if now.tzinfo is None:
            raise ValueError(f"instant {now.isoformat()} has no time zone")
        return self.at_epoch(now.timestamp())

    def at_epoch(self, ts: float) -> LocalMinute:
        """The local minute of epoch seconds ``ts``."""
        last = self._last
        if last is not None and last.start <= ts < last.start + 60:
            return last
        start = ts - ts % 60
        local = datetime.fromtimestamp(start, self.tz)
        day_key, hour_key = window_keys_of(local)
        last = self._last = LocalMinute(
            start, local, time(local.hour, local.minute), local.date(), day_key, hour_key
        )
        return last
