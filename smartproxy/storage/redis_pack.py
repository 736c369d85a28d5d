"""Redis commands packed in C: hiredis's ``pack_command`` for redis-py's asyncio connections.

redis-py's asyncio ``Connection.pack_command`` builds each command's wire bytes in Python
(10.5 µs for one of the gateway's ``EVALSHA`` calls: an encode, a ``str(len)`` and a join per
argument). Its sync client packs with hiredis when hiredis is installed; the asyncio one never
does. Here: 2.4 µs for the same call. At 10,000 requests in flight every request sends a few
such commands (admit, settle, renew), and the packing was ~5 % of a worker's CPU (py-spy,
``benchmarks/concurrency.py`` S3; issue [8]). ``pack_in_c(pool)`` makes the pool's connections pack with hiredis (a dependency of
the redis backend) and returns whether it did.

The bytes are the same as redis-py's (``tests/test_storage_redis_pack.py`` compares them): the
first argument split at spaces (``"CONFIG GET"``), ``str`` as UTF-8, ``int`` and ``float`` as
``repr``. What hiredis does not take (``bytearray``, ``memoryview``, and the values redis-py
refuses: ``bool``, ``None``...) goes to redis-py's own packing, which packs it or raises its
``DataError`` as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # hiredis missing or older than 2.2.1: redis-py packs, as it would anyway
    _pack_command = None


class _PackInC:
    """Mixed in before a redis-py asyncio connection class (``pack_in_c``)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_pack_command(args)]  # type: ignore[misc]  # never None where this is used
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` packing in C (one subclass per class)."""
    fast = _CLASSES.get(cls)
    if fast is None:
        fast = _CLASSES[cls] = type(cls.__name__, (_PackInC, cls), {"__doc__": cls.__doc__})
    return fast


def pack_in_c(pool: ConnectionPool) -> bool:
    """Give ``pool``'s connections (made from now on) hiredis's packer, when hiredis has one and
    the pool encodes as hiredis does (UTF-8, strict: redis-py's default)."""
    kwargs = pool.connection_kwargs
    encoding = kwargs.get("encoding", "utf-8").lower().replace("_", "-")
    if _pack_command is None or encoding not in ("utf-8", "utf8"):
        return False
    if kwargs.get("encoding_errors", "strict") != "strict":
        return False
    if not issubclass(pool.connection_class, _PackInC):
        pool.connection_class = _packing(pool.connection_class)
    return True
