"""The parent of ``--workers N`` (``smartproxy.supervisor``): what it does with its workers, and
that after start it is the lean program, not a copy of the loaded application."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from smartproxy import supervisor as supervisor_module
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
    """The exec'd parent imports this module alone, as ``hand_over`` starts it (``-S``): were it
    to pull in the config, aiohttp or the app, the parent would hold their memory again (what
    ``hand_over`` is there to drop); nor does it load typing, dataclasses (and inspect) or site's
    .pth files (the running supervisor: 16.6 -> 14.0 MB RSS)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(supervisor_module.__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import smartproxy.supervisor; "
            "print(sorted(m for m in sys.modules if m.startswith(('smartproxy.', 'aiohttp', "
            "'yaml', 'jwt', 'cryptography', 'redis', 'asteval', 'typing', 'dataclasses', "
            "'inspect', 'site', 'tempfile', 'shutil'))))")
    out = subprocess.run([sys.executable, "-S", "-c", code, package_parent], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "['smartproxy.supervisor']"


def test_the_lean_supervisor_does_not_import_modules_from_the_folder_it_was_started_in(tmp_path):
    """Started from a folder holding a ``types.py`` (as a working directory may), the exec'd
    supervisor still imports the standard library's: it reads its state and supervises."""
    import pickle

    (tmp_path / "types.py").write_text("raise SystemExit('the folder\'s types.py was imported')\n")
    read, write = os.pipe()
    with os.fdopen(write, "wb") as out:
        pickle.dump({"children": {}, "log_level": "INFO", "log_file": None, "peers_dir": None,
                     "worker": b"", "site": True}, out)
    argv = supervisor_module.supervisor_argv(read)
    done = subprocess.run(argv, cwd=tmp_path, pass_fds=(read,), capture_output=True, text=True,
                          timeout=30)
    os.close(read)
    assert done.returncode == 0, done.stderr  # no workers: nothing to supervise


def test_hand_over_returns_when_exec_fails_and_leaves_no_signal_blocked(monkeypatch, caplog):
    """Where the exec cannot be done, the loaded parent supervises as it is: the signals it
    blocked for the exec are unblocked again, and it says why."""
    from smartproxy import supervisor

    def refuse(*_args: object) -> None:
        raise PermissionError("exec refused here")

    monkeypatch.setattr(supervisor.os, "execv", refuse)
    spec = supervisor.WorkerSpec(None, None, None, None, None)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="smartproxy"):
        supervisor.hand_over({"children": {}, "log_level": "INFO", "log_file": None,
                              "peers_dir": None}, spec)
    assert not set(supervisor.FORWARDED) & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert "exec failed" in caplog.text


def test_hand_over_returns_when_the_config_cannot_be_pickled(monkeypatch, caplog):
    from smartproxy import supervisor

    monkeypatch.setattr(supervisor.os, "execv", lambda *_: pytest.fail("exec'd"))
    spec = supervisor.WorkerSpec(None, lambda: None, None, None, None)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="smartproxy"):
        supervisor.hand_over({"children": {}, "log_level": "INFO", "log_file": None,
                              "peers_dir": None}, spec)
    assert "cannot be handed over" in caplog.text
