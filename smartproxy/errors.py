"""The exception tree. Every error the gateway itself answers with renders OpenAI-shaped JSON.

    SmartProxyError
    ├── ConfigError                 a config (file, SIGHUP, admin POST) is refused whole
    ├── CannotListen                start-up: an address to serve on cannot be bound
    └── GatewayError                answered to a client: ``{"error": {message, type, code, param}}``
        ├── BadRequest              400  bad JSON, no model, bad field
        │   └── Untranslatable      400  a field the channel's API shape cannot express
        ├── AuthenticationFailed    401  missing / unknown API key
        ├── PermissionDenied        403  key not allowed for this model
        ├── NotFound                404  unknown model / route / object
        ├── Conflict                409  admin change that would break references
        ├── PayloadTooLarge         413  request body above ``server.max_body_mb`` (admin: 1 MiB)
        ├── RequestLineTooLong      414  malformed HTTP: the request line is over the server's limit
        ├── HeadersTooLarge         431  malformed HTTP: a header line, or their number, over it
        ├── RateLimited             429  token bucket empty (carries Retry-After)
        │   └── QuotaExceeded       429  the key's daily budget is spent (``insufficient_quota``)
        ├── NoChannelAvailable      503  no candidate channel could be tried
        ├── UpstreamFailed          502  no upstream answered (connection errors, open circuits)
        └── UpstreamTimeout         504  every attempt timed out

On ``/v1/messages`` the same errors render Anthropic-shaped (``to_response(anthropic=True)``):
``{"type": "error", "error": {"type", "message"}}`` with the same status; ``anthropic_error_type``
names the type of a status.

Third-party exceptions are translated once, where they enter (upstream client, loader), into these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aiohttp import web


class SmartProxyError(Exception):
    """Base of everything this package raises on purpose."""


class ConfigError(SmartProxyError):
    """A config was refused. ``problems`` lists every ``path: message`` found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid config")

    def __str__(self) -> str:
        return "\n".join(self.problems)


class CannotListen(SmartProxyError):
    """An address to serve on cannot be bound (taken, not local, not allowed): names it and why."""


class GatewayError(SmartProxyError):
    status = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
            }
        }

    def anthropic_body(self) -> dict[str, object]:
        return anthropic_error(self.status, self.message)

    def to_response(
        self, extra_headers: Mapping[str, str] | None = None, *, anthropic: bool = False
    ) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        body = self.anthropic_body() if anthropic else self.body()
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=headers,
        )


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Untranslatable(BadRequest):
    """A request field that the channel's API cannot express (``param`` names it)."""

    code = "unsupported_parameter"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RequestLineTooLong(GatewayError):
    status = 414
    error_type = "invalid_request_error"
    code = "uri_too_long"


class HeadersTooLarge(GatewayError):
    status = 431
    error_type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    error_type = "insufficient_quota"  # what OpenAI answers when an account's quota is used up
    code = "insufficient_quota"


class NoChannelAvailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    code = "no_channel_available"


class UpstreamFailed(GatewayError):
    status = 502
    error_type = "upstream_error"
    code = "upstream_failed"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "upstream_error"
    code = "upstream_timeout"


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error ``type`` for an HTTP status (as Anthropic's API words them)."""
    hit = _ANTHROPIC_TYPES.get(status)
    if hit is not None:
        return hit
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error(status: int, message: str) -> dict[str, object]:
    """An Anthropic-shaped error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
