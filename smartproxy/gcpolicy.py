"""When the cyclic garbage collector runs while the gateway serves.

Reference counting frees what one request allocates as soon as the request ends, provided the
request path makes no reference cycles (``tests/test_gcpolicy.py`` and ``test_per_request.py``
check it does not). CPython's generational collector nevertheless walks every object that is
alive when it runs: every 700 (here 20,000) allocations it traverses the young objects, and
survivors again in the older generations. With 10,000 requests in flight those survivors are the
requests themselves — about 125 objects each, scattered over a large heap, so each visit is
a cache miss. At 5,000 in flight that walking cost ~300 µs of CPU per request, a third or more of
the request's own work (``benchmarks/README.md``), and found nothing: the request path makes no
reference cycles, so those collections were pure cost.

So while serving, automatic collection is off and ``CyclePolicy.check`` (every second) decides:

* objects built at start (modules, config, caches) are frozen out of the collector (``gc.freeze``);
* a full collection runs when the number of tracked objects has grown, since the last one, by more
  than what the requests in flight explain (``per_request`` objects each) plus ``slack`` (or the
  live count after the last collection, whichever is larger: CPython's own rule for its oldest
  generation). Cyclic garbage is thus bounded by about ``slack`` objects beyond the live heap,
  however long the process serves;
* when nothing is in flight and anything has grown, a collection runs too: an idle heap is small,
  so the pass is cheap and memory goes back to its idle size.

``gc.get_count()[0]`` is CPython's count of tracked allocations minus deallocations since the last
collection (never below 0), so growth is known without walking the heap.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("smartproxy")


class CyclePolicy:
    def __init__(
        self,
        in_flight: Callable[[], int],
        *,
        per_request: int = 250,
        slack: int = 200_000,
        idle_slack: int = 5_000,
    ) -> None:
        self._in_flight = in_flight
        self.per_request = per_request
        self.slack = slack
        self.idle_slack = idle_slack
        self.live = 0  # tracked objects (not frozen) after the last collection
        self.collections = 0
        self.collected = 0  # objects found in cycles, in all
        self.seconds = 0.0  # CPU spent collecting, in all

    def start(self) -> None:
        """Freeze what startup built and take automatic collection over."""
        gc.collect()
        gc.freeze()
        gc.disable()
        self.live = 0

    def stop(self) -> None:
        gc.enable()

    def due(self) -> bool:
        grown = gc.get_count()[0]
        in_flight = self._in_flight()
        if in_flight <= 0:
            return grown > self.idle_slack
        return grown > max(self.live, self.slack + self.per_request * in_flight)

    def collect(self) -> int:
        started = time.process_time()
        found = gc.collect()
        self.live = len(gc.get_objects())
        self.seconds += time.process_time() - started
        self.collections += 1
        self.collected += found
        return found

    def check(self) -> bool:
        """Collect if due; True when it did."""
        if not self.due():
            return False
        found = self.collect()
        log.debug("cycle collection: %d found, %d live, %.3f s CPU in %d passes",
                  found, self.live, self.seconds, self.collections)
        return True

    async def run(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()

