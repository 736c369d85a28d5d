"""The admin sub-app (mounted at ``/api``): JWT on every route; usage, dry-run routing, reload,
and the config routes of :mod:`smartproxy.api.admin_config` (channels, rules, API keys).

Every change (reload included) and every refused admin token is a line in the audit log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from ..audit import Actor
from ..errors import BadRequest, ConfigError, GatewayError, Untranslatable
from ..providers import adapter_for
from ..routing.pricing import effective_price
from ..routing.router import Candidate
from ..security.authlog import left_out_note
from ..security.jwt import admin_auth_middleware
from ..state import GATEWAY, Gateway, quota_left
from .admin_config import actor_of, add_config_routes
from .admin_status import add_status_routes, parse_instant
from .channel_test import add_test_route
from .fronts.routes import FRONT_NARROW, FRONT_PARSERS
from .limits import read_body, too_large_response
from .proxy import decide, parse_body, reservation

log = logging.getLogger("smartproxy.admin")


async def usage(request: web.Request) -> web.Response:
    """Usage per channel, or grouped over the request log with ``from``/``to``/``group_by``.
    ---
    summary: Usage and cost
    tags: [admin]
    security: [{adminJWT: []}]
    parameters:
      - {name: from, in: query, required: false, schema: {type: string, format: date-time},
         description: 'ISO 8601 start (inclusive) of the request-log window',
         example: '2026-11-26T00:00:00Z'}
      - {name: to, in: query, required: false, schema: {type: string, format: date-time},
         description: 'ISO 8601 end (exclusive)', example: '2026-11-27T00:00:00Z'}
      - {name: group_by, in: query, required: false,
         schema: {type: string, enum: [channel, api_key, model, endpoint]},
         description: 'group the request log instead of returning live counters'}
    responses:
      '200':
        description: Per-channel counters (no group_by) or grouped request-log rows.
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Usage'}
            example:
              channels:
                - {channel: free-groq, requests: 12, day_tokens: 3400, hour_tokens: 800,
                   total_tokens: 9100, cost_usd: 0.0, day_quota_left: 496600,
                   hour_quota_left: 49200}
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    gw = request.config_dict[GATEWAY]
    q = request.query
    if "group_by" in q or "from" in q or "to" in q:
        tz = gw.snapshot.tz
        start, end = parse_instant(q.get("from"), "from", tz), parse_instant(q.get("to"), "to", tz)
        group_by = q.get("group_by", "channel")
        try:
            rows = await gw.store.query(start, end, group_by)
        except ValueError as exc:
            raise BadRequest(str(exc), param="group_by") from None
        return web.json_response(
            {"group_by": group_by, "from": q.get("from"), "to": q.get("to"), "rows": rows}
        )
    return web.json_response({"channels": await channel_usage(gw)})


async def channel_usage(gw: Gateway) -> list[dict[str, Any]]:
    snap = gw.snapshot
    now = gw.clock()
    usage = await gw.store.usage([c.name for c in snap.config.channels], now)
    out = []
    for ch in snap.config.channels:
        u = usage[ch.name]
        out.append(
            {
                "channel": ch.name,
                "requests": u.total_requests,
                "day_requests": u.day_requests,
                "day_tokens": u.day_tokens,
                "hour_tokens": u.hour_tokens,
                "total_tokens": u.total_tokens,
                "prompt_tokens": u.total_prompt_tokens,
                "completion_tokens": u.total_completion_tokens,
                "reserved_tokens": u.day_reserved_tokens,
                "cost_usd": round(u.total_cost, 10),
                "day_cost_usd": round(u.day_cost, 10),
                "daily_limit": ch.daily_limit or None,
                "hour_limit": ch.hour_limit or None,
                "day_quota_left": quota_left(ch.daily_limit, u.day_tokens_with_reserved),
                "hour_quota_left": quota_left(ch.hour_limit, u.hour_tokens_with_reserved),
                "effective_price": effective_price(ch, now, snap.tz),
            }
        )
    return out


async def route_dry_run(request: web.Request) -> web.Response:
    """Explain routing for a request body: ordered candidates, matched rule, prices, exclusions.
    ---
    summary: Routing dry run
    tags: [admin]
    security: [{adminJWT: []}]
    parameters:
      - {name: api_key_name, in: query, required: false, schema: {type: string},
         description: 'evaluate rules as this gateway key name'}
      - {name: endpoint, in: query, required: false,
         schema: {type: string, enum: [chat/completions, completions, embeddings, responses,
                                       messages]},
         description: 'the proxy endpoint the body is for (sets the token reservation and
           which channel types serve it); the body may name it instead: "path": "/v1/responses"'}
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/ChatCompletionRequest'}
          example: {model: gpt-4o-mini, messages: [{role: user, content: Hello}], max_tokens: 100}
    responses:
      '200':
        description: The decision the proxy would take now (nothing is sent or reserved).
        content:
          application/json:
            schema: {$ref: '#/components/schemas/RouteDecision'}
            example:
              model: gpt-4o-mini
              matched_rule: free first while quota lasts
              candidates:
                - {channel: free-groq, effective_price: 0.0, discount_active: false,
                   rule: free first while quota lasts}
              excluded: [{channel: paid-b, reason: circuit open}]
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    gw = request.config_dict[GATEWAY]
    snap = gw.snapshot
    raw = await read_body(request, snap.config.server.max_body_bytes)
    path = "/" + request.query.get("endpoint", "chat/completions").strip("/")
    body, facts = parse_body(raw, snap, None, path)
    named = body.get("path") or body.get("endpoint")  # the body may name it: "/v1/responses"
    if isinstance(named, str) and named:
        path = "/" + named.strip("/").removeprefix("v1/")
    if path in FRONT_PARSERS:  # the front's own reading (max_output_tokens, messages, ...)
        body, facts = FRONT_PARSERS[path](raw, snap, None, path)
    name = request.query.get("api_key_name", "")
    if name or path != facts.path:
        from dataclasses import replace

        facts = replace(facts, api_key_name=name or facts.api_key_name, path=path)
    reserve = reservation(snap, facts, body, path)
    decision = await decide(gw, snap, facts, reserve, explain=True)
    narrow = FRONT_NARROW.get(path)
    if narrow is not None:  # e.g. a previous_response_id keeps its channel (for api_key_name)
        decision = await narrow(gw, snap, body, decision, facts.api_key_name or "")
    slots = gw.slots
    candidates: list[Candidate] = []
    full: list[Candidate] = []
    untranslatable: list[dict[str, str]] = []
    sent = {k: v for k, v in body.items() if k not in ("path", "endpoint")}  # the dry run's
    for c in decision.candidates:
        # A channel of another API shape gets the body translated per attempt; a field it
        # cannot express skips it there (failover), so here too.
        adapter = adapter_for(c.channel.provider, path)
        if adapter is not None:
            try:
                model = c.channel.upstream_model(facts.model)
                adapter.request(sent, model=model, channel=c.channel)
            except Untranslatable as exc:
                untranslatable.append({"channel": c.channel.name, "reason": exc.message})
                continue
        cap = c.channel.max_concurrency
        (full if cap and slots.in_flight(c.channel.name) >= cap else candidates).append(c)
    return web.json_response(
        {
            "model": facts.model,
            "prompt_tokens_estimate": facts.prompt_tokens,
            "reserve_tokens": reserve,
            "matched_rule": decision.matched_rule,
            "candidates": [
                {
                    "channel": c.channel.name,
                    "type": c.channel.type,
                    "effective_price": c.effective_price,
                    "discount_active": c.discount_active,
                    "priority": c.channel.priority,
                    "rule": c.rule,
                    "upstream_model": c.channel.upstream_model(facts.model),
                    "in_flight": slots.in_flight(c.channel.name),
                    "max_concurrency": c.channel.max_concurrency,
                }
                for c in candidates
            ],
            "excluded": [
                {
                    "channel": c.channel.name,
                    "reason": f"at max_concurrency ({c.channel.max_concurrency} in flight); "
                    "a request waits for a slot when every candidate is full",
                }
                for c in full
            ]
            + untranslatable
            + [{"channel": e.channel, "reason": e.reason} for e in decision.excluded],
            "queued": slots.queued(),
            "queue_timeout": snap.config.server.queue_timeout,
            "rules": [
                {"rule": t.rule, "channel": t.channel, "matched": t.matched, "error": t.error}
                for t in decision.rules
            ],
        }
    )


async def reload(request: web.Request) -> web.Response:
    """Re-read the config file (like SIGHUP); a bad file is refused whole and the running one stays.
    ---
    summary: Reload the config file
    tags: [admin]
    security: [{adminJWT: []}]
    responses:
      '200':
        description: Reloaded.
        content:
          application/json:
            schema: {type: object}
            example: {status: reloaded, channels: 3, rules: 2}
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    gw = request.config_dict[GATEWAY]
    try:
        actor = actor_of(request)
        snap = await gw.reload_from_file(reason=f"POST /api/reload by {actor.sub}", actor=actor)
    except ConfigError as exc:
        raise BadRequest(
            "config refused, the running config stays: " + "; ".join(exc.problems),
            code="invalid_config",
        ) from None
    if gw.on_admin_change is not None:
        gw.on_admin_change()
    return web.json_response(
        {"status": "reloaded", "channels": len(snap.config.channels), "rules": len(snap.rules)}
    )


@web.middleware
async def admin_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except GatewayError as exc:
        response = exc.to_response()
        if exc.status == 413:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status == 413:
            return too_large_response(request.config_dict[GATEWAY].config.server.max_body_bytes)
        if exc.status in (404, 405):
            allow = exc.headers.get("Allow")  # RFC 9110: a 405 says what is allowed
            return web.Response(
                status=exc.status,
                body=json.dumps(
                    {
                        "error": {
                            "message": f"{exc.reason}: {request.method} {request.path}",
                            "type": "invalid_request_error",
                            "code": "not_found" if exc.status == 404 else "method_not_allowed",
                            "param": None,
                        }
                    }
                ).encode(),
                content_type="application/json",
                headers={"Allow": allow} if allow is not None else None,
            )
        raise


def create_admin_app(gateway: Gateway) -> web.Application:
    def on_auth_failure(request: web.Request, reason: str) -> bool:
        gateway.metrics.auth_failure(f"admin_{reason.replace(' ', '_')}")
        address = request.remote or "unknown"
        left_out = gateway.auth_lines.take(address)  # one line per address per second
        if left_out is None:
            return False
        note = left_out_note(left_out)
        log.warning("admin auth failed from %s: %s%s", address, reason, note)
        # The reason is a fixed label from the verifier; nothing of the token is kept.
        gateway.audit.record(Actor(sub=None, address=request.remote), "auth_failed",
                             f"{request.method} {request.path}", ok=False, reason=reason + note)
        return False  # logged here

    app = web.Application(
        middlewares=[
            admin_errors,
            admin_auth_middleware(gateway.verifier, on_failure=on_auth_failure),
        ]
    )
    app.router.add_get("/usage", usage)
    app.router.add_post("/route", route_dry_run)
    app.router.add_post("/reload", reload)
    add_config_routes(app)
    add_status_routes(app)
    add_test_route(app)
    return app
