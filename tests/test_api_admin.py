"""Issue [3] (and the /api/keys part of [4]) through HTTP: admin JWT, config routes, audit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import openai
import pytest
import yaml
from conftest import ADMIN_SECRET, DEV_KEY, base_config, channel
from openapi_spec_validator import validate

from smartproxy.api.docs import operations_without_examples
from smartproxy.cli import main as cli_main
from smartproxy.config import default_config_text, expand_env

MESSAGES = [{"role": "user", "content": "hi"}]


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iss": "smartproxy", "aud": "smartproxy-admin", "iat": now,
            "exp": now + 600, **over}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def chat(gw: Any, model: str, key: str = DEV_KEY) -> Any:
    return await gw.openai(key).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES)


# ----------------------------------------------------------------------------- must-show 1
@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("no token", None),
        ("bad signature", jwt.encode(claims(), "x" * 40, algorithm="HS256")),
        ("wrong aud", jwt.encode(claims(aud="someone-else"), ADMIN_SECRET, algorithm="HS256")),
        ("wrong iss", jwt.encode(claims(iss="evil"), ADMIN_SECRET, algorithm="HS256")),
        ("expired", jwt.encode(claims(exp=int(time.time()) - 3600), ADMIN_SECRET,
                               algorithm="HS256")),
        ("alg none", jwt.encode(claims(), None, algorithm="none")),
    ],
)
async def test_bad_admin_tokens_are_401_and_audited(gateway_factory, case, token) -> None:  # type: ignore[no-untyped-def]
    gw = await gateway_factory(base_config(), write_file=True)
    resp = await gw.client.get("/api/channels", headers=bearer(token) if token else {})
    assert resp.status == 401, case
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_admin_token"
    # the body does not say which check failed
    assert error["message"] in ("missing bearer token", "invalid or expired admin token")
    line = audit_lines(gw.config_path.parent / "audit.log")[-1]
    assert line["action"] == "auth_failed" and line["result"] == "error" and line["reason"]
    assert line["sub"] is None and line["target"] == "GET /api/channels"
    if token:
        text = (gw.config_path.parent / "audit.log").read_text()
        assert token not in text and token.split(".")[1] not in text


async def test_a_valid_token_and_the_token_commands_output_are_accepted(gateway_factory, capsys):  # type: ignore[no-untyped-def]
    gw = await gateway_factory(base_config(), write_file=True)
    ok = await gw.client.get("/api/channels", headers=bearer(jwt.encode(claims(), ADMIN_SECRET)))
    assert ok.status == 200
    assert cli_main(["token", "--sub", "ops-bob", "--minutes", "5",
                     "--config", str(gw.config_path)]) == 0
    token = capsys.readouterr().out.strip()
    resp = await gw.client.post("/api/channels", headers=bearer(token),
                                json={"name": "m2", "type": "mock"})
    assert resp.status == 201
    assert audit_lines(gw.config_path.parent / "audit.log")[-1]["sub"] == "ops-bob"


# ----------------------------------------------------------------------------- must-show 2
async def test_a_posted_channel_serves_the_next_request_and_survives_a_restart(
    upstream_factory, gateway_factory
) -> None:
    up_a, url_a = await upstream_factory("a")
    up_b, url_b = await upstream_factory("b")
    gw = await gateway_factory(base_config(channels=[channel("a", url_a, models=["gpt-4o-mini"])]),
                               write_file=True)
    admin = gw.admin_headers("alice")
    resp = await gw.client.post("/api/channels", headers=admin,
                                json=channel("b", url_b, models=["model-b"], price_per_token=1e-6))
    assert resp.status == 201
    body = await resp.json()
    assert body["created"] and body["saved"] and body["channel"]["api_key"] == "sk-...cret"
    raw = await chat(gw, "model-b")
    assert raw.headers["x-smartproxy-channel"] == "b"
    assert up_b.seen[-1].headers["Authorization"] == "Bearer sk-chan-b-secret"
    listed = await (await gw.client.get("/api/channels", headers=admin)).json()
    assert [c["name"] for c in listed["channels"]] == ["a", "b"]
    assert "sk-chan-a-secret" not in json.dumps(listed) and "sk-chan-b-secret" not in json.dumps(
        listed)
    restarted = await gateway_factory(gw.config_path)  # a new process on the saved file
    raw = await chat(restarted, "model-b")
    assert raw.headers["x-smartproxy-channel"] == "b" and len(up_b.seen) == 2
    assert restarted.gateway.config.channel("b").price_per_token == 1e-6


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("channels", {"name": "x", "type": "openai"}, "channels[1].endpoint"),
        ("channels", {"name": "x", "type": "gemini", "endpoint": "https://x/v1"},
         "channels[1].type"),
        ("channels", {"name": "x", "type": "openai", "endpoint": "sk-pasted-the-key-by-mistake"},
         "channels[1].endpoint"),
        ("rules", {"name": "r", "channel": "a", "expression": "__import__('os').system('id')"},
         "rules[0].expression"),
        ("rules", {"name": "r", "channel": "ghost", "expression": "true"}, "rules[0].channel"),
        ("channels", {"name": "x", "type": "mock", "api_key": "${HOME}"}, "api_key"),
        ("keys", {"name": "k", "key": "sk-k-0123456789", "burst": "many"},
         "security.auth.api_keys.k.burst"),
        ("channels", {"type": "mock"}, "name"),
        ("channels", ["not", "an", "object"], "(body)"),
    ],
)
async def test_invalid_posts_are_400_with_the_path_and_change_nothing(
    upstream_factory, gateway_factory, route, body, param
) -> None:
    _, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    before = gw.config_path.read_bytes()
    snapshot = gw.gateway.snapshot
    resp = await gw.client.post(f"/api/{route}", json=body, headers=gw.admin_headers())
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == param and error["code"] == "invalid_config"
    assert error["problems"][0].startswith(param)
    assert gw.config_path.read_bytes() == before
    assert gw.gateway.snapshot is snapshot


async def test_env_references_in_the_file_survive_a_get_edit_post_round_trip(
    upstream_factory, gateway_factory, tmp_path, monkeypatch
) -> None:
    up, url = await upstream_factory("a")
    monkeypatch.setenv("CHAN_A_KEY", "sk-from-the-environment-42")
    path = tmp_path / "smartproxy.yaml"
    doc = base_config(channels=[channel("a", url, api_key="${CHAN_A_KEY}")],
                      storage={"backend": "memory", "path": str(tmp_path / "x.db")})
    path.write_text("# hand-written\n" + yaml.safe_dump(doc, sort_keys=False))
    gw = await gateway_factory(path)
    admin = gw.admin_headers()
    shown = (await (await gw.client.get("/api/channels", headers=admin)).json())["channels"][0]
    assert shown["api_key"] == "sk-...t-42"
    shown["price_per_token"] = 0.5
    assert (await gw.client.post("/api/channels", json=shown, headers=admin)).status == 200
    text = path.read_text()
    assert "${CHAN_A_KEY}" in text and "sk-from-the-environment-42" not in text
    assert text.startswith("# hand-written\n") and "price_per_token: 0.5" in text
    await chat(gw, "gpt-4o-mini")
    assert up.seen[-1].headers["Authorization"] == "Bearer sk-from-the-environment-42"


async def test_delete_channel_named_by_rules_is_409(upstream_factory, gateway_factory) -> None:
    _, url = await upstream_factory("a")
    cfg = base_config(channels=[channel("a", url, models=["gpt-4o-mini"]),
                                channel("b", url, models=["only-b"])],
                      rules=[{"name": "prefer b", "channel": "b", "expression": "true"},
                             {"name": "b at night", "channel": "b", "expression": "hour < 6"}])
    gw = await gateway_factory(cfg, write_file=True)
    admin = gw.admin_headers()
    resp = await gw.client.delete("/api/channels/b", headers=admin)
    assert resp.status == 409
    assert "'prefer b'" in (await resp.json())["error"]["message"]
    assert "'b at night'" in (await resp.json())["error"]["message"]
    assert (await gw.client.delete("/api/channels/nope", headers=admin)).status == 404
    for rule in ("prefer b", "b at night"):
        assert (await gw.client.delete(f"/api/rules/{rule}", headers=admin)).status == 200
    assert (await gw.client.delete("/api/channels/b", headers=admin)).status == 200
    assert [c.name for c in gw.gateway.config.channels] == ["a"]
    assert "only-b" not in gw.config_path.read_text()
    slash = {"name": "team/x", "type": "mock", "models": ["x"]}  # a name with a "/" in it
    assert (await gw.client.post("/api/channels", json=slash, headers=admin)).status == 201
    assert (await gw.client.delete("/api/channels/team%2Fx", headers=admin)).status == 200
    with pytest.raises(openai.NotFoundError):
        await chat(gw, "only-b")


async def test_rules_are_listed_and_upserted(upstream_factory, gateway_factory) -> None:
    _, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    admin = gw.admin_headers()
    rule = {"name": "free first", "channel": "a", "expression": "day_tokens_used < 10 && true",
            "priority": 1}
    assert (await gw.client.post("/api/rules", json=rule, headers=admin)).status == 201
    rule["expression"] = "hour >= 0"
    assert (await gw.client.post("/api/rules", json=rule, headers=admin)).status == 200
    listed = await (await gw.client.get("/api/rules", headers=admin)).json()
    assert listed == {"rules": [rule]}
    route = await (await gw.client.post("/api/route", json={"model": "m", "messages": []},
                                        headers=admin)).json()
    assert route["matched_rule"] == "free first"


# ----------------------------------------------------------------------------- /api/keys ([4])
async def test_keys_generated_masked_used_and_deleted(upstream_factory, gateway_factory) -> None:
    _, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    admin = gw.admin_headers()
    resp = await gw.client.post("/api/keys", headers=admin,
                                json={"name": "team-b", "requests_per_minute": 60, "burst": 5})
    assert resp.status == 201
    body = await resp.json()
    new_key = body["api_key"]  # shown this once
    assert new_key.startswith("sk-gw-") and body["key"]["key"] == "sha256:..." + hashlib.sha256(
        new_key.encode()).hexdigest()[-4:]
    text = gw.config_path.read_text()
    assert new_key not in text and hashlib.sha256(new_key.encode()).hexdigest() in text
    assert (await chat(gw, "gpt-4o-mini", key=new_key)).headers["x-smartproxy-channel"] == "a"
    # an update without "key" keeps it, and shows no key
    resp = await gw.client.post("/api/keys", headers=admin, json={"name": "team-b", "burst": 9})
    assert resp.status == 200 and "api_key" not in await resp.json()
    listed = json.dumps(await (await gw.client.get("/api/keys", headers=admin)).json())
    assert new_key not in listed and DEV_KEY not in listed and '"burst": 9' in listed
    await chat(gw, "gpt-4o-mini", key=new_key)
    assert (await gw.client.delete("/api/keys/team-b", headers=admin)).status == 200
    with pytest.raises(openai.AuthenticationError):
        await chat(gw, "gpt-4o-mini", key=new_key)


async def test_without_a_config_file_changes_are_live_but_not_saved(
    gateway_factory, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default's ./data (usage db, audit.log)
    # what `smartproxy` runs with no config file: the built-in default, no JWT secret
    gw = await gateway_factory(expand_env(yaml.safe_load(default_config_text())))
    resp = await gw.client.post("/api/channels", headers=gw.admin_headers(),
                                json={"name": "m", "type": "mock", "models": ["mock-model"]})
    body = await resp.json()
    assert resp.status == 201 and body["saved"] is False and "not saved" in body["warning"]
    raw = await chat(gw, "mock-model", key="sk-gw-dev-local-only")
    assert raw.headers["x-smartproxy-channel"] == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no config file was made
    assert audit_lines(tmp_path / "data" / "audit.log")[-1]["action"] == "channel.upsert"
    # a second change builds on the first (kept in memory)
    await gw.client.post("/api/channels", headers=gw.admin_headers(),
                         json={"name": "m2", "type": "mock"})
    assert {"m", "m2"} <= {c.name for c in gw.gateway.config.channels}


# ----------------------------------------------------------------------------- must-show 5
async def test_audit_names_the_sub_and_no_secret_reaches_audit_or_log(
    upstream_factory, gateway_factory, caplog
) -> None:
    _, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    secret = "sk-super-secret-channel-key-7777"
    token = gw.gateway.verifier().mint("alice", 10)
    admin = bearer(token)
    caplog.set_level(logging.DEBUG)
    c = gw.client
    assert (await c.post("/api/channels", headers=admin,
                         json=channel("s", url, api_key=secret))).status == 201
    assert (await c.post("/api/channels", headers=admin,
                         json=channel("s", url, api_key=secret, priority=3))).status == 200
    assert (await c.post("/api/channels", headers=admin,  # the key pasted into the wrong field
                         json=channel("s", secret, api_key=secret))).status == 400
    assert (await c.post("/api/keys", headers=admin, json={"name": "k"})).status == 201
    assert (await c.delete("/api/channels/s", headers=admin)).status == 200
    assert (await c.post("/api/reload", headers=admin)).status == 200
    assert (await c.get("/api/channels", headers=bearer(token + "x"))).status == 401
    lines = audit_lines(gw.config_path.parent / "audit.log")
    assert [(x["action"], x["result"], x["sub"]) for x in lines] == [
        ("channel.upsert", "ok", "alice"),
        ("channel.upsert", "ok", "alice"),
        ("channel.upsert", "error", "alice"),
        ("key.upsert", "ok", "alice"),
        ("channel.delete", "ok", "alice"),
        ("reload", "ok", "alice"),
        ("auth_failed", "error", None),
    ]
    assert lines[0]["diff"]["api_key"] == {"old": None, "new": "sk-...7777"}
    assert lines[1]["diff"] == {"priority": {"old": 0, "new": 3}}
    assert "not a URL" in lines[2]["reason"] and lines[0]["address"] == "127.0.0.1"
    audit_text = (gw.config_path.parent / "audit.log").read_text()
    for text in (audit_text, caplog.text):
        for forbidden in (secret, token, token.split(".")[2], "sk-chan-a-secret", DEV_KEY,
                          ADMIN_SECRET):
            assert forbidden not in text


async def test_requests_refused_before_any_change_are_audited_too(gateway_factory) -> None:
    """A body without a name, and a channel test of a channel that does not exist, are refused
    before anything is changed or sent: each still leaves its audit line (result error)."""
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]),
                               write_file=True)
    admin = bearer(gw.gateway.verifier().mint("bob", 10))
    assert (await gw.client.post("/api/channels", headers=admin, json={"type": "mock"})).status == 400
    assert (await gw.client.post("/api/channels/nope/test", headers=admin)).status == 404
    lines = audit_lines(gw.config_path.parent / "audit.log")
    assert [(x["action"], x["target"], x["result"], x["sub"]) for x in lines] == [
        ("channel.upsert", "", "error", "bob"),
        ("channel.test", "nope", "error", "bob"),
    ]
    assert "name: is required" in lines[0]["reason"] and "no channel named" in lines[1]["reason"]


# ----------------------------------------------------------------------------- concurrency
async def test_a_write_racing_a_reload_loses_neither_change(gateway_factory) -> None:
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]),
                               write_file=True)
    lock = gw.gateway.write_lock
    await lock.acquire()
    reload = asyncio.ensure_future(gw.gateway.reload_from_file(reason="SIGHUP"))
    post = asyncio.ensure_future(gw.client.post(
        "/api/channels", headers=gw.admin_headers(), json={"name": "posted", "type": "mock"}))
    for _ in range(1000):  # both wait for the lock
        if len(lock._waiters or ()) == 2:  # noqa: SLF001
            break
        await asyncio.sleep(0.001)
    doc = yaml.safe_load(gw.config_path.read_text())
    doc["channels"].append({"name": "by-hand", "type": "mock"})  # the edit SIGHUP announces
    gw.config_path.write_text(yaml.safe_dump(doc))
    lock.release()
    await reload
    assert (await post).status == 201
    names = {c.name for c in gw.gateway.config.channels}
    assert names == {"m", "by-hand", "posted"}
    saved = {c["name"] for c in yaml.safe_load(gw.config_path.read_text())["channels"]}
    assert saved == names


async def test_concurrent_writes_are_serialised(gateway_factory) -> None:
    gw = await gateway_factory(base_config(), write_file=True)
    admin = gw.admin_headers()
    results = await asyncio.gather(*(
        gw.client.post("/api/channels", headers=admin, json={"name": f"m{i}", "type": "mock"})
        for i in range(6)))
    assert [r.status for r in results] == [201] * 6
    saved = [c["name"] for c in yaml.safe_load(gw.config_path.read_text())["channels"]]
    assert sorted(saved) == [f"m{i}" for i in range(6)]
    assert sorted(c.name for c in gw.gateway.config.channels) == sorted(saved)


async def test_swagger_documents_the_config_routes(gateway_factory) -> None:
    gw = await gateway_factory(base_config())
    spec = await (await gw.client.get("/swagger.json")).json()
    validate(spec)
    paths = spec["paths"]
    for route in ("channels", "rules", "keys"):
        assert {"get", "post"} <= set(paths[f"/api/{route}"])
        assert "delete" in paths[f"/api/{route}/{{name}}"]
        assert paths[f"/api/{route}"]["post"]["security"] == [{"adminJWT": []}]
    assert operations_without_examples(spec) == []
    for name in ("Channel", "Rule", "ApiKey", "ConfigChange"):
        assert name in spec["components"]["schemas"]


async def test_a_key_named_by_a_variable_in_the_file_is_edited_and_deleted_by_what_it_reads(
    gateway_factory, tmp_path, monkeypatch
) -> None:
    """``${TEAM}`` as a key's name reads ``team-b``: the admin API finds it by that name,
    edits it in place (the file keeps ``${TEAM}``) and deletes it."""
    monkeypatch.setenv("TEAM", "team-b")
    path = tmp_path / "smartproxy.yaml"
    doc = base_config(channels=[{"name": "m", "type": "mock"}],
                      storage={"backend": "memory", "path": str(tmp_path / "x.db")})
    doc["security"]["auth"]["api_keys"]["${TEAM}"] = {"key": "sk-gw-team-b-0123456789", "burst": 7}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    gw = await gateway_factory(path)
    admin, c = gw.admin_headers(), gw.client
    keys = (await (await c.get("/api/keys", headers=admin)).json())["keys"]
    team = next(k for k in keys if k["name"] == "team-b")
    resp = await c.post("/api/keys", headers=admin, json={**team, "burst": 8})
    assert resp.status == 200, await resp.text()
    stored = yaml.safe_load(path.read_text())["security"]["auth"]["api_keys"]
    assert stored["${TEAM}"] == {"key": "sk-gw-team-b-0123456789", "burst": 8}
    assert "team-b" not in stored
    assert (await c.delete("/api/keys/team-b", headers=admin)).status == 200
    assert "${TEAM}" not in yaml.safe_load(path.read_text())["security"]["auth"]["api_keys"]


async def test_a_token_without_sub_is_accepted_and_audited_as_sub_null(gateway_factory):  # type: ignore[no-untyped-def]
    """Contract §6: signature, iss, aud, exp; no sub is required (audit finding)."""
    gw = await gateway_factory(base_config(), write_file=True)
    no_sub = {k: v for k, v in claims().items() if k != "sub"}
    token = jwt.encode(no_sub, ADMIN_SECRET)
    assert (await gw.client.get("/api/channels", headers=bearer(token))).status == 200
    resp = await gw.client.post("/api/channels", headers=bearer(token),
                                json={"name": "m2", "type": "mock"})
    assert resp.status == 201
    line = audit_lines(gw.config_path.parent / "audit.log")[-1]
    assert line["action"] == "channel.upsert" and line["result"] == "ok" and line["sub"] is None
