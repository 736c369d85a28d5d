"""The exception tree. Every error the gateway itself answers with renders OpenAI-shaped JSON.

    SmartProxyError
    ├── ConfigError                 a config (file, SIGHUP, admin POST) is refused whole
    └── GatewayError                answered to a client: ``{"error": {message, type, code, param}}``
        ├── BadRequest              400  bad JSON, no model, bad field
        │   └── Untranslatable      400  a field the channel's API shape cannot express
        ├── AuthenticationFailed    401  missing / unknown API key
        ├── PermissionDenied        403  key not allowed for this model
        ├── NotFound                404  unknown model / route / object
        ├── Conflict                409  admin change that would break references
        ├── PayloadTooLarge         413  request body above ``server.max_body_mb`` (admin: 1 MiB)
        ├── RateLimited             429  token bucket empty (carries Retry-After)
        │   └── QuotaExceeded       429  the key's daily budget is spent (``insufficient_quota``)
        ├── NoChannelAvailable      503  no candidate channel could be tried
        ├── UpstreamFailed          502  no upstream answered (connection errors, open circuits)
        └── UpstreamTimeout         504  every attempt timed out

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

    def to_response(self, extra_headers: Mapping[str, str] | None = None) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
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
