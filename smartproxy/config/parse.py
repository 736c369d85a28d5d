"""Config sections: each part of a parsed document read into its dataclass, and ``parse_config``.

SmartAIProxy (Go/.NET) compatibility lives here too: keys of theirs without meaning in this gateway
(``_SMARTAIPROXY_IGNORED``) are accepted and listed in ``Config.ignored_keys``, never dropped
silently. Reading files and the public names are in :mod:`smartproxy.config`. The ``channels``
and ``routing.rules`` items are read in ``parse_channels``, the ``security`` section in
``parse_security`` (their ``parse_*`` functions are re-exported from here).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .model import (
    STORAGE_BACKENDS,
    AuditConfig,
    BreakerConfig,
    ChannelConfig,
    Config,
    LogConfig,
    MonitorConfig,
    RetryConfig,
    RuleConfig,
    ServerConfig,
    StorageConfig,
    UsageConfig,
)
from .parse_channels import parse_channel as parse_channel
from .parse_channels import parse_rule as parse_rule
from .parse_security import _security
from .parse_security import parse_api_key as parse_api_key
from .read import (
    T,
    _bool,
    _cidrs,
    _count,
    _kind,
    _listen,
    _nonempty,
    _number,
    _one_of,
    _positive,
    _proxy_url,
    _Section,
    _text,
    _timezone,
    parse_listen,
)

# SmartAIProxy keys that load without meaning here (path of the section -> keys).
_SMARTAIPROXY_IGNORED: dict[str, tuple[str, ...]] = {
    "": ("error_handling",),
    "log": ("max_size", "max_backups", "max_age", "format"),
    "monitor": ("metrics_path",),
}
# SmartAIProxy sections without meaning here whose keys are named one by one (``admin.username``):
# the admin API here is on server.listen behind a JWT, not a second listener with a password.
_SMARTAIPROXY_IGNORED_SECTIONS = ("admin",)


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


def _simple(data: Any, path: str, problems: list[str], cls: type[T], spec: dict[str, Any]) -> T:
    s = _Section(data, path, problems)
    default = cls()
    values = {k: s.get(k, conv, getattr(default, k)) for k, conv in spec.items()}
    s.finish(_SMARTAIPROXY_IGNORED, None)
    return cls(**values)


def _raw_text(item: Any, key: str) -> str | None:
    """``item[key]`` of an entry that did not parse, when it is a non-empty string."""
    value = item.get(key) if isinstance(item, dict) else None
    return value if isinstance(value, str) and value else None


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
    # Names count even for an entry refused for another reason, so that every problem is
    # listed at once: a duplicate name beside a bad price, a rule naming a channel that has one.
    seen: dict[str, int] = {}
    for i, item in enumerate(raw_channels):
        ch = parse_channel(item, f"channels[{i}]", problems)
        name = ch.name if ch is not None else _raw_text(item, "name")
        if name is not None and name in seen:
            problems.append(f"channels[{i}].name: duplicate of channels[{seen[name]}] {name!r}")
            continue
        if name is not None:
            seen[name] = i
        if ch is not None:
            channels.append(ch)

    rules: list[RuleConfig] = []
    raw_rules = top.raw("rules") or []
    if not isinstance(raw_rules, list):
        problems.append(f"rules: must be a list, got {_kind(raw_rules)}")
        raw_rules = []
    rule_names: set[str] = set()
    for i, item in enumerate(raw_rules):
        rule = parse_rule(item, f"rules[{i}]", problems)
        name = rule.name if rule is not None else _raw_text(item, "name")
        target = rule.channel if rule is not None else _raw_text(item, "channel")
        if name is not None and name in rule_names:
            problems.append(f"rules[{i}].name: duplicate rule name {name!r}")
        if name is not None:
            rule_names.add(name)
        if target is not None and target not in seen and isinstance(item, dict):
            problems.append(f"rules[{i}].channel: no channel named {target!r}")
        if rule is not None:
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
    for name in _SMARTAIPROXY_IGNORED_SECTIONS:
        if name in top.data:
            _ignored_section(top.raw(name), name, ignored)
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


def _ignored_section(data: Any, path: str, ignored: list[str]) -> None:
    """Names each key of a section without meaning here (never its value: ``admin.password``);
    the section itself when it holds none."""
    if isinstance(data, dict) and data:
        ignored.extend(f"{path}.{key}" for key in data)
    else:
        ignored.append(path)


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
