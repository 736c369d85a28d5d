"""At most one failed-auth log/audit line per client address per second.

A key-guessing flood must not fill the disk: the first failure of an address in a second is
written, the others only counted; the next line written for that address says how many were left
out. (Metrics still count every failure.) At most ``max_addresses`` are remembered.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class FailureLines:
    def __init__(self, *, per_seconds: float = 1.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_seconds = per_seconds
        self.max_addresses = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, list[float]] = OrderedDict()  # address -> [last, left out]

    def take(self, address: str) -> int | None:
        """None: leave this line out. A number: write it, noting that many left out before."""
        now = self._clock()
        entry = self._seen.get(address)
        if entry is not None and now - entry[0] < self.per_seconds:
            entry[1] += 1
            return None
        left_out = int(entry[1]) if entry is not None else 0
        self._seen[address] = [now, 0]
        self._seen.move_to_end(address)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        return left_out


def left_out_note(count: int) -> str:
    return f" ({count} more from this address not logged)" if count else ""
