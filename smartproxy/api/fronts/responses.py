"""``POST /v1/responses``: the OpenAI Responses API (what Codex speaks), and the stored responses.

The body goes upstream unchanged (only ``model_mapping`` may rename the model; nothing is added,
not even ``stream_options``), to channels that speak the Responses API (``openai``, ``azure``).
Usage is the response's ``usage`` (``input_tokens``/``output_tokens``), for streams that of the
``response.completed`` event (``upstream.wire.RESPONSES``).

Stickiness: the id of every answer is remembered with the channel that made it
(``UsageStore.remember_response``, kept 30 days; with redis every process sees it). A request
whose ``previous_response_id`` is known goes to that channel only, even when another is cheaper
now: its server holds the conversation. ``GET``/``DELETE /v1/responses/{id}`` (and
``.../input_items``, ``.../cancel``) go to the channel that made ``{id}``; they carry no tokens.
Ids are remembered with the gateway key name that made them: another key gets 404 for them (as
OpenAI answers for an id you do not own), and its ``previous_response_id`` is routed as unknown.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial
from typing import Any

from aiohttp import web

from ...errors import BadRequest, NoChannelAvailable, NotFound
from ...routing.router import Candidate, RequestFacts, RouteDecision
from ...security.apikeys import Principal
from ...state import GATEWAY, RATELIMIT_HEADERS, REQUEST_ID, Gateway, Snapshot
from ...storage.base import StorageError
from ...upstream.client import Exchange
from ...upstream.wire import RESPONSES, UNMETERED
from ..gate import authenticate, rate_limit
from ..limits import read_body
from ..proxy import DISPATCHER, forward_headers, parse_body, serves
from .base import Front

log = logging.getLogger("smartproxy.proxy")


def parse_responses(
    raw: bytes, snap: Snapshot, principal: Principal | None, path: str = "/responses"
) -> tuple[dict[str, Any], RequestFacts]:
    body, facts = parse_body(raw, snap, principal, path)
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise BadRequest(
            "'max_output_tokens' must be a non-negative integer", param="max_output_tokens"
        )
    facts.max_tokens = limit
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise BadRequest("'previous_response_id' must be a string", param="previous_response_id")
    return body, facts


async def sticky(
    gw: Gateway, snap: Snapshot, body: dict[str, Any], decision: RouteDecision, key: str
) -> RouteDecision:
    """A known ``previous_response_id`` keeps only the channel that made it (503 naming why
    when that channel cannot take the request now). Another key's id counts as unknown: routed
    as usual, the upstream answers whether it knows the id."""
    previous = body.get("previous_response_id")
    if not previous:
        return decision
    try:
        owner = await gw.store.response_channel(previous, gw.clock(), key)
    except StorageError as exc:  # routing by price still answers, maybe without the context
        log.error("cannot look up previous_response_id %r: %s", previous, exc)
        return decision
    if owner is None or owner not in snap.channels:
        return decision
    keep = tuple(c for c in decision.candidates if c.channel.name == owner)
    if keep:
        return replace(decision, candidates=keep)
    why = next((e.reason for e in decision.excluded if e.channel == owner), "not a candidate")
    raise NoChannelAvailable(
        f"previous_response_id {previous!r} was answered by channel {owner!r}, which holds the "
        f"conversation but cannot take this request now: {why}",
        param="previous_response_id",
    )


def _remember(gw: Gateway, key: str, channel: str, response_id: str) -> None:
    gw.spawn(_remember_quietly(gw, key, channel, response_id))


async def _remember_quietly(gw: Gateway, key: str, channel: str, response_id: str) -> None:
    try:
        await gw.store.remember_response(response_id, channel, gw.clock(), key)
    except StorageError as exc:
        log.error("cannot remember response %r -> %s: %s", response_id, channel, exc)


def _answer_ids(gw: Gateway, key: str) -> Any:
    return partial(_remember, gw, key)


RESPONSES_FRONT = Front(
    "/v1/responses", "/responses", parse_responses, RESPONSES, sticky, _answer_ids
)


@serves(RESPONSES_FRONT)
def create_response() -> None:
    """Create a model response (OpenAI Responses API; what Codex speaks). Streams with
    ``"stream": true`` (``response.created`` ... ``response.completed``). A
    ``previous_response_id`` answered through the gateway goes to the same channel.
    ---
    summary: Create a response (OpenAI Responses API)
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [model]
            properties:
              model: {type: string}
              input: {description: 'a string or a list of input items'}
              instructions: {type: string}
              previous_response_id: {type: string, nullable: true}
              max_output_tokens: {type: integer, nullable: true}
              stream: {type: boolean}
              tools: {type: array, items: {type: object}}
          example: {model: gpt-4o-mini, input: Say hello, max_output_tokens: 64}
    responses:
      '200':
        description: The upstream answer, unchanged (a response object, or text/event-stream).
        content:
          application/json:
            schema: {type: object}
            example: {id: resp_123, object: response, status: completed, model: gpt-4o-mini,
                      output: [{type: message, id: msg_1, role: assistant, status: completed,
                                content: [{type: output_text, text: Hello!, annotations: []}]}],
                      usage: {input_tokens: 9, output_tokens: 3, total_tokens: 12,
                              input_tokens_details: {cached_tokens: 0},
                              output_tokens_details: {reasoning_tokens: 0}}}
          text/event-stream:
            schema: {type: string}
            example: "event: response.created\\ndata: {\\"type\\":\\"response.created\\"}\\n\\n"
      '400': {$ref: '#/components/responses/BadRequest'}
      '401': {$ref: '#/components/responses/Unauthorized'}
      '403': {$ref: '#/components/responses/Forbidden'}
      '404': {$ref: '#/components/responses/NotFound'}
      '429': {$ref: '#/components/responses/RateLimited'}
      '502': {$ref: '#/components/responses/UpstreamFailed'}
      '503': {$ref: '#/components/responses/NoChannel'}
      '504': {$ref: '#/components/responses/UpstreamTimeout'}
    """


async def stored_response(request: web.Request) -> web.StreamResponse:
    """Retrieve, delete or cancel a stored response (or list its input items), at the channel
    that made it. Unmetered: no tokens are charged.
    ---
    summary: A stored response, at the channel that made it
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    responses:
      '200':
        description: The upstream answer, unchanged.
        content:
          application/json:
            schema: {type: object}
            example: {id: resp_123, object: response, status: completed}
      '401': {$ref: '#/components/responses/Unauthorized'}
      '404': {$ref: '#/components/responses/NotFound'}
      '502': {$ref: '#/components/responses/UpstreamFailed'}
      '503': {$ref: '#/components/responses/NoChannel'}
    """
    gw = request.app[GATEWAY]
    snap = gw.snapshot
    principal = await authenticate(request, gw, snap)
    rate_limit(request, gw, snap, principal)
    response_id = request.match_info["response_id"]
    try:
        owner = await gw.store.response_channel(response_id, gw.clock(), principal.name)
    except StorageError as exc:
        raise NoChannelAvailable(f"cannot look up response {response_id!r}: {exc}") from None
    channel = snap.channels.get(owner) if owner is not None else None
    if channel is None:
        raise NotFound(
            f"no response {response_id!r} was made through this gateway with this key (or it "
            "is older than 30 days, or its channel was removed)",
            code="response_not_found",
            param="response_id",
        )
    raw = await read_body(request, snap.config.server.max_body_bytes)
    ex = Exchange(
        request=request,
        snap=snap,
        facts=RequestFacts(model="", api_key_name=principal.name),
        path=request.rel_url.raw_path.removeprefix("/v1"),
        body=None,
        raw_body=raw,
        headers=forward_headers(request),
        request_id=request[REQUEST_ID],
        started=gw.clock(),
        started_mono=time.monotonic(),
        reserve_tokens=0,
        client_wants_usage=True,
        key_name=principal.name,
        limit_headers=request[RATELIMIT_HEADERS],
        wire=UNMETERED,
        endpoint=str(request.match_info.route.resource.canonical)
        if request.match_info.route.resource is not None
        else "/v1/responses/{response_id}",
    )
    candidate = Candidate(channel, 0.0, False, None)
    return await request.app[DISPATCHER].dispatch(ex, (candidate,))


def add_responses_routes(app: web.Application) -> None:
    app.router.add_post("/responses", create_response)
    app.router.add_get("/responses/{response_id}", stored_response)
    app.router.add_delete("/responses/{response_id}", stored_response)
    app.router.add_get("/responses/{response_id}/input_items", stored_response)
    app.router.add_post("/responses/{response_id}/cancel", stored_response)
