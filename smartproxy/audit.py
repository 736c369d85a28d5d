"""The audit log: one JSON line per admin change, appended to ``audit.path`` and logged.

A line holds ``time`` (UTC, ISO 8601), ``sub`` (the admin JWT's subject; null for a SIGHUP or a
failed login), ``address`` (the client, or ``"signal"``), ``action`` (``channel.upsert``,
``rule.delete``, ``reload``, ``auth_failed``, ...), ``target`` (the entry's name, or the config
path), ``result`` (``ok`` | ``error``), ``reason`` (why it failed) and ``diff`` (changed fields as
``{"old", "new"}`` with secrets masked, or for a reload the names added/removed/changed). It never
holds a whole secret or any part of a token; ``scrub`` removes known secret values from free text
(a loader message can quote a value).

Where: ``audit.path``; else ``audit.log`` in the folder of ``storage.path`` (contract §6), whatever
the backend: sqlite keeps its counters there, redis its host's request log, and with memory it is
where an operator looks (default ``./data``). Each line is one ``write`` on a file opened with ``O_APPEND`` (mode 0600): a small append that
does not hold up the event loop, and lines from several worker processes do not interleave.
If the file cannot be written the line still goes to the ``smartproxy.audit`` logger, and the
error is logged; the admin change is not undone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Config

log = logging.getLogger("smartproxy.audit")
errors_log = logging.getLogger("smartproxy")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: the JWT ``sub`` (None when there is none) and the client address."""

    sub: str | None
    address: str | None


SIGNAL = Actor(sub=None, address="signal")


def audit_path(config: Config) -> Path:
    """Where audit lines go for this config (see the module docstring)."""
    if config.audit.path:
        return Path(config.audit.path)
    return Path(config.storage.path).parent / "audit.log"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret of 4+ characters replaced by ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def config_secrets(config: Config) -> list[str]:
    """Every secret value of a config, to scrub from messages that might quote one."""
    out = [c.api_key for c in config.channels] + [k.key for k in config.security.api_keys]
    out += [v for c in config.channels for v in c.headers.values()]
    proxies = [c.proxy for c in config.channels] + [config.server.proxy]
    out += [urlsplit(p).password or "" for p in proxies if p]
    return out + [config.security.jwt.secret or ""]


def config_diff(old: Config, new: Config) -> dict[str, Any]:
    """What a reload changed, by name only (no values, so no secrets)."""
    out: dict[str, Any] = {}
    for section, before, after in (
        ("channels", old.channels, new.channels),
        ("rules", old.rules, new.rules),
        ("api_keys", old.security.api_keys, new.security.api_keys),
    ):
        a = {x.name: x for x in before}
        b = {x.name: x for x in after}
        change = {
            "added": [n for n in b if n not in a],
            "removed": [n for n in a if n not in b],
            "changed": [n for n in b if n in a and a[n] != b[n]],
        }
        if any(change.values()):
            out[section] = change
    others = [
        name
        for name in ("server", "security", "retry", "circuit_breaker", "storage", "audit", "log",
                     "monitor", "usage")
        if _section(old, name) != _section(new, name)
    ]
    if others:
        out["sections"] = others
    return out


def _section(config: Config, name: str) -> Any:
    value = getattr(config, name)
    if name == "security":  # its keys are listed above by name
        return (value.jwt, value.rate_limit)
    return value


class AuditLog:
    """Appends audit lines to ``path`` (created on first use) and logs them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._failed_path: Path | None = None  # log a write failure once per path, not per line

    def record(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        *,
        ok: bool,
        reason: str | None = None,
        diff: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "sub": actor.sub,
            "address": actor.address,
            "action": action,
            "target": target,
            "result": "ok" if ok else "error",
            "reason": reason,
            "diff": dict(diff) if diff else None,
        }
        text = json.dumps(line, ensure_ascii=False, default=str)
        log.log(logging.INFO if ok else logging.WARNING, "%s", text)
        self._append(text + "\n")
        return line

    def _append(self, text: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, text.encode("utf-8", "backslashreplace"))  # lone surrogates too
            finally:
                os.close(fd)
        except OSError as exc:
            if self._failed_path != self.path:
                self._failed_path = self.path
                errors_log.error("cannot write the audit log %s: %s (lines go to the log only)",
                                 self.path, exc.strerror or exc)
            return
        self._failed_path = None
