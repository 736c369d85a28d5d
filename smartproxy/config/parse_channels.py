"""Config sections ``channels`` and ``routing.rules``: one channel or one rule read into its
dataclass (``parse_channel``, ``parse_rule``; the admin API reads single items with them too).

Provider-only keys (``_TYPE_KEYS``) are checked here. The other sections and ``parse_config`` are in
:mod:`smartproxy.config.parse`, which re-exports these names.
"""

from __future__ import annotations

from typing import Any

from .model import (
    ANTHROPIC_ENDPOINT,
    ANTHROPIC_VERSION,
    CHANNEL_TYPES,
    ChannelConfig,
    RuleConfig,
)
from .read import (
    _bool,
    _count,
    _expression,
    _header_map,
    _integer,
    _nonempty,
    _number,
    _one_of,
    _positive,
    _proxy_url,
    _secret_line,
    _Section,
    _str_list,
    _str_map,
    _url,
    _windows,
)


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
