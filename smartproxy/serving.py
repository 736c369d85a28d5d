"""Serving one process: ``serve`` builds the app, binds, runs until a signal, drains; the
admin token of a gateway without a JWT secret; TLS. The command line (``cli``) calls it once per
process (every worker of ``--workers N`` runs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from . import __version__
from .config import Config, parse_listen
from .errors import CannotListen, ConfigError
from .gcpolicy import CyclePolicy
from .metrics_merge import SOCKET_NAME

if TYPE_CHECKING:
    from .state import Gateway

log = logging.getLogger("smartproxy")


def config_mtime(path: str | None) -> int | None:
    """The config file's modification time (ns), None without a file: a worker that starts after
    the file changed re-reads it."""
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


async def serve(
    path: str | None,
    config: Config,
    *,
    reuse_port: bool = False,
    jwt_secret: str | None = None,
    announce: bool = True,
    loaded: int | None = None,
    hard_exit: bool = False,
    peers: tuple[str, int] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the config file.

    ``peers`` (a worker of ``--workers N``): the workers' socket folder and this worker's index;
    it also listens there so that the worker a scrape reaches can add the others' metrics.

    ``hard_exit`` (the command line's processes): should the shutdown still wait on something
    ``SHUTDOWN_GRACE`` seconds after its drain limit, the process says what and exits anyway.

    ``loaded``: the config file's mtime when ``config`` was read (a worker gets its config from
    the parent): a worker that starts after the file changed (an admin change while it was
    starting, whose SIGHUP it could not take yet, or a worker restarted later) re-reads it."""
    from .app import create_app
    from .server import ClientTimeouts, GatewayRunner
    from .state import GATEWAY

    app = create_app(config, config_path=path, jwt_secret=jwt_secret)
    gw = app[GATEWAY]
    if reuse_port:  # a worker: the parent forwards SIGHUP to every worker (this one included)
        gw.on_admin_change = partial(os.kill, os.getppid(), signal.SIGHUP)
    runner = GatewayRunner(
        app,
        timeouts=ClientTimeouts.of(config.server),  # header/body/keep-alive timeouts
        handle_signals=False,
        handler_cancellation=True,  # a client that goes away cancels its upstream call
        # ``drain`` lets in-flight requests finish first; what is left then is cut at once.
        shutdown_timeout=CUT_AFTER_DRAIN,
        access_log=None,
    )
    await runner.setup()
    runners: list[web.BaseRunner] = [runner]
    ssl_ctx = _ssl_context(config)
    main, *more = listen_addresses(config)
    sites: list[tuple[web.BaseSite, Listen]] = [
        (web.TCPSite(runner, main.host, main.port, ssl_context=ssl_ctx,
                     reuse_port=reuse_port or None, backlog=4096), main)
    ]
    for extra in more:  # monitor.prometheus_listen: /metrics only (the samples put it on
        # 0.0.0.0; the proxy and admin API stay on server.listen)
        monitor = web.AppRunner(create_monitor_app(gw), handle_signals=False, access_log=None)
        await monitor.setup()
        runners.append(monitor)
        sites.append((web.TCPSite(monitor, extra.host, extra.port, reuse_port=reuse_port or None),
                      extra))
    if peers is not None:
        gw.peers_dir, index = peers
        gw.peer_socket = os.path.join(gw.peers_dir, SOCKET_NAME.format(index))
        with contextlib.suppress(FileNotFoundError):  # left by the worker this one replaces
            os.unlink(gw.peer_socket)
        peer = Listen("workers' metrics socket", "unix", 0, path=gw.peer_socket)
        sites.append((web.UnixSite(runner, gw.peer_socket), peer))
    for site, where in sites:
        try:
            await site.start()
        except OSError as exc:  # e.g. the port is taken: release the session and store first
            for r in reversed(runners):
                await r.cleanup()
            raise CannotListen(where.refusal(exc)) from exc
    cycles = CyclePolicy(lambda: gw.metrics.in_flight_now)
    cycles.start()
    collector = asyncio.ensure_future(cycles.run())
    log.info("SmartProxy %s serving on %s (config: %s)", __version__, main.url(),
             path or "built-in default")
    if announce and gw.jwt_secret and not config.security.jwt.secret:
        announce_admin_token(config, gw.jwt_secret)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: gw.spawn(_reload(gw)))
    if loaded is not None and config_mtime(path) != loaded:
        gw.spawn(_reload(gw))
    try:
        await stop.wait()
    finally:
        collector.cancel()
        cycles.stop()
        log.info("shutting down: draining in-flight requests (up to %ss)",
                 config.server.shutdown_timeout)
        await drain(gw, [site for site, _ in sites], config.server.shutdown_timeout)
        for r in reversed(runners):
            await cleanup_or_give_up(r, CUT_AFTER_DRAIN + SHUTDOWN_GRACE, hard_exit=hard_exit)
        log.info("stopped")


@dataclass(frozen=True, slots=True)
class Listen:
    """An address ``serve`` binds, and the config key it comes from (named when it cannot)."""

    key: str
    host: str
    port: int
    tls: bool = False
    path: str | None = None  # a Unix socket

    def url(self) -> str:
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def refusal(self, exc: OSError) -> str:
        """``cannot listen on URL (key): why``: one line, not the OSError's traceback."""
        why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
        return f"cannot listen on {self.url()} ({self.key}): {why}"


def listen_addresses(config: Config) -> list[Listen]:
    """The TCP addresses ``serve`` binds: ``server.listen`` (or ``--listen``), then
    ``monitor.prometheus_listen`` when it is another address."""
    server = config.server
    found = [Listen("server.listen", server.host, server.port, tls=server.enable_https)]
    if config.monitor.enable and config.monitor.prometheus_listen:
        mhost, mport = parse_listen(config.monitor.prometheus_listen)
        if (mhost, mport) != (server.host, server.port):
            found.append(Listen("monitor.prometheus_listen", mhost, mport))
    return found


def check_listen(config: Config) -> None:
    """CannotListen if an address ``serve`` would bind with SO_REUSEPORT cannot be bound now:
    ``--workers N`` asks once before starting N processes that would each fail alike."""

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        for where in listen_addresses(config):
            try:
                server = await loop.create_server(asyncio.Protocol, where.host, where.port,
                                                  reuse_port=True)
            except OSError as exc:
                raise CannotListen(where.refusal(exc)) from exc
            server.close()
            await server.wait_closed()

    asyncio.run(probe())


SHUTDOWN_GRACE = 10.0  # seconds past server.shutdown_timeout before a stuck shutdown gives up
CUT_AFTER_DRAIN = 0.1  # what is still in flight after the drain: cancelled, waited for this long
DRAIN_POLL = 0.05


async def drain(gw: Gateway, sites: list[web.BaseSite], limit: float) -> None:
    """SIGTERM/SIGINT (contract §1): ``/healthz`` turns 503, the listening sockets close (no new
    connection is accepted), and the requests in flight get up to ``limit`` seconds to finish.
    Connections already open stay open meanwhile: a request on one is served (a load balancer's
    health check sees the 503) and its answer closes the connection (``observer``)."""
    gw.draining = True
    for site in sites:
        await site.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while gw.metrics.in_flight_now > 0 and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL)
    if gw.metrics.in_flight_now > 0:
        log.warning("shutdown: %d request(s) still in flight after %gs; cutting them",
                    gw.metrics.in_flight_now, limit)


def create_monitor_app(gw: Gateway) -> web.Application:
    """``monitor.prometheus_listen``: an app that serves ``/metrics`` and nothing else."""
    from .api.ops import metrics
    from .state import GATEWAY

    app = web.Application()
    app[GATEWAY] = gw
    app.router.add_get("/metrics", metrics)
    return app


async def cleanup_or_give_up(runner: web.BaseRunner, limit: float, *, hard_exit: bool) -> None:
    """``runner.cleanup()``: drain in-flight requests (up to ``shutdown_timeout``, then they
    are cancelled), close the upstream pool and the store. Should it still wait after ``limit``
    seconds, something awaits a future nobody will answer (a bug): log what waits and where,
    and with ``hard_exit`` end the process anyway, since a worker that never exits keeps the
    port, its sockets and its memory."""
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait({cleanup}, timeout=limit)
    if done:
        cleanup.result()
        return
    me = asyncio.current_task()
    stuck = [task_site(t) for t in asyncio.all_tasks() if t is not me and not t.done()]
    log.error("shutdown still waiting %gs after the signal; exiting anyway. Waiting: %s",
              limit, "; ".join(stuck[:20]) or "-")
    if hard_exit:
        logging.shutdown()
        os._exit(1)
    cleanup.cancel()


def task_site(task: asyncio.Task[object]) -> str:
    """Where a task waits: its name and its chain of coroutine frames (``fn:line (file)``),
    into the async generators behind ``asynccontextmanager`` (aiohttp's ``cleanup_ctx``)."""
    frames: list[str] = []
    coro: object = task.get_coro()
    while coro is not None and len(frames) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        awaited = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        if frame is not None:
            code = frame.f_code
            frames.append(f"{code.co_name}:{frame.f_lineno} ({Path(code.co_filename).name})")
            owner = frame.f_locals.get("self")
            if awaited is not None and not hasattr(awaited, "cr_frame") and hasattr(owner, "gen"):
                awaited = owner.gen  # awaiting anext(gen): an asend object shows no frame
        coro = awaited
    return f"{task.get_name()} at {' > '.join(frames) or '?'}"


def admin_token_path(config: Config) -> Path:
    """Where a gateway without a JWT secret leaves its admin token: beside the usage database."""
    return Path(config.storage.path).parent / "admin-token"


def announce_admin_token(config: Config, secret: str) -> None:
    """No ``security.auth.jwt.secret``: a random one was generated for this run. The admin token
    made with it goes to a 0600 file, never into the log (logs are shipped and kept; a token
    there is a credential anyone with log access can use)."""
    from .files import write_private_file
    from .security.jwt import JwtVerifier

    jwt_cfg = config.security.jwt
    minutes = min(12 * 60, jwt_cfg.max_lifetime_minutes)
    token = JwtVerifier(jwt_cfg, secret=secret).mint("admin", minutes)
    path = admin_token_path(config)
    try:
        write_private_file(path, token + "\n")
    except OSError as exc:
        log.warning("no security.auth.jwt.secret configured: generated a random one for this "
                    "run; cannot write the admin token to %s (%s), so the admin API is "
                    "unusable until a secret is set", path, exc.strerror or exc)
        return
    log.warning("no security.auth.jwt.secret configured: generated a random one for this run. "
                "Admin token (valid %d min, this run only) written to %s (mode 0600)",
                minutes, path.resolve())


async def _reload(gw: Gateway) -> None:
    """SIGHUP: re-read the config file under the gateway's write lock (see reload_from_file)."""
    try:
        await gw.reload_from_file(reason="SIGHUP")
    except ConfigError:
        pass  # logged, counted, audited and shown in /health by reload_from_file


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    server = config.server
    if not server.enable_https:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(server.cert_file or "", server.key_file or "")
    except OSError as exc:  # ssl.SSLError included: not a certificate, key not matching
        why = exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else str(exc)
        raise ConfigError([f"server.cert_file/key_file: cannot load {server.cert_file!r} / "
                           f"{server.key_file!r}: {why}"]) from exc
    return ctx


def check_files(config: Config) -> None:
    """What the config names on disk and only a start would read (the TLS certificate and key,
    the admin JWT public key): ConfigError listing every one that cannot be used."""
    from .security.jwt import JwtVerifier, generate_secret

    problems: list[str] = []
    try:
        _ssl_context(config)
    except ConfigError as exc:
        problems += exc.problems
    jwt_cfg = config.security.jwt
    try:  # without a secret, start generates one: any will do here
        JwtVerifier(jwt_cfg, secret=None if jwt_cfg.secret else generate_secret())
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
