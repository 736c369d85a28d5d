"""What the translation micro-benchmarks share: CPU time per call (best of N runs), one table.

CPU time of this process, not wall time: on a shared machine the wall clock also counts the time
other processes held the core.
"""

from __future__ import annotations

import argparse
import platform
import time
import timeit
from collections.abc import Callable, Sequence

from smartproxy.upstream.sse import EventSplitter, StreamTally, inspect_event


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
    return min(times) / number * 1e6


def relay_untranslated(stream: Sequence[bytes]) -> None:
    """The relay's own work on an OpenAI stream (split into events, read usage), for comparison."""
    splitter = EventSplitter()
    tally = StreamTally()
    for chunk in stream:
        for event in splitter.feed(chunk):
            inspect_event(event, tally)


def run(description: str, rows: Sequence[tuple[str, Callable[[], object]]]) -> None:
    """Time each row; the first is a single request (``--number`` calls), the others are streams
    (a tenth as many)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"best of {args.repeat} runs, CPU time per call")  # fmt: skip
    for i, (label, fn) in enumerate(rows):
        number = args.number if i == 0 else max(args.number // 10, 50)
        print(f"{best_us(fn, number, args.repeat):9.1f} µs  {label}")
