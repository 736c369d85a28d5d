"""The audit log: JSON lines, where they go, what they never contain."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from smartproxy.audit import Actor, AuditLog, audit_path, config_diff, config_secrets, scrub
from smartproxy.config import parse_config


def test_a_line_is_json_with_every_field_and_is_logged(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    log = AuditLog(tmp_path / "sub" / "audit.log")
    with caplog.at_level(logging.INFO, logger="smartproxy.audit"):
        log.record(Actor("alice", "10.0.0.7"), "channel.upsert", "groq", ok=True,
                   diff={"price_per_token": {"old": 0, "new": 1e-06}})
        log.record(Actor(None, "10.0.0.9"), "auth_failed", "GET /api/channels", ok=False,
                   reason="bad signature")
    lines = [json.loads(x) for x in (tmp_path / "sub" / "audit.log").read_text().splitlines()]
    assert [x["action"] for x in lines] == ["channel.upsert", "auth_failed"]
    first = lines[0]
    assert set(first) == {"time", "sub", "address", "action", "target", "result", "reason", "diff"}
    assert first["sub"] == "alice" and first["address"] == "10.0.0.7" and first["result"] == "ok"
    assert first["time"].endswith("Z") and first["diff"]["price_per_token"]["new"] == 1e-06
    assert lines[1]["result"] == "error" and lines[1]["reason"] == "bad signature"
    assert stat.S_IMODE((tmp_path / "sub" / "audit.log").stat().st_mode) == 0o600
    assert [json.loads(r.getMessage())["action"] for r in caplog.records] == [
        "channel.upsert", "auth_failed"]


def test_an_unwritable_path_logs_once_and_never_raises(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AuditLog(blocker / "audit.log")  # a folder that cannot exist
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            log.record(Actor("a", None), "reload", None, ok=True)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write the audit log" in errors[0].getMessage()
    assert len([r for r in caplog.records if r.name == "smartproxy.audit"]) == 3


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"audit": {"path": "/var/log/sp/audit.jsonl"}}, "/var/log/sp/audit.jsonl"),
        ({"storage": {"backend": "sqlite", "path": "/srv/sp/usage.db"}}, "/srv/sp/audit.log"),
        # The folder of storage.path whatever the backend (contract §6); it was the config
        # file's folder for memory and redis.
        ({"storage": {"backend": "redis", "url": "redis://h:6379/0", "path": "/srv/r/log.db"}},
         "/srv/r/audit.log"),
        ({"storage": {"backend": "memory", "path": "/srv/m/x.db"}}, "/srv/m/audit.log"),
        ({"storage": {"backend": "memory"}}, "data/audit.log"),
    ],
)
def test_default_path(doc, expected) -> None:  # type: ignore[no-untyped-def]
    assert audit_path(parse_config(doc)) == Path(expected)


def test_scrub_and_config_diff_never_show_values() -> None:
    assert scrub("got 'sk-abc-123456' in endpoint", ["sk-abc-123456", "", "x"]) == (
        "got '***' in endpoint")
    old = parse_config({
        "channels": [{"name": "a", "type": "mock"},
                     {"name": "b", "type": "openai", "endpoint": "https://b/v1",
                      "api_key": "sk-secret-b-0123456789"}],
        "security": {"auth": {"api_keys": {"k": "sk-key-k-0123456789"}}},
    })
    new = parse_config({
        "channels": [{"name": "b", "type": "openai", "endpoint": "https://b/v1",
                      "api_key": "sk-secret-b-rotated-000"},
                     {"name": "c", "type": "mock"}],
        "security": {"auth": {"api_keys": {"k": "sk-key-k-rotated-000"}}},
        "retry": {"max_attempts": 2},
    })
    diff = config_diff(old, new)
    assert diff == {
        "channels": {"added": ["c"], "removed": ["a"], "changed": ["b"]},
        "api_keys": {"added": [], "removed": [], "changed": ["k"]},
        "sections": ["retry"],
    }
    assert "sk-" not in json.dumps(diff)
    assert {"sk-secret-b-0123456789", "sk-key-k-0123456789"} <= set(config_secrets(old))
