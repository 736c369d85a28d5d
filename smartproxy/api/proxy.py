"""The OpenAI-compatible proxy sub-app (mounted at ``/v1``).

One request, top to bottom: snapshot -> key -> rate limit -> daily budget -> parse body once ->
model allowed -> tokens per minute -> route -> dispatch. The key steps are in ``gate``; when the
request settles, its tokens and cost are charged to the key (``gate.charge_key``).

Gateway-made refusals: 401 ``invalid_api_key`` (no, unknown or malformed key), 429
``rate_limit_exceeded`` (requests or tokens per minute; ``Retry-After``), 429 ``insufficient_quota``
(daily budget), 403 ``model_not_allowed`` (the key's ``models`` list). Every answer the gateway
makes for an authenticated key carries the key's ``x-ratelimit-*`` headers; an upstream answer
keeps its own and gets the key's only for names it does not carry.

Parsing the body, the tokens held and the candidate order are in ``request_plan`` (re-exported
from here).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from functools import partial, update_wrapper
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from .. import __version__
from ..errors import BadRequest, GatewayError, NotFound
from ..routing.router import Candidate
from ..state import GATEWAY, KEY_CHECK, RATELIMIT_HEADERS, REQUEST_ID, Gateway
from ..upstream.client import Dispatcher, Exchange
from ..upstream.headers import client_request_headers
from ..upstream.wire import CHAT, EMBEDDINGS
from .fronts.base import Front
from .gate import (
    SPEND,
    authenticate,
    budget,
    charge_key,
    check_model_allowed,
    limit_tokens,
    rate_limit,
    setup_gate,
)
from .limits import read_body, too_large_response
from .request_plan import decide as decide
from .request_plan import parse_body as parse_body
from .request_plan import raise_no_candidate as raise_no_candidate
from .request_plan import reservation as reservation

log = logging.getLogger("smartproxy.proxy")

_ID_PREFIX = ""  # 12 hex chars: unique per process
_ID_SEQ = itertools.count()


def _new_id_prefix() -> None:
    """A fresh prefix, and in every forked child again: ``--workers`` forks its workers from a
    parent that has imported this module, and two workers sharing a prefix and a counter gave
    different requests the same id."""
    global _ID_PREFIX, _ID_SEQ
    _ID_PREFIX = os.urandom(6).hex()
    _ID_SEQ = itertools.count()


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    return f"req-{_ID_PREFIX}{next(_ID_SEQ) & 0xFFFFFFFFFFFF:012x}"


DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher", Dispatcher)
ANTHROPIC_PREFIX = "/v1/messages"  # the routes whose gateway-made errors are Anthropic-shaped


_USER_AGENT = f"SmartProxy/{__version__}"


def forward_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers that go upstream (the policy: ``upstream.headers``)."""
    return client_request_headers(request.headers, _USER_AGENT)


async def _proxy(request: web.Request, front: Front) -> web.StreamResponse:
    """The request path every front shares (``front`` says what differs). Its frame waits for as
    long as the upstream takes, so the work before is a coroutine of its own: the many locals
    that needs are not held meanwhile (~130 bytes per request in flight)."""
    ex, candidates = await _prepare(request, front)
    return await request.app[DISPATCHER].dispatch(ex, candidates)


async def _prepare(request: web.Request, front: Front) -> tuple[Exchange, tuple[Candidate, ...]]:
    """Key, limits, body, route: the exchange to dispatch and its candidates."""
    gw = request.app[GATEWAY]
    snap = gw.snapshot  # read once: a reload mid-request changes nothing for this request
    principal = await authenticate(request, gw, snap)
    rate_limit(request, gw, snap, principal)
    budget(request, gw, snap, principal)
    raw = await read_body(request, snap.config.server.max_body_bytes)
    path = front.path
    body, facts = front.parse(raw, snap, principal, path)
    check_model_allowed(principal, facts.model)
    reserve = reservation(snap, facts, body, path)
    limit_tokens(request, gw, principal, reserve)
    decision = await decide(gw, snap, facts, reserve)
    if front.narrow is not None:
        decision = await front.narrow(gw, snap, body, decision, principal.name)
    if not decision.candidates:
        raise_no_candidate(snap, facts, decision)
    stream_options = body.get("stream_options")
    ex = Exchange(
        request=request,
        snap=snap,
        facts=facts,
        path=path,
        body=body,
        raw_body=raw,
        headers=forward_headers(request),
        request_id=request[REQUEST_ID],
        started=gw.clock(),
        started_mono=time.monotonic(),
        reserve_tokens=reserve,
        client_wants_usage=isinstance(stream_options, dict)
        and bool(stream_options.get("include_usage")),
        on_settle=partial(charge_key, gw, request.app[SPEND], principal, snap.minutes),
        key_name=principal.name,
        limit_headers=request[RATELIMIT_HEADERS],
        wire=front.wire,
        endpoint=front.endpoint,
        on_answer_id=front.answer_ids(gw, principal.name) if front.answer_ids is not None else None,
        rereadable=front.parse is parse_body,
    )
    return ex, decision.candidates  # while the upstream answers, only ``ex`` holds the body


def serves(front: Front) -> Callable[[Callable[[], None]], Handler]:
    """Declares the route handler of ``front``: ``_proxy`` bound to it, named and documented (its
    OpenAPI operation) by the decorated declaration. Not a handler of its own awaiting
    ``_proxy``: that coroutine would be one more frame held by every request in flight
    (~380 bytes, ``tests/test_per_request.py``)."""

    def bind(declaration: Callable[[], None]) -> Handler:
        handler = partial(_proxy, front=front)
        update_wrapper(handler, declaration)
        return handler

    return bind


CHAT_FRONT = Front("/v1/chat/completions", "/chat/completions", parse_body, CHAT)
COMPLETIONS_FRONT = Front("/v1/completions", "/completions", parse_body, CHAT)
EMBEDDINGS_FRONT = Front("/v1/embeddings", "/embeddings", parse_body, EMBEDDINGS)


@serves(CHAT_FRONT)
def chat_completions() -> None:
    """Create a chat completion (OpenAI-compatible; streaming with ``"stream": true``).
    ---
    summary: Chat completion
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/ChatCompletionRequest'}
          example: {model: gpt-4o-mini, messages: [{role: user, content: Hello}]}
    responses:
      '200':
        description: The upstream answer, unchanged (JSON, or text/event-stream when streaming).
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ChatCompletionResponse'}
          text/event-stream:
            schema: {type: string}
            example: "data: {\\"choices\\":[{\\"delta\\":{\\"content\\":\\"Hi\\"}}]}\\n\\n\\
              data: [DONE]\\n\\n"
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/Unauthorized'}
      '413': {$ref: '#/components/responses/TooLarge'}
      '403': {$ref: '#/components/responses/Forbidden'}
      '404': {$ref: '#/components/responses/NotFound'}
      '429': {$ref: '#/components/responses/RateLimited'}
      '502': {$ref: '#/components/responses/UpstreamFailed'}
      '503': {$ref: '#/components/responses/NoChannel'}
      '504': {$ref: '#/components/responses/UpstreamTimeout'}
    """


@serves(COMPLETIONS_FRONT)
def completions() -> None:
    """Create a (legacy) text completion.
    ---
    summary: Text completion
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/CompletionRequest'}
          example: {model: gpt-3.5-turbo-instruct, prompt: Say hello, max_tokens: 16}
    responses:
      '200':
        description: The upstream answer, unchanged.
        content:
          application/json:
            schema: {$ref: '#/components/schemas/CompletionResponse'}
            example: {id: cmpl-1, object: text_completion, created: 1732600000,
                      model: gpt-3.5-turbo-instruct,
                      choices: [{index: 0, text: Hello!, finish_reason: stop}],
                      usage: {prompt_tokens: 3, completion_tokens: 2, total_tokens: 5}}
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/Unauthorized'}
      '403': {$ref: '#/components/responses/Forbidden'}
      '404': {$ref: '#/components/responses/NotFound'}
      '413': {$ref: '#/components/responses/TooLarge'}
      '429': {$ref: '#/components/responses/RateLimited'}
      '502': {$ref: '#/components/responses/UpstreamFailed'}
      '503': {$ref: '#/components/responses/NoChannel'}
      '504': {$ref: '#/components/responses/UpstreamTimeout'}
    """


@serves(EMBEDDINGS_FRONT)
def embeddings() -> None:
    """Create embeddings.
    ---
    summary: Embeddings
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/EmbeddingRequest'}
          example: {model: text-embedding-3-small, input: hello world}
    responses:
      '200':
        description: The upstream answer, unchanged.
        content:
          application/json:
            schema: {$ref: '#/components/schemas/EmbeddingResponse'}
            example: {object: list, model: text-embedding-3-small,
                      data: [{object: embedding, index: 0, embedding: [0.0023, -0.0091]}],
                      usage: {prompt_tokens: 2, total_tokens: 2}}
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/Unauthorized'}
      '403': {$ref: '#/components/responses/Forbidden'}
      '404': {$ref: '#/components/responses/NotFound'}
      '413': {$ref: '#/components/responses/TooLarge'}
      '429': {$ref: '#/components/responses/RateLimited'}
      '502': {$ref: '#/components/responses/UpstreamFailed'}
      '503': {$ref: '#/components/responses/NoChannel'}
      '504': {$ref: '#/components/responses/UpstreamTimeout'}
    """


async def models(request: web.Request) -> web.Response:
    """List the models the active channels serve (their union); a key with a ``models`` list
    sees only those.
    ---
    summary: List models
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    responses:
      '200':
        description: The models of every active channel (only the key's own when it has a list).
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ModelList'}
            example: {object: list,
                      data: [{id: gpt-4o-mini, object: model, created: 0, owned_by: openai}]}
      '401': {$ref: '#/components/responses/Unauthorized'}
    """
    gw = request.config_dict[GATEWAY]
    snap = gw.snapshot
    principal = await authenticate(request, gw, snap)
    rate_limit(request, gw, snap, principal, defer=False)  # nothing is dispatched
    seen: dict[str, str] = {}
    for ch in snap.config.channels:
        if not ch.active:
            continue
        for name in (*ch.models, *ch.model_mapping):
            seen.setdefault(name, ch.name if ch.type != "mock" else "smartproxy-mock")
        if ch.type == "mock" and not ch.models:
            seen.setdefault("mock-1", "smartproxy-mock")
    allowed = principal.key.models
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": owner}
        for name, owner in seen.items()
        if not allowed or name in allowed
    ]
    return web.json_response({"object": "list", "data": data})


@web.middleware
async def proxy_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request id, OpenAI-shaped errors, rate-limit headers on every answer."""
    request_id = request.headers.get("x-request-id") or new_request_id()
    if not (request_id.isascii() and request_id.isprintable()) or len(request_id) > 128:
        request_id = new_request_id()
    request[REQUEST_ID] = request_id
    # /v1/messages speaks Anthropic's API: its errors are Anthropic-shaped (same statuses).
    anthropic = request.path.startswith(ANTHROPIC_PREFIX)
    try:
        resp: web.StreamResponse = await handler(request)
    except GatewayError as exc:
        resp = exc.to_response(anthropic=anthropic)
        if exc.status == 413:
            resp.force_close()  # the rest of the body may still be on its way
    except web.HTTPException as exc:
        if exc.status == 413:  # a handler's own request.read() past the root's client_max_size
            limit = request.app[GATEWAY].config.server.max_body_bytes
            resp = too_large_response(limit, anthropic=anthropic)
        elif exc.status == 404:
            error: GatewayError = NotFound(f"unknown endpoint {request.method} {request.path}")
            resp = error.to_response(anthropic=anthropic)
        elif exc.status == 405:
            error = BadRequest(
                f"method {request.method} not allowed on {request.path}", code="method_not_allowed"
            )
            resp = error.to_response(anthropic=anthropic)
            resp.set_status(405)
            if "Allow" in exc.headers:  # RFC 9110: a 405 says what is allowed
                resp.headers["Allow"] = exc.headers["Allow"]
        else:
            raise
    finally:
        check = request.pop(KEY_CHECK, None)  # a key check never sent: its cycle, broken
        if check is not None:
            check.drop()
    # Answers relayed from upstream already carry these (``Dispatcher._response_headers``).
    if not resp.prepared and "x-request-id" not in resp.headers:
        headers = resp.headers
        for k, v in request.get(RATELIMIT_HEADERS, {}).items():
            if k.lower() != "retry-after" or resp.status == 429:
                headers.setdefault(k, v)
        headers["x-request-id"] = request_id
    return resp


def create_proxy_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[proxy_middleware])  # body limit: the root's, read_body
    app[DISPATCHER] = Dispatcher(gateway)
    app[GATEWAY] = gateway  # request.app[...] is a dict lookup; config_dict builds a ChainMap
    setup_gate(app, gateway)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_post("/completions", completions)
    app.router.add_post("/embeddings", embeddings)
    app.router.add_get("/models", models)
    return app
