"""Config loader: typed objects, env expansion, every problem named by its path, SmartAIProxy files."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartproxy.config import (
    ConfigError,
    TimeWindow,
    default_config_text,
    expand_env,
    load_config,
    parse_config,
    parse_hhmm,
)

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


def test_builtin_default_is_the_shipped_sample():
    assert default_config_text() == (ROOT / "etc" / "smartproxy.yaml").read_text()
    cfg = load_config(None)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert [c.type for c in cfg.channels] == ["mock"]
    assert cfg.channels[0].price_per_token == 0
    assert len(cfg.security.api_keys) == 1


@pytest.mark.parametrize("name", ["go-configs-config.yaml", "dotnet-smartaiproxy.yaml"])
def test_smartaiproxy_samples_load_unchanged(name):
    cfg = load_config(DATA / name)
    assert cfg.channels and cfg.rules
    assert cfg.server.listen == "0.0.0.0:8080"
    # keys without meaning here are accepted and listed once, not silently dropped
    if name.startswith("go"):
        # each admin key by name (the whole section was named 'admin': audit finding)
        assert cfg.ignored_keys == (
            "log.max_size", "log.max_backups", "log.max_age",
            "admin.enable", "admin.listen", "admin.username", "admin.password",
            "error_handling",
        )  # fmt: skip
        assert cfg.channels[1].type == "claude" and cfg.channels[1].provider == "anthropic"
        assert cfg.channels[1].discount_time == (
            TimeWindow(parse_hhmm("00:00"), parse_hhmm("06:00")),
        )
        assert cfg.log.file == "./logs/server.log"
    else:
        assert cfg.security.jwt.expiry_minutes == 60
        assert cfg.monitor.prometheus_listen == "0.0.0.0:9100"


def test_ignored_admin_keys_are_named_never_their_values(tmp_path, capsys):
    from smartproxy.cli import main

    cfg = parse_config({"admin": {"username": "root", "password": "hunter2-secret"}})
    assert cfg.ignored_keys == ("admin.username", "admin.password")
    assert parse_config({"admin": None}).ignored_keys == ("admin",)
    assert parse_config({}).ignored_keys == ()
    path = tmp_path / "c.yaml"
    path.write_text("admin: {enable: true, password: hunter2-secret}\nchannels: [{name: m, type: mock}]\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ignored SmartAIProxy keys: admin.enable, admin.password" in out
    assert "hunter2" not in out


def test_env_expansion():
    env = {"KEY": "sk-1", "EMPTY": ""}
    doc = {
        "a": "${KEY}",
        "b": "x-${MISSING:-fallback}-y",
        "c": ["${EMPTY:-d}"],
        "d": {"e": "${MISSING}"},
    }
    assert expand_env(doc, env) == {"a": "sk-1", "b": "x-fallback-y", "c": ["d"], "d": {"e": ""}}


def test_env_expansion_in_file(tmp_path, monkeypatch):
    monkeypatch.setenv("UP_KEY", "sk-from-env")
    p = tmp_path / "c.yaml"
    p.write_text(
        'channels: [{name: a, type: openai, endpoint: "${UP_URL:-http://127.0.0.1:9}/v1", '
        'api_key: "${UP_KEY}"}]\n'
    )
    cfg = load_config(p)
    assert cfg.channels[0].api_key == "sk-from-env"
    assert cfg.channels[0].endpoint == "http://127.0.0.1:9/v1"


def test_every_problem_named_by_path():
    doc = {
        "server": {"listen": "nope", "timezone": "Mars/Base", "tiemout": 3},
        "channels": [
            {"name": "ok", "type": "openai", "endpoint": "https://x.example/v1"},
            {"name": "bad", "type": "openai", "endpoint": "ftp:/x"},
            {
                "name": "bad2",
                "type": "nosuch",
                "endpoint": "https://y/v1",
                "price_per_token": "cheap",
            },
            {"name": "ok", "type": "mock"},
            {"type": "openai"},
        ],
        "rules": [
            {"name": "r", "channel": "missing", "expression": "day_tokens_used < daily_limit"},
            {"name": "r2", "channel": "ok", "expression": "__import__('os')"},
        ],
        "retry": {"max_attempts": 0},
        "storage": {"backend": "postgres"},
        "typo_section": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    for needle in [
        "server.listen:",
        "server.timezone:",
        "server.tiemout: unknown key",
        "channels[1].endpoint: not a URL",
        "channels[2].type: must be one of",
        "channels[2].price_per_token: must be a number",
        "channels[3].name: duplicate",
        "channels[4].name: is required",
        "channels[4].endpoint: is required",
        "rules[0].channel: no channel named 'missing'",
        "rules[1].expression:",
        "retry.max_attempts:",
        "storage.backend:",
        "typo_section: unknown key",
    ]:
        assert needle in text, needle


def test_windows_and_numbers():
    cfg = parse_config(
        {
            "channels": [
                {
                    "name": "n",
                    "type": "mock",
                    "discount_time": ["22:00-02:00", "12:00-13:00"],
                    "discount_price": 0.1,
                    "daily_limit": 1000,
                }
            ]
        }
    )
    ch = cfg.channels[0]
    assert [str(w) for w in ch.discount_time] == ["22:00-02:00", "12:00-13:00"]
    with pytest.raises(ConfigError, match=r"channels\[0\].discount_time"):
        parse_config(
            {
                "channels": [
                    {
                        "name": "n",
                        "type": "mock",
                        "discount_time": ["25:00-02:00"],
                        "discount_price": 0.1,
                    }
                ]
            }
        )
    with pytest.raises(ConfigError, match=r"channels\[0\].daily_limit: must not be negative"):
        parse_config({"channels": [{"name": "n", "type": "mock", "daily_limit": -1}]})


def test_api_keys_forms():
    cfg = parse_config(
        {
            "security": {
                "auth": {
                    "api_keys": {
                        "a": "sk-plain",
                        "b": "sha256:" + "ab" * 32,
                        "c": {
                            "key": "sk-c",
                            "requests_per_minute": 60,
                            "burst": 5,
                            "models": ["gpt-4o-mini"],
                        },
                    }
                }
            }
        }
    )
    keys = {k.name: k for k in cfg.security.api_keys}
    assert keys["b"].sha256 == "ab" * 32
    assert keys["c"].burst == 5 and keys["c"].models == ("gpt-4o-mini",)
    with pytest.raises(ConfigError, match="64 hex"):
        parse_config({"security": {"auth": {"api_keys": {"x": "sha256:zz"}}}})


def test_yaml_syntax_error_is_located(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("server:\n  listen: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(p)


def test_every_problem_is_listed_even_beside_an_entry_refused_for_another_reason():
    """A channel refused for a bad price still takes part in the duplicate-name check, and a
    rule naming a channel that has a problem of its own is not told that the channel is
    missing (check-config lists every problem at once, contract §1)."""
    doc = {
        "channels": [
            {"name": "m", "type": "mock"},
            {"name": "m", "type": "mock", "price_per_token": -1},
            {"name": "z", "type": "mock", "status": "actve"},
        ],
        "rules": [
            {"name": "r", "channel": "z", "expression": "true"},
            {"name": "r", "channel": "nope", "expression": "open('x')"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    problems = info.value.problems
    assert "channels[1].name: duplicate of channels[0] 'm'" in problems
    assert any(p.startswith("channels[1].price_per_token") for p in problems)
    assert any(p.startswith("channels[2].status") for p in problems)
    assert not any(p.startswith("rules[0].channel") for p in problems)
    assert "rules[1].channel: no channel named 'nope'" in problems
    assert "rules[1].name: duplicate rule name 'r'" in problems
    assert len(problems) == 6, problems


def test_env_expansion_reaches_mapping_keys_and_refuses_two_keys_that_become_one():
    """``${VAR}`` is replaced in any string (contract §1), a ``model_mapping`` or ``api_keys``
    name included."""
    env = {"TEAM": "team-a", "SAME": "x"}
    doc = {"model_mapping": {"${MK:-gpt-4o-mini}": "llama"}, "api_keys": {"${TEAM}": "sk-1"}}
    assert expand_env(doc, env) == {
        "model_mapping": {"gpt-4o-mini": "llama"},
        "api_keys": {"team-a": "sk-1"},
    }
    with pytest.raises(ConfigError, match="both read 'x'"):
        expand_env({"m": {"${SAME}": 1, "x": 2}}, env)
