"""Ops endpoints: ``/healthz``, ``/health``, ``/metrics`` — no credentials, no secrets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ..metrics_merge import asked_by_a_peer, merge, peer_sockets, peer_text
from ..state import GATEWAY, Gateway, quota_left


async def healthz(request: web.Request) -> web.Response:
    """Liveness: ``ok`` while serving, 503 ``draining`` during shutdown.
    ---
    summary: Liveness probe
    tags: [ops]
    security: []
    responses:
      '200':
        description: Serving.
        content:
          text/plain:
            schema: {type: string}
            example: ok
      '503':
        description: Draining (SIGTERM received); stop sending traffic.
        content:
          text/plain:
            schema: {type: string}
            example: draining
    """
    gw = request.config_dict[GATEWAY]
    if gw.draining:
        return web.Response(status=503, text="draining")
    return web.Response(text="ok")


async def health_report(gw: Gateway) -> dict[str, Any]:
    snap = gw.snapshot
    now = gw.clock()
    usage = await gw.store.usage([c.name for c in snap.config.channels], now)
    channels = []
    for ch in snap.config.channels:
        u = usage[ch.name]
        channels.append(
            {
                "name": ch.name,
                "type": ch.type,
                "status": ch.status,
                "circuit": gw.health.peek(ch.name) if ch.active else "disabled",
                # as rules and the router read them: settled plus reserved by requests in flight
                "day_tokens_used": u.day_tokens_with_reserved,
                "hour_tokens_used": u.hour_tokens_with_reserved,
                "reserved_tokens": u.day_reserved_tokens,
                "day_quota_left": quota_left(ch.daily_limit, u.day_tokens_with_reserved),
                "hour_quota_left": quota_left(ch.hour_limit, u.hour_tokens_with_reserved),
                "in_flight": gw.slots.in_flight(ch.name),
                "max_concurrency": ch.max_concurrency,
            }
        )
    store_status = gw.store.status()
    degraded = gw.last_reload_error is not None or not store_status.get("ok", True)
    return {
        "status": "draining" if gw.draining else ("degraded" if degraded else "ok"),
        "version": gw.version,
        "uptime_seconds": round(time.time() - gw.started_at, 3),
        "config": {
            "path": gw.config_path or "(built-in default)",
            "loaded_at": _iso(snap.loaded_at),
            "last_reload_at": _iso(gw.last_reload_at),
            "last_reload_error": gw.last_reload_error,
            "last_refused": gw.last_refused,
        },
        "storage": store_status,
        "queued": gw.slots.queued(),  # requests waiting for a slot (every candidate full)
        "channels": channels,
    }


async def health(request: web.Request) -> web.Response:
    """Readiness and state: version, uptime, config, storage, per-channel breaker and quota.
    ---
    summary: Gateway health
    tags: [ops]
    security: []
    responses:
      '200':
        description: Health report (status is ok, degraded or draining).
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Health'}
    """
    return web.json_response(await health_report(request.config_dict[GATEWAY]))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text exposition format).
    ---
    summary: Prometheus metrics
    tags: [ops]
    security: []
    responses:
      '200':
        description: Metrics in Prometheus text format.
        content:
          text/plain:
            schema: {type: string}
            example: "smartproxy_requests_total{endpoint=\\"/v1/chat/completions\\",status=\\"200\\"} 3.0\\n"
    """
    gw = request.config_dict[GATEWAY]
    await refresh_gauges(gw)
    body, content_type = gw.metrics.render()
    if gw.peers_dir is not None and not asked_by_a_peer(request):  # --workers N: all of them
        peers = peer_sockets(gw.peers_dir, gw.peer_socket)
        texts = await asyncio.gather(*(peer_text(path) for path in peers))
        body = merge([body.decode(), *(t for t in texts if t is not None)])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def refresh_gauges(gw: Gateway) -> None:
    """Quota and breaker gauges are read at scrape time, not kept up to date per request."""
    snap = gw.snapshot
    usage = await gw.store.usage([c.name for c in snap.config.channels], gw.clock())
    for ch in snap.config.channels:
        u = usage[ch.name]
        gw.metrics.set_quota(ch.name, "day", u.day_tokens, ch.daily_limit)
        gw.metrics.set_quota(ch.name, "hour", u.hour_tokens, ch.hour_limit)
        gw.metrics.set_circuit(ch.name, gw.health.numeric(ch.name))
        gw.metrics.set_channel_in_flight(ch.name, gw.slots.in_flight(ch.name))
    for rule in snap.rules:
        gw.metrics.rule_errors(rule.name, rule.new_errors())


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def create_ops_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
