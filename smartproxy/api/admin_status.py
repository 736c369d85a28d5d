"""Admin routes the dashboard reads besides ``/api/usage``: the request log over time
(``GET /api/usage/timeseries``) and the gateway's state at a glance (``GET /api/status``).

Times in both answers are ISO 8601 in ``server.timezone`` with their UTC offset, so a page can show
the server's clock whatever the browser's zone.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, tzinfo
from typing import Any

from aiohttp import web

from ..config import ChannelConfig
from ..errors import BadRequest
from ..routing.pricing import discount_active, effective_price, next_discount_change
from ..state import GATEWAY, Gateway
from ..storage.base import GROUP_COLUMNS, BucketRow
from ..storage.buckets import BUCKETS, bucket_edges, timeseries_document

DEFAULT_SPAN = {"hour": timedelta(hours=48), "day": timedelta(days=30)}
FAILURES_SHOWN = 20


def parse_instant(value: str | None, name: str, tz: tzinfo) -> datetime | None:
    """An ISO 8601 query parameter: a date-time with a UTC offset (``Z`` allowed), or without one
    (``2026-12-01``, ``2026-12-01T08:00``) read in ``tz`` (``server.timezone``); 400 naming it
    otherwise."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadRequest(
            f"'{name}' must be an ISO 8601 date-time, got {value!r}", param=name
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=tz)


async def usage_timeseries(request: web.Request) -> web.Response:
    """Tokens, requests and cost per hour or day of the request log, grouped by channel, key or model.
    ---
    summary: Usage over time
    tags: [admin]
    security: [{adminJWT: []}]
    description: >-
      Buckets are whole local hours or days of server.timezone (a DST day has 23 or 25 hours; a
      +05:30 zone starts its hours at :30 UTC). 'from' is rounded down to the start of its bucket
      and 'to' up to the end of its bucket; every bucket is listed, empty ones with zeros.
      Defaults: to = now, from = to minus 48 hours (bucket=hour) or 30 days (bucket=day).
    parameters:
      - {name: from, in: query, required: false, schema: {type: string},
         description: 'ISO 8601 start; without a UTC offset (2026-11-25, 2026-11-25T08:00) in
           server.timezone', example: '2026-11-25T00:00:00Z'}
      - {name: to, in: query, required: false, schema: {type: string},
         description: 'ISO 8601 end; without a UTC offset in server.timezone',
         example: '2026-11-27T00:00:00Z'}
      - {name: bucket, in: query, required: false,
         schema: {type: string, enum: [hour, day], default: hour}}
      - {name: group_by, in: query, required: false,
         schema: {type: string, enum: [channel, api_key, model], default: channel}}
    responses:
      '200':
        description: Every bucket of the range with its totals and its groups.
        content:
          application/json:
            schema:
              type: object
              properties:
                bucket: {type: string, enum: [hour, day]}
                group_by: {type: string, enum: [channel, api_key, model]}
                timezone: {type: string}
                from: {type: string, format: date-time}
                to: {type: string, format: date-time}
                keys: {type: array, items: {type: string}}
                totals: {type: object}
                buckets:
                  type: array
                  items:
                    type: object
                    properties:
                      start: {type: string, format: date-time}
                      end: {type: string, format: date-time}
                      requests: {type: integer}
                      prompt_tokens: {type: integer}
                      completion_tokens: {type: integer}
                      total_tokens: {type: integer}
                      cost: {type: number}
                      errors: {type: integer}
                      groups: {type: object, additionalProperties: {type: object}}
            example:
              bucket: hour
              group_by: channel
              timezone: Asia/Kolkata
              from: '2026-11-26T10:00:00+05:30'
              to: '2026-11-26T12:00:00+05:30'
              keys: [free-groq, paid-openai]
              totals: {requests: 3, prompt_tokens: 30, completion_tokens: 12, total_tokens: 42,
                       cost: 0.0000084, errors: 0}
              buckets:
                - {start: '2026-11-26T10:00:00+05:30', end: '2026-11-26T11:00:00+05:30',
                   requests: 0, prompt_tokens: 0, completion_tokens: 0, total_tokens: 0,
                   cost: 0.0, errors: 0, groups: {}}
                - start: '2026-11-26T11:00:00+05:30'
                  end: '2026-11-26T12:00:00+05:30'
                  requests: 3
                  prompt_tokens: 30
                  completion_tokens: 12
                  total_tokens: 42
                  cost: 0.0000084
                  errors: 0
                  groups:
                    free-groq: {requests: 2, prompt_tokens: 20, completion_tokens: 8,
                                total_tokens: 28, cost: 0.0, errors: 0}
                    paid-openai: {requests: 1, prompt_tokens: 10, completion_tokens: 4,
                                  total_tokens: 14, cost: 0.0000084, errors: 0}
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    gw = request.config_dict[GATEWAY]
    q = request.query
    bucket = q.get("bucket", "hour")
    if bucket not in BUCKETS:
        raise BadRequest(f"'bucket' must be one of hour, day, got {bucket!r}", param="bucket")
    group_by = q.get("group_by", "channel")
    if group_by not in GROUP_COLUMNS:
        raise BadRequest(
            f"'group_by' must be one of {', '.join(GROUP_COLUMNS)}, got {group_by!r}",
            param="group_by",
        )
    tz = gw.snapshot.tz
    end = parse_instant(q.get("to"), "to", tz) or gw.clock()
    start = parse_instant(q.get("from"), "from", tz) or end - DEFAULT_SPAN[bucket]
    try:
        edges = bucket_edges(start, end, bucket, tz)
    except ValueError as exc:
        raise BadRequest(str(exc), param="from" if "'from'" in str(exc) else "bucket") from None
    rows = await gw.store.timeseries(edges, group_by)
    return web.json_response(
        timeseries_document(edges, rows, bucket=bucket, group_by=group_by, tz=tz)
    )


async def status(request: web.Request) -> web.Response:
    """The gateway at a glance: clock and zone, config reloads, channel states and prices, failures.
    ---
    summary: Gateway status for the dashboard
    tags: [admin]
    security: [{adminJWT: []}]
    description: >-
      Per channel: status, breaker state (closed, half_open, open), a 429 cool-down, the effective
      price now, the discount in effect or the next one, and this month's requests, tokens and
      cost from the request log. Also the last config reload and the latest failed upstream
      attempts (newest first; kept in memory, at most 50).
    responses:
      '200':
        description: Status report; no secrets.
        content:
          application/json:
            schema:
              type: object
              properties:
                now: {type: string, format: date-time}
                timezone: {type: string}
                version: {type: string}
                uptime_seconds: {type: number}
                config: {type: object}
                storage: {type: object}
                channels: {type: array, items: {type: object}}
                recent_failures: {type: array, items: {type: object}}
                failures_total: {type: integer}
            example:
              now: '2026-11-26T20:48:00+08:00'
              timezone: Asia/Shanghai
              version: 0.1.0
              uptime_seconds: 3600.5
              config: {path: etc/smartproxy.yaml, loaded_at: '2026-11-26T19:48:00+08:00',
                       last_reload_at: '2026-11-26T20:01:13+08:00', last_reload_ok: false,
                       last_reload_error: 'channels[1].endpoint: must be an http(s) URL'}
              storage: {backend: sqlite, ok: true}
              channels:
                - name: paid-openai
                  type: openai
                  status: active
                  state: healthy
                  breaker: closed
                  cooling_down_until: null
                  models: [gpt-4o-mini]
                  effective_price: 0.0000006
                  discount: {active: false, window: '00:00-06:00', price: 0.0000003,
                             at: '2026-11-27T00:00:00+08:00', in_seconds: 11520}
                  month_requests: 1200
                  month_tokens: 950000
                  month_cost_usd: 0.57
              recent_failures:
                - {at: '2026-11-26T12:47:55+00:00', channel: paid-openai, model: gpt-4o-mini,
                   status: 503, kind: http, error: null, latency_ms: 41.2,
                   request_id: 7c1e0d2a9b3f4e5a}
              failures_total: 1
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    gw = request.config_dict[GATEWAY]
    return web.json_response(await status_report(gw))


async def status_report(gw: Gateway) -> dict[str, Any]:
    snap = gw.snapshot
    tz = snap.tz
    now = gw.clock()
    local = now.astimezone(tz)
    month = {row["key"]: row for row in await gw.store.timeseries(month_edges(local), "channel")}
    channels = [
        _channel_status(gw, ch, now, tz, month.get(ch.name)) for ch in snap.config.channels
    ]
    reload_at = gw.last_reload_at
    return {
        "now": local.isoformat(),
        "timezone": str(tz),
        "version": gw.version,
        "uptime_seconds": round(time.time() - gw.started_at, 3),
        "config": {
            "path": gw.config_path or "(built-in default)",
            "loaded_at": _local(snap.loaded_at, tz),
            "last_reload_at": _local(reload_at, tz),
            "last_reload_ok": None if reload_at is None else gw.last_reload_error is None,
            "last_reload_error": gw.last_reload_error,
        },
        "storage": gw.store.status(),
        "channels": channels,
        "recent_failures": gw.failures.latest(FAILURES_SHOWN),
        "failures_total": gw.failures.total,
    }


def month_edges(local: datetime) -> list[float]:
    """Epoch edges of the local calendar month of ``local`` (an aware local time)."""
    first = datetime(local.year, local.month, 1, tzinfo=local.tzinfo)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return [first.timestamp(), datetime(year, month, 1, tzinfo=local.tzinfo).timestamp()]


def _channel_status(
    gw: Gateway, ch: ChannelConfig, now: datetime, tz: tzinfo, month: BucketRow | None
) -> dict[str, Any]:
    breaker, cooling_until = gw.health.detail(ch.name, now)
    change = next_discount_change(ch, now, tz)
    discount = None
    if change is not None:
        discount = {
            "active": change.active,
            "window": str(change.window),
            "price": ch.discount_price,
            "at": change.at.isoformat() if change.at is not None else None,
            "in_seconds": None if change.at is None else round((change.at - now).total_seconds()),
        }
    return {
        "name": ch.name,
        "type": ch.type,
        "status": ch.status,
        "state": gw.health.peek(ch.name, now) if ch.active else "disabled",
        "breaker": breaker,
        "cooling_down_until": cooling_until.astimezone(tz).isoformat() if cooling_until else None,
        "models": sorted({*ch.models, *ch.model_mapping}),
        "daily_limit": ch.daily_limit or None,
        "hour_limit": ch.hour_limit or None,
        "price_per_token": ch.price_per_token,
        "effective_price": effective_price(ch, now, tz),
        "discount_active": discount_active(ch, now, tz),
        "discount": discount,
        "month_requests": month["requests"] if month else 0,
        "month_tokens": month["prompt_tokens"] + month["completion_tokens"] if month else 0,
        "month_cost_usd": month["cost"] if month else 0.0,
    }


def _local(ts: float | None, tz: tzinfo) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz).isoformat()


def add_status_routes(app: web.Application) -> None:
    app.router.add_get("/usage/timeseries", usage_timeseries)
    app.router.add_get("/status", status)
