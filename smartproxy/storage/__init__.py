"""Usage storage: counters, reservations and the request log behind one ``UsageStore`` protocol.

    base.py     the protocol, its value objects and ``CounterBook`` (counting all backends share)
    memory.py   ``memory``: this process only, nothing survives a restart
    sqlite.py   ``sqlite`` (default): one WAL file, written by a batching flush off the event loop

``create_store`` picks the backend named by ``storage.backend``.
"""

from __future__ import annotations

from datetime import tzinfo

from ..config import StorageConfig
from ..errors import ConfigError
from .base import (
    Clock,
    CounterBook,
    Limits,
    RequestRecord,
    Reservation,
    StorageError,
    Usage,
    UsageStore,
    window_keys,
)
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = [
    "Clock",
    "CounterBook",
    "Limits",
    "MemoryStore",
    "RequestRecord",
    "Reservation",
    "SqliteStore",
    "StorageError",
    "Usage",
    "UsageStore",
    "create_store",
    "window_keys",
]


def create_store(cfg: StorageConfig, tz: tzinfo, *, clock: Clock | None = None) -> UsageStore:
    """The store ``cfg.backend`` names, not started yet (``await store.start()``)."""
    if cfg.backend == "sqlite":
        return SqliteStore(cfg.path, tz, clock=clock)
    if cfg.backend == "memory":
        return MemoryStore(tz)
    if cfg.backend == "redis":
        raise ConfigError(
            [
                "storage.backend: 'redis' is not available in this version (it arrives with a "
                "later release); use 'sqlite' (the default) or 'memory'"
            ]
        )
    raise ConfigError([f"storage.backend: unknown backend {cfg.backend!r}"])
