"""``LocalSlots``: caps, FIFO hand-over, no overtaking, timeouts that leave nothing taken."""

from __future__ import annotations

import asyncio

from smartproxy.upstream.slots import LocalSlots, SlotQueue


async def test_cap_and_release_and_uncapped_channels_are_counted() -> None:
    book = LocalSlots()
    a, b = book.try_acquire("c", 2), book.try_acquire("c", 2)
    assert a and b and book.try_acquire("c", 2) is None and book.in_flight("c") == 2
    free = book.try_acquire("free", None)
    assert free is not None and book.in_flight("free") == 1
    a.release()
    a.release()  # idempotent
    assert book.in_flight("c") == 1


async def test_freed_slot_goes_to_the_oldest_waiter_and_newcomers_do_not_overtake() -> None:
    book = LocalSlots()
    held, held_d = book.try_acquire("c", 1), book.try_acquire("d", 1)
    assert held is not None and held_d is not None
    first = asyncio.create_task(book.wait_any({"c": 1}, 5))
    await asyncio.sleep(0)
    second = asyncio.create_task(book.wait_any({"c": 1, "d": 1}, 5))
    await asyncio.sleep(0)
    assert book.queued() == 2
    held.release()
    assert book.try_acquire("c", 1) is None  # handed over, not up for grabs
    got = await first
    assert got is not None and got.channel == "c" and not second.done()
    held_d.release()  # "d" frees first: the second waiter (which waits for c or d) takes it
    got2 = await second
    assert got2 is not None and got2.channel == "d"
    assert book.try_acquire("c", 1) is None  # still held by the first waiter
    got.release()
    got2.release()
    assert book.in_flight("c") == 0 and book.queued() == 0


async def test_timeout_and_cancel_leave_no_slot_taken() -> None:
    book = LocalSlots()
    held = book.try_acquire("c", 1)
    assert held is not None
    assert await book.wait_any({"c": 1}, 0.01) is None
    waiter = asyncio.create_task(book.wait_any({"c": 1}, 5))
    await asyncio.sleep(0)
    held.release()  # handed to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs again: the slot comes back
    await asyncio.gather(waiter, return_exceptions=True)
    assert book.in_flight("c") == 0 and book.queued() == 0


async def test_slot_queue_has_one_deadline_and_says_why() -> None:
    book = LocalSlots()
    assert book.try_acquire("c", 1) is not None
    waits: list[float] = []
    queue = SlotQueue(book, 0.05, waits.append)
    assert await queue.wait({"c": 1}) is None
    t0 = asyncio.get_running_loop().time()
    assert await queue.wait({"c": 1}) is None  # the time is used up: no second 0.05 s
    assert asyncio.get_running_loop().time() - t0 < 0.02
    assert len(waits) == 1 and waits[0] >= 0.05  # observed once, when it gave up
    assert queue.why_not({"c": 1}) == [
        "c: at max_concurrency (1 in flight); no slot freed within server.queue_timeout (0.05 s)"
    ]


async def test_shared_store_lines_keep_arrival_order_and_wake_the_first_at_once() -> None:
    """Shared store (redis): the count is elsewhere, the order here. Only the first of a
    channel's line may try it; a slot freed here or a place at the front wakes it at once;
    a slot whose admit was refused (``give_back``) wakes nobody."""
    book = LocalSlots()
    running = book.try_acquire("c", None)
    assert running is not None
    first, second = SlotQueue(book, 5), SlotQueue(book, 5)
    t1 = asyncio.create_task(first.next_turn(["c"], 10))
    assert await t1 == ["c"]  # new at the front of the line: tries at once
    t2 = asyncio.create_task(second.next_turn(["c", "d"], 10))
    await asyncio.sleep(0.01)
    assert await t2 == ["d"]  # first in d's line only
    assert book.queued() == 2
    assert book.try_acquire("c", None) is None  # a newcomer does not overtake the line
    assert book.try_acquire("c", None, second.turn) is None  # nor does the second
    tried = book.try_acquire("c", None, first.turn)
    assert tried is not None
    tried.give_back()  # refused by the shared count: nothing freed
    t1 = asyncio.create_task(first.next_turn(["c"], 10))
    t2 = asyncio.create_task(second.next_turn(["c", "d"], 10))
    await asyncio.sleep(0.01)
    assert not t1.done() and not t2.done()
    running.release()  # freed here: the first of c's line tries at once, the second waits
    assert await t1 == ["c"] and not t2.done()
    first.stop()  # served: the second is at the front of c's line now
    assert sorted(await t2) == ["c", "d"]
    assert book.try_acquire("c", None, second.turn) is not None
    second.leave()
    second.leave()  # idempotent
    assert book.queued() == 0 and book.try_acquire("c", None) is not None


async def test_shared_store_line_polls_and_gives_up_at_the_deadline() -> None:
    book = LocalSlots()
    queue = SlotQueue(book, 0.12)
    assert await queue.next_turn(["c"], 0.05) == ["c"]  # at once
    t0 = asyncio.get_running_loop().time()
    assert await queue.next_turn(["c"], 0.05) == ["c"]  # its beat
    assert 0.04 < asyncio.get_running_loop().time() - t0 < 0.1
    assert await queue.next_turn(["c"], 0.05) == ["c"]
    assert await queue.next_turn(["c"], 0.05) is None  # 0.12 s in all
    assert book.queued() == 0 and queue.turn is None


async def test_a_process_gives_up_its_shared_place_when_none_of_its_requests_waits() -> None:
    """The shared line (redis) has one place per process: given up when its last waiter for the
    channel leaves unserved there (``on_vacate``), not when the admit that served it passed the
    place on, nor while another of its requests still waits."""
    book = LocalSlots()
    vacated: list[str] = []
    book.on_vacate = vacated.append
    first, second = SlotQueue(book, 5), SlotQueue(book, 5)
    assert sorted(await first.next_turn(["c", "d"], 1)) == ["c", "d"]
    assert book.place("c", first.turn) == (0, "") and book.place("d", first.turn) == (0, "")
    waiting = asyncio.create_task(second.next_turn(["c"], 1))
    await asyncio.sleep(0)  # in c's line, behind first
    assert second.turn is not None and not waiting.done()
    first.stop("d")  # served on d: d's place was passed on by the admit; c: second still waits
    assert vacated == []
    assert await waiting == ["c"]  # at the front now: at once
    assert book.place("c", second.turn)[1] == ""
    second.leave()  # timed out / gone: the last of c's line here
    assert vacated == ["c"]
