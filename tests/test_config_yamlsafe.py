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


def test_a_key_named_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("server:\n  timeout: 30\n  timeout: 5\n")
    with pytest.raises(ConfigError, match="line 3: key 'timeout' appears twice"):
        load_config(path)
    assert load("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n") == {
        "base": {"x": 1}, "other": {"x": 1, "y": 2}
    }
