"""``POST /v1/messages``: the Anthropic Messages API (what Claude Code speaks).

Clients authenticate with ``x-api-key`` or ``Authorization: Bearer`` (a gateway key either way).
To ``anthropic`` channels the body goes unchanged (only ``model_mapping`` may rename the model)
with the client's ``anthropic-version``/``anthropic-beta`` headers, and the SSE stream is relayed
byte for byte; usage is read from ``message_start`` and the cumulative ``message_delta``
(``upstream.wire.ANTHROPIC``). To ``openai``, ``azure`` and ``mock`` channels the request is
translated to chat completions and the answer, stream events and error bodies back
(``providers.messages_chat``, registered as their ``/messages`` adapter).

Errors the gateway makes on these routes are Anthropic-shaped, ``{"type": "error", "error":
{"type", "message"}}``, with the statuses of ``/v1`` (``proxy.proxy_middleware``).

``POST /v1/messages/count_tokens`` goes to an ``anthropic`` channel serving the model; it carries
no tokens (nothing is charged but the request).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import BadRequest
from ...routing.router import RequestFacts
from ...security.apikeys import Principal
from ...state import Snapshot
from ...upstream.wire import ANTHROPIC, UNMETERED
from ..proxy import parse_body, serves
from .base import Front


def parse_messages(
    raw: bytes, snap: Snapshot, principal: Principal | None, path: str = "/messages"
) -> tuple[dict[str, Any], RequestFacts]:
    body, facts = parse_body(raw, snap, principal, path)
    if not isinstance(body.get("messages"), list):
        raise BadRequest("'messages' must be a list of messages", param="messages")
    return body, facts


MESSAGES_FRONT = Front("/v1/messages", "/messages", parse_messages, ANTHROPIC)
COUNT_TOKENS_FRONT = Front(
    "/v1/messages/count_tokens", "/messages/count_tokens", parse_messages, UNMETERED
)

_ERRORS = """
      '400': {description: Bad request, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: invalid_request_error, message: 'you must provide a model parameter'}}}}}
      '401': {description: Missing or unknown key, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: authentication_error, message: 'incorrect API key provided: sk-x...'}}}}}
      '403': {description: The key may not use this model, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: permission_error, message: 'this key may not use model x'}}}}}
      '404': {description: No channel serves the model, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: not_found_error, message: 'no channel serves model nope'}}}}}
      '413': {description: Body over server.max_body_mb, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: request_too_large, message: 'request body over 32 MB'}}}}}
      '429': {description: Rate limited, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: rate_limit_error, message: 'rate limit reached'}}}}}
      '502': {description: No upstream could answer, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: api_error, message: 'no upstream could answer'}}}}}
      '503': {description: No channel available, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: overloaded_error, message: 'no channel is available'}}}}}
      '504': {description: Every upstream attempt timed out, content: {application/json: {
              schema: {$ref: '#/components/schemas/AnthropicError'},
              example: {type: error, error: {type: timeout_error, message: 'every upstream attempt timed out'}}}}}
"""


@serves(MESSAGES_FRONT)
def create_message() -> None:
    """Documented below (the OpenAPI operation shares the error responses)."""


@serves(COUNT_TOKENS_FRONT)
def count_tokens() -> None:
    """Documented below."""


create_message.__doc__ = (
    """Create a message (Anthropic Messages API; what Claude Code speaks). Streams with
    ``"stream": true`` (``message_start`` ... ``message_stop``). Send ``x-api-key`` or a Bearer
    gateway key; ``anthropic-version``/``anthropic-beta`` are forwarded to anthropic channels.
    ---
    summary: Create a message (Anthropic Messages API)
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [model, messages, max_tokens]
            properties:
              model: {type: string}
              max_tokens: {type: integer}
              system: {description: 'a string or a list of text blocks'}
              messages: {type: array, items: {type: object}}
              tools: {type: array, items: {type: object}}
              stream: {type: boolean}
          example: {model: claude-sonnet-4-5, max_tokens: 256,
                    messages: [{role: user, content: Hello}]}
    responses:
      '200':
        description: A message (or text/event-stream when streaming).
        content:
          application/json:
            schema: {type: object}
            example: {id: msg_1, type: message, role: assistant, model: claude-sonnet-4-5,
                      content: [{type: text, text: Hello!}], stop_reason: end_turn,
                      stop_sequence: null, usage: {input_tokens: 9, output_tokens: 3}}
          text/event-stream:
            schema: {type: string}
            example: "event: message_start\\ndata: {\\"type\\":\\"message_start\\"}\\n\\n"
"""
    + _ERRORS
)

count_tokens.__doc__ = (
    """Count the input tokens of a Messages request (at an anthropic channel serving the model).
    ---
    summary: Count message tokens (Anthropic Messages API)
    tags: [proxy]
    security: [{apiKey: []}, {apiKeyHeader: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object, required: [model, messages]}
          example: {model: claude-sonnet-4-5, messages: [{role: user, content: Hello}]}
    responses:
      '200':
        description: The upstream answer, unchanged.
        content:
          application/json:
            schema: {type: object}
            example: {input_tokens: 9}
"""
    + _ERRORS
)


def add_messages_routes(app: web.Application) -> None:
    app.router.add_post("/messages", create_message)
    app.router.add_post("/messages/count_tokens", count_tokens)
