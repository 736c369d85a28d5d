"""Logging setup: one line per event, with the structured fields a request carries appended.

Modules log with ``extra={"request_id": ..., "channel": ..., "usage_source": ...}``; the formatter
appends those as ``key=value`` so they can be grepped and parsed without a JSON log pipeline.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from typing import TYPE_CHECKING

from .files import ensure_private_file

if TYPE_CHECKING:  # importing the config would load the application (the lean supervisor
    from .config import Config  # logs through this module too)

FIELDS = (
    "request_id",
    "api_key_name",
    "channel",
    "model",
    "status",
    "usage_source",
    "attempts",
    "sub",
)


# Control characters (a newline in a JWT ``sub`` would forge a log line), line separators and
# lone surrogates (unwritable as UTF-8) are shown escaped: ``\n``, ``\x1b``, ``\ud800``.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape(text: str) -> str:
    """``text`` on one line: control characters escaped, everything else (any script) kept."""
    return _UNSAFE.sub(lambda m: ascii(m.group())[1:-1], text) if _UNSAFE.search(text) else text


class FieldsFormatter(logging.Formatter):
    """One line per event: the message and the fields are escaped (a traceback, appended by the
    base class after the message, keeps its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={escape(str(getattr(record, k)))}"
            for k in FIELDS
            if getattr(record, k, None) is not None
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def log_level(config: Config) -> str:
    return {"warn": "WARNING"}.get(config.log.level, config.log.level.upper())


def log_handlers(file: str | None) -> list[logging.Handler]:
    """Standard error, and ``file`` if set, each writing ``FieldsFormatter`` lines."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        ensure_private_file(file, 0o640)  # readable by the service's group (logs)
        # Watched: a file logrotate moved away is reopened at the next line (no restart).
        handlers.append(logging.handlers.WatchedFileHandler(file, encoding="utf-8"))
    formatter = FieldsFormatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
    return handlers


def setup_logging(config: Config) -> None:
    logging.basicConfig(level=log_level(config), handlers=log_handlers(config.log.file),
                        force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
