"""Logging setup: one line per event, with the structured fields a request carries appended.

Modules log with ``extra={"request_id": ..., "channel": ..., "usage_source": ...}``; the formatter
appends those as ``key=value`` so they can be grepped and parsed without a JSON log pipeline.
"""

from __future__ import annotations

import logging
import os
import sys

from .config import Config

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


class FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def setup_logging(config: Config) -> None:
    level = {"warn": "WARNING"}.get(config.log.level, config.log.level.upper())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log.file:
        os.makedirs(os.path.dirname(os.path.abspath(config.log.file)), exist_ok=True)
        handlers.append(logging.FileHandler(config.log.file, encoding="utf-8"))
    formatter = FieldsFormatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
