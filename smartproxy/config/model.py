"""Config value objects: the frozen, slotted dataclasses a loaded config is made of.

Only the loader builds them (:mod:`smartproxy.config.parse`); everything here is re-exported by
:mod:`smartproxy.config`, which is where the rest of the package imports them from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time as dtime
from zoneinfo import ZoneInfo

CHANNEL_TYPES = {"openai", "azure", "anthropic", "claude", "mock"}
ROUTABLE_TYPES = set(CHANNEL_TYPES)  # every type has its provider module now
# The client endpoints (paths below /v1) each provider can serve. A channel is not a candidate
# for the others; ``POST /api/route`` lists it as excluded with ``ChannelConfig.cannot_serve``.
OPENAI_ENDPOINTS = frozenset({"/chat/completions", "/completions", "/embeddings"})
# The native fronts (contract §3): Responses needs a server that speaks it (its conversations
# live there); Messages goes to anthropic channels unchanged and is translated to chat for others.
PROVIDER_ENDPOINTS: dict[str, frozenset[str]] = {
    "openai": OPENAI_ENDPOINTS | {"/responses", "/messages"},
    "azure": OPENAI_ENDPOINTS | {"/responses", "/messages"},
    "mock": OPENAI_ENDPOINTS | {"/responses", "/messages"},
    "anthropic": frozenset({"/chat/completions", "/messages", "/messages/count_tokens"}),
}
ANTHROPIC_ENDPOINT = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
STORAGE_BACKENDS = {"sqlite", "redis", "memory"}
JWT_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}


# ----------------------------------------------------------------------------- value objects
@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window ``HH:MM-HH:MM`` in local time; ``end <= start`` crosses midnight."""

    start: dtime
    end: dtime

    def contains(self, t: dtime) -> bool:
        t = t.replace(second=0, microsecond=0, tzinfo=None)  # wall-clock minute; aware or not
        if self.start == self.end:  # "00:00-00:00": all day
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    timeout: float = 30
    connect_timeout: float = 10
    max_connections: int = 1000
    timezone: str = "UTC"
    shutdown_timeout: float = 30
    enable_https: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    queue_timeout: float = 10  # seconds a request may wait for a channel slot (max_concurrency)
    proxy: str | None = None  # default outbound proxy of channels without their own
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    max_body_mb: float = 32.0  # /v1 request bodies above it: 413 (admin bodies: 1 MiB)
    client_header_timeout: float = 60.0  # a request's headers must arrive within it
    client_body_timeout: float = 60.0  # longest pause between two parts of a request body
    keepalive_timeout: float = 75.0  # an idle keep-alive connection is closed after it

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelConfig:
    name: str
    type: str
    endpoint: str
    api_key: str = ""
    models: tuple[str, ...] = ()
    model_mapping: Mapping[str, str] = field(default_factory=dict)
    price_per_token: float = 0
    price_per_prompt_token: float | None = None
    price_per_completion_token: float | None = None
    daily_limit: int = 0  # tokens; 0 = unlimited
    hour_limit: int = 0
    daily_request_limit: int = 0
    discount_time: tuple[TimeWindow, ...] = ()
    discount_price: float | None = None
    priority: int = 0
    status: str = "active"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None  # whole attempt; default server.timeout
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    fail_max: int | None = None
    reset_timeout: float | None = None
    proxy: str | None = None  # outbound HTTP(S) proxy; None: server.proxy, else the environment
    max_concurrency: int | None = None  # requests in flight at once; None: no cap
    forward_openai_org: bool = False  # pass the client's OpenAI-Organization/-Project upstream
    api_version: str | None = None  # azure: deployments URL with ?api-version=; None: the v1 URL
    anthropic_version: str = ANTHROPIC_VERSION  # anthropic: the anthropic-version header
    default_max_tokens: int = 4096  # anthropic: max_tokens when a request sets none

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def provider(self) -> str:
        return "anthropic" if self.type == "claude" else self.type

    @property
    def has_quota(self) -> bool:
        """A day or hour token limit or a daily request limit (routing needs live usage)."""
        return bool(self.daily_limit or self.hour_limit or self.daily_request_limit)

    def cannot_serve(self, path: str) -> str | None:
        """Why this channel's type cannot serve the client endpoint ``path`` (None: it can)."""
        provider = self.provider
        if path in PROVIDER_ENDPOINTS.get(provider, ()):
            return None
        return f"{provider} channels do not serve /v1{path}"

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models or model in self.model_mapping

    def upstream_model(self, model: str) -> str:
        return self.model_mapping.get(model, model)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleConfig:
    name: str
    channel: str
    expression: str
    priority: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtConfig:
    secret: str | None = None
    issuer: str = "smartproxy"
    audience: str = "smartproxy-admin"
    algorithms: tuple[str, ...] = ("HS256",)
    public_key_file: str | None = None
    private_key_file: str | None = None
    expiry_minutes: int = 60
    leeway: float = 0  # seconds of clock skew forgiven on exp; 0: expired is 401 (contract §6)
    max_lifetime_minutes: int = 1440  # tokens valid longer (exp - iat) are refused


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyConfig:
    """One gateway key. ``key`` is plain text or ``sha256:<hex>``."""

    name: str
    key: str
    requests_per_minute: float | None = None  # None: the global rate_limit
    burst: int | None = None
    tokens_per_minute: int | None = None
    models: tuple[str, ...] = ()  # empty: any model
    daily_budget_usd: float | None = None

    @property
    def sha256(self) -> str:
        if self.key.startswith("sha256:"):
            return self.key[7:].lower()
        return hashlib.sha256(self.key.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    requests_per_minute: float = 600  # 0 = unlimited
    burst: int = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    api_keys: tuple[ApiKeyConfig, ...] = ()
    jwt: JwtConfig = field(default_factory=JwtConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    max_attempts: int = 3
    base_delay_ms: float = 100
    max_delay_ms: float = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout: float = 30
    cooldown_seconds: float = 10  # default 429 cool-down when upstream sends no Retry-After


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    backend: str = "sqlite"
    path: str = "./data/smartproxy.db"  # with redis: this host's request log
    url: str | None = None
    # redis only (contract §8): shared by every process and host using the same url and prefix
    key_prefix: str = "smartproxy:"
    on_error: str = "open"  # open: count in this process while Redis is away | closed: 503
    timeout: float = 1.0  # seconds one Redis call may take before it counts as an outage
    reservation_grace: float = 10.0  # a reservation expires at its attempt's timeout + this
    max_connections: int = 64  # BlockingConnectionPool size (callers wait for a free one)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "info"
    file: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    enable: bool = True
    prometheus_listen: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageConfig:
    """How tokens are reserved before upstream reports usage."""

    default_max_tokens: int = 1024  # reserved for completion when a request sets no max_tokens
    chars_per_token: float = 4  # prompt estimate when upstream reports no usage


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    channels: tuple[ChannelConfig, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    security: SecurityConfig = field(default_factory=SecurityConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    log: LogConfig = field(default_factory=LogConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    ignored_keys: tuple[str, ...] = ()  # SmartAIProxy keys accepted without meaning here
    source: str | None = None  # the file it came from

    def channel(self, name: str) -> ChannelConfig | None:
        for ch in self.channels:
            if ch.name == name:
                return ch
        return None

def mask_secret(secret: str) -> str:
    """``sk-...abcd``: a short scheme prefix and the last 4 chars, for showing stored keys."""
    if not secret:
        return ""
    if len(secret) < 12:
        return "****"
    dash = secret.find("-")
    prefix = secret[: dash + 1] if 0 < dash <= 2 else ""
    return f"{prefix}...{secret[-4:]}"
