"""The parent of ``--workers N`` (``smartproxy.supervisor``): what it does with its workers, and
that after start it is the lean program, not a copy of the loaded application."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from smartproxy.supervisor import WORKER_CANNOT_LISTEN, supervise


def test_a_worker_that_cannot_listen_stops_the_gateway_with_exit_1():
    """A port taken between the parent's check and a worker's bind: the worker says so and exits
    WORKER_CANNOT_LISTEN; the parent stops the other workers instead of restarting it."""


    def spawn(index: int) -> int:
        code = f"import os, time; time.sleep(30 if {index} == 0 else 0.1); os._exit({WORKER_CANNOT_LISTEN})"
        return os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ)

    children = {spawn(i): i for i in range(2)}
    stopped = []

    def stop() -> None:
        stopped.append(True)
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    started = time.monotonic()
    assert supervise(children, spawn, lambda: bool(stopped), stop) == 1
    assert stopped == [True] and not children
    assert time.monotonic() - started < 10  # not restarted, the sleeping one stopped


def test_importing_the_supervisor_loads_no_application():
    """The exec'd parent imports this module alone: were it to pull in the config, aiohttp or
    the app, the parent would hold their memory again (what ``hand_over`` is there to drop)."""
    code = ("import sys, smartproxy.supervisor; "
            "print(sorted(m for m in sys.modules if m.startswith(('smartproxy.', 'aiohttp', "
            "'yaml', 'jwt', 'cryptography', 'redis', 'asteval'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['smartproxy.supervisor']"
