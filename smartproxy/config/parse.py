"""Config sections: each part of a parsed document read into its dataclass, and ``parse_config``.

SmartAIProxy (Go/.NET) compatibility lives here too: keys of theirs without meaning in this gateway
(``_SMARTAIPROXY_IGNORED``) are accepted and listed in ``Config.ignored_keys``, never dropped
silently. Reading files and the public names are in :mod:`smartproxy.config`.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError
from .model import (
    ANTHROPIC_ENDPOINT,
    ANTHROPIC_VERSION,
    CHANNEL_TYPES,
    JWT_ALGORITHMS,
    STORAGE_BACKENDS,
    ApiKeyConfig,
    AuditConfig,
    BreakerConfig,
    ChannelConfig,
    Config,
    JwtConfig,
    LogConfig,
    MonitorConfig,
    RateLimitConfig,
    RetryConfig,
    RuleConfig,
    SecurityConfig,
    ServerConfig,
    StorageConfig,
    UsageConfig,
)
from .read import (
    T,
    _bool,
    _cidrs,
    _count,
    _expression,
    _header_map,
    _integer,
    _kind,
    _listen,
    _nonempty,
    _number,
    _one_of,
    _positive,
    _proxy_url,
    _secret_line,
    _Section,
    _str_list,
    _str_map,
    _text,
    _timezone,
    _url,
    _windows,
    check_line,
    parse_listen,
    printable,
)

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
        queue_timeout=s.get("queue_timeout", _number, d.queue_timeout),
        proxy=s.get("proxy", _proxy_url, "") or None,
        trusted_proxies=s.get("trusted_proxies", _cidrs, ()),
        max_body_mb=s.get("max_body_mb", _positive, d.max_body_mb),
        client_header_timeout=s.get("client_header_timeout", _positive, d.client_header_timeout),
        client_body_timeout=s.get("client_body_timeout", _positive, d.client_body_timeout),
        keepalive_timeout=s.get("keepalive_timeout", _positive, d.keepalive_timeout),
    )
    if cfg.enable_https and not (cfg.cert_file and cfg.key_file):
        s.error("enable_https", "needs cert_file and key_file")
    s.finish(_SMARTAIPROXY_IGNORED, ignored)
    return cfg


def parse_channel(data: Any, path: str, problems: list[str]) -> ChannelConfig | None:
    s = _Section(data, path, problems)
    before = len(problems)
    ch_type = s.get("type", _one_of(CHANNEL_TYPES), "openai", required=True)
    provider = "anthropic" if ch_type == "claude" else ch_type
    endpoint_required = provider not in ("mock", "anthropic")
    cfg = ChannelConfig(
        name=s.get("name", _nonempty, "", required=True),
        type=ch_type,
        endpoint=s.get("endpoint", _url, "", required=endpoint_required)
        or (ANTHROPIC_ENDPOINT if provider == "anthropic" else ""),
        api_key=s.get("api_key", _secret_line, ""),
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
        headers=s.get("headers", _header_map, {}),
        timeout=s.get("timeout", _positive, None),
        connect_timeout=s.get("connect_timeout", _positive, None),
        first_byte_timeout=s.get("first_byte_timeout", _positive, None),
        fail_max=s.get("fail_max", _count, None),
        reset_timeout=s.get("reset_timeout", _positive, None),
        proxy=s.get("proxy", _proxy_url, "") or None,
        max_concurrency=s.get("max_concurrency", _count, None),
        forward_openai_org=s.get("forward_openai_org", _bool, False),
        api_version=s.get("api_version", _nonempty, "") or None,
        anthropic_version=s.get("anthropic_version", _nonempty, ANTHROPIC_VERSION),
        default_max_tokens=s.get("default_max_tokens", _positive_int, 4096),
    )
    _type_only(s, cfg, provider)
    if cfg.discount_time and cfg.discount_price is None:
        s.error("discount_price", "is required when discount_time is set")
    if cfg.fail_max == 0:
        s.error("fail_max", "must be at least 1")
    if cfg.max_concurrency == 0:
        s.error("max_concurrency", "must be at least 1 (leave it out for no cap)")
    s.finish()
    return cfg if len(problems) == before else None


# Keys that mean something for one provider only: another value than the default elsewhere is
# an error (a typo'd type must not silently ignore them); the default may be shown and sent back.
_TYPE_KEYS = {"api_version": "azure", "anthropic_version": "anthropic", "default_max_tokens": "anthropic"}


def _type_only(s: _Section, cfg: ChannelConfig, provider: str) -> None:
    for key, owner in _TYPE_KEYS.items():
        default = getattr(_CHANNEL_DEFAULTS, key)
        if provider != owner and getattr(cfg, key) != default:
            s.error(key, f"only {owner} channels use it (this channel's type is {cfg.type})")


def _positive_int(value: Any) -> int:
    number = _count(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


_CHANNEL_DEFAULTS = ChannelConfig(name="", type="openai", endpoint="")


def parse_rule(data: Any, path: str, problems: list[str]) -> RuleConfig | None:
    from .expr import RuleError, check_expression

    s = _Section(data, path, problems)
    before = len(problems)
    cfg = RuleConfig(
        name=s.get("name", _nonempty, "", required=True),
        channel=s.get("channel", _nonempty, "", required=True),
        expression=s.get("expression", _expression, "", required=True),
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
        kpath = f"{path}.{printable(str(name))}"
        try:
            check_line(str(name), "a key name")
        except ValueError as exc:
            problems.append(f"{kpath}: {exc}")
            continue
        if isinstance(value, dict):
            key = parse_api_key(str(name), value, kpath, problems)
            if key:
                out.append(key)
        elif isinstance(value, (str, int)) and str(value).strip():
            try:
                secret = _secret_line(str(value))
            except ValueError as exc:
                problems.append(f"{kpath}: {exc}")
                continue
            out.append(_checked_key(ApiKeyConfig(name=str(name), key=secret), kpath, problems))
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
        max_lifetime_minutes=s.get("max_lifetime_minutes", _count, d.max_lifetime_minutes),
    )
    if cfg.max_lifetime_minutes < 1:
        s.error("max_lifetime_minutes", "must be at least 1")
    elif cfg.expiry_minutes > cfg.max_lifetime_minutes:
        s.error(
            "expiry_minutes",
            f"{cfg.expiry_minutes} is longer than max_lifetime_minutes "
            f"({cfg.max_lifetime_minutes}): tokens minted with it would be refused",
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
        {
            "backend": _one_of(STORAGE_BACKENDS),
            "path": _nonempty,
            "url": _text,
            "key_prefix": _text,
            "on_error": _one_of({"open", "closed"}),
            "timeout": _positive,
            "reservation_grace": _number,
            "max_connections": _count,
        },
    )
    if storage.backend == "redis" and not storage.url:
        problems.append("storage.url: is required for the redis backend")
    if storage.url and not storage.url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("storage.url: must be redis://, rediss:// or unix:// (a Redis URL)")
    if storage.max_connections < 1:
        problems.append("storage.max_connections: must be at least 1")
    if storage.reservation_grace < 0:
        problems.append("storage.reservation_grace: must be 0 or more seconds")
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
