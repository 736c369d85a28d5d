"""The parent of ``--workers N``: forwards signals to the workers and restarts one that dies.

The gateway loads the whole application once, in the process that is started, and forks the
workers from it, so that they share that memory copy-on-write. The parent itself then needs none
of it: it only waits for its children. So, once the workers run, it replaces itself (``exec``,
same pid, same children) with this module, which imports little of the standard library and
runs without ``site`` (``python -S``): the parent holds about 14 MB instead of the ~55 MB of a
loaded application, and the application's pages are shared by the workers alone. Measured with
``benchmarks/concurrency.py`` (S3: the RSS of all gateway processes).

What the parent knew is handed over in a file descriptor (a memfd, or an unlinked temporary file)
that the new program reads at once: the workers' pids, the log settings, and, as an opaque pickle
only a restarted worker opens, the config and admin secret the workers were started with. The
signals the parent forwards are blocked across the ``exec`` and delivered once this program has
its handlers, so a SIGHUP sent meanwhile is forwarded, not fatal.

This module must stay light: importing it may not import the application.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
from functools import partial

# Not ``typing``'s: the lean supervisor imports neither typing nor dataclasses (with inspect
# behind it, ~2 MB); mypy takes any ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .config import Config

log = logging.getLogger("smartproxy")

RESTART_PAUSE = 1.0  # seconds between restarts of a worker that keeps dying at once
WORKER_CANNOT_LISTEN = 3  # a worker's exit code: its port could not be bound; no restart helps
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def supervise(
    children: dict[int, int],
    spawn: Callable[[int], int],
    stopping: Callable[[], bool],
    stop: Callable[[], None],
) -> int:
    """Wait for the workers; restart one that dies unless the gateway is stopping. A worker
    that could not bind its port stops the gateway (exit code 1): the others are told to stop."""
    code = 0
    last_restart = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code == WORKER_CANNOT_LISTEN:
            code = 1
            if not stopping():
                stop()
            continue
        if stopping():
            code = code or exit_code
            continue
        log.error("worker %d (pid %d) died (%s); starting a new one", index, pid,
                  f"signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}")
        pause = RESTART_PAUSE - (time.monotonic() - last_restart)
        if pause > 0:
            time.sleep(pause)
        last_restart = time.monotonic()
        if not stopping():
            children[spawn(index)] = index
    return code


class Workers:
    """The running workers as the parent sees them: forwards signals, restarts the dead."""

    def __init__(self, children: dict[int, int], spawn: Callable[[int], int]) -> None:
        self.children = children
        self.spawn = spawn
        self.stopping = False

    def forward(self, signum: int, _frame: object = None) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for child in list(self.children):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        for sig in FORWARDED:
            signal.signal(sig, self.forward)
        # After ``hand_over`` they were blocked across the exec: those sent meanwhile arrive now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        return supervise(self.children, self.spawn, lambda: self.stopping,
                         lambda: self.forward(signal.SIGTERM))


# ---------------------------------------------------------------- the exec'd parent


def hand_over(state: dict[str, Any], spec: WorkerSpec) -> None:
    """Replace this process with the lean supervisor (``main``), handing it ``state`` and the
    workers' ``spec``. Returns only if that could not be done (the caller then supervises in
    this process)."""
    try:
        state = {**state, "worker": pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL),
                 "site": not sys.flags.no_site}
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        log.warning("the parent process stays as loaded (%s): the config cannot be handed over",
                    exc)
        return
    try:
        fd = os.memfd_create("smartproxy-supervisor", 0)  # not inherited by default
    except (AttributeError, OSError):  # not Linux: an unlinked private temporary file
        import tempfile

        fd = os.dup(tempfile.TemporaryFile().fileno())
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            pickle.dump(state, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # Held back until the new program has its handlers (the mask survives exec).
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            os.execv(sys.executable, supervisor_argv(fd))
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            log.warning("the parent process stays as loaded (%s): exec failed", exc)
    finally:
        os.close(fd)


def supervisor_argv(fd: int) -> list[str]:
    """The lean supervisor's command line, reading its state from ``fd``. ``-S``: no ``site``
    (its .pth files can import much; a restarted worker runs it: ``worker``). ``-P``: the
    working directory is not put on ``sys.path`` (as ``-c`` otherwise does), so a ``types.py``
    or ``logging.py`` in the folder the gateway was started from is not imported instead."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from smartproxy.supervisor import main; sys.exit(main(int(sys.argv[2])))")
    return [sys.executable, "-S", "-P", "-c", code, package_parent, str(fd)]


def main(fd: int) -> int:
    """The parent after ``hand_over``: read what it knew, then supervise."""
    with os.fdopen(fd, "rb") as f:
        state: dict[str, Any] = pickle.load(f)
    _setup_logging(state["log_level"], state["log_file"])
    spawn = partial(spawn_worker, spec=state["worker"], site=state.get("site", False))
    workers = Workers(dict(state["children"]), spawn)
    try:
        return workers.run()
    finally:
        if state["peers_dir"]:
            import shutil

            shutil.rmtree(state["peers_dir"], ignore_errors=True)


def spawn_worker(index: int, spec: WorkerSpec | bytes, site: bool = False) -> int:
    """Fork worker ``index``; returns its pid. From the lean supervisor (``spec`` pickled) the
    new worker loads the application itself, after ``site`` when the gateway was started with
    it (the lean supervisor runs without)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker: never returns into the parent's loop
        code = 1
        try:
            code = worker(index, parent, spec, site)
        finally:
            os._exit(code)
    return pid


def _setup_logging(level: str, file: str | None) -> None:
    from .logs import log_handlers

    logging.basicConfig(level=level, handlers=log_handlers(file), force=True)


# ---------------------------------------------------------------- a worker
# (the application is imported inside the functions: this module stays light)


class WorkerSpec:
    """What each worker starts from: the same for the first ones and for a restarted one.
    (A plain class, not a dataclass: see ``TYPE_CHECKING`` above.)"""

    __slots__ = ("path", "config", "secret", "loaded", "peers_dir")

    def __init__(self, path: str | None, config: Config, secret: str | None, loaded: int | None,
                 peers_dir: str | None) -> None:
        self.path = path
        self.config = config
        self.secret = secret  # the generated admin secret, when the config sets none
        self.loaded = loaded  # the config file's mtime when ``config`` was read from it
        self.peers_dir = peers_dir


def worker(index: int, parent: int, spec: WorkerSpec | bytes, site: bool = False) -> int:
    """Serve as worker ``index`` of ``parent``; returns the exit code. ``spec`` pickled: a
    restart by the lean supervisor, which opens it here (that loads the application), after
    running ``site`` if ``site`` says the gateway was started with it (the lean supervisor runs
    without: ``hand_over``)."""
    # First of all, the parent's handlers (which forward to the workers) are replaced: until
    # serve() installs its own, a stop ends a starting worker quietly.
    signal.signal(signal.SIGTERM, _stop_starting_worker)
    signal.signal(signal.SIGINT, _stop_starting_worker)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the config is being read anyway
    try:
        _stop_with_parent(parent)
        if site and sys.flags.no_site:
            import site as site_module

            site_module.main()  # site-packages and .pth files, as the started gateway had them
        if isinstance(spec, bytes):
            spec = pickle.loads(spec)
            assert isinstance(spec, WorkerSpec)
        from .errors import CannotListen
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return serve_process(spec.path, spec.config, reuse_port=True, jwt_secret=spec.secret,
                             announce=index == 0, loaded=spec.loaded,
                             peers=None if spec.peers_dir is None else (spec.peers_dir, index))
    except CannotListen as exc:  # taken since the parent's check_listen
        print(f"smartproxy: worker {index}: {exc}", file=sys.stderr)
        return WORKER_CANNOT_LISTEN
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0


def _stop_starting_worker(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> None:
    """A worker is told SIGTERM (drain, exit) when the parent dies, even by kill -9 (Linux), so
    no orphan keeps serving the shared port with the old config beside a restarted gateway."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before that took effect
        raise SystemExit(0)


def serve_process(
    path: str | None,
    config: Config,
    *,
    reuse_port: bool,
    jwt_secret: str | None = None,
    announce: bool = True,
    loaded: int | None = None,
    peers: tuple[str, int] | None = None,
) -> int:
    """Serve the gateway in this process until it is stopped (on uvloop)."""
    import asyncio

    from .serving import serve

    main = serve(path, config, reuse_port=reuse_port, jwt_secret=jwt_secret, announce=announce,
                 loaded=loaded, hard_exit=True, peers=peers)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        asyncio.run(main)
    else:
        uvloop.run(main)
    return 0
