"""Redis for the tests: the machine's server at 127.0.0.1:6379 (a unique key prefix per test), or a
private ``redis-server`` on a free port that a test may stop and start (outages).

Without a Redis at 127.0.0.1:6379 the redis tests are skipped, except with ``CI=true``, where they
fail (``.ci/run`` starts one): a CI run never silently skips them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

SHARED_URL = "redis://127.0.0.1:6379/0"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def require_redis() -> str:
    """The shared server's URL; skip (fail under CI=true) when none answers."""
    if _answers("127.0.0.1", 6379):
        return SHARED_URL
    message = "no redis-server answers at 127.0.0.1:6379 (.ci/run starts one)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def unique_prefix() -> str:
    return f"sptest:{uuid.uuid4().hex[:12]}:"


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, on a free port; ``stop()`` and ``start()`` at will."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        exe = shutil.which("redis-server")
        if exe is None:
            message = "redis-server is not installed"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message)
            pytest.skip(message)
        self.exe = exe

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it, saving its data first (``start()`` loads it back, as a restarted Redis
        with persistence would)."""
        if self.proc is not None:
            import redis

            client = redis.Redis(port=self.port)
            try:
                client.save()  # what start() loads back (dump.rdb in its folder)
            finally:
                client.close()
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
