"""Per-channel concurrency caps (``max_concurrency``) and the queue of requests waiting for a slot.

The failover loop takes a ``Slot`` before each attempt (``try_acquire``) and gives it back when the
attempt ends — for a stream, when the stream ends. A full channel is skipped like a used-up quota.
When every candidate is full, the request waits (``wait_any``) for the first slot on any of them,
first come first served, up to ``server.queue_timeout``.

Fairness: a freed slot is handed straight to the oldest waiter that can use it (the in-flight count
does not drop in between), and ``try_acquire`` refuses a channel while anyone waits for it, so a
newcomer never overtakes the queue.

With a shared store (redis) the count is in Redis (its admit script refuses a full channel), so no
slot can be handed over here; the order is kept here instead: the requests waiting for a channel
stand in one line (``join``, ``next_turn``), only the first of a channel's line tries it, on its
own beat (``SHARED_POLL``) or at once when a slot frees in this process or it comes to the front,
and ``try_acquire`` refuses a channel to anyone else while its line is not empty.

``SlotBook`` is the interface; ``LocalSlots`` keeps the counts and the lines of this process.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
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

    def give_back(self) -> None:
        """Release a slot that carried no request (shared: the admit refused it), waking none:
        nothing freed for the line."""
        if not self._released:
            self._released = True
            if self._book is not None:
                self._book.release(self.channel, wake=False)


class SlotBook(Protocol):
    def in_flight(self, channel: str) -> int: ...

    def queued(self) -> int: ...

    def try_acquire(self, channel: str, cap: int | None, turn: Turn | None = None) -> Slot | None:
        """A slot now, or None when ``cap`` requests are in flight or others wait for it (but
        ``turn``, the first in its line)."""
        ...

    async def wait_any(self, caps: Mapping[str, int], timeout: float) -> Slot | None:
        """The first slot freed on any of ``caps``' channels, or None after ``timeout`` s."""
        ...

    def join(self, channels: Iterable[str]) -> Turn:
        """Stand in the line of each of ``channels`` (shared store)."""
        ...

    def rewant(self, turn: Turn, channels: Iterable[str]) -> None:
        """``turn`` now waits for ``channels`` only (it keeps its place)."""
        ...

    def heads(self, turn: Turn) -> list[str]:
        """The channels whose line ``turn`` is the first of."""
        ...

    def leave(self, turn: Turn, served: str | None = None) -> None:
        """Out of every line; the next of each is told at once. ``served``: the channel whose
        slot it got."""
        ...

    def place(self, channel: str, turn: Turn) -> tuple[int, str]:
        """For the shared line: the ms ``turn`` (the first in ``channel``'s line) has waited
        (-1: not in it), and those after it in that line, oldest first ("1200,830"; "": none;
        at most ``LINE_SHOWN``)."""
        ...


LINE_SHOWN = 15  # a process's waiters after its first that it tells the shared line of


@dataclass(eq=False)
class _Waiter:
    caps: Mapping[str, int]
    future: asyncio.Future[Slot]
    since: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Turn:
    """A request in the lines of a shared store's full channels; ``ready``: it may try now
    (it came to the front of a line, or a slot freed in this process)."""

    channels: set[str]
    since: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    placed: set[str] = field(default_factory=set)  # channels whose shared line it stands in


class LocalSlots:
    """In-flight counts of this process, and its FIFO queue of waiting requests."""

    def __init__(self) -> None:
        # Plain dicts with .get: this runs twice per request (Counter's __missing__ is slow).
        self._counts: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._wanted: dict[str, int] = {}  # channel -> requests waiting for it
        self._line: deque[Turn] = deque()  # shared store: the waiting requests, oldest first
        # Told the channels whose shared line this process leaves (``RedisStore.vacate``).
        self.on_vacate: Callable[[str], None] | None = None

    def in_flight(self, channel: str) -> int:
        return self._counts.get(channel, 0)

    def queued(self) -> int:
        return len(self._waiters) + len(self._line)

    def try_acquire(self, channel: str, cap: int | None, turn: Turn | None = None) -> Slot | None:
        counts = self._counts
        count = counts.get(channel, 0)
        if cap is not None:
            if count >= cap or self._wanted.get(channel):
                return None
        elif self._line and self._wanted.get(channel) and self._first(channel) is not turn:
            return None  # shared store: others of this process wait for it, ``turn`` not first
        counts[channel] = count + 1
        return Slot(channel, self)

    def release(self, channel: str, wake: bool = True) -> None:
        count = self._counts.get(channel, 0) - 1
        if count > 0:
            self._counts[channel] = count
        else:
            self._counts.pop(channel, None)  # names come and go with reloads: keep it small
        if wake and self._wanted.get(channel):
            if self._line:
                self._wake(channel)
            else:
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

    # ------------------------------------------------------------ the lines of a shared store
    def join(self, channels: Iterable[str]) -> Turn:
        turn = Turn(set(channels))
        self._line.append(turn)
        self._want(turn.channels, 1)
        if self.heads(turn):  # at the front of a line: it tries at once
            turn.ready.set()
        return turn

    def rewant(self, turn: Turn, channels: Iterable[str]) -> None:
        new = set(channels)
        if new != turn.channels:
            dropped = turn.channels - new
            self._want(dropped, -1)
            self._want(new - turn.channels, 1)
            turn.channels = new
            for name in dropped:
                self._wake(name)

    def heads(self, turn: Turn) -> list[str]:
        ahead: set[str] = set()
        for other in self._line:
            if other is turn:
                return [name for name in turn.channels if name not in ahead]
            ahead |= other.channels
        return []

    def leave(self, turn: Turn, served: str | None = None) -> None:
        try:
            self._line.remove(turn)
        except ValueError:
            return
        self._want(turn.channels, -1)
        for name in turn.channels:
            self._wake(name)
        turn.placed.discard(served)  # the admit that served it passed its place on
        if self.on_vacate is not None:
            for name in turn.placed:
                if not self._wanted.get(name):
                    self.on_vacate(name)

    def place(self, channel: str, turn: Turn) -> tuple[int, str]:
        if channel not in turn.channels:
            return -1, ""
        turn.placed.add(channel)
        now = time.monotonic()
        seen = False
        after: list[str] = []
        for other in self._line:
            if other is turn:
                seen = True
            elif seen and channel in other.channels:
                after.append(str(_ms(now - other.since)))
                if len(after) == LINE_SHOWN:
                    break
        return _ms(now - turn.since), ",".join(after)

    def _first(self, channel: str) -> Turn | None:
        for turn in self._line:
            if channel in turn.channels:
                return turn
        return None

    def _wake(self, channel: str) -> None:
        """The first in ``channel``'s line tries at once (a slot freed here, or it is new there)."""
        first = self._first(channel)
        if first is not None:
            first.ready.set()

    def _want(self, channels: Iterable[str], step: int) -> None:
        wanted = self._wanted
        for name in channels:
            left = wanted.get(name, 0) + step
            if left > 0:
                wanted[name] = left
            else:
                wanted.pop(name, None)

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

    __slots__ = ("_book", "_timeout", "_observe", "_started", "_deadline", "_timed_out", "turn")

    def __init__(
        self, book: SlotBook, timeout: float, observe: Callable[[float], None] | None = None
    ) -> None:
        self._book = book
        self._timeout = timeout
        self._observe = observe
        self._started: float | None = None
        self._deadline = 0.0
        self._timed_out = False
        self.turn: Turn | None = None  # its place in the lines of a shared store's channels

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

    async def next_turn(self, channels: Iterable[str], interval: float) -> list[str] | None:
        """Shared store: the channels of ``channels`` (all full) whose line this request is
        the first of, once it may try them: at once when it comes to the front or a slot frees
        in this process, else every ``interval`` (a slot freed elsewhere); None when the time is
        up. It keeps its place until ``leave``."""
        turn = self.turn
        if turn is None:
            turn = self.turn = self._book.join(channels)
        else:
            self._book.rewant(turn, channels)
        while True:
            left = self._left()
            if left <= 0:
                self.stop()
                return None
            heads = self._book.heads(turn)
            if heads and turn.ready.is_set():
                turn.ready.clear()
                return heads
            turn.ready.clear()  # (set for a channel it no longer waits for)
            try:
                async with asyncio.timeout(min(interval, left) if heads else left):
                    await turn.ready.wait()
            except TimeoutError:
                if heads and (heads := self._book.heads(turn)) and self._left() > 0:
                    turn.ready.clear()
                    return heads

    def leave(self, served: str | None = None) -> None:
        """Out of the lines (served on ``served``, timed out, or the client went away)."""
        if self.turn is not None:
            self._book.leave(self.turn, served)
            self.turn = None

    def stop(self, served: str | None = None) -> None:
        """The waiting is over (served on ``served``, or timed out): observe how long it took,
        once."""
        self.leave(served)
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


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))
