"""The serving-time cycle collector policy: collections only when growth is not explained by the
requests in flight, or when idle; cyclic garbage is freed by them."""

from __future__ import annotations

import gc
import weakref

import pytest

from smartproxy.gcpolicy import CyclePolicy


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def collector_off():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def make_cycles(n: int) -> weakref.ref[Node]:
    first = Node()
    probe = weakref.ref(first)
    del first
    for _ in range(n):
        Node()
    return probe


def test_growth_beyond_what_is_in_flight_collects_the_cycles(collector_off):
    policy = CyclePolicy(lambda: 10, per_request=100, slack=2_000)
    probe = make_cycles(10_000)  # 10,000 tracked objects in cycles, all garbage
    assert probe() is not None
    assert policy.check()
    assert probe() is None
    assert policy.collections == 1 and policy.collected >= 10_000
    assert not policy.due()  # counting starts again from the collection


def test_growth_that_requests_in_flight_explain_does_not_collect(collector_off):
    in_flight = [1_000]
    policy = CyclePolicy(lambda: in_flight[0], per_request=100, slack=2_000)
    keep = [{"request": i} for i in range(50_000)]  # held by "requests", as a live heap is
    assert not policy.check()  # 50k < 2k + 100 x 1,000: nothing walked
    in_flight[0] = 100
    assert policy.check()  # now unexplained: one pass
    assert policy.live >= 50_000  # ... which found them alive; the next bar is at least that
    del keep


def test_idle_process_collects_small_growth(collector_off):
    policy = CyclePolicy(lambda: 0, idle_slack=1_000)
    probe = make_cycles(2_000)
    assert policy.check()
    assert probe() is None


def test_start_freezes_startup_objects_and_stop_gives_the_collector_back():
    policy = CyclePolicy(lambda: 0)
    try:
        policy.start()
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert policy.live == 0
    finally:
        policy.stop()
        gc.unfreeze()
    assert gc.isenabled()
