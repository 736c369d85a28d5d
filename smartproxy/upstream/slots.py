"""Per-channel concurrency caps (``max_concurrency``) and the queue of requests waiting for a slot.

The failover loop takes a ``Slot`` before each attempt (``try_acquire``) and gives it back when the
attempt ends — for a stream, when the stream ends. A full channel is skipped like a used-up quota.
When every candidate is full, the request waits (``wait_any``) for the first slot on any of them,
first come first served, up to ``server.queue_timeout``.

Fairness: a freed slot is handed straight to the oldest waiter that can use it (the in-flight count
does not drop in between), and ``try_acquire`` refuses a channel while anyone waits for it, so a
newcomer never overtakes the queue.

``SlotBook`` is the interface; ``LocalSlots`` keeps the counts in this process. A shared
implementation (redis) keeps the same interface.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Slot:
    """One request's place on one channel; ``release`` is idempotent."""

    __slots__ = ("channel", "_book", "_released")

    def __init__(self, channel: str, book: LocalSlots | None) -> None:
        self.channel = channel
        self._book = book
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self._book is not None:
                self._book.release(self.channel)


class SlotBook(Protocol):
    def in_flight(self, channel: str) -> int: ...

    def queued(self) -> int: ...

    def try_acquire(self, channel: str, cap: int | None) -> Slot | None:
        """A slot now, or None when ``cap`` requests are in flight (or others wait for it)."""
        ...

    async def wait_any(self, caps: Mapping[str, int], timeout: float) -> Slot | None:
        """The first slot freed on any of ``caps``' channels, or None after ``timeout`` s."""
        ...


@dataclass(eq=False)
class _Waiter:
    caps: Mapping[str, int]
    future: asyncio.Future[Slot]
    since: float = field(default_factory=time.monotonic)


class LocalSlots:
    """In-flight counts of this process, and its FIFO queue of waiting requests."""

    def __init__(self) -> None:
        # Plain dicts with .get: this runs twice per request (Counter's __missing__ is slow).
        self._counts: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._wanted: dict[str, int] = {}  # channel -> requests waiting for it

    def in_flight(self, channel: str) -> int:
        return self._counts.get(channel, 0)

    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self, channel: str, cap: int | None) -> Slot | None:
        counts = self._counts
        count = counts.get(channel, 0)
        if cap is not None and (count >= cap or self._wanted.get(channel)):
            return None
        counts[channel] = count + 1
        return Slot(channel, self)

    def release(self, channel: str) -> None:
        count = self._counts.get(channel, 0) - 1
        if count > 0:
            self._counts[channel] = count
        else:
            self._counts.pop(channel, None)  # names come and go with reloads: keep it small
        if self._wanted.get(channel):
            self._hand_over(channel)

    def _hand_over(self, channel: str) -> None:
        """Give the freed slot on ``channel`` to the oldest waiter that can use it."""
        for waiter in self._waiters:
            cap = waiter.caps.get(channel)
            count = self._counts.get(channel, 0)
            if cap is None or waiter.future.done() or count >= cap:
                continue
            self._counts[channel] = count + 1
            self._dequeue(waiter)
            waiter.future.set_result(Slot(channel, self))
            return

    def _dequeue(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        for name in waiter.caps:
            left = self._wanted.get(name, 0) - 1
            if left > 0:
                self._wanted[name] = left
            else:
                self._wanted.pop(name, None)

    async def wait_any(self, caps: Mapping[str, int], timeout: float) -> Slot | None:
        # Room may have appeared since the caller looked (a reload raised a cap): take it.
        for name, cap in caps.items():
            if not self._wanted.get(name) and self._counts.get(name, 0) < cap:
                return self.try_acquire(name, cap)
        if timeout <= 0:
            return None
        waiter = _Waiter(dict(caps), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        for name in caps:
            self._wanted[name] = self._wanted.get(name, 0) + 1
        got: Slot | None = None
        try:
            async with asyncio.timeout(timeout):
                got = await asyncio.shield(waiter.future)
            return got
        except TimeoutError:
            return None
        finally:
            self._dequeue(waiter)
            future = waiter.future
            if not future.done():
                future.cancel()
            elif got is None and not future.cancelled():
                # A slot handed over just as the wait ended (timeout, client gone): give it back.
                future.result().release()


class SlotQueue:
    """One request's waits for a slot: one ``queue_timeout`` in all, however often it queues.
    ``observe`` is told the time waited once, when the request is served or gives up."""

    __slots__ = ("_book", "_timeout", "_observe", "_started", "_deadline", "_timed_out")

    def __init__(
        self, book: SlotBook, timeout: float, observe: Callable[[float], None] | None = None
    ) -> None:
        self._book = book
        self._timeout = timeout
        self._observe = observe
        self._started: float | None = None
        self._deadline = 0.0
        self._timed_out = False

    def _left(self) -> float:
        now = time.monotonic()
        if self._started is None:
            self._started, self._deadline = now, now + self._timeout
        return self._deadline - now

    async def wait(self, caps: Mapping[str, int]) -> Slot | None:
        """A slot on one of ``caps``' (full) channels of this process, or None when time is up."""
        slot = await self._book.wait_any(caps, self._left())
        if slot is None:
            self.stop()
        return slot

    async def pause(self, interval: float) -> bool:
        """Wait ``interval`` before looking again (the count is elsewhere: redis); False when
        the time is up."""
        left = self._left()
        if left <= 0:
            self.stop()
            return False
        await asyncio.sleep(min(interval, left))
        return True

    def stop(self) -> None:
        """The waiting is over (served, or timed out): observe how long it took, once."""
        if self._started is None:
            return
        now = time.monotonic()
        self._timed_out = now >= self._deadline
        if self._observe is not None:
            self._observe(now - self._started)
            self._observe = None

    def why_not(self, caps: Mapping[str, int]) -> list[str]:
        """What a 503 says about the channels that stayed full."""
        waited = (f"; no slot freed within server.queue_timeout ({self._timeout:g} s)"
                  if self._timed_out else "")
        return [f"{name}: at max_concurrency ({cap} in flight){waited}"
                for name, cap in caps.items()]
