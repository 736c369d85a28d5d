"""Coarse deadlines: many long timeouts, few event-loop timers.

Every request in flight is watched by two timeouts that almost never fire: its client
connection's watchdog (``server.GuardedConnection``) and its upstream reply's timer
(``providers.h1``), each re-armed as the request moves on. As event-loop timers each costs a
``TimerHandle``, a libuv timer and a bound method (~550 bytes, 6 objects) plus an insertion into
and a removal from the loop's timer heap, whose entries are scattered over a large heap when
10,000 requests are in flight (``benchmarks/concurrency.py``; issue [8]).

A deadline more than a second away does not need a timer of its own: it joins a *bucket* of
deadlines that fall in the same slice of time, one loop timer per bucket. The slice is at most
1/16 of the distance (1/16 s for a deadline 1-2 s away ... 1 s for one 16 s or more away), so a
deadline fires up to ~6 % late and never early — as aiohttp rounds its own timeouts above 5 s up
to the second. A deadline less than a second away keeps an exact loop timer.

``at(when, callback)`` returns something with ``cancel()`` either way. A callback runs once, in
the loop, like a ``call_at`` callback (an exception is passed to the loop's exception handler).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

EXACT_BELOW = 1.0  # seconds: a nearer deadline gets its own loop timer
FINEST = 1 / 16  # the slice for a deadline 1-2 s away
COARSEST = 1.0  # the slice for one 16 s or more away


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Deadline:
    """One deadline in a bucket; ``cancel`` takes it out."""

    __slots__ = ("bucket", "callback")

    def __init__(self, callback: Callable[[], object], bucket: set[Deadline]) -> None:
        self.callback = callback
        self.bucket: set[Deadline] | None = bucket

    def cancel(self) -> None:
        bucket = self.bucket
        if bucket is not None:
            self.bucket = None
            bucket.discard(self)


class Deadlines:
    """The deadlines of one event loop (``for_loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[float, set[Deadline]] = {}

    def __len__(self) -> int:
        """Deadlines waiting in buckets (exact timers not counted)."""
        return sum(len(b) for b in self._buckets.values())

    @property
    def buckets(self) -> int:
        return len(self._buckets)

    def at(self, when: float, callback: Callable[[], object]) -> Cancellable:
        loop = self._loop
        distance = when - loop.time()
        if distance < EXACT_BELOW:
            return loop.call_at(when, callback)
        _, exp = math.frexp(distance * FINEST)  # 2**(exp-1) <= distance/16 < 2**exp
        step = min(max(math.ldexp(1.0, exp - 1), FINEST), COARSEST)
        key = math.ceil(when / step) * step
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            loop.call_at(key, self._fire, key)
        deadline = Deadline(callback, bucket)
        bucket.add(deadline)
        return deadline

    def _fire(self, key: float) -> None:
        bucket = self._buckets.pop(key, None)
        if not bucket:
            return
        for deadline in list(bucket):
            if deadline.bucket is None:  # cancelled by an earlier callback of this bucket
                continue
            deadline.bucket = None
            try:
                deadline.callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as the loop treats a call_at callback's exception
                self._loop.call_exception_handler(
                    {"message": "Exception in a deadline callback", "exception": exc,
                     "callback": deadline.callback}
                )


_BY_LOOP: dict[asyncio.AbstractEventLoop, Deadlines] = {}


def for_loop(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The ``Deadlines`` of ``loop`` (made on first use; forgotten when the loop closes)."""
    deadlines = _BY_LOOP.get(loop)
    if deadlines is None:
        for old in [lp for lp in _BY_LOOP if lp.is_closed()]:  # tests run many loops
            del _BY_LOOP[old]
        deadlines = _BY_LOOP[loop] = Deadlines(loop)
    return deadlines
