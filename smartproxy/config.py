"""Config loading: YAML -> frozen, typed objects; every problem reported with its path.

``load_config(path)`` reads a file, ``parse_config(mapping)`` validates an already-parsed document
(the admin API uses it so that a POST is checked exactly like the file). A config with any problem
raises ``ConfigError`` listing every problem as ``channels[1].endpoint: not a URL``.

SmartAIProxy (Go/.NET) files load unchanged: their keys that mean something here are honoured,
the others are accepted and listed in ``Config.ignored_keys`` (one warning at start).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time as dtime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .errors import ConfigError

CHANNEL_TYPES = {"openai", "azure", "anthropic", "claude", "mock"}
ROUTABLE_TYPES = {"openai", "mock"}  # provider modules that exist in this version
STORAGE_BACKENDS = {"sqlite", "redis", "memory"}
JWT_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

T = TypeVar("T")


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
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_connections: int = 1000
    timezone: str = "UTC"
    shutdown_timeout: float = 30.0
    enable_https: bool = False
    cert_file: str | None = None
    key_file: str | None = None

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
    price_per_token: float = 0.0
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

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def provider(self) -> str:
        return "anthropic" if self.type == "claude" else self.type

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
    leeway: float = 30.0


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
    requests_per_minute: float = 600.0  # 0 = unlimited
    burst: int = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    api_keys: tuple[ApiKeyConfig, ...] = ()
    jwt: JwtConfig = field(default_factory=JwtConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    max_attempts: int = 3
    base_delay_ms: float = 100.0
    max_delay_ms: float = 2000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout: float = 30.0
    cooldown_seconds: float = 10.0  # default 429 cool-down when upstream sends no Retry-After


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    backend: str = "sqlite"
    path: str = "./data/smartproxy.db"
    url: str | None = None


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
    chars_per_token: float = 4.0  # prompt estimate when upstream reports no usage


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


# ----------------------------------------------------------------------------- env expansion
def expand_env(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed document."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- the reader
class _Section:
    """Reads one mapping, recording problems under its path instead of stopping at the first."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error("", f"must be a mapping, got {_kind(data)}")
            data = {}
        self.data: dict[str, Any] = data

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        where = self.sub(key) if key else (self.path or "(top level)")
        self.problems.append(f"{where}: {message}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def get(self, key: str, conv: Callable[[Any], T], default: T, *, required: bool = False) -> T:
        self.seen.add(key)
        value = self.data.get(key)
        if value is None or (value == "" and conv is not _text):
            if required:
                self.error(key, "is required")
            return default
        try:
            return conv(value)
        except (TypeError, ValueError) as exc:
            self.error(key, str(exc))
            return default

    def finish(
        self, ignored: dict[str, tuple[str, ...]] | None = None, out: list[str] | None = None
    ) -> None:
        """Reject unknown keys; keys listed in ``ignored`` are SmartAIProxy's, accepted with a warning."""
        for key in self.data:
            if key in self.seen:
                continue
            if ignored is not None and key in ignored.get(self.path, ()):
                if out is not None:
                    out.append(self.sub(key))
                continue
            self.error(str(key), "unknown key")


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )


def _text(v: Any) -> str:
    if isinstance(v, (dict, list)):
        raise ValueError(f"must be a string, got {_kind(v)}")
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"must be a number, got {_kind(v)}")
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"must be a number, got {v!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    if f < 0:
        raise ValueError(f"must not be negative, got {v!r}")
    return f


def _positive(v: Any) -> float:
    f = _number(v)
    if f <= 0:
        raise ValueError(f"must be greater than 0, got {v!r}")
    return f


def _count(v: Any) -> int:
    f = _number(v)
    if f != int(f):
        raise ValueError(f"must be a whole number, got {v!r}")
    return int(f)


def _integer(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("must be a whole number, got a boolean")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"must be a whole number, got {v!r}") from None
    if f != int(f):
        raise ValueError(f"must be a whole number, got {v!r}")
    return int(f)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return v.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"must be true or false, got {v!r}")


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError(f"must be a list of strings, got {_kind(v)}")
    out = []
    for i, item in enumerate(v):
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"item {i} must be a string, got {_kind(item)}")
        out.append(str(item))
    return tuple(out)


def _str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping of strings, got {_kind(v)}")
    out = {}
    for k, item in v.items():
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"value of {k!r} must be a string, got {_kind(item)}")
        out[str(k)] = str(item)
    return out


def _one_of(options: set[str]) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = _text(v).strip().lower()
        if s not in options:
            raise ValueError(f"must be one of {', '.join(sorted(options))}, got {v!r}")
        return s

    return conv


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080``, ``:8080``) -> (host, port)."""
    value = value.strip()
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_s!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def _listen(v: Any) -> str:
    s = _text(v)
    parse_listen(s)
    return s


def _url(v: Any) -> str:
    s = _text(v).strip()
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not a URL (http:// or https://), got {s!r}")
    return s.rstrip("/")


def parse_hhmm(s: str) -> dtime:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", s)
    if not m:
        raise ValueError(f"time must be HH:MM, got {s!r}")
    h, mi = int(m.group(1)), int(m.group(2))
    if h == 24 and mi == 0:
        return dtime(0, 0)
    if h > 23 or mi > 59:
        raise ValueError(f"time out of range: {s!r}")
    return dtime(h, mi)


def _windows(v: Any) -> tuple[TimeWindow, ...]:
    items = _str_list(v)
    out = []
    for item in items:
        start, sep, end = item.partition("-")
        if not sep:
            raise ValueError(f"window must be HH:MM-HH:MM, got {item!r}")
        out.append(TimeWindow(parse_hhmm(start), parse_hhmm(end)))
    return tuple(out)


def _timezone(v: Any) -> str:
    s = _text(v).strip()
    try:
        ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {s!r}") from None
    return s


def _nonempty(v: Any) -> str:
    s = _text(v).strip()
    if not s:
        raise ValueError("must not be empty")
    return s


# SmartAIProxy keys that load without meaning here (path of the section -> keys).
_SMARTAIPROXY_IGNORED: dict[str, tuple[str, ...]] = {
    "": ("admin", "error_handling"),
    "log": ("max_size", "max_backups", "max_age", "format"),
    "monitor": ("metrics_path",),
}


# ----------------------------------------------------------------------------- sections
def _server(data: Any, problems: list[str], ignored: list[str]) -> ServerConfig:
    s = _Section(data, "server", problems)
    d = ServerConfig()
    listen = s.get("listen", _listen, d.listen)
    host, port = parse_listen(listen)
    cfg = ServerConfig(
        listen=listen,
        host=host,
        port=port,
        timeout=s.get("timeout", _positive, d.timeout),
        connect_timeout=s.get("connect_timeout", _positive, d.connect_timeout),
        max_connections=s.get("max_connections", _count, d.max_connections),
        timezone=s.get("timezone", _timezone, d.timezone),
        shutdown_timeout=s.get("shutdown_timeout", _number, d.shutdown_timeout),
        enable_https=s.get("enable_https", _bool, False),
        cert_file=s.get("cert_file", _text, "") or None,
        key_file=s.get("key_file", _text, "") or None,
    )
    if cfg.enable_https and not (cfg.cert_file and cfg.key_file):
        s.error("enable_https", "needs cert_file and key_file")
    s.finish(_SMARTAIPROXY_IGNORED, ignored)
    return cfg


def parse_channel(data: Any, path: str, problems: list[str]) -> ChannelConfig | None:
    s = _Section(data, path, problems)
    before = len(problems)
    ch_type = s.get("type", _one_of(CHANNEL_TYPES), "openai", required=True)
    endpoint_required = ch_type != "mock"
    cfg = ChannelConfig(
        name=s.get("name", _nonempty, "", required=True),
        type=ch_type,
        endpoint=s.get("endpoint", _url, "", required=endpoint_required),
        api_key=s.get("api_key", _text, ""),
        models=s.get("models", _str_list, ()),
        model_mapping=s.get("model_mapping", _str_map, {}),
        price_per_token=s.get("price_per_token", _number, 0.0),
        price_per_prompt_token=s.get("price_per_prompt_token", _number, None),
        price_per_completion_token=s.get("price_per_completion_token", _number, None),
        daily_limit=s.get("daily_limit", _count, 0),
        hour_limit=s.get("hour_limit", _count, 0),
        daily_request_limit=s.get("daily_request_limit", _count, 0),
        discount_time=s.get("discount_time", _windows, ()),
        discount_price=s.get("discount_price", _number, None),
        priority=s.get("priority", _integer, 0),
        status=s.get("status", _one_of({"active", "disabled"}), "active"),
        headers=s.get("headers", _str_map, {}),
        timeout=s.get("timeout", _positive, None),
        connect_timeout=s.get("connect_timeout", _positive, None),
        first_byte_timeout=s.get("first_byte_timeout", _positive, None),
        fail_max=s.get("fail_max", _count, None),
        reset_timeout=s.get("reset_timeout", _positive, None),
    )
    if cfg.discount_time and cfg.discount_price is None:
        s.error("discount_price", "is required when discount_time is set")
    if cfg.fail_max == 0:
        s.error("fail_max", "must be at least 1")
    s.finish()
    return cfg if len(problems) == before else None


def parse_rule(data: Any, path: str, problems: list[str]) -> RuleConfig | None:
    from .routing.rules import RuleError, check_expression

    s = _Section(data, path, problems)
    before = len(problems)
    cfg = RuleConfig(
        name=s.get("name", _nonempty, "", required=True),
        channel=s.get("channel", _nonempty, "", required=True),
        expression=s.get("expression", _nonempty, "", required=True),
        priority=s.get("priority", _integer, 0),
    )
    s.finish()
    if cfg.expression:
        try:
            check_expression(cfg.expression, rule_name=cfg.name or path)
        except RuleError as exc:
            s.error("expression", str(exc))
    return cfg if len(problems) == before else None


def _api_keys(data: Any, problems: list[str]) -> tuple[ApiKeyConfig, ...]:
    path = "security.auth.api_keys"
    if data is None:
        return ()
    out: list[ApiKeyConfig] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):  # list form: [{name, key, ...}]
        items = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and "name" in item:
                items.append((item["name"], {k: v for k, v in item.items() if k != "name"}))
            else:
                problems.append(f"{path}[{i}]: must be a mapping with name and key")
    else:
        problems.append(f"{path}: must be a mapping of name: key")
        return ()
    for name, value in items:
        kpath = f"{path}.{name}"
        if isinstance(value, dict):
            key = parse_api_key(str(name), value, kpath, problems)
            if key:
                out.append(key)
        elif isinstance(value, (str, int)) and str(value).strip():
            out.append(_checked_key(ApiKeyConfig(name=str(name), key=str(value)), kpath, problems))
        else:
            problems.append(f"{kpath}: must be a key string or a mapping with key")
    return tuple(out)


def parse_api_key(name: str, data: Any, path: str, problems: list[str]) -> ApiKeyConfig | None:
    s = _Section(data, path, problems)
    before = len(problems)
    cfg = ApiKeyConfig(
        name=name,
        key=s.get("key", _nonempty, "", required=True),
        requests_per_minute=s.get("requests_per_minute", _number, None),
        burst=s.get("burst", _count, None),
        tokens_per_minute=s.get("tokens_per_minute", _count, None),
        models=s.get("models", _str_list, ()),
        daily_budget_usd=s.get("daily_budget_usd", _number, None),
    )
    s.finish()
    if len(problems) != before:
        return None
    return _checked_key(cfg, path, problems)


def _checked_key(cfg: ApiKeyConfig, path: str, problems: list[str]) -> ApiKeyConfig:
    if cfg.key.startswith("sha256:") and not re.fullmatch(r"[0-9a-fA-F]{64}", cfg.key[7:]):
        problems.append(f"{path}: sha256: must be followed by 64 hex digits")
    return cfg


def _jwt(data: Any, problems: list[str]) -> JwtConfig:
    s = _Section(data, "security.auth.jwt", problems)
    d = JwtConfig()
    algorithms = s.get("algorithms", _str_list, d.algorithms)
    for a in algorithms:
        if a not in JWT_ALGORITHMS:
            s.error("algorithms", f"unsupported algorithm {a!r} (none is never accepted)")
    cfg = JwtConfig(
        secret=s.get("secret", _text, "") or None,
        issuer=s.get("issuer", _nonempty, d.issuer),
        audience=s.get("audience", _nonempty, d.audience),
        algorithms=algorithms,
        public_key_file=s.get("public_key_file", _text, "") or None,
        private_key_file=s.get("private_key_file", _text, "") or None,
        expiry_minutes=s.get("expiry_minutes", _count, d.expiry_minutes),
        leeway=s.get("leeway", _number, d.leeway),
    )
    if any(a.startswith(("RS", "ES")) for a in algorithms) and not cfg.public_key_file:
        s.error("public_key_file", "is required for RS*/ES* algorithms")
    s.finish()
    return cfg


def _security(data: Any, problems: list[str]) -> SecurityConfig:
    s = _Section(data, "security", problems)
    auth = _Section(s.raw("auth"), "security.auth", problems)
    api_keys = _api_keys(auth.raw("api_keys"), problems)
    jwt = _jwt(auth.raw("jwt"), problems)
    auth.finish()
    rl = _Section(s.raw("rate_limit"), "security.rate_limit", problems)
    d = RateLimitConfig()
    rate = RateLimitConfig(
        requests_per_minute=rl.get("requests_per_minute", _number, d.requests_per_minute),
        burst=rl.get("burst", _count, d.burst),
    )
    rl.finish()
    s.finish()
    names = [k.name for k in api_keys]
    hashes = [k.sha256 for k in api_keys]
    if len(set(hashes)) != len(hashes):
        problems.append("security.auth.api_keys: two names share the same key")
    del names
    return SecurityConfig(api_keys=api_keys, jwt=jwt, rate_limit=rate)


def _simple(data: Any, path: str, problems: list[str], cls: type[T], spec: dict[str, Any]) -> T:
    s = _Section(data, path, problems)
    default = cls()
    values = {k: s.get(k, conv, getattr(default, k)) for k, conv in spec.items()}
    s.finish(_SMARTAIPROXY_IGNORED, None)
    return cls(**values)


def parse_config(doc: Any, *, source: str | None = None) -> Config:
    """Validate a parsed YAML document (env already expanded) into a ``Config``."""
    problems: list[str] = []
    ignored: list[str] = []
    top = _Section(doc, "", problems)
    server = _server(top.raw("server"), problems, ignored)

    channels: list[ChannelConfig] = []
    raw_channels = top.raw("channels") or []
    if not isinstance(raw_channels, list):
        problems.append(f"channels: must be a list, got {_kind(raw_channels)}")
        raw_channels = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw_channels):
        ch = parse_channel(item, f"channels[{i}]", problems)
        if ch is None:
            continue
        if ch.name in seen:
            problems.append(
                f"channels[{i}].name: duplicate of channels[{seen[ch.name]}] {ch.name!r}"
            )
            continue
        seen[ch.name] = i
        channels.append(ch)

    rules: list[RuleConfig] = []
    raw_rules = top.raw("rules") or []
    if not isinstance(raw_rules, list):
        problems.append(f"rules: must be a list, got {_kind(raw_rules)}")
        raw_rules = []
    rule_names: set[str] = set()
    for i, item in enumerate(raw_rules):
        rule = parse_rule(item, f"rules[{i}]", problems)
        if rule is None:
            continue
        if rule.name in rule_names:
            problems.append(f"rules[{i}].name: duplicate rule name {rule.name!r}")
        rule_names.add(rule.name)
        if rule.channel not in seen and isinstance(item, dict):
            problems.append(f"rules[{i}].channel: no channel named {rule.channel!r}")
        rules.append(rule)

    security = _security(top.raw("security"), problems)
    retry = _simple(
        top.raw("retry"),
        "retry",
        problems,
        RetryConfig,
        {"max_attempts": _count, "base_delay_ms": _number, "max_delay_ms": _number},
    )
    if retry.max_attempts < 1:
        problems.append("retry.max_attempts: must be at least 1")
    breaker = _simple(
        top.raw("circuit_breaker"),
        "circuit_breaker",
        problems,
        BreakerConfig,
        {"fail_max": _count, "reset_timeout": _positive, "cooldown_seconds": _number},
    )
    if breaker.fail_max < 1:
        problems.append("circuit_breaker.fail_max: must be at least 1")
    storage = _simple(
        top.raw("storage"),
        "storage",
        problems,
        StorageConfig,
        {"backend": _one_of(STORAGE_BACKENDS), "path": _nonempty, "url": _text},
    )
    if storage.backend == "redis" and not storage.url:
        problems.append("storage.url: is required for the redis backend")
    audit = _simple(top.raw("audit"), "audit", problems, AuditConfig, {"path": _text})
    log_cfg = _log(top.raw("log"), problems, ignored)
    monitor = _monitor(top.raw("monitor"), problems, ignored)
    usage = _simple(
        top.raw("usage"),
        "usage",
        problems,
        UsageConfig,
        {"default_max_tokens": _count, "chars_per_token": _positive},
    )
    top.finish(_SMARTAIPROXY_IGNORED, ignored)
    if problems:
        raise ConfigError(problems)
    return Config(
        server=server,
        channels=tuple(channels),
        rules=tuple(rules),
        security=security,
        retry=retry,
        circuit_breaker=breaker,
        storage=storage,
        audit=audit,
        log=log_cfg,
        monitor=monitor,
        usage=usage,
        ignored_keys=tuple(ignored),
        source=source,
    )


def _log(data: Any, problems: list[str], ignored: list[str]) -> LogConfig:
    s = _Section(data, "log", problems)
    cfg = LogConfig(
        level=s.get("level", _one_of({"debug", "info", "warning", "warn", "error"}), "info"),
        file=s.get("file", _text, "") or None,
    )
    s.finish(_SMARTAIPROXY_IGNORED, ignored)
    return cfg


def _monitor(data: Any, problems: list[str], ignored: list[str]) -> MonitorConfig:
    s = _Section(data, "monitor", problems)
    cfg = MonitorConfig(
        enable=s.get("enable", _bool, True),
        prometheus_listen=s.get("prometheus_listen", _listen, None),
    )
    s.finish(_SMARTAIPROXY_IGNORED, ignored)
    return cfg


# ----------------------------------------------------------------------------- files
def read_yaml(text: str, source: str = "<config>") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]
        ) from exc


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, expand ``${VAR}`` and validate a config file (None: the built-in default)."""
    if path is None:
        text = default_config_text()
        source = None
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
        source = str(p)
    doc = read_yaml(text, source or "<default>")
    return parse_config(expand_env(doc), source=source)


def default_config_text() -> str:
    return resources.files("smartproxy").joinpath("default.yaml").read_text(encoding="utf-8")


def find_config(cli_path: str | None) -> str | None:
    """``--config``, ``$SMARTPROXY_CONFIG``, ``./etc/smartproxy.yaml``, else None (built-in)."""
    if cli_path:
        return cli_path
    env = os.environ.get("SMARTPROXY_CONFIG")
    if env:
        return env
    local = Path("etc/smartproxy.yaml")
    if local.is_file():
        return str(local)
    return None
