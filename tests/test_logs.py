"""Log lines are one line each, whatever a client or an admin puts into them, and the files the
gateway writes (text log, usage database, audit log) are created owner-only (issue [6])."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from conftest import ADMIN_SECRET, base_config

from smartproxy.audit import Actor, AuditLog
from smartproxy.config import parse_config
from smartproxy.logs import FieldsFormatter, escape, setup_logging
from smartproxy.storage.sqlite import SqliteStore

FORMAT = "%(levelname)s %(name)s %(message)s"


def test_escape_keeps_text_on_one_line() -> None:
    assert escape("alice\nINFO smartproxy forged") == "alice\\nINFO smartproxy forged"
    assert escape("免费渠道A \t\x1b[31m\u2028\ud800") == "免费渠道A \\t\\x1b[31m\\u2028\\ud800"
    assert escape("plain") == "plain"


def test_messages_and_fields_are_escaped_but_tracebacks_keep_their_lines() -> None:
    formatter = FieldsFormatter(FORMAT)
    record = logging.LogRecord("smartproxy.admin", logging.INFO, __file__, 1,
                               "admin %s by %s", ("channel.upsert", "eve\nERROR forged"), None)
    record.sub = "eve\r\nforged"
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith("sub=eve\\r\\nforged") and "by eve\\nERROR forged" in line
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "Traceback" in formatter.format(failed).splitlines()[1]


async def test_a_jwt_sub_with_a_newline_forges_no_log_line(
    gateway_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await gateway_factory(base_config(), write_file=True)
    caplog.set_level(logging.INFO)
    import time

    now = int(time.time())
    token = pyjwt.encode(
        {"sub": "eve\n2026-11-30 12:00:00 INFO smartproxy.admin forged", "iss": "smartproxy",
         "aud": "smartproxy-admin", "iat": now, "exp": now + 60},
        ADMIN_SECRET, algorithm="HS256",
    )  # fmt: skip
    resp = await gw.client.post("/api/channels", json={"name": "m", "type": "mock"},
                                headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 201
    formatter = FieldsFormatter(FORMAT)
    lines = [formatter.format(r) for r in caplog.records if r.name.startswith("smartproxy")]
    assert any("eve\\n2026" in line for line in lines)
    assert all("\n" not in line for line in lines)


@pytest.fixture
def umask() -> Iterator[Any]:
    old = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_log_and_audit_files_are_owner_only(tmp_path: Path, umask: Any) -> None:
    from datetime import UTC

    store = SqliteStore(tmp_path / "db" / "usage.db", UTC, flush_interval=60)
    await store.start()
    await store.close()
    db = tmp_path / "db" / "usage.db"
    assert mode(db) == 0o600
    for extra in ("usage.db-wal", "usage.db-shm"):
        if (tmp_path / "db" / extra).exists():
            assert mode(tmp_path / "db" / extra) == 0o600
    AuditLog(tmp_path / "audit" / "audit.log").record(Actor("a", None), "x", None, ok=True)
    assert mode(tmp_path / "audit" / "audit.log") == 0o600
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(parse_config({"log": {"file": str(tmp_path / "log" / "sp.log")}}))
        assert mode(tmp_path / "log" / "sp.log") == 0o640
        umask(0o077)
        setup_logging(parse_config({"log": {"file": str(tmp_path / "log" / "strict.log")}}))
        assert mode(tmp_path / "log" / "strict.log") == 0o600  # the umask is respected
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = handlers, level


def test_a_log_file_moved_away_by_logrotate_is_reopened(tmp_path: Path) -> None:
    """logrotate's default moves the file and creates none: the next line starts a new file
    (it went on into the moved one until a restart, audit finding)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    log_file = tmp_path / "sp.log"
    try:
        setup_logging(parse_config({"log": {"file": str(log_file), "level": "info"}}))
        logging.getLogger("smartproxy.test").info("before rotation")
        log_file.rename(tmp_path / "sp.log.1")
        logging.getLogger("smartproxy.test").info("after rotation")
        assert "after rotation" in log_file.read_text()
        assert "after rotation" not in (tmp_path / "sp.log.1").read_text()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = handlers, level
