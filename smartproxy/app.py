"""``create_app()``: one aiohttp app, three sub-apps (proxy ``/v1``, admin ``/api``, ops at the root).

aiohttp mounts sub-apps under a path prefix, or by a matching rule (what ``add_domain`` uses). The
ops endpoints live at the root (``/healthz``, ``/metrics``, ``/swagger``), so the ops app is mounted
with a rule that matches exactly its own paths (``OwnPaths``). Every long-lived resource (client
session, usage store, background flush) is a ``cleanup_ctx`` generator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from typing import Any

import aiohttp
import backoff
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRuleMatching, MatchedSubAppResource

from . import __version__
from .api.admin import create_admin_app
from .api.dashboard import setup_dashboard
from .api.docs import setup_docs
from .api.fronts.routes import add_fronts
from .api.ops import create_ops_app
from .api.proxy import create_proxy_app
from .config import Config
from .metrics import Metrics
from .metrics_merge import asked_by_a_peer
from .providers import make_providers
from .providers.h1 import H1Pool
from .security.clientaddr import client_address
from .security.ratelimit import FailurePenalty, RateLimiter
from .state import GATEWAY, Gateway, Snapshot, utc_now
from .storage import create_store
from .storage.base import UsageStore
from .upstream.health import HealthBook
from .upstream.retry import Jitter, Sleep
from .upstream.shared import sync_ctx

log = logging.getLogger("smartproxy")


def observer(gateway: Gateway) -> Any:
    """The root middleware: count every request by endpoint (the route's pattern, never the raw
    path) and status, and how many are in flight. Requests from ``server.trusted_proxies`` carry
    the client's address from X-Forwarded-For: below this middleware ``request.remote`` is the
    client (penalties, logs, audit lines). One middleware, not two: each holds a frame for as
    long as its request is in flight."""
    metrics = gateway.metrics

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        metrics.in_flight_now += 1
        try:
            trusted = gateway.snapshot.config.server.trusted_proxies
            if trusted:
                address = client_address(
                    request.remote, request.headers.get("X-Forwarded-For"), trusted
                )
                if address is not None and address != request.remote:
                    request = request.clone(remote=address)
            resp: web.StreamResponse = await handler(request)
            status = resp.status
            if gateway.draining and not resp.prepared:
                resp.force_close()  # shutting down: no next request on this connection
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError as exc:
            status = 499  # the client went away
            # Without the traceback: it holds every frame below, with the request's state, until
            # aiohttp lets the cancelled task go (a loop turn later). 10,000 clients leaving at
            # once otherwise held ~1.4 KB more per request at that moment (tests/test_per_request).
            raise exc.with_traceback(None) from None
        finally:
            metrics.in_flight_now -= 1
            route = request.match_info.route
            resource = route.resource if route is not None else None
            endpoint = resource.canonical if resource is not None else "other"
            # A sibling worker gathering this one's metrics for a scrape is not a request: one
            # scrape counted once per worker otherwise.
            if endpoint != "/metrics" or not asked_by_a_peer(request):
                metrics.observe_request(endpoint, status, time.perf_counter() - started)

    return observe


def create_app(
    config: Config,
    *,
    config_path: str | None = None,
    store: UsageStore | None = None,
    clock: Callable[[], datetime] = utc_now,
    session: aiohttp.ClientSession | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    retry_sleep: Sleep = asyncio.sleep,
    retry_jitter: Jitter = backoff.full_jitter,
    jwt_secret: str | None = None,
) -> web.Application:
    snap = Snapshot.build(config)
    gateway = Gateway(
        snapshot=snap,
        store=store or create_store(config.storage, snap.tz, clock=clock),
        metrics=Metrics(),
        config_path=config_path,
        clock=clock,
        jwt_secret=jwt_secret,
        health=HealthBook(clock=clock),
        limiter=RateLimiter(clock=monotonic),
        penalty=FailurePenalty(clock=monotonic),
        retry_sleep=retry_sleep,
        retry_jitter=retry_jitter,
    )
    # aiohttp applies the root app's client_max_size to every request (a sub-app's is ignored):
    # /v1 takes server.max_body_mb (restart to change); admin writes read at most 1 MiB.
    app = web.Application(
        middlewares=[observer(gateway)], client_max_size=config.server.max_body_bytes
    )
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(_client_session(session))
    app.cleanup_ctx.append(_usage_store)
    app.cleanup_ctx.append(sync_ctx)  # a shared store's view and breakers (no-op otherwise)
    app.on_shutdown.append(_start_draining)
    proxy = create_proxy_app(gateway)
    add_fronts(proxy)  # /v1/responses, /v1/messages
    app.add_subapp("/v1", proxy)
    app.add_subapp("/api", create_admin_app(gateway))
    ops = create_ops_app()
    setup_dashboard(ops)
    setup_docs(
        ops,
        title="SmartProxy",
        version=__version__,
        description="Self-hosted AI gateway: OpenAI-compatible proxy, admin API and ops endpoints.",
        root=app,
    )
    mount_at_root(app, ops)
    return app


class OwnPaths(AbstractRuleMatching):
    """Matches the requests whose path one of ``app``'s routes serves (exact or below a prefix)."""

    def __init__(self, app: web.Application) -> None:
        self._exact: set[str] = set()
        prefixes: set[str] = set()
        for resource in app.router.resources():
            canonical = resource.canonical
            if "{" in canonical:
                prefixes.add(canonical.split("{", 1)[0])
            else:
                self._exact.add(canonical)
        self._prefixes = tuple(sorted(prefixes))

    async def match(self, request: web.Request) -> bool:
        path = request.rel_url.path
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def get_info(self) -> dict[str, Any]:  # type: ignore[override]
        return {"paths": sorted(self._exact), "prefixes": list(self._prefixes)}

    @property
    def canonical(self) -> str:
        return "/"


def mount_at_root(app: web.Application, sub: web.Application) -> None:
    """``add_subapp`` refuses an empty prefix; mount by a rule instead, as ``add_domain`` does."""
    rule = OwnPaths(sub)
    app._add_subapp(partial(MatchedSubAppResource, rule, sub), sub)  # noqa: SLF001


def _client_session(
    given: aiohttp.ClientSession | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        gw = app[GATEWAY]
        server = gw.config.server
        session = given or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=server.max_connections,
                limit_per_host=0,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            ),
            auto_decompress=False,
            # One session serves every client: an upstream's Set-Cookie for one client's request
            # must never ride along with another's.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # A session a caller gives (tests, embedding) carries every call; otherwise direct calls
        # go through the lean HTTP/1.1 client and proxied ones through aiohttp.
        pool = None if given is not None else H1Pool(server.max_connections)
        gw.session = session
        gw.providers = make_providers(session, pool)
        yield
        if pool is not None:
            await pool.close()
        if given is None:
            await session.close()

    return ctx


async def _usage_store(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.store.start()
    yield
    await gw.drain_background()  # settle what in-flight requests left behind
    await gw.store.close()


async def _start_draining(app: web.Application) -> None:
    app[GATEWAY].draining = True
