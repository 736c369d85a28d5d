"""Issue [6], admin values: text that would break routing, logs or the file is refused with its
path (400), and a URL with user:password@ is refused without the password reaching any view,
the audit log or the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from conftest import base_config, channel

from smartproxy.cli import main as cli_main


async def admin_gateway(gateway_factory: Any, tmp_path: Path) -> Any:
    cfg = base_config(channels=[channel("a", "http://127.0.0.1:9/v1")])
    cfg["audit"] = {"path": str(tmp_path / "audit.log")}
    return await gateway_factory(cfg, write_file=True)


BAD_VALUES = {
    "api_key CRLF": ({"api_key": "sk-abc\r\nX-Injected: 1"}, "channels[1].api_key"),
    "api_key LF": ({"api_key": "sk-abc\n"}, "channels[1].api_key"),
    "header value CRLF": ({"headers": {"X-Org": "org\r\nX-Injected: 1"}}, "channels[1].headers"),
    "header name": ({"headers": {"X Org:": "v"}}, "channels[1].headers"),
    "model with NUL": ({"models": ["gpt\x00"]}, "channels[1].models"),
    "name with newline": ({"name": "b\nforged"}, "channels[1].name"),
    "endpoint with newline": ({"endpoint": "http://x/v\r\n1"}, "channels[1].endpoint"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
async def test_control_characters_in_admin_values_are_400_with_their_path(
    gateway_factory: Any, tmp_path: Path, case: str
) -> None:
    gw = await admin_gateway(gateway_factory, tmp_path)
    change, path = BAD_VALUES[case]
    body = {**channel("b", "http://127.0.0.1:9/v1"), **change}
    before = gw.config_path.read_text()
    resp = await gw.client.post("/api/channels", json=body, headers=gw.admin_headers())
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["param"] == path, err
    assert "control characters" in err["message"] or "header name" in err["message"]
    assert gw.config_path.read_text() == before
    audit = (tmp_path / "audit.log").read_text()
    assert "sk-abc" not in audit and "org\\r" not in audit
    assert len(audit.splitlines()) == 1 and json.loads(audit)["result"] == "error"


async def test_key_names_with_control_characters_are_refused(
    gateway_factory: Any, tmp_path: Path
) -> None:
    gw = await admin_gateway(gateway_factory, tmp_path)
    resp = await gw.client.post(
        "/api/keys", json={"name": "team\nb", "key": "sk-gw-x-0001"}, headers=gw.admin_headers()
    )
    assert resp.status == 400
    assert "control characters" in (await resp.json())["error"]["message"]


async def test_names_of_any_text_reach_delete(gateway_factory: Any, tmp_path: Path) -> None:
    """DELETE matches every name (the route used to stop at a newline and answer a bare 404)."""
    gw = await admin_gateway(gateway_factory, tmp_path)
    resp = await gw.client.delete("/api/channels/" + quote("a\nb", safe=""),
                                  headers=gw.admin_headers())
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert "no channel" in err["message"] and "a\\nb" in err["message"], err
    ok = await gw.client.delete("/api/channels/a", headers=gw.admin_headers())
    assert ok.status == 200


async def test_endpoint_userinfo_is_refused_and_shown_nowhere(
    gateway_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await admin_gateway(gateway_factory, tmp_path)
    body = channel("b", "https://bob:hunter2secret@api.example.com/v1")
    caplog.set_level(logging.DEBUG)
    resp = await gw.client.post("/api/channels", json=body, headers=gw.admin_headers())
    assert resp.status == 400
    text = await resp.text()
    err = json.loads(text)["error"]
    assert err["param"] == "channels[1].endpoint" and "user:password@" in err["message"]
    views = [text]
    for path in ("/api/channels", "/health", "/api/usage"):
        views.append(await (await gw.client.get(path, headers=gw.admin_headers())).text())
    views.append((tmp_path / "audit.log").read_text())
    views.append(gw.config_path.read_text())
    views.append(caplog.text)
    for view in views:
        assert "hunter2secret" not in view


def test_check_config_refuses_userinfo_and_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = base_config(channels=[
        channel("a", "https://u:pw-secret-9@h.example/v1"),
        channel("b", "https://h.example/v1", api_key="sk-x\r\n"),
    ])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "channels[0].endpoint: must not contain user:password@" in err
    assert "channels[1].api_key: must not contain control characters" in err
    assert "pw-secret-9" not in err


async def test_deeply_nested_admin_bodies_are_400(gateway_factory: Any, tmp_path: Path) -> None:
    gw = await admin_gateway(gateway_factory, tmp_path)
    body = '{"name": "x", "models": ' + "[" * 100_000 + "]" * 100_000 + "}"
    resp = await gw.client.post("/api/channels", data=body, headers=gw.admin_headers())
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "the body must be JSON"
