"""Usage storage: counters, reservations and the request log behind one ``UsageStore`` protocol.

    base.py     the protocol and its value objects
    counters.py ``CounterBook`` and ``InProcessCounters``: the counting all backends share
    memory.py   ``memory``: this process only, nothing survives a restart
    sqlite.py   ``sqlite`` (default): one WAL file, written by a batching flush off the event loop
                (schema, migration and the row writer in sqlite_rows.py)
    redis.py    ``redis``: counters, reservations, key limits and breakers shared by every process
                and host (Lua scripts in redis_scripts.py); the request log stays in SQLite
                (reads in redis_view.py, admit in redis_admit.py, value objects in redis_values.py)

``create_store`` picks the backend named by ``storage.backend``.
"""

from __future__ import annotations

from datetime import tzinfo

from ..config import StorageConfig
from ..errors import ConfigError
from .base import (
    Admission,
    Clock,
    KeyCheck,
    Limits,
    RequestRecord,
    Reservation,
    StorageError,
    Usage,
    UsageStore,
    window_keys,
)
from .counters import CounterBook
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = [
    "Admission",
    "Clock",
    "CounterBook",
    "KeyCheck",
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
        from .redis import RedisStore  # imports redis-py only when it is used

        return RedisStore(cfg, tz, clock=clock)
    raise ConfigError([f"storage.backend: unknown backend {cfg.backend!r}"])
