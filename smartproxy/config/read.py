"""The config reader: ``_Section``, the value converters and ``${VAR}`` expansion.

``_Section`` reads one mapping and records every problem under its path instead of stopping at the
first; each converter turns one YAML value into a typed one or raises ``ValueError`` with the text
the problem list shows. The sections built with them are in :mod:`smartproxy.config.parse`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from datetime import time as dtime
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError
from .model import TimeWindow

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

T = TypeVar("T")


# ----------------------------------------------------------------------------- env expansion
def expand_env(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed document, mapping
    keys included (a ``model_mapping`` or ``api_keys`` name); two keys that become one are a
    ``ConfigError``, as a key written twice is."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        written: dict[Any, Any] = {}
        for k, v in value.items():
            key = expand_env(k, env) if isinstance(k, str) and "${" in k else k
            if key in out:
                raise ConfigError([f"keys {written[key]!r} and {k!r} both read {key!r} once "
                                   "${VAR} is replaced"])
            out[key], written[key] = expand_env(v, env), k
        return out
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
    if isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v)):
        return int(f)  # a configured 60 stays 60 in every answer (not 60.0)
    return f


def _proxy_url(v: Any) -> str:
    """An outbound proxy: ``http://[user:pass@]host:port`` (HTTP CONNECT)."""
    s = _text(v).strip()
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = s.replace(f"{parts.password}@", "****@") if parts.password else s
        raise ValueError(f"must be a proxy URL like http://host:3128, got {shown!r}")
    return s


def _cidrs(v: Any) -> tuple[str, ...]:
    out = []
    for item in _str_list(v):
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)") from None
    return tuple(out)


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


# Text that ends up in HTTP headers, log lines, metric labels or the YAML file: no control
# characters (C0, DEL, C1), no line/paragraph separators, and encodable as UTF-8. A CR/LF in a
# channel key would otherwise make every request to it fail (500) and forge log lines.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name (RFC 9110 token)


def check_line(s: str, what: str = "") -> str:
    """``s`` if it holds no control character, else ``ValueError`` naming the first one."""
    m = _CONTROL.search(s)
    if m is not None:
        where = f"{what} " if what else ""
        raise ValueError(
            f"{where}must not contain control characters or invalid text "
            f"(found {ascii(m.group())[1:-1]} at position {m.start()})"
        )
    return s


def printable(s: str) -> str:
    """``s`` for a problem path or a log line: control characters shown escaped."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], s)


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError(f"must be a list of strings, got {_kind(v)}")
    out = []
    for i, item in enumerate(v):
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"item {i} must be a string, got {_kind(item)}")
        out.append(check_line(str(item), f"item {i}"))
    return tuple(out)


def _str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping of strings, got {_kind(v)}")
    out = {}
    for k, item in v.items():
        key = check_line(str(k), "a key")
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"value of {key!r} must be a string, got {_kind(item)}")
        out[key] = check_line(str(item), f"the value of {key!r}")
    return out


def _header_map(v: Any) -> dict[str, str]:
    """Extra upstream headers: token names, values without control characters (tab allowed)."""
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping of strings, got {_kind(v)}")
    out = {}
    for k, item in v.items():
        name = str(k)
        if not _TOKEN.match(name):
            raise ValueError(f"{printable(name)!r} is not a valid header name")
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"value of {name!r} must be a string, got {_kind(item)}")
        value = str(item)
        m = _CONTROL.search(value.replace("\t", " "))
        if m is not None:  # the value is a secret: say where, never what
            raise ValueError(
                f"value of {name!r} must not contain control characters "
                f"(found {ascii(m.group())[1:-1]} at position {m.start()})"
            )
        out[name] = value
    return out


def _secret_line(v: Any) -> str:
    """A key sent in a header: no control characters (the message never shows the key)."""
    s = _text(v)
    m = _CONTROL.search(s)
    if m is not None:
        raise ValueError(
            f"must not contain control characters (found {ascii(m.group())[1:-1]} at "
            f"position {m.start()})"
        )
    return s


def _expression(v: Any) -> str:
    """A rule expression: may span lines (tabs and line ends are whitespace there)."""
    s = _nonempty_text(v)
    m = _CONTROL_IN_TEXT.search(s)
    if m is not None:
        raise ValueError(
            f"must not contain control characters (found {ascii(m.group())[1:-1]} at "
            f"position {m.start()})"
        )
    return s


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
    if "@" in parts.netloc:  # the value holds a password: never echo it
        raise ValueError(
            "must not contain user:password@ (credentials in a URL end up in logs and views); "
            "put the key in api_key or headers"
        )
    check_line(s)
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


def _nonempty_text(v: Any) -> str:
    s = _text(v).strip()
    if not s:
        raise ValueError("must not be empty")
    return s


def _nonempty(v: Any) -> str:
    """A name (of a channel, rule, model, key...): non-empty, one line, no control characters."""
    return check_line(_nonempty_text(v))
