"""The README read from the top by a new user: the admin example works as written with the shipped
config, the ``token`` command says what to do, and ``--listen`` does not make every reload warn."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from smartproxy.app import create_app
from smartproxy.cli import main as cli_main
from smartproxy.cli import with_listen
from smartproxy.config import load_config
from smartproxy.state import GATEWAY

ROOT = Path(__file__).resolve().parent.parent
EXPORT = "export SMARTPROXY_JWT_SECRET=$(openssl rand -hex 32)"


def admin_example() -> list[str]:
    """The lines of the README's shell block that mints a token."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "smartproxy token --sub alice" in b)
    return block.replace("\\\n", " ").splitlines()


async def test_the_readme_admin_example_works_as_written(
    gateway_factory: Any, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    lines = admin_example()
    token_at = next(i for i, line in enumerate(lines) if "smartproxy token" in line)
    assert any(line.startswith(EXPORT) for line in lines[:token_at])
    (tmp_path / "etc").mkdir()
    shutil.copy(ROOT / "etc" / "smartproxy.yaml", tmp_path / "etc" / "smartproxy.yaml")
    assert (ROOT / "etc" / "smartproxy.yaml").read_text() == (
        ROOT / "smartproxy" / "default.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    argv = lines[token_at].split("$(", 1)[1].rstrip(")").split()[1:]  # token --sub alice ...

    monkeypatch.delenv("SMARTPROXY_JWT_SECRET", raising=False)
    assert cli_main(argv) == 1  # not exported yet: the error says exactly what to do
    assert EXPORT in capsys.readouterr().err

    monkeypatch.setenv("SMARTPROXY_JWT_SECRET", "0123456789abcdef" * 4)
    assert cli_main(argv) == 0
    token = capsys.readouterr().out.strip()
    gw = await gateway_factory(Path("etc/smartproxy.yaml"))  # started after the export
    admin = {"Authorization": f"Bearer {token}"}
    channels = await (await gw.client.get("/api/channels", headers=admin)).json()
    assert [(c["name"], c["status"]) for c in channels["channels"]] == [("local-mock", "active")]
    for line in lines[token_at + 1:]:
        posted = re.search(r"-d '(\{.*?\})'", line)
        if posted is None:
            continue
        path = re.search(r"localhost:8080(/api/\S+)", line)
        assert path is not None
        resp = await gw.client.post(path.group(1), headers=admin, json=json.loads(posted.group(1)))
        assert resp.status == 201, await resp.text()
    groq = next(c for c in (await (await gw.client.get("/api/channels", headers=admin)).json())
                ["channels"] if c["name"] == "groq")
    # Added disabled (to be tested first), with a priority: the mock keeps serving meanwhile ...
    body = {"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "hi"}]}
    route = await (await gw.client.post("/api/route", headers=admin, json=body)).json()
    assert [c["channel"] for c in route["candidates"]] == ["local-mock"]
    # ... and once enabled it comes first, as the README says (free, priority 1 < 100).
    resp = await gw.client.post("/api/channels", headers=admin, json={**groq, "status": "active"})
    assert resp.status == 200
    route = await (await gw.client.post("/api/route", headers=admin, json=body)).json()
    assert [c["channel"] for c in route["candidates"]] == ["groq", "local-mock"]


async def test_with_listen_reloads_and_admin_writes_warn_only_about_real_changes(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "smartproxy.yaml"
    doc = {
        "server": {"listen": "127.0.0.1:8080"},
        "channels": [{"name": "mock", "type": "mock"}],
        "security": {"auth": {"api_keys": {"dev": "sk-dev-0000000001"},
                              "jwt": {"secret": "s" * 32}}},
        "storage": {"backend": "memory", "path": str(tmp_path / "x.db")},  # audit.log there
    }
    path.write_text(yaml.safe_dump(doc))
    config = with_listen(load_config(path), "127.0.0.1:9191")  # what `run --listen` does
    app = create_app(config, config_path=str(path))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        gw = app[GATEWAY]
        admin = {"Authorization": f"Bearer {gw.verifier().mint('alice', 5)}"}
        caplog.set_level(logging.INFO)
        assert (await client.post("/api/reload", headers=admin)).status == 200
        resp = await client.post("/api/channels", headers=admin, json={"name": "m2", "type": "mock"})
        assert resp.status == 201
        assert "a restart applies it" not in caplog.text  # --listen stays: nothing to restart for
        assert (gw.config.server.host, gw.config.server.port) == ("127.0.0.1", 9191)
        doc = yaml.safe_load(path.read_text())
        doc["server"]["listen"] = "127.0.0.1:7070"  # a real change of the file's address
        path.write_text(yaml.safe_dump(doc))
        assert (await client.post("/api/reload", headers=admin)).status == 200
        assert caplog.text.count("a restart applies it") == 1
        assert (await client.post("/api/reload", headers=admin)).status == 200
        assert caplog.text.count("a restart applies it") == 1  # said once, when it changed
    finally:
        await client.close()
