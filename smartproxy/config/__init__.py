"""Config loading: YAML -> frozen, typed objects; every problem reported with its path.

``load_config(path)`` reads a file, ``parse_config(mapping)`` validates an already-parsed document
(the admin API uses it so that a POST is checked exactly like the file). A config with any problem
raises ``ConfigError`` listing every problem as ``channels[1].endpoint: not a URL``.

SmartAIProxy (Go/.NET) files load unchanged: their keys that mean something here are honoured,
the others are accepted and listed in ``Config.ignored_keys`` (one warning at start).

This module is the public face of the loader and re-exports all of it: :mod:`.model` holds
the frozen dataclasses, :mod:`.read` the ``_Section`` reader and value converters,
:mod:`.parse` the sections and ``parse_config``; reading files is done here.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from . import yamlsafe
from .model import (
    CHANNEL_TYPES,
    JWT_ALGORITHMS,
    ROUTABLE_TYPES,
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
    TimeWindow,
    UsageConfig,
)
from .parse import parse_api_key, parse_channel, parse_config, parse_rule
from .read import expand_env, parse_hhmm, parse_listen

__all__ = [
    "CHANNEL_TYPES",
    "JWT_ALGORITHMS",
    "ROUTABLE_TYPES",
    "STORAGE_BACKENDS",
    "ApiKeyConfig",
    "AuditConfig",
    "BreakerConfig",
    "ChannelConfig",
    "Config",
    "ConfigError",
    "JwtConfig",
    "LogConfig",
    "MonitorConfig",
    "RateLimitConfig",
    "RetryConfig",
    "RuleConfig",
    "SecurityConfig",
    "ServerConfig",
    "StorageConfig",
    "TimeWindow",
    "UsageConfig",
    "config_from_text",
    "default_config_text",
    "expand_env",
    "find_config",
    "load_config",
    "parse_api_key",
    "parse_channel",
    "parse_config",
    "parse_hhmm",
    "parse_listen",
    "parse_rule",
    "read_yaml",
]


# ----------------------------------------------------------------------------- files
def read_yaml(text: str, source: str = "<config>", *, doubled: list[str] | None = None) -> Any:
    """Parse config text (aliases, depth and duplicate keys bounded: ``yamlsafe``); ``ConfigError``
    naming the problem. A key named twice is one problem per such key (``channels[0].priority:
    key appears twice (lines 4 and 9)``): raised, or with ``doubled`` added to it and the
    document returned as YAML loaders read it (the last value wins), so that its other problems
    can be listed beside them."""
    try:
        return yamlsafe.load(text)
    except yamlsafe.DuplicateKeyError as exc:
        if doubled is None:
            raise ConfigError(exc.problems) from None
        doubled += exc.problems
        return exc.document
    except (yamlsafe.AliasBombError, yamlsafe.TooDeepError) as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: YAML nested too deeply"]) from None
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
    return config_from_text(text, source)[1]


def config_from_text(text: str, source: str | None) -> tuple[Any, Config]:
    """The document as written (``${VAR}`` not expanded) and the config it loads as;
    ``ConfigError`` listing every problem, a key named twice among them (such a file is refused
    whole, with the problems of the rest of it)."""
    doubled: list[str] = []
    doc = read_yaml(text, source or "<default>", doubled=doubled)
    try:
        config = parse_config(expand_env(doc), source=source)
    except ConfigError as exc:
        raise ConfigError([*doubled, *exc.problems]) from None
    if doubled:
        raise ConfigError(doubled)
    return doc, config


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
