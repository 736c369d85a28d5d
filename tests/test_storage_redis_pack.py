"""Redis commands packed by hiredis (``smartproxy.storage.redis_pack``): the same bytes as
redis-py's own packing, its errors for what it refuses, and real round trips through a pool."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError
from redisutil import delete_prefix, require_redis, unique_prefix

from smartproxy.storage import redis_pack
from smartproxy.storage.redis_pack import pack_in_c

VALUES = [
    "abc",
    2,
    -5,
    10**20,
    "ключ ✓",
    1e-06,
    0.1 + 0.2,
    1e20,
    float("inf"),
    b"\x00\xff\r\n",
    b"",
    "",
    b"x" * 10_000,  # past redis-py's buffer cutoff, where it sends the value as its own piece
]


def packed_by(cls: type[Connection], *args: object) -> bytes:
    return b"".join(bytes(piece) for piece in cls().pack_command(*args))


def test_hiredis_is_there_to_pack():
    assert redis_pack._pack_command is not None  # hiredis >= 2.2.1 (setup.cfg), the first with pack_command


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 2, "sp:{sp}:a", "sp:{sp}:b", *VALUES),
        (b"EVALSHA", "f" * 40, 0),
        ("CONFIG GET", "maxmemory"),  # a command name with a space: sent as two arguments
        (b"CLIENT SETNAME", b"gateway"),
        ("SET", "k", memoryview(b"view")),  # hiredis takes bytes only: redis-py packs these
        ("SET", "k", bytearray(b"array")),
    ],
)
def test_same_bytes_as_redis_py(args):
    fast = redis_pack._packing(Connection)
    assert packed_by(fast, *args) == packed_by(Connection, *args)


@pytest.mark.parametrize("bad", [True, None, object(), [1, 2]])
def test_what_redis_py_refuses_is_refused_with_its_error(bad):
    fast = redis_pack._packing(Connection)
    with pytest.raises(DataError) as ours:
        fast().pack_command("SET", "k", bad)
    with pytest.raises(DataError) as theirs:
        Connection().pack_command("SET", "k", bad)
    assert str(ours.value) == str(theirs.value)


def test_each_connection_class_keeps_its_kind():
    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        fast = redis_pack._packing(cls)
        assert issubclass(fast, cls) and fast.__name__ == cls.__name__
        assert redis_pack._packing(cls) is fast  # made once


def test_a_pool_with_another_encoding_keeps_redis_py_packing():
    pool = aioredis.ConnectionPool.from_url("redis://127.0.0.1:6379/0", encoding="latin-1")
    assert not pack_in_c(pool)
    assert pool.connection_class is Connection
    pool = aioredis.ConnectionPool.from_url("redis://127.0.0.1:6379/0", encoding_errors="replace")
    assert not pack_in_c(pool)
    pool = aioredis.ConnectionPool.from_url("unix:///tmp/no-such-redis.sock")
    assert pack_in_c(pool) and pack_in_c(pool)  # twice: still one subclass deep
    assert pool.connection_class.__mro__[1:3] == (redis_pack._PackInC, UnixDomainSocketConnection)


async def test_real_round_trips_through_a_packing_pool():
    url = require_redis()
    prefix = unique_prefix()
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=2)
    assert pack_in_c(pool)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.set(f"{prefix}text", "ключ ✓")
        assert (await client.get(f"{prefix}text")).decode() == "ключ ✓"
        await client.set(f"{prefix}float", 0.1 + 0.2)
        assert await client.get(f"{prefix}float") == b"0.30000000000000004"
        big = b"\x00\r\n" * 5000
        await client.set(f"{prefix}big", big)
        assert await client.get(f"{prefix}big") == big
        script = client.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")
        assert await script(keys=[f"{prefix}k"], args=["a b", 21]) == [
            f"{prefix}k".encode(),
            b"a b",
            42,
        ]
        async with client.pipeline(transaction=True) as pipe:
            pipe.incrby(f"{prefix}n", 3).incrbyfloat(f"{prefix}n", 0.5)
            assert await pipe.execute() == [3, 3.5]
        with pytest.raises(DataError):
            await client.set(f"{prefix}bad", None)  # type: ignore[arg-type]
        connection = await pool.get_connection()
        try:
            assert isinstance(connection, redis_pack._PackInC)
        finally:
            await pool.release(connection)
    finally:
        await client.aclose()
        await pool.disconnect()  # a pool passed in is the caller's to close
        delete_prefix(url, prefix)
