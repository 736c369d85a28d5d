"""Coarse deadlines (``smartproxy.deadlines``): never early, late by at most 1/16 of the
distance (1 s at most), one loop timer per bucket, cancellable, exceptions to the loop."""

from __future__ import annotations

import asyncio

import pytest

from smartproxy.deadlines import Deadline, Deadlines, for_loop


async def test_a_near_deadline_gets_an_exact_loop_timer():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    fired: list[float] = []
    handle = d.at(loop.time() + 0.05, lambda: fired.append(loop.time()))
    assert isinstance(handle, asyncio.TimerHandle) and d.buckets == 0
    await asyncio.sleep(0.1)
    assert len(fired) == 1


@pytest.mark.parametrize("distance", [1.05, 1.7, 3.3, 9.0, 15.9, 16.0, 120.0, 3600.0])
async def test_a_far_deadline_is_rounded_up_never_down(distance):
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    now = loop.time()
    handle = d.at(now + distance, lambda: None)
    assert isinstance(handle, Deadline)
    ((key, bucket),) = d._buckets.items()
    assert handle in bucket
    late = key - (now + distance)
    assert 0 <= late <= min(distance / 16, 1.0) + 1e-9
    handle.cancel()


async def test_deadlines_in_one_slice_share_one_bucket_and_fire_in_it():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    fired: list[int] = []
    when = loop.time() + 1.2
    handles = [d.at(when + i * 0.0005, lambda i=i: fired.append(i)) for i in range(100)]
    assert d.buckets <= 2 and len(d) == 100  # 100 deadlines within 50 ms: 1 or 2 loop timers
    handles[5].cancel()
    handles[5].cancel()  # twice is harmless
    await asyncio.sleep(1.2 + 1 / 16 + 0.2)
    assert sorted(fired) == [i for i in range(100) if i != 5]
    assert d.buckets == 0 and len(d) == 0


async def test_a_callback_may_cancel_others_of_its_bucket_and_arm_a_new_one():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    fired: list[str] = []
    when = loop.time() + 1.2
    handles: list[object] = []

    def first_wins(i: int) -> None:
        fired.append(f"cb{i}")
        for h in handles:
            h.cancel()  # type: ignore[attr-defined]
        d.at(loop.time() + 0.01, lambda: fired.append("again"))

    handles += [d.at(when, lambda i=i: first_wins(i)) for i in range(50)]
    assert d.buckets == 1
    await asyncio.sleep(1.2 + 1 / 16 + 0.2)
    assert len(fired) == 2 and fired[0].startswith("cb") and fired[1] == "again"


async def test_a_failing_callback_goes_to_the_loops_exception_handler_and_others_still_run():
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    d = Deadlines(loop)
    fired: list[int] = []
    when = loop.time() + 1.2

    def boom() -> None:
        raise ValueError("boom")

    d.at(when, boom)
    d.at(when, lambda: fired.append(1))
    await asyncio.sleep(1.2 + 1 / 16 + 0.2)
    assert fired == [1]
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ValueError)


async def test_one_deadlines_per_loop():
    loop = asyncio.get_running_loop()
    assert for_loop(loop) is for_loop(loop)
