"""Config section ``security``: API keys (mapping or list form, ``parse_api_key``), JWT settings
and the global rate limit.

The other sections and ``parse_config`` are in :mod:`smartproxy.config.parse`, which re-exports
``parse_api_key``.
"""

from __future__ import annotations

import re
from typing import Any

from .model import (
    JWT_ALGORITHMS,
    ApiKeyConfig,
    JwtConfig,
    RateLimitConfig,
    SecurityConfig,
)
from .read import (
    _count,
    _nonempty,
    _number,
    _secret_line,
    _Section,
    _str_list,
    _text,
    check_line,
    printable,
)


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
