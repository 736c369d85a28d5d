"""``POST /api/channels/{name}/test``: the admin route of :mod:`smartproxy.upstream.selftest`."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..errors import BadRequest, GatewayError, NotFound
from ..state import GATEWAY
from ..upstream.selftest import LISTS_MODELS, default_model, discover_model, run_channel_test
from .admin_config import actor_of

log = logging.getLogger("smartproxy.admin")


async def channel_test(request: web.Request) -> web.Response:
    """Send one tiny real request (chat, ``max_tokens: 1``) to the channel now and say how it went.
    ---
    summary: Test a channel
    description: >-
      Without a model in the body the channel's first named model is used; a channel that
      serves any model (openai, anthropic) is asked for its models (GET /models) and the first
      is used. Routing, quotas and the circuit breaker are bypassed (a disabled channel can be tested:
      test, then enable); the tokens used are counted in usage and the request log (request_id
      ``test-...``, key ``(channel test)``). The test is audited. ``ok`` is false with upstream's
      status and error when it refuses (a bad key: ``status: 401``), or with ``status: null``
      when it could not be reached.
    tags: [admin]
    security: [{adminJWT: []}]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}, example: free-groq}
    requestBody:
      required: false
      content:
        application/json:
          schema: {$ref: '#/components/schemas/ChannelTestRequest'}
          example: {model: gpt-4o-mini}
    responses:
      '200':
        description: The test ran (whether or not the channel answered well).
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ChannelTestResult'}
            example: {ok: false, status: 401, latency_ms: 212.4, model: llama-3.1-8b-instant,
                      error: 'HTTP 401: Invalid API Key', request_id: test-5f0c2a9e1b3d4c6a}
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '404': {$ref: '#/components/responses/NotFound'}
    """
    gw = request.config_dict[GATEWAY]
    name = request.match_info["name"]
    actor = actor_of(request)
    try:
        ch = gw.snapshot.channels.get(name)
        if ch is None:
            raise NotFound(f"no channel named {name!r}", code="channel_not_found")
        model = await _model(request) or default_model(ch)
        why = None
        if not model and ch.type in LISTS_MODELS:  # serves any model: ask upstream for one
            model, why = await discover_model(gw, ch)
        if not model:
            raise BadRequest(f"channel {name!r} serves any model: name one to test with, e.g. "
                             f'{{"model": "gpt-4o-mini"}}{f" ({why})" if why else ""}',
                             param="model")
    except GatewayError as exc:  # refused before any request was sent: audited all the same
        gw.audit.record(actor, "channel.test", name, ok=False, reason=exc.message)
        raise
    result = await run_channel_test(gw, ch, model)
    gw.audit.record(actor, "channel.test", name, ok=result.ok, reason=result.error,
                    diff={"status": result.status, "latency_ms": result.latency_ms,
                          "model": result.model, "request_id": result.request_id})
    log.info("admin channel test %r by %s: %s", name, actor.sub,
             "ok" if result.ok else result.error)
    return web.json_response(result.to_json())


async def _model(request: web.Request) -> str | None:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body must be JSON, e.g. {\"model\": \"gpt-4o-mini\"}") from None
    model = body.get("model") if isinstance(body, dict) else None
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise BadRequest("'model' must be a non-empty string", param="model")
    return model


def add_test_route(app: web.Application) -> None:
    app.router.add_post("/channels/{name:.+}/test", channel_test)
