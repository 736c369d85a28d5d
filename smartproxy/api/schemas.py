"""OpenAPI 3.0 components of ``/swagger.json`` as plain dicts: schemas, examples, responses, auth.

Handler docstrings refer to them as ``$ref: '#/components/schemas/ChatCompletionRequest'``,
``'#/components/examples/ChatCompletionRequest'`` or ``'#/components/responses/Unauthorized'``.
Written for OpenAPI 3.0.3 (``nullable``, not type lists) because the bundled Swagger UI 4 does
not render 3.1. Only the fields the gateway reads or a client needs are spelled out; the rest
pass through to the upstream untouched, so every request object allows additional properties.

The proxy's and ops endpoints' schemas are in :mod:`.proxy_schemas` (re-exported here); this
module holds the admin ones (usage, route dry run, the config entries) and assembles the
components: ``SCHEMAS``, ``EXAMPLES``, ``RESPONSES`` and ``SECURITY_SCHEMES``.
"""

from __future__ import annotations

from .proxy_schemas import (
    _INT,
    _NULLABLE_INT,
    _NULLABLE_STR,
    _STR,
    CHAT_REQUEST_EXAMPLE,
    CHAT_RESPONSE_EXAMPLE,
    COMPLETION_REQUEST_EXAMPLE,
    COMPLETION_RESPONSE_EXAMPLE,
    EMBEDDING_REQUEST_EXAMPLE,
    EMBEDDING_RESPONSE_EXAMPLE,
    ERROR_EXAMPLE,
    HEALTH_EXAMPLE,
    MODEL_LIST_EXAMPLE,
    PROXY_SCHEMAS,
    Json,
    _array,
    _obj,
    _ref,
)

__all__ = [
    "API_KEY_EXAMPLE",
    "CHANNEL_EXAMPLE",
    "CHAT_REQUEST_EXAMPLE",
    "CHAT_RESPONSE_EXAMPLE",
    "COMPLETION_REQUEST_EXAMPLE",
    "COMPLETION_RESPONSE_EXAMPLE",
    "CONFIG_CHANGE_EXAMPLE",
    "EMBEDDING_REQUEST_EXAMPLE",
    "EMBEDDING_RESPONSE_EXAMPLE",
    "ERROR_EXAMPLE",
    "EXAMPLES",
    "HEALTH_EXAMPLE",
    "MODEL_LIST_EXAMPLE",
    "RESPONSES",
    "ROUTE_DECISION_EXAMPLE",
    "RULE_EXAMPLE",
    "SCHEMAS",
    "SECURITY_SCHEMES",
    "USAGE_EXAMPLE",
    "Json",
]

_OBJECTS: Json = {"type": "array", "items": {"type": "object"}}

USAGE_EXAMPLE: Json = {
    "channels": [
        {"channel": "free-groq", "requests": 12, "day_requests": 12, "day_tokens": 3400,
         "hour_tokens": 800, "total_tokens": 9100, "prompt_tokens": 6100,
         "completion_tokens": 3000, "reserved_tokens": 0, "cost_usd": 0.0, "day_cost_usd": 0.0,
         "daily_limit": 500000, "hour_limit": None, "day_quota_left": 496600,
         "hour_quota_left": None, "effective_price": 0.0}
    ]
}  # fmt: skip

ROUTE_DECISION_EXAMPLE: Json = {
    "model": "gpt-4o-mini",
    "prompt_tokens_estimate": 12,
    "reserve_tokens": 112,
    "matched_rule": "free first while quota lasts",
    "candidates": [
        {
            "channel": "free-groq",
            "type": "openai",
            "effective_price": 0.0,
            "discount_active": False,
            "priority": 1,
            "rule": "free first while quota lasts",
            "upstream_model": "llama-3.1-8b-instant",
        }
    ],
    "excluded": [{"channel": "paid-b", "reason": "circuit open"}],
    "rules": [
        {"rule": "free first while quota lasts", "channel": "free-groq", "matched": True,
         "error": None}
    ],
}  # fmt: skip

SCHEMAS: dict[str, Json] = {
    **PROXY_SCHEMAS,
    "Usage": {
        "type": "object",
        "description": "Live per-channel counters; with group_by/from/to instead the grouped "
        "request log. Quota fields are null when unlimited.",
        "properties": {
            "channels": _OBJECTS,
            "group_by": {**_STR, "enum": ["channel", "api_key", "model", "endpoint"]},
            "from": _NULLABLE_STR,
            "to": _NULLABLE_STR,
            "rows": _OBJECTS,
        },
        "example": USAGE_EXAMPLE,
    },
    "RouteDecision": {
        **_obj(model=_STR, prompt_tokens_estimate=_INT, reserve_tokens=_INT,
               matched_rule=_NULLABLE_STR, candidates=_OBJECTS, excluded=_OBJECTS,
               rules=_OBJECTS),
        "description": "What the proxy would do now for this body; nothing is sent or reserved.",
        "example": ROUTE_DECISION_EXAMPLE,
    },
}  # fmt: skip

# ----------------------------------------------------------------------------- admin config
# Channel, Rule, ApiKey: the entries of the config file (contract §2), as /api/channels|rules|keys
# show and take them. The loader rejects unknown keys, so the schemas do too.
_NUM: Json = {"type": "number", "minimum": 0}
_COUNT: Json = {"type": "integer", "minimum": 0}
_STRS: Json = {"type": "array", "items": _STR}
_STR_MAP: Json = {"type": "object", "additionalProperties": _STR}
_CLOSED: Json = {"additionalProperties": False}
_NULL_NUM: Json = {**_NUM, "nullable": True}
_NULL_COUNT: Json = {**_COUNT, "nullable": True}
_INHERITED: Json = {**_STRS, "description": "On read: the fields the entry leaves to a "
                    "server-wide setting (server.timeout, server.connect_timeout, server.proxy, "
                    "circuit_breaker, security.rate_limit), shown with that setting's value. "
                    "Posted back, a field the entry leaves to the setting whose value is "
                    "still that one keeps following it; an edited value is stored."}

CHANNEL_EXAMPLE: Json = {
    "name": "openai-paid", "type": "openai", "endpoint": "https://api.openai.com/v1",
    "api_key": "sk-...x9Qz", "models": ["gpt-4o-mini", "gpt-4o"],
    "price_per_token": 0.0000006, "discount_time": ["00:00-06:00"], "discount_price": 0.0000003,
    "priority": 2,
}  # fmt: skip
RULE_EXAMPLE: Json = {
    "name": "free first while quota lasts", "channel": "free-groq",
    "expression": "day_tokens_used < daily_limit and hour_tokens_used < hour_limit",
    "priority": 1,
}  # fmt: skip
API_KEY_EXAMPLE: Json = {
    "name": "team-a", "key": "sk-...7f3e", "requests_per_minute": 60, "burst": 5,
    "models": ["gpt-4o-mini"],
}  # fmt: skip
CONFIG_CHANGE_EXAMPLE: Json = {
    "created": True, "channel": CHANNEL_EXAMPLE, "saved": True,
    "config_path": "/etc/smartproxy/smartproxy.yaml",
}  # fmt: skip

SCHEMAS.update({
    "Channel": {
        **_obj("name", "type",
               name={**_STR, "description": "Unique; the id everywhere."},
               type={**_STR, "enum": ["openai", "azure", "anthropic", "claude", "mock"]},
               endpoint={**_STR, "description": "Base URL (http/https); not needed for mock; "
                         "anthropic default https://api.anthropic.com."},
               api_key={**_STR, "description": "Masked on read. Leave out, or send back masked, "
                        "to keep the stored key."},
               models={**_STRS, "description": "Absent or empty: any model."},
               model_mapping=_STR_MAP, price_per_token=_NUM,
               price_per_prompt_token={**_NULL_NUM, "description": "null: price_per_token."},
               price_per_completion_token={**_NULL_NUM, "description": "null: price_per_token."},
               daily_limit=_COUNT, hour_limit=_COUNT, daily_request_limit=_COUNT,
               discount_time={**_STRS, "description": "Windows HH:MM-HH:MM (may cross midnight)."},
               discount_price={**_NULL_NUM, "description": "null: no discount."}, priority=_INT,
               status={**_STR, "enum": ["active", "disabled"]},
               headers={**_STR_MAP, "description": "Extra upstream headers; masked on read."},
               timeout=_NULL_NUM, connect_timeout=_NULL_NUM, first_byte_timeout=_NULL_NUM,
               fail_max=_NULL_COUNT, reset_timeout=_NULL_NUM,
               proxy={**_NULLABLE_STR, "description":
               "Outbound HTTP proxy (http://user:pass@host:3128); the password is masked on "
               "read. null: server.proxy, else HTTPS_PROXY/NO_PROXY."},
               max_concurrency={**_NULL_COUNT, "description": "At most this many requests in "
               "flight; more wait up to server.queue_timeout. null: no cap."},
               forward_openai_org={"type": "boolean", "description": "Send the client's "
                                   "OpenAI-Organization / OpenAI-Project headers up (default "
                                   "false)."},
               api_version={**_NULLABLE_STR, "description": "azure: deployments URL with "
                            "?api-version=; null: the v1 URL."},
               anthropic_version={**_STR, "description": "anthropic: the anthropic-version "
                                  "header (default 2023-06-01)."},
               default_max_tokens={**_COUNT, "minimum": 1, "description": "anthropic: "
                                   "max_tokens sent when a request sets none (default 4096)."},
               inherited=_INHERITED),
        **_CLOSED,
        "example": CHANNEL_EXAMPLE,
    },
    "Rule": {
        **_obj("name", "channel", "expression", name=_STR,
               channel={**_STR, "description": "Must name an existing channel."},
               expression={**_STR, "description": "Contract §4 variables; SmartAIProxy syntax ok."},
               priority={**_INT, "description": "Ascending; ties keep file order."}),
        **_CLOSED,
        "example": RULE_EXAMPLE,
    },
    "ApiKey": {
        **_obj("name", name=_STR,
               key={**_STR, "description": "Plain or sha256:<hex>; masked on read. Leave out for a "
                    "new name to get a generated key (returned once), or for an existing one to "
                    "keep it."},
               requests_per_minute=_NUM, burst=_COUNT,
               tokens_per_minute={**_NULL_COUNT, "description": "null: no token limit."},
               models=_STRS,
               daily_budget_usd={**_NULL_NUM, "description": "null: no budget."},
               inherited=_INHERITED),
        **_CLOSED,
        "example": API_KEY_EXAMPLE,
    },
    "ChannelTestRequest": {
        **_obj(model={**_STR, "description": "Default: the channel's first model (or "
                      "model_mapping key); required for a channel that serves any model."}),
        "example": {"model": "gpt-4o-mini"},
    },
    "ChannelTestResult": {
        **_obj("ok", "status", "latency_ms", "model", "error",
               ok={"type": "boolean"},
               status={**_NULLABLE_INT, "description": "Upstream's HTTP status; null: no answer."},
               latency_ms={"type": "number"},
               model={**_STR, "description": "The model asked of upstream (after mapping)."},
               error={**_NULLABLE_STR, "description": "Why it failed (upstream's message)."},
               request_id={**_STR, "description": "Its line in the request log (test-...)."}),
        "example": {"ok": True, "status": 200, "latency_ms": 180.2, "model": "gpt-4o-mini",
                    "error": None, "request_id": "test-5f0c2a9e1b3d4c6a"},
    },
    "ChannelList": {**_obj(channels=_array(_ref("Channel"))),
                    "example": {"channels": [CHANNEL_EXAMPLE]}},
    "RuleList": {**_obj(rules=_array(_ref("Rule"))), "example": {"rules": [RULE_EXAMPLE]}},
    "ApiKeyList": {**_obj(keys=_array(_ref("ApiKey"))),
                   "example": {"keys": [API_KEY_EXAMPLE, {"name": "ci", "key": "sha256:...0b1c"}]}},
    "ConfigChange": {
        **_obj("saved",
               created={"type": "boolean", "description": "POST: a new entry (status 201)."},
               channel=_ref("Channel"), rule=_ref("Rule"), key=_ref("ApiKey"),
               deleted={**_STR, "description": "DELETE: the name removed."},
               api_key={**_STR, "description": "POST /api/keys that generated a key: the key, "
                        "shown this once."},
               saved={"type": "boolean", "description": "Written to the config file (false: no "
                      "file, live only until restart)."},
               config_path=_NULLABLE_STR, warning=_NULLABLE_STR),
        "description": "The outcome of an admin change; the entry as now live, keys masked.",
        "example": CONFIG_CHANGE_EXAMPLE,
    },
})  # fmt: skip

_SUMMARIES = {
    "ChatCompletionRequest": "A short chat",
    "ChatCompletionResponse": "Upstream's answer",
    "CompletionRequest": "A legacy completion",
    "CompletionResponse": "Upstream's answer",
    "EmbeddingRequest": "One input",
    "EmbeddingResponse": "One vector (shortened)",
    "ModelList": "Two channels' models",
    "Health": "A healthy gateway",
    "Usage": "Live counters of one channel",
    "RouteDecision": "Free channel first",
    "Channel": "A paid OpenAI channel",
    "Rule": "Free first while quota lasts",
    "ApiKey": "A team's key with its own limits",
    "ChannelList": "Two channels, keys masked",
    "RuleList": "One rule",
    "ApiKeyList": "Two keys, masked",
}
# Named examples (``#/components/examples/<schema>``) are the schemas' own examples.
EXAMPLES: dict[str, Json] = {
    name: {"summary": summary, "value": SCHEMAS[name]["example"]}
    for name, summary in _SUMMARIES.items()
}
EXAMPLES["ChatCompletionStreamRequest"] = {
    "summary": "The same, streamed as server-sent events",
    "value": {**CHAT_REQUEST_EXAMPLE, "stream": True},
}


def _error_response(description: str, message: str, type_: str, code: str | None) -> Json:
    example = {"error": {"message": message, "type": type_, "code": code, "param": None}}
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error"), "example": example}},
    }


# Errors the gateway itself makes (contract §3, §6; codes of smartproxy.errors).
RESPONSES: dict[str, Json] = {
    "BadRequest": _error_response(
        "Bad JSON or a missing or invalid field",
        "'model' is required",
        "invalid_request_error",
        "invalid_request",
    ),
    "Unauthorized": _error_response(
        "Missing or unknown API key",
        "Incorrect API key provided.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "AdminUnauthorized": _error_response(
        "Missing, invalid or expired admin JWT",
        "invalid or expired admin token",
        "invalid_request_error",
        "invalid_admin_token",
    ),
    "Forbidden": _error_response(
        "This API key may not use this model",
        "model 'gpt-4o' is not allowed for this key",
        "invalid_request_error",
        "model_not_allowed",
    ),
    "TooLarge": _error_response(
        "The request body is larger than server.max_body_mb (admin writes: 1 MiB)",
        "request body too large: 40000000 bytes, the limit is 33554432 bytes (32 MiB)",
        "invalid_request_error",
        "request_too_large",
    ),
    "NotFound": _error_response(
        "No such model, route or object",
        "no channel serves model 'gpt-9'",
        "invalid_request_error",
        "not_found",
    ),
    "ConfigChanged": {
        "description": "Changed: live now and saved (unless saved is false).",
        "content": {"application/json": {"schema": _ref("ConfigChange"),
                                         "example": CONFIG_CHANGE_EXAMPLE}},
    },
    "ConfigRefused": {
        "description": "Refused by the config loader; nothing changed. ``problems`` lists each "
        "one with its path, ``param`` is the first path.",
        "content": {"application/json": {"schema": _ref("Error"), "example": {"error": {
            "message": "config refused, nothing changed: channels[3].endpoint: not a URL "
                       "(http:// or https://), got 'api.example.com'",
            "type": "invalid_request_error", "code": "invalid_config",
            "param": "channels[3].endpoint",
            "problems": ["channels[3].endpoint: not a URL (http:// or https://), got "
                         "'api.example.com'"]}}}},
    },
    "Conflict": _error_response(
        "The change would break a reference (a rule names this channel)",
        "channel 'free-groq' is named by rule 'free first'",
        "invalid_request_error",
        "conflict",
    ),
    "RateLimited": {
        **_error_response(
            "Rate limit of this API key reached",
            "Rate limit reached, retry after 2 s.",
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "example": 2}},
    },
    "UpstreamFailed": _error_response(
        "No upstream answered (connection errors, open circuits)",
        "all attempts failed: free-groq: connection refused; openai-paid: circuit open",
        "upstream_error",
        "upstream_failed",
    ),
    "NoChannel": _error_response(
        "No candidate channel could be tried",
        "no channel available for model 'gpt-4o-mini'",
        "service_unavailable",
        "no_channel_available",
    ),
    "UpstreamTimeout": _error_response(
        "Every attempt timed out",
        "all attempts timed out: free-groq: timeout after 30 s",
        "upstream_error",
        "upstream_timeout",
    ),
}

SECURITY_SCHEMES: dict[str, Json] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A gateway API key (security.auth.api_keys), as the OpenAI SDKs send it.",
    },
    "apiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same gateway API key in an x-api-key header.",
    },
    "adminJWT": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "Admin token (`smartproxy token --sub NAME`), checked for iss, aud, exp.",
    },
}
