"""YAML alias budget (issue [6]): a 1 KB alias bomb is refused at once wherever a config is read
(check-config, start, reload, admin writes); ordinary anchors and aliases still load."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import base_config

from smartproxy.cli import main as cli_main
from smartproxy.config import ConfigError, load_config
from smartproxy.config.yamlsafe import AliasBombError, load


def bomb(width: int = 9, depth: int = 8) -> str:
    """About 1 KB describing width**depth nodes (43 million for 9 x 8)."""
    lines = [f"level_0: &level_0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth + 1):
        lines.append(f"level_{i}: &level_{i} [{', '.join([f'*level_{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_the_bomb_is_about_1_kb_and_refused_in_under_a_second() -> None:
    text = bomb(9, 9)
    assert len(text) < 1100
    started = time.perf_counter()
    with pytest.raises(AliasBombError, match="alias bomb"):
        load(text)
    assert time.perf_counter() - started < 1.0


def test_ordinary_aliases_load_unchanged() -> None:
    text = "models: &m [a, b]\nchannels:\n  - {name: x, models: *m}\n  - {name: y, models: *m}\n"
    assert load(text) == yaml.safe_load(text)
    assert load("") is None


def test_a_self_referring_alias_is_refused() -> None:
    with pytest.raises(AliasBombError, match="refers to the node"):
        load("a: &a [1, *a]\n")


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")  # used to crash (SIGSEGV)
    with pytest.raises(ConfigError, match="nested more than 200 levels"):
        load_config(path)
    (tmp_path / "dashes.yaml").write_text("a:\n" + "- " * 50_000 + "x\n")
    with pytest.raises(ConfigError, match="nested more than 200 levels"):
        load_config(tmp_path / "dashes.yaml")


def test_check_config_and_start_refuse_the_bomb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    started = time.perf_counter()
    assert cli_main(["check-config", str(path)]) == 1
    assert time.perf_counter() - started < 1.0
    assert "YAML aliases expand to more than 10,000 nodes" in capsys.readouterr().err
    started = time.perf_counter()
    assert cli_main(["run", "--config", str(path)]) == 1
    assert time.perf_counter() - started < 1.0
    assert "alias bomb" in capsys.readouterr().err


async def test_reload_and_admin_writes_refuse_the_bomb(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config(), write_file=True)
    gw.config_path.write_text(yaml.safe_dump(base_config()) + bomb())
    started = time.perf_counter()
    resp = await gw.client.post("/api/reload", headers=gw.admin_headers())
    assert resp.status == 400
    assert "alias bomb" in (await resp.json())["error"]["message"]
    resp = await gw.client.post(
        "/api/channels", json={"name": "m", "type": "mock"}, headers=gw.admin_headers()
    )
    assert resp.status == 409
    assert "alias bomb" in (await resp.json())["error"]["message"]
    assert time.perf_counter() - started < 1.0
    health = await (await gw.client.get("/health")).json()
    assert "alias bomb" in health["config"]["last_reload_error"]


def test_a_key_named_twice_is_refused_with_its_path_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("server:\n  timeout: 30\n  timeout: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ("server.timeout: key appears twice (lines 2 and 3)",)
    assert load("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n") == {
        "base": {"x": 1}, "other": {"x": 1, "y": 2}
    }


DOUBLED = """\
channels:
  - {name: a, type: openai, priority: 1, priority: 2, endpoint: 'not a url'}
  - name: b
    type: mock
    type: mock
    type: openai
server:
  timeout: 30
  timeout: 5
server: {listen: "nowhere"}
rules:
  - {name: r, channel: zz, expression: "true"}
"""


def test_every_key_named_twice_is_listed_with_every_other_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The first key named twice used to be the only problem listed (and the one last in the
    file, walking backwards: audit finding). Now each one, in file order, 0-based paths, beside
    the problems of the document as YAML loaders read it (the last value wins)."""
    path = tmp_path / "dup.yaml"
    path.write_text(DOUBLED)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (
        "channels[0].priority: key appears twice (lines 2 and 2)",
        "channels[1].type: key appears 3 times (lines 4, 5 and 6)",
        "server.timeout: key appears twice (lines 8 and 9)",
        "server: key appears twice (lines 7 and 10)",
        "server.listen: must be HOST:PORT, got 'nowhere'",  # the last server: wins
        "channels[0].endpoint: not a URL (http:// or https://), got 'not a url'",
        "channels[1].endpoint: is required",  # type: openai, the last one
        "rules[0].channel: no channel named 'zz'",
    )
    assert cli_main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "8 problem(s)" in err and "  channels[1].type: key appears 3 times" in err
    # a file otherwise valid is still refused: a key named twice is an error
    path.write_text("channels: [{name: m, type: mock, type: mock}]\n")
    with pytest.raises(ConfigError, match=r"channels\[0\].type: key appears twice"):
        load_config(path)
    # keys under an alias are reported once, where the anchor is
    path.write_text("x: &m {a: 1, a: 2}\ny: *m\nz: [*m]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p for p in info.value.problems if "twice" in p] == [
        "x.a: key appears twice (lines 1 and 1)"
    ]


async def test_reload_refuses_keys_named_twice_listing_every_problem(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config(), write_file=True)
    gw.config_path.write_text(DOUBLED)
    resp = await gw.client.post("/api/reload", headers=gw.admin_headers())
    assert resp.status == 400
    message = (await resp.json())["error"]["message"]
    for problem in ("channels[0].priority: key appears twice", "channels[1].type: key appears 3",
                    "server: key appears twice", "rules[0].channel: no channel named 'zz'"):
        assert problem in message
    health = await (await gw.client.get("/health")).json()
    assert "server.timeout: key appears twice" in health["config"]["last_reload_error"]
