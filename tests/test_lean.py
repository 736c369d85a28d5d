"""``smartproxy.lean``: the list that stands in for aiohttp's per-connection deques."""

from __future__ import annotations

import sys
from collections import deque

from smartproxy.lean import SmallQueue, shrink


def test_small_queue_does_what_aiohttp_does_with_a_deque():
    q, d = SmallQueue(), deque()
    for op, arg in [("append", 1), ("append", 2), ("appendleft", 0), ("popleft", None),
                    ("append", 3), ("popleft", None), ("popleft", None)]:
        got = [getattr(x, op)(*(() if arg is None else (arg,))) for x in (q, d)]
        assert got[0] == got[1]
        assert list(q) == list(d) and len(q) == len(d) and bool(q) == bool(d)
    assert q[0] == d[0] == 3


def test_it_is_much_smaller_than_an_empty_deque():
    assert sys.getsizeof(SmallQueue()) * 5 < sys.getsizeof(deque())


class Holder:
    def __init__(self, value: object) -> None:
        self.value = value


def test_shrink_replaces_only_an_empty_deque():
    empty, full = Holder(deque()), Holder(deque([b"x"]))
    shrink(empty, "value")
    shrink(full, "value")
    assert type(empty.value) is SmallQueue and type(full.value) is deque
    other = Holder([1])
    shrink(other, "value")
    shrink(other, "missing")  # aiohttp renamed it: nothing happens
    assert other.value == [1] and not hasattr(other, "missing")
