"""Scale-out (issue [7]): real gateway processes sharing one Redis, driven over HTTP.

Two ``smartproxy run`` processes on two ports stand for two hosts (each its own request log),
one key prefix per test. Fake upstreams run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import channel
from gatewayprocs import ADMIN_SECRET, DEV_KEY, MESSAGES, GatewayProcess, gateway_config
from redisutil import PrivateRedis, delete_prefix, require_redis, unique_prefix

import smartproxy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="processes and signals")

USAGE_10 = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture
def procs() -> Any:
    started: list[GatewayProcess] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def shared_redis() -> Any:
    url = require_redis()
    prefix = unique_prefix()
    yield url, prefix
    delete_prefix(url, prefix)


def storage(url: str, prefix: str, folder: Path, host: str, **kw: Any) -> dict[str, Any]:
    # A generous timeout: on a loaded test machine a slow answer must not count as an outage
    # (which would switch to per-process counting); the outage test sets its own.
    kw.setdefault("timeout", 3)
    return {"backend": "redis", "url": url, "key_prefix": prefix,
            "path": str(folder / f"{host}.db"), **kw}


async def two_gateways(http: aiohttp.ClientSession, procs: list[GatewayProcess], folder: Path,
                       channels: list[dict[str, Any]], url: str, prefix: str,
                       **over: Any) -> tuple[GatewayProcess, GatewayProcess]:
    gws = []
    extras = {host: over.pop(f"storage_{host}", {}) for host in ("a", "b")}
    for host in ("a", "b"):
        cfg = gateway_config(channels, storage(url, prefix, folder, host, **extras[host]), **over)
        gws.append(GatewayProcess(folder, host, cfg))
    procs.extend(gws)
    a, b = await asyncio.gather(*(g.start(http) for g in gws))
    return a, b


async def test_400_concurrent_requests_never_overrun_a_free_quota_across_two_processes(
    tmp_path, http, procs, shared_redis, upstream_factory
):
    """Must-show 1."""
    url, prefix = shared_redis
    _, free_url = await upstream_factory("free", usage=dict(USAGE_10))
    _, paid_url = await upstream_factory("paid", usage=dict(USAGE_10))
    channels = [channel("free", free_url, daily_limit=1000),
                channel("paid", paid_url, price_per_token=1e-6)]
    a, b = await two_gateways(http, procs, tmp_path, channels, url, prefix)

    async def one(gw: GatewayProcess) -> str:
        status, headers, _ = await gw.chat(http, max_tokens=10)
        assert status == 200
        return headers["x-smartproxy-channel"]

    served = await asyncio.gather(*(one(a if i % 2 else b) for i in range(400)))
    counts = Counter(served)
    usage = await a.usage(http)
    free = usage["free"]
    # never more than one request past the limit, whatever the concurrency
    assert free["day_tokens"] == 10 * counts["free"] < 1000 + 10
    assert counts["paid"] > 0 and free["reserved_tokens"] == 0
    # then, whatever was left (reservations settle below their estimate), the quota is spent
    # to its end and the traffic moves to the paid channel
    tail: list[str] = []
    while (await b.usage(http))["free"]["day_tokens"] < 1000:
        tail.append(await one(a if len(tail) % 2 else b))
        assert len(tail) < 200
    for _ in range(10):  # used up: everything goes to the paid channel now
        tail.append(await one(a if len(tail) % 2 else b))
        assert tail[-1] == "paid"
    # the last answers' settlements reach Redis just after them: wait for every one
    deadline = time.monotonic() + 5
    usage = await b.usage(http)
    while sum(row["requests"] for row in usage.values()) < 400 + len(tail):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
        usage = await b.usage(http)
    assert 1000 <= usage["free"]["day_tokens"] < 1000 + 10
    n_free = usage["free"]["requests"]
    assert tail.count("free") == n_free - counts["free"]
    assert usage["paid"]["requests"] == 400 + len(tail) - n_free
    # the Redis counters equal the sum of both hosts' request logs
    a.stop()
    b.stop()
    logs = [a.log_rows(), b.log_rows()]
    for name in ("free", "paid"):
        assert sum(log.get(name, {}).get("requests", 0) for log in logs) == usage[name]["requests"]
        assert (sum(log.get(name, {}).get("total_tokens", 0) for log in logs)
                == usage[name]["total_tokens"])
    assert all(log for log in logs)  # both processes served


@pytest.mark.parametrize("stream", [False, True])
async def test_back_to_back_requests_alternating_processes_spend_a_small_quota_to_its_end(
    tmp_path, http, procs, shared_redis, upstream_factory, stream
):
    """Contract §1/§4: across processes exactly as in one. A client that sends each request the
    moment it has the previous answer, alternately to two processes, finds each finished
    request's reservation gone, so a quota smaller than one reservation (100 tokens against
    ~1,000 reserved) is spent to its end before the paid channel is used. The answer waited for
    its settlement to reach Redis; before, it went out first and the other process still counted
    the finished request as in flight (rq, rq, rq, rfb, rq, rfb, ... at 45 of 100)."""
    url, prefix = shared_redis
    usage_15 = {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}
    _, rq_url = await upstream_factory("rq", usage=dict(usage_15))
    _, fb_url = await upstream_factory("rfb", usage=dict(usage_15))
    channels = [channel("rq", rq_url, daily_limit=100),
                channel("rfb", fb_url, price_per_token=0.1)]
    a, b = await two_gateways(http, procs, tmp_path, channels, url, prefix)
    served = []
    for i in range(9):
        gw = a if i % 2 else b
        async with http.post(f"{gw.base}/v1/chat/completions",
                             json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream},
                             headers={"Authorization": f"Bearer {DEV_KEY}"}) as resp:
            assert resp.status == 200
            body = await resp.read()  # a stream: read to its end, [DONE] included
            assert body.endswith(b"data: [DONE]\n\n") if stream else b"choices" in body
            served.append(resp.headers["x-smartproxy-channel"])
    assert served == ["rq"] * 7 + ["rfb"] * 2  # 7 x 15 = 105: the 7th is the one past 100


async def test_back_to_back_requests_alternating_processes_spend_a_key_budget_to_its_end(
    tmp_path, http, procs, shared_redis, upstream_factory
):
    """A key's daily budget on a channel with no quota of its own: each answer waits for its
    spend to reach Redis, so the next request, through the other process, sees it (it went
    out first and 6 or 7 requests of $0.01 passed a $0.05 budget, audit finding)."""
    url, prefix = shared_redis
    usage = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    _, up_url = await upstream_factory("paid", usage=usage)
    keys = {"dev": DEV_KEY, "b": {"key": "sk-budget-0000000001", "daily_budget_usd": 0.05}}
    security = {"auth": {"api_keys": keys, "jwt": {"secret": ADMIN_SECRET}},
                "rate_limit": {"requests_per_minute": 1_000_000, "burst": 1_000_000}}
    a, b = await two_gateways(http, procs, tmp_path,
                              [channel("paid", up_url, price_per_token=0.001)], url, prefix,
                              security=security)  # fmt: skip
    statuses = []
    for i in range(8):
        gw = a if i % 2 else b
        status, _, _ = await gw.chat(http, key="sk-budget-0000000001")
        statuses.append(status)
    assert statuses == [200] * 5 + [429] * 3


async def test_a_burst_of_10_lets_exactly_10_through_two_processes(
    tmp_path, http, procs, shared_redis, upstream_factory
):
    """Must-show 2."""
    url, prefix = shared_redis
    _, up_url = await upstream_factory("up")
    security = {
        "auth": {"api_keys": {"dev": DEV_KEY}, "jwt": {"secret": "test-admin-secret-0123456789"}},
        "rate_limit": {"requests_per_minute": 1, "burst": 10},
    }
    a, b = await two_gateways(http, procs, tmp_path, [channel("up", up_url)], url, prefix,
                              security=security)
    results = await asyncio.gather(*(g.chat(http) for g in [a, b] * 20))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: 10, 429: 30}
    for status, headers, body in results:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert headers["x-ratelimit-limit-requests"] == "10"
            assert headers["x-ratelimit-remaining-requests"] == "0"
    status, headers, _ = await a.chat(http)  # the 41st: still refused, in either process
    assert status == 429 and "Retry-After" in headers


async def test_a_breaker_opened_in_one_process_holds_in_the_other_with_one_trial(
    tmp_path, http, procs, shared_redis, upstream_factory
):
    """Must-show 3."""
    url, prefix = shared_redis
    flaky, flaky_url = await upstream_factory("flaky")
    backup, backup_url = await upstream_factory("backup")
    flaky.default = "fail-500"
    channels = [channel("flaky", flaky_url), channel("backup", backup_url, price_per_token=1e-6)]
    a, b = await two_gateways(http, procs, tmp_path, channels, url, prefix,
                              circuit_breaker={"fail_max": 3, "reset_timeout": 2})
    for _ in range(3):  # three failures in A, each failed over to the backup
        status, headers, _ = await a.chat(http)
        assert status == 200 and headers["x-smartproxy-channel"] == "backup"
    opened = time.monotonic()
    assert len(flaky.seen) == 3
    # B's requests, sent at once (well within 1 s of the opening), never reach the channel: B's
    # reservation script refuses it the moment A's settlement opened it.
    results = await asyncio.gather(*(b.chat(http) for _ in range(10)))
    assert len(flaky.seen) == 3
    assert all(h["x-smartproxy-channel"] == "backup" for _, h, _ in results)
    await asyncio.sleep(0.6)
    health = await b.get(http, "/health", admin=False)
    assert {c["name"]: c["circuit"] for c in health["channels"]}["flaky"] == "open"
    # after reset_timeout: exactly one trial across both processes
    flaky.default = "gate-ok"
    await asyncio.sleep(max(0.0, 2.05 - (time.monotonic() - opened)))
    pending = [asyncio.ensure_future(g.chat(http)) for g in [a, b] * 6]
    deadline = time.monotonic() + 15
    while sum(1 for t in pending if not t.done()) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    # one trial (held at the gate), the other 11 went to the backup meanwhile
    assert len(flaky.seen) == 4
    assert sum(1 for t in pending if not t.done()) == 1
    flaky.gate.set()
    done = await asyncio.gather(*pending)
    assert Counter(h["x-smartproxy-channel"] for _, h, _ in done) == {"backup": 11, "flaky": 1}
    # the trial succeeded: closed for both
    for gw in (a, b):
        status, headers, _ = await gw.chat(http)
        assert headers["x-smartproxy-channel"] == "flaky"


async def test_kill_9_frees_the_reservations_it_held_within_their_expiry(
    tmp_path, http, procs, shared_redis, upstream_factory
):
    """Must-show 4: server.timeout 2 s + storage.reservation_grace 0.5 s."""
    url, prefix = shared_redis
    free, free_url = await upstream_factory("free")
    _, paid_url = await upstream_factory("paid")
    free.default = "slow"
    channels = [channel("free", free_url, daily_limit=100),
                channel("paid", paid_url, price_per_token=1e-6)]
    a, b = await two_gateways(
        http, procs, tmp_path, channels, url, prefix,
        server={"listen": "127.0.0.1:0", "timeout": 2},
        storage_a={"reservation_grace": 0.5}, storage_b={"reservation_grace": 0.5},
    )
    held = asyncio.ensure_future(a.chat(http, max_tokens=500))
    while not free.seen:
        await asyncio.sleep(0.01)
    reserved_at = time.monotonic()
    free.default = None
    status, headers, _ = await b.chat(http)  # the free quota is held by A's request
    assert headers["x-smartproxy-channel"] == "paid"
    assert (await b.usage(http, settled=False))["free"]["reserved_tokens"] > 100
    a.kill9()
    with pytest.raises(aiohttp.ClientError):
        await held
    while True:
        status, headers, _ = await b.chat(http)
        if headers["x-smartproxy-channel"] == "free":
            break
        assert time.monotonic() - reserved_at < 2.5 + 2.0, "the reservation never expired"
        await asyncio.sleep(0.1)
    assert time.monotonic() - reserved_at >= 2.0  # freed by its expiry, not before
    assert (await b.usage(http))["free"]["reserved_tokens"] == 0


async def test_redis_stopped_mid_run_open_keeps_serving_closed_refuses_nothing_lost(
    tmp_path, http, procs, upstream_factory
):
    """Must-show 5: A has on_error open, B closed; Redis (our own) stops and comes back."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        _, up_url = await upstream_factory("up", usage=dict(USAGE_10))
        prefix = unique_prefix()
        a, b = await two_gateways(
            http, procs, tmp_path, [channel("up", up_url)], server.url, prefix,
            storage_a={"on_error": "open", "timeout": 0.3},
            storage_b={"on_error": "closed", "timeout": 0.3},
        )
        for gw in (a, b, a, b):
            assert (await gw.chat(http))[0] == 200
        server.stop()
        started = time.monotonic()
        during_a = [await a.chat(http) for _ in range(5)]
        during_b = [await b.chat(http) for _ in range(3)]
        assert time.monotonic() - started < 5  # no request hangs on Redis
        assert [s for s, _, _ in during_a] == [200] * 5
        assert [s for s, _, _ in during_b] == [503] * 3
        assert during_b[0][2]["error"]["code"] == "storage_unavailable"
        for gw in (a, b):
            health = await gw.get(http, "/health", admin=False)
            assert health["status"] == "degraded" and health["storage"]["ok"] is False
        async with http.get(f"{a.base}/metrics") as resp:
            metrics = await resp.text()
        errors = [line for line in metrics.splitlines()
                  if line.startswith("smartproxy_storage_errors_total ")]
        assert errors and float(errors[0].split()[1]) >= 1
        server.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            healths = [await gw.get(http, "/health", admin=False) for gw in (a, b)]
            if all(h["storage"]["ok"] for h in healths):
                break
            await asyncio.sleep(0.1)
        assert (await b.chat(http))[0] == 200  # closed: serving again without a restart
        # settlements (and A's write-back) reach Redis just after the answers: wait for them
        deadline = time.monotonic() + 5
        while (usage := await a.usage(http))["up"]["requests"] < 10:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert usage["up"]["requests"] == 4 + 5 + 1  # the outage's 5 were written back
        assert usage["up"]["total_tokens"] == 100
    finally:
        for gw in procs:
            gw.stop()
        server.stop()
        outage_lines = [line for line in a.output().splitlines() if "unreachable" in line]
    assert len(outage_lines) == 1, a.output()  # logged once per outage
    assert "reachable again" in a.output()


async def test_workers_need_redis_and_serve_with_it(tmp_path, http, procs, shared_redis,
                                                    upstream_factory):
    """Must-show 7, and the parent restarts a worker that dies."""
    url, prefix = shared_redis
    _, up_url = await upstream_factory("up")
    lonely = GatewayProcess(tmp_path, "sqlite", gateway_config(
        [channel("up", up_url)], {"backend": "sqlite", "path": str(tmp_path / "s.db")}),
        workers=2)
    proc = lonely.spawn()
    assert proc.wait(20) != 0
    assert "storage.backend: redis" in lonely.output()
    gw = GatewayProcess(tmp_path, "workers", gateway_config(
        [channel("up", up_url, daily_request_limit=1000)],
        storage(url, prefix, tmp_path, "w")), workers=2)
    procs.append(gw)
    await gw.start(http)
    results = await asyncio.gather(*(gw.chat(http) for _ in range(40)))
    assert all(status == 200 for status, _, _ in results)
    await asyncio.sleep(1.0)  # the request log is written every 0.5 s: let both workers flush
    import psutil

    parent = psutil.Process(gw.proc.pid)
    deadline = time.monotonic() + 10
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    workers = parent.children()
    assert len(workers) == 2
    # Once the workers run, the parent is the lean supervisor (same pid): it holds far less
    # memory than a worker, where a copy of the loaded application held as much as one.
    deadline = time.monotonic() + 10
    while "smartproxy.supervisor" not in " ".join(parent.cmdline()):
        assert time.monotonic() < deadline, parent.cmdline()
        await asyncio.sleep(0.05)
    assert parent.memory_info().rss < min(w.memory_info().rss for w in workers) / 2
    workers[0].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    def alive_children() -> list[psutil.Process]:
        out = []
        for c in parent.children():
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c)
            except psutil.NoSuchProcess:  # the killed one, reaped between the two calls
                pass
        return out

    while time.monotonic() < deadline:
        alive = alive_children()
        if len(alive) == 2 and workers[0].pid not in {c.pid for c in alive}:
            break
        await asyncio.sleep(0.1)
    assert "died" in gw.output() and "starting a new one" in gw.output()
    (new,) = [c for c in alive_children() if c.pid != workers[1].pid]
    while not [c for c in new.net_connections("tcp") if c.status == psutil.CONN_LISTEN]:
        assert time.monotonic() < deadline + 30, "the new worker never listened"
        await asyncio.sleep(0.1)
    results = await asyncio.gather(*(gw.chat(http) for _ in range(20)))
    assert all(status == 200 for status, _, _ in results)
    usage = await gw.usage(http)
    assert usage["up"]["requests"] == 60  # both workers counted in one place
    assert gw.stop() == 0  # SIGTERM forwarded: every worker drained and exited 0
    # the workers of one host share its request log file (WAL, one writer at a time)
    assert gw.log_rows() == {"up": {"requests": 60, "total_tokens": 60 * 17}}


async def test_workers_stop_when_their_parent_is_killed(tmp_path, http, procs, shared_redis,
                                                        upstream_factory):
    """kill -9 of the parent (OOM killer, a supervisor's hard stop): its workers must not go on
    serving the port alone, where a restarted gateway would share it with them (SO_REUSEPORT)
    and they would keep answering with the old config."""
    import psutil

    url, prefix = shared_redis
    _, up_url = await upstream_factory("up")
    gw = GatewayProcess(tmp_path, "orphans", gateway_config(
        [channel("up", up_url)], storage(url, prefix, tmp_path, "o")), workers=2)
    procs.append(gw)
    await gw.start(http)
    assert gw.proc is not None
    parent = psutil.Process(gw.proc.pid)
    deadline = time.monotonic() + 10
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    workers = parent.children()
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, "workers kept serving after their parent was killed"


async def test_an_admin_change_is_live_in_every_worker(tmp_path, http, procs, shared_redis,
                                                       upstream_factory):
    """``POST /api/channels`` is live at once: with --workers 2 the worker that took it is not
    the only one serving the new channel (nor is it for ``POST /api/reload``)."""
    url, prefix = shared_redis
    _, up_url = await upstream_factory("up")
    gw = GatewayProcess(tmp_path, "admin", gateway_config(
        [channel("up", up_url, models=["gpt-4o-mini"])], storage(url, prefix, tmp_path, "x")),
        workers=2)
    procs.append(gw)
    await gw.start(http)
    new = {"name": "added", "type": "openai", "endpoint": up_url, "api_key": "sk-added-0001",
           "models": ["gpt-added"]}
    async with http.post(f"{gw.base}/api/channels", json=new,
                         headers=gw.admin_headers()) as resp:
        assert resp.status in (200, 201), await resp.text()

    async def models_seen(model: str = "gpt-added") -> list[bool]:
        seen = []
        fresh = aiohttp.TCPConnector(force_close=True)  # each request a new connection
        async with aiohttp.ClientSession(connector=fresh) as one_shot:
            for _ in range(12):
                async with one_shot.get(f"{gw.base}/v1/models",
                                        headers={"Authorization": f"Bearer {DEV_KEY}"}) as r:
                    ids = [m["id"] for m in (await r.json())["data"]]
                seen.append(model in ids)
        return seen

    deadline = time.monotonic() + 5
    while not all(seen := await models_seen()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert all(seen), seen
    # a hand edit of the file, then POST /api/reload to one worker
    text = Path(gw.config_path).read_text()
    Path(gw.config_path).write_text(text.replace("gpt-added", "gpt-edited"))
    async with http.post(f"{gw.base}/api/reload", headers=gw.admin_headers()) as resp:
        assert resp.status == 200, await resp.text()
    deadline = time.monotonic() + 5
    while not all(seen := await models_seen("gpt-edited")) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert all(seen), seen
    # a worker that dies is restarted with the config file as it is now, not as it was when
    # the parent started
    import psutil

    assert gw.proc is not None
    parent = psutil.Process(gw.proc.pid)
    (victim, other) = parent.children()
    victim.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        fresh = [c for c in parent.children() if c.pid not in (victim.pid, other.pid)]
        if fresh and [c for c in fresh[0].net_connections("tcp")
                      if c.status == psutil.CONN_LISTEN]:
            break
        assert time.monotonic() < deadline, "no new worker listened"
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + 5
    while not all(seen := await models_seen("gpt-edited")) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert all(seen), seen


async def test_metrics_with_workers_count_every_worker(tmp_path, http, procs, shared_redis,
                                                       upstream_factory):
    """With --workers 2 a scrape reaches one worker; it answers for both, so counters never go
    back between scrapes (a Prometheus parser reads them)."""
    from prometheus_client.parser import text_string_to_metric_families

    url, prefix = shared_redis
    _, up_url = await upstream_factory("up")
    before = set(Path(tempfile.gettempdir()).glob("smartproxy-workers-*"))
    gw = GatewayProcess(tmp_path, "scraped", gateway_config(
        [channel("up", up_url)], storage(url, prefix, tmp_path, "m")), workers=2)
    procs.append(gw)
    await gw.start(http)
    results = await asyncio.gather(*(gw.chat(http) for _ in range(40)))
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200]

    def value(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        raise AssertionError(f"{name}{labels} not in the scrape")

    def scrapes(text: str) -> float:
        try:
            return value(text, "smartproxy_requests_total", endpoint="/metrics", status="200")
        except AssertionError:
            return 0.0

    # Each scrape on a new connection: the kernel picks either worker (SO_REUSEPORT).
    seen, scraped = [], []
    for headers in ({}, {}, {}, {}, {}, {"X-SmartProxy-Peer": "1"}):  # the header: TCP ignores it
        async with aiohttp.ClientSession() as fresh:
            async with fresh.get(f"{gw.base}/metrics", headers=headers) as resp:
                assert resp.status == 200
                text = await resp.text()
        seen.append(value(text, "smartproxy_requests_total",
                          endpoint="/v1/chat/completions", status="200"))
        scraped.append(scrapes(text))
        assert value(text, "smartproxy_upstream_requests_total", channel="up", status="200") == 40
        assert value(text, "smartproxy_request_duration_seconds_count",
                     endpoint="/v1/chat/completions") == 40
        assert value(text, "smartproxy_build_info", version=smartproxy.__version__) == 1
    assert seen == [40] * 6
    # A scrape is one request, however many workers answer it (each counted it, audit finding).
    assert scraped == [0, 1, 2, 3, 4, 5]
    assert gw.stop() == 0
    assert set(Path(tempfile.gettempdir()).glob("smartproxy-workers-*")) <= before  # removed
