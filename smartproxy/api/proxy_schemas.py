"""OpenAPI components of the OpenAI-compatible proxy and the ops endpoints, and shared helpers.

``PROXY_SCHEMAS`` holds Error, the chat/completions/embeddings requests and responses, ModelList
and Health with their examples; the helpers (``Json``, ``_ref``, ``_obj``, ``_array`` and the
small type fragments) are shared with the admin schemas in :mod:`.schemas`, which assembles the
components ``/swagger.json`` serves and re-exports the public names here.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


_STR: Json = {"type": "string"}
_INT: Json = {"type": "integer"}
_NULLABLE_STR: Json = {"type": "string", "nullable": True}
_NULLABLE_INT: Json = {"type": "integer", "nullable": True}

_USAGE: Json = {
    "type": "object",
    "properties": {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
}

CHAT_REQUEST_EXAMPLE: Json = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
    ],
    "max_tokens": 64,
    "stream": False,
}

CHAT_RESPONSE_EXAMPLE: Json = {
    "id": "chatcmpl-9xYz",
    "object": "chat.completion",
    "created": 1718000000,
    "model": "llama-3.1-8b-instant",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 18, "completion_tokens": 2, "total_tokens": 20},
}

COMPLETION_REQUEST_EXAMPLE: Json = {
    "model": "gpt-3.5-turbo-instruct",
    "prompt": "Say hello.",
    "max_tokens": 16,
}

EMBEDDING_REQUEST_EXAMPLE: Json = {"model": "text-embedding-3-small", "input": "hello world"}

COMPLETION_RESPONSE_EXAMPLE: Json = {
    "id": "cmpl-8aBc",
    "object": "text_completion",
    "created": 1718000000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"index": 0, "text": " Hello.", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}

EMBEDDING_RESPONSE_EXAMPLE: Json = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0091, 0.0154]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}

MODEL_LIST_EXAMPLE: Json = {
    "object": "list",
    "data": [
        {"id": "llama-3.1-8b-instant", "object": "model", "created": 0, "owned_by": "free-groq"},
        {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai-paid"},
    ],
}

HEALTH_EXAMPLE: Json = {
    "status": "ok",
    "version": "0.1.0",
    "uptime_seconds": 3600.5,
    "config": {
        "path": "etc/smartproxy.yaml",
        "loaded_at": "2026-11-26T08:00:00Z",
        "last_reload_at": None,
        "last_reload_error": None,
        "last_refused": {"at": "2026-11-26T09:12:00Z", "source": "admin save-channel 'bad' by ops",
                         "error": "channels[3].endpoint: must be an http(s) URL"},
    },
    "storage": {"backend": "sqlite", "ok": True, "path": "data/smartproxy.db", "last_error": None},
    "channels": [
        {"name": "free-groq", "type": "openai", "status": "active", "circuit": "closed",
         "day_tokens_used": 420, "hour_tokens_used": 420, "day_quota_left": 499580,
         "hour_quota_left": None}
    ],
}  # fmt: skip

ERROR_EXAMPLE: Json = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
        "param": None,
    }
}


def _obj(*required: str, **properties: Json) -> Json:
    out: Json = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def _array(items: Json) -> Json:
    return {"type": "array", "items": items}


# Requests allow additional properties: fields not listed are forwarded to upstream unchanged.
_OPEN: Json = {"additionalProperties": True}
_TOKENS: Json = {"type": "integer", "minimum": 1}
_STREAM: Json = {"type": "boolean", "default": False}
_TEXTS: Json = {"description": "A string or a list of strings."}

PROXY_SCHEMAS: dict[str, Json] = {
    "Error": {
        **_obj("error", error=_obj("message", "type", message=_STR, type=_STR,
                                   code=_NULLABLE_STR, param=_NULLABLE_STR)),
        "description": "OpenAI-shaped error the gateway itself answers with.",
        "example": ERROR_EXAMPLE,
    },
    "AnthropicError": {
        **_obj("type", "error", type={**_STR, "enum": ["error"]},
               error=_obj("type", "message", type=_STR, message=_STR)),
        "description": "Anthropic-shaped error the gateway itself answers with on /v1/messages "
                       "(same status codes as elsewhere).",
        "example": {"type": "error", "error": {"type": "not_found_error",
                                               "message": "no channel serves model 'nope'"}},
    },
    "ChatMessage": {
        **_obj("role", role={**_STR, "enum": ["system", "user", "assistant", "tool"]},
               content={"description": "A string, a list of content parts, or null."}),
        **_OPEN,
    },
    "ChatCompletionRequest": {
        **_obj("model", "messages",
               model={**_STR, "description": "Routed by model; may be renamed upstream."},
               messages=_array(_ref("ChatMessage")), max_tokens=_TOKENS,
               temperature={"type": "number"}, stream=_STREAM,
               stream_options=_obj(include_usage={"type": "boolean"})),
        **_OPEN,
        "example": CHAT_REQUEST_EXAMPLE,
    },
    "ChatCompletionResponse": {
        **_obj(id=_STR, object=_STR, created=_INT, model=_STR, usage=_USAGE,
               choices=_array(_obj(index=_INT, message=_ref("ChatMessage"),
                                   finish_reason=_NULLABLE_STR))),
        "description": "The upstream answer, returned unchanged.",
        "example": CHAT_RESPONSE_EXAMPLE,
    },
    "CompletionRequest": {
        **_obj("model", "prompt", model=_STR, prompt=_TEXTS, max_tokens=_TOKENS, stream=_STREAM),
        **_OPEN,
        "example": COMPLETION_REQUEST_EXAMPLE,
    },
    "CompletionResponse": {
        **_obj(id=_STR, object=_STR, created=_INT, model=_STR, usage=_USAGE,
               choices=_array(_obj(index=_INT, text=_STR, finish_reason=_NULLABLE_STR))),
        "description": "The upstream answer, returned unchanged.",
        "example": COMPLETION_RESPONSE_EXAMPLE,
    },
    "EmbeddingRequest": {
        **_obj("model", "input", model=_STR, input=_TEXTS),
        **_OPEN,
        "example": EMBEDDING_REQUEST_EXAMPLE,
    },
    "EmbeddingResponse": {
        **_obj(object=_STR, model=_STR, usage=_USAGE,
               data=_array(_obj(object=_STR, index=_INT,
                                embedding=_array({"type": "number"})))),
        "description": "The upstream answer, returned unchanged.",
        "example": EMBEDDING_RESPONSE_EXAMPLE,
    },
    "ModelList": {
        **_obj(object={**_STR, "enum": ["list"]},
               data=_array(_obj(id=_STR, object=_STR, created=_INT, owned_by=_STR))),
        "description": "The union of the active channels' models.",
        "example": MODEL_LIST_EXAMPLE,
    },
    "Health": {
        **_obj(
            status={**_STR, "enum": ["ok", "degraded", "draining"]},
            version=_STR,
            uptime_seconds={"type": "number"},
            config=_obj(path=_STR, loaded_at=_NULLABLE_STR, last_reload_at=_NULLABLE_STR,
                        last_reload_error=_NULLABLE_STR,
                        last_refused={**_obj(at=_STR, source=_STR, error=_STR),
                                      "nullable": True,
                                      "description": "The latest config change refused (file "
                                                     "or admin write); the running one stayed."}),
            storage={**_obj(backend=_STR, ok={"type": "boolean"}), **_OPEN,
                     "description": "Backend status; further fields vary by backend."},
            channels=_array(_obj(
                name=_STR, type=_STR, status={**_STR, "enum": ["active", "disabled"]},
                circuit={**_STR, "description": "Breaker state."},
                day_tokens_used={**_INT, "description": "Settled plus reserved in flight."},
                hour_tokens_used=_INT, reserved_tokens=_INT, day_quota_left=_NULLABLE_INT,
                hour_quota_left=_NULLABLE_INT,
                in_flight={**_INT, "description": "Requests in flight to it (this process)."},
                max_concurrency={**_NULLABLE_INT, "description": "Its cap; null: none."},
            )),
            queued={**_INT, "description": "Requests waiting for a slot (every candidate at "
                    "max_concurrency)."},
        ),
        "description": "Gateway health; never contains secrets. Quota left is null if unlimited.",
        "example": HEALTH_EXAMPLE,
    },
}  # fmt: skip
