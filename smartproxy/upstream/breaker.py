"""Per-channel circuit breaker: ``ChannelBreaker``, an aiobreaker breaker on one clock.

Why subclass ``aiobreaker.CircuitBreaker``: aiobreaker 1.2.0 stamps ``opened_at`` with naive-UTC
``datetime.utcnow()`` (deprecated in 3.12) but compares it with naive-local ``datetime.now()`` in
``opens_at`` and ``CircuitBreakerError.time_remaining``: away from UTC the open timeout is off by
the UTC offset (in Asia/Shanghai a breaker is due the moment it opens), and its half-open state
lets every concurrent call through. ``ChannelBreaker`` keeps aiobreaker's storage, state objects
and listeners, reads one injectable clock (aware UTC) everywhere, and lets exactly one trial
through in half-open; the others are refused as if open until the trial ends.

The permit tells the trial from stale attempts: in half-open only the trial's outcome counts.
Open -> half-open is taken by the first attempt after ``reset_timeout``; ``status()`` says
"half_open" as soon as it is due, so that the router offers the channel for its trial.
``ChannelHealth`` (breaker plus 429 cool-down) and ``HealthBook`` live in ``health`` and are
re-exported from here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

import aiobreaker
from aiobreaker import state as _st

from smartproxy.upstream.retry import parse_retry_after as parse_retry_after  # re-exported

Clock = Callable[[], datetime]
StateName = Literal["closed", "half_open", "open"]
StateListener = Callable[[str, str, str], None]  # (channel name, old state, new state)
T = TypeVar("T")

_S = _st.CircuitBreakerState
_CLOSED, _HALF_OPEN, _OPEN = (_S.CLOSED, _S.HALF_OPEN, _S.OPEN)
_NAMES: Final[dict[Any, StateName]] = {_CLOSED: "closed", _HALF_OPEN: "half_open", _OPEN: "open"}


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChannelOpenError(_st.CircuitBreakerError):  # type: ignore[misc]
    """Raised by ``call``/``call_async`` when the breaker refuses; reads the breaker's clock."""

    def __init__(self, message: str, reopen_time: datetime | None, clock: Clock) -> None:
        super().__init__(message, reopen_time)
        self._clock = clock

    @property
    def time_remaining(self) -> timedelta:
        remaining: timedelta = (self.reopen_time or self._clock()) - self._clock()
        return max(remaining, timedelta(0))


# aiobreaker's state classes, with the clock fixed and without raising from on_failure: our
# record_failure() reports an outcome, it does not stand in for a call.
class _ClosedState(_st.CircuitClosedState):  # type: ignore[misc]
    def on_failure(self, exception: BaseException | None) -> None:
        if self._breaker._state_storage.counter >= self._breaker.fail_max:
            self._breaker.open()


class _OpenState(_st.CircuitOpenState):  # type: ignore[misc]
    def before_call(self, func: object, *args: object, **kwargs: object) -> None:
        if self._breaker.opens_at is not None:
            raise ChannelOpenError("circuit open", self._breaker.opens_at, self._breaker._now)


class _HalfOpenState(_st.CircuitHalfOpenState):  # type: ignore[misc]
    def on_failure(self, exception: BaseException | None) -> None:
        self._breaker.open()


_STATE_CLASSES: Final = {_CLOSED: _ClosedState, _OPEN: _OpenState, _HALF_OPEN: _HalfOpenState}


class _StateChangeAdapter(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
    """Turns aiobreaker's state_change(breaker, old_obj, new_obj) into (name, old, new) strings."""

    def __init__(self, callback: StateListener) -> None:
        self._callback = callback

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        old_name = _NAMES[old.state] if old is not None else "closed"
        new_name = _NAMES[new.state]
        if old_name != new_name:
            self._callback(breaker.name or "", old_name, new_name)


@dataclass(slots=True, eq=False)
class Permit:
    """Leave to make one attempt; ``trial`` marks the single half-open trial. Settles once."""

    trial: bool
    done: bool = False


_SILENT_SUCCESS = aiobreaker.CircuitBreakerListener.success


class ChannelBreaker(aiobreaker.CircuitBreaker):  # type: ignore[misc]
    """aiobreaker's breaker on one clock, with exactly one half-open trial."""

    _state: Any  # aiobreaker's cached state object

    def __init__(
        self,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        *,
        clock: Clock = utc_now,
        name: str | None = None,
        on_state_change: StateListener | None = None,
    ) -> None:
        self._clock = clock
        self._trial: Permit | None = None
        self._success_listeners = False  # does any listener override success()?
        super().__init__(name=name)
        self.configure(fail_max, reset_timeout)
        if on_state_change is not None:
            self.add_listener(_StateChangeAdapter(on_state_change))

    # aiobreaker's add_listeners() goes through add_listener().
    def add_listener(self, listener: Any) -> None:
        super().add_listener(listener)
        self._listeners_changed()

    def remove_listener(self, listener: Any) -> None:
        super().remove_listener(listener)
        self._listeners_changed()

    def _listeners_changed(self) -> None:
        self._success_listeners = any(
            type(x).success is not _SILENT_SUCCESS for x in self._listeners
        )

    def _now(self) -> datetime:
        if (now := self._clock()).tzinfo is None:
            raise TypeError("breaker clock must return an aware datetime (UTC)")
        return now

    def _create_new_state(self, new_state: Any, **kwargs: Any) -> Any:  # prev_state, notify
        return _STATE_CLASSES[new_state](self, **kwargs)

    @property
    def reset_timeout(self) -> float:
        return float(self.timeout_duration.total_seconds())

    def configure(self, fail_max: int, reset_timeout: float) -> None:
        """New limits from a config reload; state, count and opened_at are kept."""
        if fail_max < 1:
            raise ValueError(f"fail_max must be at least 1, got {fail_max}")
        if not reset_timeout > 0 or not math.isfinite(reset_timeout):
            raise ValueError(f"reset_timeout must be a positive number of seconds: {reset_timeout}")
        self.fail_max = fail_max
        self.timeout_duration = timedelta(seconds=reset_timeout)
        self.params = (fail_max, reset_timeout)  # as configured, for a cheap "changed?" check

    def _due(self, now: datetime) -> datetime | None:
        """When an open circuit lets its trial through, or None if it is already due/not open."""
        opened_at = self._state_storage.opened_at
        if self.current_state is not _OPEN or opened_at is None:
            return None
        due: datetime = opened_at + self.timeout_duration
        return due if now < due else None

    @property
    def opens_at(self) -> datetime | None:
        return self._due(self._now())

    @property
    def time_until_open(self) -> timedelta | None:
        now = self._now()
        return None if (due := self._due(now)) is None else due - now

    async def sleep_until_open(self) -> None:
        await asyncio.sleep((self.time_until_open or timedelta(0)).total_seconds())

    def effective_state(self, now: datetime | None = None) -> StateName:
        """The state as callers see it: an open circuit past its timeout reads as half-open."""
        state = self.current_state
        if state is _OPEN and self._due(now or self._now()) is None:
            return "half_open"
        return _NAMES[state]

    @property
    def state_name(self) -> StateName:
        return self.effective_state()

    def available(self, now: datetime | None = None) -> bool:
        """Would acquire() grant a permit now? Pure: changes no state."""
        state = self.effective_state(now)  # open and due reads half_open, with no trial yet
        return state == "closed" or (state == "half_open" and self._trial is None)

    @property
    def closed(self) -> bool:
        return self._state_storage.state is _CLOSED  # storage moves first (see ``_move``)

    def acquire(self) -> Permit | None:
        """A permit for one attempt, or None (open, or the half-open trial is taken)."""
        state = self._state_storage.state
        if state is _CLOSED:
            return Permit(trial=False)
        if state is _OPEN:
            if self.opens_at is not None:
                return None
            self.half_open()
        elif self._trial is not None:
            return None
        self._trial = Permit(trial=True)
        return self._trial

    def _settle(self, permit: Permit | None) -> bool:
        """Settle ``permit``; say whether its outcome may move the breaker."""
        if permit is not None:
            if permit.done:
                return False
            permit.done = True
        if self.current_state is not _HALF_OPEN:
            return True
        if permit is None or permit is self._trial:  # no permit given: taken to be the trial
            self._trial = None
            return True
        return False  # begun before the circuit opened: in half-open only the trial decides

    def record_success(self, permit: Permit | None = None) -> None:
        if (
            permit is not None
            and not permit.done
            and not self._success_listeners
            and self._state_storage.state is _CLOSED
            and self._state_storage.counter == 0
        ):
            permit.done = True  # closed with no failures counted: a success changes nothing
            return
        if self._settle(permit):
            self.state._handle_success()  # resets the count, closes a half-open, tells listeners

    def record_failure(self, permit: Permit | None = None, exc: Exception | None = None) -> None:
        if self._settle(permit):
            self._inc_counter()
            for listener in self.listeners:
                listener.failure(self, exc)
            self.state.on_failure(exc)

    def release(self, permit: Permit | None = None) -> None:
        """End an attempt without a verdict (429, cancellation); frees the trial slot."""
        self._settle(permit)  # settles the permit and frees the trial slot; moves nothing

    # Memory storage: the cached state object is never stale. aiobreaker's getter re-syncs from
    # storage, which mid-move (storage first, so listeners read the new state) notifies twice.
    @property
    def state(self) -> Any:
        return self._state

    @state.setter
    def state(self, new: Any) -> None:
        self._state = self._create_new_state(new, prev_state=self._state, notify=True)

    def _move(self, new: Any) -> None:
        if self._state_storage.state is new and self._state.state is new:
            return
        self._state_storage.state = new
        self.state = new

    def open(self) -> None:
        self._trial = None
        self._state_storage.opened_at = self._now()
        self._move(_OPEN)

    def half_open(self) -> None:
        self._trial = None
        self._move(_HALF_OPEN)

    def close(self) -> None:
        self._trial = None
        self._move(_CLOSED)

    @contextmanager
    def _guard(self, func: Callable[..., Any], args: Any, kwargs: Any) -> Iterator[None]:
        """aiobreaker's call semantics around one call, holding a permit (maybe the trial)."""
        permit = self.acquire()
        if permit is None:
            why = "circuit open" if self._trial is None else "trial in flight"
            raise ChannelOpenError(why, self.opens_at, self._now)
        try:
            for listener in self.listeners:
                listener.before_call(self, func, *args, **kwargs)
            yield
        except Exception as exc:
            if self.is_system_error(exc):
                self.record_failure(permit, exc)
            else:  # aiobreaker's "excluded" exceptions are business errors: the service answered
                self.record_success(permit)
            raise
        else:
            self.record_success(permit)
        finally:
            self.release(permit)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._guard(func, args, kwargs):
            return func(*args, **kwargs)

    async def call_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        with self._guard(func, args, kwargs):
            return await func(*args, **kwargs)
