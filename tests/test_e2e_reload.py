"""Issue [3] hot reload end to end: SIGHUP to a real process, state that survives, live streams.

One test runs ``python -m smartproxy run`` and sends it real SIGHUPs (bounded polling of the
subprocess is the only waiting); the others call ``Gateway.reload_from_file`` directly, which is
what the SIGHUP handler runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import DEV_KEY, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.config import ConfigError

MESSAGES = [{"role": "user", "content": "hi"}]


def edit_file(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# ----------------------------------------------------------------------------- a real SIGHUP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _chat(base: str, model: str) -> tuple[int, str]:
    req = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps({"model": model, "messages": MESSAGES}).encode(),
        headers={"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.headers["x-smartproxy-channel"]


def _poll(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _health(base: str) -> dict[str, Any]:
    return json.loads(_get(f"{base}/health")[1])


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_sighup_reloads_the_file_and_a_broken_file_keeps_the_old_config(tmp_path: Path) -> None:
    path = tmp_path / "smartproxy.yaml"
    path.write_text(yaml.safe_dump(base_config(channels=[
        {"name": "m1", "type": "mock", "models": ["m1-model"]}]), sort_keys=False))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    import smartproxy

    pkg_parent = str(Path(smartproxy.__file__).resolve().parent.parent)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartproxy", "run", "--config", str(path), "--listen",
         f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        _poll(lambda: _can_connect(port), "the gateway to listen")
        assert [c["name"] for c in _health(base)["channels"]] == ["m1"]
        edit_file(path, lambda d: d["channels"].append(
            {"name": "m2", "type": "mock", "models": ["m2-model"]}))
        proc.send_signal(signal.SIGHUP)
        _poll(lambda: len(_health(base)["channels"]) == 2, "the new channel")
        assert _chat(base, "m2-model") == (200, "m2")
        path.write_text(path.read_text().replace("type: mock", "type: nonsense", 1))
        proc.send_signal(signal.SIGHUP)
        _poll(lambda: _health(base)["config"]["last_reload_error"] is not None, "the error")
        health = _health(base)
        assert "channels[0].type" in health["config"]["last_reload_error"]
        assert health["status"] == "degraded"
        assert _chat(base, "m1-model") == (200, "m1") and _chat(base, "m2-model") == (200, "m2")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"config reload (SIGHUP) refused" in out
    audit = [json.loads(x) for x in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    assert [(a["action"], a["result"], a["address"]) for a in audit] == [
        ("reload", "ok", "signal"), ("reload", "error", "signal")]
    assert audit[0]["diff"] == {"channels": {"added": ["m2"], "removed": [], "changed": []}}


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- in-process reloads
async def test_a_stream_in_flight_completes_intact_across_a_reload(
    upstream_factory, gateway_factory
) -> None:
    up_a, url_a = await upstream_factory("a", default="hold")
    _, url_b = await upstream_factory("b")
    gw = await gateway_factory(base_config(channels=[channel("a", url_a)]), write_file=True)
    stream = await gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = stream.__aiter__()
    first = await asyncio.wait_for(chunks.__anext__(), 5)
    store, clock = gw.gateway.store, gw.gateway.clock
    assert (await store.usage(["a"], clock()))["a"].day_reserved_tokens > 0
    # the reload removes the very channel the stream is on, and adds another
    edit_file(gw.config_path, lambda d: d.update(channels=[channel("b", url_b)]))
    await gw.gateway.reload_from_file(reason="test")
    assert [c.name for c in gw.gateway.config.channels] == ["b"]
    assert (await store.usage(["a"], clock()))["a"].day_reserved_tokens > 0  # still reserved
    up_a.release.set()
    rest = [c async for c in chunks]
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert text == "Hello from the fake upstream."
    await gw.gateway.drain_background()
    usage = (await store.usage(["a"], clock()))["a"]
    assert usage.day_reserved_tokens == 0 and usage.total_tokens == 17  # settled, not lost
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-smartproxy-channel"] == "b"


async def test_usage_an_open_breaker_and_rate_buckets_survive_a_reload(
    upstream_factory, gateway_factory
) -> None:
    up_a, url_a = await upstream_factory("a", default="fail-500")
    up_b, url_b = await upstream_factory("b")
    cfg = base_config(channels=[channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
                      circuit_breaker={"fail_max": 1, "reset_timeout": 600})
    cfg["security"]["auth"]["api_keys"]["limited"] = {
        "key": "sk-limited-0123456789", "requests_per_minute": 1, "burst": 2}
    gw = await gateway_factory(cfg, write_file=True, monotonic=lambda: 1000.0)
    admin = gw.admin_headers()
    sdk, limited = gw.openai(), gw.openai("sk-limited-0123456789")
    for _ in range(2):
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES)
        assert raw.headers["x-smartproxy-channel"] == "b"
    for _ in range(2):
        await limited.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        await limited.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(up_a.seen) == 1  # one failure opened a's breaker
    usage_before = await (await gw.client.get("/api/usage", headers=admin)).json()

    def change(doc: dict[str, Any]) -> None:
        doc["channels"][0]["price_per_token"] = 0.001  # same names, new settings
        doc["channels"][1]["priority"] = 5
        doc["channels"].append({"name": "c", "type": "mock", "models": ["c-only"]})

    edit_file(gw.config_path, change)
    await gw.gateway.reload_from_file(reason="test")
    assert gw.gateway.config.channel("c") is not None
    usage_after = await (await gw.client.get("/api/usage", headers=admin)).json()
    for name in ("a", "b"):
        before = next(u for u in usage_before["channels"] if u["channel"] == name)
        after = next(u for u in usage_after["channels"] if u["channel"] == name)
        assert {k: after[k] for k in ("requests", "day_tokens", "total_tokens", "cost_usd")} == {
            k: before[k] for k in ("requests", "day_tokens", "total_tokens", "cost_usd")}
    assert next(u for u in usage_after["channels"] if u["channel"] == "b")["requests"] == 4
    health = await (await gw.client.get("/health")).json()
    assert {c["name"]: c["circuit"] for c in health["channels"]}["a"] == "open"
    raw = await sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-smartproxy-channel"] == "b" and len(up_a.seen) == 1  # a still skipped
    with pytest.raises(openai.RateLimitError):  # the bucket was not refilled by the reload
        await limited.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_a_broken_file_is_refused_whole_counted_and_shown(
    upstream_factory, gateway_factory
) -> None:
    _, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    good = gw.config_path.read_text()
    snapshot = gw.gateway.snapshot
    gw.config_path.write_text(good.replace(url, "not-a-url") + "bogus_key: 1\n")
    with pytest.raises(ConfigError) as info:
        await gw.gateway.reload_from_file(reason="test")
    assert len(info.value.problems) == 2 and gw.gateway.snapshot is snapshot
    resp = await gw.client.post("/api/reload", headers=gw.admin_headers())
    assert resp.status == 400
    assert "channels[0].endpoint" in (await resp.json())["error"]["message"]
    health = await (await gw.client.get("/health")).json()
    assert health["status"] == "degraded"
    assert "bogus_key: unknown key" in health["config"]["last_reload_error"]
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-smartproxy-channel"] == "a"  # the old config still serves
    # an admin write is refused too while the file does not load (409), and says why
    resp = await gw.client.post("/api/channels", headers=gw.admin_headers(),
                                json={"name": "m", "type": "mock"})
    assert resp.status == 409 and "channels[0].endpoint" in (await resp.json())["error"]["message"]
    gw.config_path.write_text(good)
    assert (await gw.client.post("/api/reload", headers=gw.admin_headers())).status == 200
    health = await (await gw.client.get("/health")).json()
    assert health["status"] == "ok" and health["config"]["last_reload_error"] is None
    metrics = await (await gw.client.get("/metrics")).text()
    reloads = {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "smartproxy_config_reloads"
        for s in family.samples if s.name.endswith("_total")
    }
    assert reloads == {"failure": 2.0, "success": 1.0}


async def test_a_refused_admin_write_is_shown_in_health(upstream_factory, gateway_factory):
    """Contract §6: a config that fails validation — file, SIGHUP or POST — is refused whole,
    and /health shows it. A refused write leaves the running config (and the file) as they
    were, so the status stays ok; ``config.last_refused`` says what was refused and why."""
    _, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    health = await (await gw.client.get("/health")).json()
    assert health["config"]["last_refused"] is None
    resp = await gw.client.post("/api/channels", headers=gw.admin_headers(),
                                json={"name": "bad", "type": "openai", "endpoint": "nope"})
    assert resp.status == 400
    health = await (await gw.client.get("/health")).json()
    refused = health["config"]["last_refused"]
    assert health["status"] == "ok" and refused["source"].startswith("admin ")
    assert "'bad'" in refused["source"] and "endpoint" in refused["error"] and refused["at"]
    gw.config_path.write_text("channels: [{name: x, type: nosuch}]\n")
    assert (await gw.client.post("/api/reload", headers=gw.admin_headers())).status == 400
    refused = (await (await gw.client.get("/health")).json())["config"]["last_refused"]
    assert refused["source"].startswith("reload") and "channels[0].type" in refused["error"]
