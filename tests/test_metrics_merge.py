"""``metrics_merge``: how the worker a scrape reaches adds its siblings' metrics (the end-to-end
test with ``--workers 2`` is in ``test_e2e_redis.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.metrics import Metrics
from smartproxy.metrics_merge import PEER_HEADER, merge, peer_sockets, peer_text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_add_up_shared_gauges_take_the_largest_in_flight_adds_up() -> None:
    a, b = Metrics(), Metrics()
    a.observe_request("/v1/chat/completions", 200, 0.1)
    a.observe_request("/v1/chat/completions", 200, 0.3)
    b.observe_request("/v1/chat/completions", 200, 2.0)
    b.observe_request("/v1/chat/completions", 502, 2.0)
    a.add_usage("c", 10, 5, 0.5)
    b.add_usage("c", 1, 1, 0.25)
    a.auth_failure("bad_key")
    b.auth_failure("bad_key")
    a.config_reload(True)
    b.config_reload(True)  # one SIGHUP, both workers reloaded: one reload
    a.set_circuit("c", 2)
    b.set_circuit("c", 0)
    a.set_quota("c", "day", 10, 100)
    b.set_quota("c", "day", 12, 100)  # read from redis a moment later
    a.set_channel_in_flight("c", 3)
    b.set_channel_in_flight("c", 4)
    merged = samples(merge([a.render()[0].decode(), b.render()[0].decode()]).decode())
    ep = ("endpoint", "/v1/chat/completions")
    assert merged[("smartproxy_requests_total", (ep, ("status", "200")))] == 3
    assert merged[("smartproxy_requests_total", (ep, ("status", "502")))] == 1
    assert merged[("smartproxy_request_duration_seconds_count", (ep,))] == 4
    assert merged[("smartproxy_request_duration_seconds_bucket", (ep, ("le", "0.5")))] == 2
    assert merged[("smartproxy_request_duration_seconds_sum", (ep,))] == 4.4
    assert merged[("smartproxy_tokens_total", (("channel", "c"), ("kind", "prompt")))] == 11
    assert merged[("smartproxy_cost_usd_total", (("channel", "c"),))] == 0.75
    assert merged[("smartproxy_auth_failures_total", (("reason", "bad_key"),))] == 2
    assert merged[("smartproxy_config_reloads_total", (("result", "success"),))] == 1
    assert merged[("smartproxy_circuit_state", (("channel", "c"),))] == 2
    assert merged[("smartproxy_channel_tokens_used", (("channel", "c"), ("window", "day")))] == 12
    assert merged[("smartproxy_channel_in_flight", (("channel", "c"),))] == 7
    created = ("smartproxy_auth_failures_created", (("reason", "bad_key"),))
    assert merged[created] == min(
        samples(a.render()[0].decode())[created], samples(b.render()[0].decode())[created]
    )


def test_one_text_merges_to_itself() -> None:
    a = Metrics()
    a.observe_request("/v1/embeddings", 200, 0.02)
    text = a.render()[0].decode()
    assert samples(merge([text]).decode()) == samples(text)


async def test_a_peer_answers_over_its_socket_and_a_dead_one_is_left_out(tmp_path: Path) -> None:
    asked: list[str | None] = []

    async def metrics(request: web.Request) -> web.Response:
        asked.append(request.headers.get(PEER_HEADER))
        return web.Response(text="smartproxy_x_total 1.0\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    live = str(tmp_path / "worker-1.sock")
    await web.UnixSite(runner, live).start()
    dead = tmp_path / "worker-2.sock"
    dead.write_bytes(b"")  # a socket file nobody listens on (a worker being replaced)
    own = str(tmp_path / "worker-0.sock")
    (tmp_path / "notes.txt").write_text("not a socket")
    try:
        assert peer_sockets(str(tmp_path), own) == [live, str(dead)]
        assert await peer_text(live) == "smartproxy_x_total 1.0\n"
        assert asked == ["1"]
        assert await peer_text(str(dead)) is None
        assert await peer_text(str(tmp_path / "missing.sock")) is None
    finally:
        await runner.cleanup()
    assert peer_sockets(str(tmp_path / "gone"), own) == []


async def test_a_peer_that_hangs_is_given_up(tmp_path: Path) -> None:
    over = asyncio.Event()
    handled = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await over.wait()
        writer.close()
        await writer.wait_closed()
        handled.set()

    path = str(tmp_path / "worker-1.sock")
    server = await asyncio.start_unix_server(hold, path)
    try:
        assert await peer_text(path, timeout=0.1) is None
    finally:
        over.set()
        await asyncio.wait_for(handled.wait(), 5)
        server.close()
        await server.wait_closed()
