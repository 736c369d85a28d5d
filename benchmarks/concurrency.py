"""10,000 requests in flight (issue [8]): one command, one table.

Starts, as subprocesses on free 127.0.0.1 ports, the fake upstream ``slow_upstream.py`` (a bare
asyncio protocol on uvloop that can hold 10k+ slow requests) and the gateway
(``python -m smartproxy run --workers N``, one openai channel, one key, a rate limit too high to
bite), and runs these scenarios, each also straight at the upstream ("direct") where a comparison
is needed:

* S3: ``--connections`` (10,000) wrk connections, upstream 5-15 s uniform, ``--s3-seconds`` (90):
  req/s, added p50/p95/p99 (through the gateway minus direct), errors, peak RSS of all gateway
  processes, gateway CPU s per 1,000 requests, throughput ratio to direct;
* S3-light: the same connections, upstream 20-40 s (below saturation), ``--light-seconds`` (900:
  long enough that wrk's opening burst of 10,000 simultaneous requests is ~3 % of those counted,
  under the 5 % a p95 looks past): added p95, errors;
* S4: ``--streams`` (1,000) concurrent SSE streams, 64 events 20 ms apart: added time to first
  chunk p50/p95, CPU s per 1,000 streams, streams complete with every event in order;
* S5: soak, ``--soak-seconds`` (600) at half of S3's load (half the connections, same delay):
  RSS every 10 s, open files, drift (RSS at the end vs after minute 1);
* curve: gateway CPU µs per request at 50 / 1,000 / 5,000 / 10,000 connections at one request
  rate (``--curve-rate`` req/s: the upstream delay is connections / rate, +-50 % uniform), counted
  over a window in steady state; a PNG plot with matplotlib when it is installed
  (``pip install .[bench]``).

Pinning on 2 cores: the gateway's processes on core 0; the upstream, wrk and the stream client on
core 1 (``--no-pin`` turns it off). With ``--storage redis`` and no ``--redis-url``, the script
starts its own ``redis-server`` (no persistence, empty at the start) pinned to core 1 as well, so
that the gateway's core is the gateway's: the machine's Redis floats between the cores and its
state outlives runs. (S4 on the same code, 20 s: +126 ms added first-chunk p95 with the
machine's Redis; +5 and +85 ms with one pinned to core 1: S4's p95 moves that much from run to
run.) The load's own cost matters most in S4, where the load's core makes and takes 50,000
events a second: the fake upstream sends events made once, and the stream client looks each event
up among the upstream's before it would parse one (until 2026-12-01 both built or parsed every
event as JSON: 2.9-4.1 ms of CPU per stream on the load's core, which ran full, so that direct's
own first-chunk p95 went from 0.4 to 6 s between runs; now 1.6 ms per stream, p95 0.15-0.21 s).
Run: ``python benchmarks/concurrency.py [--only s3,curve]``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from proxy_overhead import (  # noqa: E402
    BODY,
    GATEWAY_KEY,
    MODEL,
    _die_with_parent,
    config_yaml,
    free_port,
    pick_cpus,
    start,
    stop,
    stop_all,
)
from slow_upstream import sse_event  # noqa: E402

STREAM_BODY = json.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Count to 64."}]},
    separators=(",", ":"),
)

# the fake upstream's stream events (without their blank line) -> their seq
KNOWN_EVENTS = {sse_event(seq)[:-2]: seq for seq in range(64)}

WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.body = os.getenv("BENCH_BODY")
function done(s, latency, requests)
  local e = s.errors
  io.write(string.format('{"requests":%d,"duration_s":%.3f,"p50":%.3f,"p95":%.3f,"p99":%.3f,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"non2xx":%d}\n', s.requests,
    s.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, e.connect, e.read, e.write, e.timeout, e.status))
end
"""


# ---------------------------------------------------------------- processes


class Upstream:
    def __init__(self, cpu: int | None, workdir: Path, delay_ms: float, jitter_ms: float) -> None:
        self.port = free_port()
        log = workdir / f"upstream-{self.port}.log"
        cmd = [sys.executable, str(HERE / "slow_upstream.py"), "--port", str(self.port),
               "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)]
        self.proc = start(cmd, cpu, log)
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"upstream did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def answered(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return int(json.loads(r.read())["answered"])

    def close(self) -> None:
        stop(self.proc)


def gateway_config(workdir: Path, port: int, upstream_port: int, args: argparse.Namespace) -> Path:
    path = workdir / f"gateway-{port}.yaml"
    storage = f'backend: "{args.storage}", path: "{workdir / f"usage-{port}.db"}"'
    if args.storage == "redis":
        storage += f', url: "{args.redis_url}", key_prefix: "bench{port}:"'
    path.write_text(config_yaml(port, upstream_port, storage, timeout=120,
                                max_connections=args.pool))
    return path


class Gateway:
    """``smartproxy run --workers N`` in front of one upstream; CPU, RSS and fds of its tree."""

    def __init__(self, args: argparse.Namespace, cpu: int | None, workdir: Path, upstream: Upstream):
        self.port = free_port()
        cfg = gateway_config(workdir, self.port, upstream.port, args)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(args.src), os.environ.get("PYTHONPATH", "")) if p)}
        log = workdir / f"gateway-{self.port}.log"
        cmd = [sys.executable, "-m", "smartproxy", "run", "--config", str(cfg),
               "--workers", str(args.workers)]
        self.proc = start(cmd, cpu, log, env=env, cwd=str(workdir))
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        self.redis_url = args.redis_url if args.storage == "redis" else ""
        # Every worker must be up: ask until the port answers and the tree has them all (the
        # upstream may take many seconds, so readiness is /healthz, not a proxied request).
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"gateway exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"gateway not ready within 30 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        while len(self.tree()) < (args.workers + 1 if args.workers > 1 else 1):
            if time.monotonic() > deadline:
                sys.exit("gateway workers did not all start")
            time.sleep(0.1)
        time.sleep(1.0)
        self.log = log

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sum(self, what: str) -> float:
        total = 0.0
        for p in self.tree():
            try:
                if what == "cpu":
                    t = p.cpu_times()
                    total += t.user + t.system
                elif what == "rss":
                    total += p.memory_info().rss
                elif what == "pss":  # shared pages counted once, split between their users
                    total += p.memory_full_info().pss
                else:
                    total += p.num_fds()
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu(self) -> float:
        return self._sum("cpu")

    def rss_mb(self) -> float:
        return self._sum("rss") / 2**20

    def pss_mb(self) -> float:
        return self._sum("pss") / 2**20

    def fds(self) -> int:
        return int(self._sum("fds"))

    def redis_conns(self) -> int:
        """Connections of the Redis pool (``storage.max_connections`` at most per process)."""
        port = urllib.parse.urlsplit(self.redis_url).port or 6379
        total = 0
        for p in self.tree():
            try:
                total += sum(1 for c in p.net_connections(kind="tcp")
                             if c.raddr and c.raddr.port == port)
            except psutil.NoSuchProcess:
                pass
        return total

    def own_fds(self) -> int:
        """Open files but the Redis pool's: client and upstream sockets, files, pipes."""
        return self.fds() - (self.redis_conns() if self.redis_url else 0)

    def close(self) -> None:
        stop(self.proc)


class Sampler(threading.Thread):
    """Peak memory of the gateway's processes (every 0.5 s) while a run goes on: the sum of their
    RSS (pages shared between the parent and its forked workers counted in each) and of their
    PSS (each shared page counted once, split between the processes sharing it)."""

    def __init__(self, gw: Gateway | Floor) -> None:
        super().__init__(daemon=True)
        self.gw, self.peak, self.peak_pss, self._halt = gw, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            self.peak = max(self.peak, self.gw.rss_mb())
            self.peak_pss = max(self.peak_pss, self.gw.pss_mb())

    def finish(self) -> tuple[float, float]:
        self._halt.set()
        self.join()
        return self.peak, self.peak_pss


def wrk(url: str, connections: int, seconds: float, cpu: int | None, workdir: Path,
        body: str = BODY) -> dict[str, Any]:
    lua = workdir / "bench.lua"
    lua.write_text(WRK_LUA)
    env = {**os.environ, "BENCH_KEY": GATEWAY_KEY, "BENCH_BODY": body}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "120s",
           "-s", str(lua), url]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=seconds + 180,
                          preexec_fn=_die_with_parent)
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith('{"requests"')]
    if not lines:
        sys.exit(f"wrk failed: {proc.stdout.decode()}{proc.stderr.decode()}")
    out: dict[str, Any] = json.loads(lines[-1])
    out["errors"] = out["connect"] + out["read"] + out["write"] + out["timeout"] + out["non2xx"]
    out["rps"] = out["requests"] / out["duration_s"]
    return out


def settle(gw: Gateway, idle_fds: int | None = None, limit: float = 40.0) -> int:
    """Wait until the gateway's open files (but the Redis pool's: ``own_fds``) reach
    ``idle_fds``, or (without it) have not changed for 20 s, longer than the upstream pool keeps
    an idle connection (15 s); returns them."""
    deadline = time.monotonic() + limit
    last, since = gw.own_fds(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = gw.own_fds()
        if idle_fds is not None and now <= idle_fds:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif idle_fds is None and time.monotonic() - since >= 20:
            return now
    return last


class Floor:
    """``floor_proxy.py`` (a bare aiohttp pass-through) as ``--workers`` processes sharing one
    port: what aiohttp itself costs at this load, for comparison with the gateway."""

    def __init__(self, args: argparse.Namespace, cpu: int | None, workdir: Path,
                 upstream: Upstream) -> None:
        self.port = free_port()
        self.procs = [
            start([sys.executable, str(HERE / "floor_proxy.py"), "--port", str(self.port),
                   "--upstream", f"http://127.0.0.1:{upstream.port}", "--pool", str(args.pool),
                   "--reuse-port"], cpu, workdir / f"floor-{self.port}-{i}.log")
            for i in range(args.workers)
        ]
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        deadline = time.monotonic() + 20
        while len({p.pid for p in self.procs if self._listening(p.pid)}) < len(self.procs):
            if time.monotonic() > deadline:
                sys.exit("floor proxy did not start")
            time.sleep(0.1)
        time.sleep(1.0)

    def _listening(self, pid: int) -> bool:
        try:
            return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
                       for c in psutil.Process(pid).net_connections(kind="tcp"))
        except psutil.NoSuchProcess:
            return False

    def tree(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.procs if p.poll() is None]

    _sum = Gateway._sum
    cpu = Gateway.cpu
    rss_mb = Gateway.rss_mb
    pss_mb = Gateway.pss_mb

    def close(self) -> None:
        for p in self.procs:
            stop(p)


# ---------------------------------------------------------------- scenarios


@dataclass
class Report:
    rows: list[list[str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)


def measured_wrk(target: Gateway | Floor, conns: int, seconds: float,
                 cpus: dict[str, int | None], workdir: Path, after: float = 0) -> dict[str, Any]:
    """wrk against ``target`` with its peak memory (RSS and PSS sums) and CPU per 1,000; memory
    is sampled until ``after`` seconds past wrk's exit (its connections closing with requests
    in flight)."""
    sampler = Sampler(target)
    sampler.start()
    cpu0 = target.cpu()
    result = wrk(target.url, conns, seconds, cpus["load"], workdir)
    cpu_used = target.cpu() - cpu0
    time.sleep(after)
    result["peak_rss_mb"], result["peak_pss_mb"] = sampler.finish()
    result["cpu_s_per_1000"] = cpu_used / max(result["requests"], 1) * 1000
    return result


def run_wrk_pair(args: argparse.Namespace, name: str, delay: tuple[float, float], seconds: float,
                 conns: int, cpus: dict[str, int | None], workdir: Path) -> dict[str, Any]:
    """Direct, then through the gateway, against one upstream with ``delay`` (ms, jitter ms)."""
    up = Upstream(cpus["upstream"], workdir, *delay)
    try:
        direct = wrk(f"http://127.0.0.1:{up.port}/v1/chat/completions", conns, seconds,
                     cpus["load"], workdir)
        time.sleep(3)
        gw = Gateway(args, cpus["proxy"], workdir, up)
        try:
            idle_fds = gw.fds()
            proxied = measured_wrk(gw, conns, seconds, cpus, workdir, args.sample_after)
            proxied["idle_fds"] = idle_fds
        finally:
            gw.close()
    finally:
        up.close()
    print(f"{name}: direct {direct}\n{name}: gateway {proxied}", file=sys.stderr, flush=True)
    out = {"direct": direct, "gateway": proxied}
    if args.floor:
        out["floor"] = run_floor(args, name, delay, seconds, conns, cpus, workdir)
    return out


def run_floor(args: argparse.Namespace, name: str, delay: tuple[float, float], seconds: float,
              conns: int, cpus: dict[str, int | None], workdir: Path) -> dict[str, Any]:
    """The same load through the bare aiohttp pass-through (``--floor``), fresh processes."""
    up = Upstream(cpus["upstream"], workdir, *delay)
    try:
        floor = Floor(args, cpus["proxy"], workdir, up)
        try:
            result = measured_wrk(floor, conns, seconds, cpus, workdir)
        finally:
            floor.close()
    finally:
        up.close()
    print(f"{name}: floor {result}", file=sys.stderr, flush=True)
    return result


def _floor_row(rep: Report, name: str, d: dict[str, Any], f: dict[str, Any] | None) -> None:
    if f is None:
        return
    rep.rows.append([f"{name} aiohttp pass-through (floor)", f"{f['rps']:.0f} "
                     f"({f['rps'] / d['rps']:.2f}x direct)",
                     f"{f['p50']:.0f} / {f['p95']:.0f} / {f['p99']:.0f}",
                     f"{f['p50'] - d['p50']:+.0f} / {f['p95'] - d['p95']:+.0f} / "
                     f"{f['p99'] - d['p99']:+.0f}", str(f["errors"]), _mem(f),
                     f"{f['cpu_s_per_1000']:.2f}"])


def s3(args: argparse.Namespace, cpus: dict[str, int | None], workdir: Path, rep: Report) -> None:
    r = run_wrk_pair(args, "S3", (5000, 10000), args.s3_seconds, args.connections, cpus, workdir)
    d, g = r["direct"], r["gateway"]
    ratio = g["rps"] / d["rps"]
    rep.data["s3"] = r
    rep.rows.append(["S3 direct", f"{d['rps']:.0f}", f"{d['p50']:.0f} / {d['p95']:.0f} / {d['p99']:.0f}",
                     "–", str(d["errors"]), "–", "–"])
    rep.rows.append(["S3 gateway", f"{g['rps']:.0f} ({ratio:.2f}x direct)",
                     f"{g['p50']:.0f} / {g['p95']:.0f} / {g['p99']:.0f}",
                     f"{g['p50'] - d['p50']:+.0f} / {g['p95'] - d['p95']:+.0f} / "
                     f"{g['p99'] - d['p99']:+.0f}",
                     str(g["errors"]), _mem(g), f"{g['cpu_s_per_1000']:.2f}"])
    _floor_row(rep, "S3", d, r.get("floor"))
    ok = g["errors"] == 0 and ratio >= 0.95
    rep.targets.append(f"S3: 0 errors, >= 0.95x direct, peak memory < 300 MB: "
                       f"{g['errors']} errors, {ratio:.2f}x -> {'MET' if ok else 'NOT MET'}; "
                       f"peak RSS sum {g['peak_rss_mb']:.0f} MB -> "
                       f"{'MET' if g['peak_rss_mb'] < 300 else 'NOT MET'}, peak PSS sum "
                       f"{g['peak_pss_mb']:.0f} MB -> {'MET' if g['peak_pss_mb'] < 300 else 'NOT MET'}")


def s3_light(args: argparse.Namespace, cpus: dict[str, int | None], workdir: Path,
             rep: Report) -> None:
    r = run_wrk_pair(args, "S3-light", (20000, 20000), args.light_seconds, args.connections,
                     cpus, workdir)
    d, g = r["direct"], r["gateway"]
    rep.data["s3_light"] = r
    rep.rows.append(["S3-light direct", f"{d['rps']:.0f}",
                     f"{d['p50']:.0f} / {d['p95']:.0f} / {d['p99']:.0f}", "–", str(d["errors"]),
                     "–", "–"])
    added95 = g["p95"] - d["p95"]
    rep.rows.append(["S3-light gateway", f"{g['rps']:.0f}",
                     f"{g['p50']:.0f} / {g['p95']:.0f} / {g['p99']:.0f}",
                     f"{g['p50'] - d['p50']:+.0f} / {added95:+.0f} / {g['p99'] - d['p99']:+.0f}",
                     str(g["errors"]), _mem(g), f"{g['cpu_s_per_1000']:.2f}"])
    _floor_row(rep, "S3-light", d, r.get("floor"))
    ok = added95 < 100 and g["errors"] == 0
    rep.targets.append(f"S3-light: added p95 < 100 ms, 0 errors: +{added95:.0f} ms, "
                       f"{g['errors']} errors -> {'MET' if ok else 'NOT MET'}")


def s3_steady(args: argparse.Namespace, cpus: dict[str, int | None], workdir: Path,
              rep: Report) -> None:
    """S3-light measured per request: 10,000 keep-alive connections, upstream 20-40 s, each
    request's added time = its latency - what the upstream held it (no percentile of one run
    minus a percentile of another); all requests, and those sent in steady state (after wrk's
    first wave of 10,000 simultaneous new connections has been answered, and early enough to be
    answered before the end)."""
    seconds, lo = args.steady_seconds, args.steady_from
    window = (lo, seconds - 45.0)  # 40 s of upstream delay at most, then some
    up = Upstream(cpus["upstream"], workdir, 20000, 20000)
    try:
        direct = closed_client(f"127.0.0.1:{up.port}", args.connections, seconds, cpus["load"])
        time.sleep(3)
        gw = Gateway(args, cpus["proxy"], workdir, up)
        try:
            sampler = Sampler(gw)
            sampler.start()
            cpu0 = gw.cpu()
            proxied = closed_client(f"127.0.0.1:{gw.port}", args.connections, seconds,
                                    cpus["load"])
            cpu_used = gw.cpu() - cpu0
            peak = sampler.finish()
        finally:
            gw.close()
    finally:
        up.close()
    out: dict[str, Any] = {"window_s": window}
    for name, r in (("direct", direct), ("gateway", proxied)):
        out[name] = {"all": added_stats(r, None), "steady": added_stats(r, window)}
    out["gateway"]["peak_rss_mb"], out["gateway"]["peak_pss_mb"] = peak
    out["gateway"]["cpu_s_per_1000"] = cpu_used / max(len(proxied["rec"]), 1) * 1000
    print(f"S3-steady: {json.dumps(out)}", file=sys.stderr, flush=True)
    rep.data["s3_steady"] = out
    d, g = out["direct"], out["gateway"]
    for part, label in (("all", "all requests"), ("steady", f"sent at {window[0]:.0f}-"
                                                            f"{window[1]:.0f} s")):
        dd, gg = d[part], g[part]
        rep.rows.append([f"S3-light per request, {label}: direct", f"{dd['requests']} requests",
                         f"added by client+network {dd['p50']:.1f} / {dd['p95']:.1f} / "
                         f"{dd['p99']:.1f}", "–", str(dd["errors"]), "–", "–"])
        rep.rows.append([f"S3-light per request, {label}: gateway", f"{gg['requests']} requests",
                         f"added {gg['p50']:.1f} / {gg['p95']:.1f} / {gg['p99']:.1f}",
                         f"+{gg['p50'] - dd['p50']:.1f} / +{gg['p95'] - dd['p95']:.1f} / "
                         f"+{gg['p99'] - dd['p99']:.1f}", str(gg["errors"]),
                         _mem(g) if part == "all" else "–",
                         f"{g['cpu_s_per_1000']:.2f}" if part == "all" else "–"])
    for part in ("all", "steady"):
        a95 = g[part]["p95"] - d[part]["p95"]
        ok = a95 < 100 and g[part]["errors"] == 0
        rep.targets.append(f"S3-light per request ({part}): added p95 < 100 ms, 0 errors: "
                           f"+{a95:.1f} ms, {g[part]['errors']} errors -> "
                           f"{'MET' if ok else 'NOT MET'}")


def _mem(r: dict[str, Any]) -> str:
    return f"{r['peak_rss_mb']:.0f} / {r['peak_pss_mb']:.0f}"


def s4(args: argparse.Namespace, cpus: dict[str, int | None], workdir: Path, rep: Report) -> None:
    up = Upstream(cpus["upstream"], workdir, 0, 0)
    try:
        direct = stream_client(f"127.0.0.1:{up.port}", args.streams, args.s4_seconds,
                               cpus["load"])
        gw = Gateway(args, cpus["proxy"], workdir, up)
        try:
            cpu0 = gw.cpu()
            proxied = stream_client(f"127.0.0.1:{gw.port}", args.streams, args.s4_seconds,
                                    cpus["load"])
            proxied["cpu_s_per_1000"] = (gw.cpu() - cpu0) / max(proxied["done"], 1) * 1000
        finally:
            gw.close()
    finally:
        up.close()
    print(f"S4: direct {direct}\nS4: gateway {proxied}", file=sys.stderr, flush=True)
    rep.data["s4"] = {"direct": direct, "gateway": proxied}
    a50 = proxied["ttfc_p50"] - direct["ttfc_p50"]
    a95 = proxied["ttfc_p95"] - direct["ttfc_p95"]
    for name, r in (("S4 direct", direct), ("S4 gateway", proxied)):
        whole = f"{r['complete']}/{r['done']} whole, {r['bad']} bad"
        rep.rows.append([name, f"{r['done'] / r['seconds']:.0f} streams/s",
                         f"first chunk {r['ttfc_p50']:.1f} / {r['ttfc_p95']:.1f}",
                         "–" if r is direct else f"+{a50:.1f} / +{a95:.1f} (first chunk)",
                         f"{r['bad']} ({whole})", "–",
                         "–" if r is direct else f"{r['cpu_s_per_1000']:.2f} /1000 streams"])
    ok = a95 < 20 and proxied["bad"] == 0 and proxied["complete"] == proxied["done"] > 0
    rep.targets.append(f"S4: added first-chunk p95 < 20 ms, every stream whole: +{a95:.1f} ms, "
                       f"{proxied['complete']}/{proxied['done']} whole -> "
                       f"{'MET' if ok else 'NOT MET'}")


def s5(args: argparse.Namespace, cpus: dict[str, int | None], workdir: Path, rep: Report) -> None:
    up = Upstream(cpus["upstream"], workdir, 5000, 10000)
    try:
        gw = Gateway(args, cpus["proxy"], workdir, up)
        try:
            # "Idle" is after having served: pools that stay open by design (Redis connections)
            # are then open; upstream keep-alive connections close after their idle timeout.
            wrk(gw.url, args.connections // 2, args.soak_warmup, cpus["load"], workdir)
            idle_fds = settle(gw, limit=60)
            idle_redis = gw.redis_conns()
            series: list[tuple[float, float, int]] = []
            stop_ev = threading.Event()

            def sample() -> None:
                t0 = time.monotonic()
                while not stop_ev.wait(10.0):
                    series.append((round(time.monotonic() - t0), gw.rss_mb(), gw.fds()))

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            result = wrk(gw.url, args.connections // 2, args.soak_seconds, cpus["load"], workdir)
            stop_ev.set()
            th.join()
            after_fds = settle(gw, idle_fds, limit=45)
            after_redis = gw.redis_conns()
        finally:
            gw.close()
    finally:
        up.close()
    minute1 = next((r for t, r, _ in series if t >= 60), series[0][1] if series else 0.0)
    end = series[-1][1] if series else 0.0
    drift = (end - minute1) / minute1 * 100 if minute1 else float("nan")
    rep.data["s5"] = {"wrk": result, "series": series, "idle_fds": idle_fds,
                      "fds_after": after_fds, "redis_pool_idle": idle_redis,
                      "redis_pool_after": after_redis, "rss_minute1": minute1, "rss_end": end}
    print(f"S5: {rep.data['s5']}", file=sys.stderr, flush=True)
    rep.rows.append([f"S5 soak {args.soak_seconds:.0f} s, {args.connections // 2} conns",
                     f"{result['rps']:.0f}", f"{result['p50']:.0f} / {result['p95']:.0f} / "
                     f"{result['p99']:.0f}", "–", str(result["errors"]),
                     f"{minute1:.0f} -> {end:.0f} ({drift:+.1f} %)",
                     f"fds idle {idle_fds}, peak {max((f for *_, f in series), default=0)}, "
                     f"after {after_fds} (+ Redis pool {idle_redis} -> {after_redis})"])
    ok = abs(drift) <= 5 and after_fds <= idle_fds
    rep.targets.append(f"S5: RSS drift within 5 %, open files back to idle: {drift:+.1f} %, "
                       f"fds {after_fds} vs idle {idle_fds} -> {'MET' if ok else 'NOT MET'}")


def curve(args: argparse.Namespace, cpus: dict[str, int | None], workdir: Path,
          rep: Report) -> None:
    points = []
    for conns in args.curve:
        delay_ms = conns / args.curve_rate * 1000
        up = Upstream(cpus["upstream"], workdir, delay_ms * 0.5, delay_ms)
        try:
            gw = Gateway(args, cpus["proxy"], workdir, up)
            try:
                warm = delay_ms * 1.5 / 1000 + 3
                window = args.curve_window
                result: dict[str, Any] = {}
                th = threading.Thread(target=_wrk_into, args=(
                    result, gw.url, conns, warm + window + 2, cpus["load"], workdir))
                th.start()
                time.sleep(warm)
                c0, n0 = gw.cpu(), up.answered()
                time.sleep(window)
                c1, n1 = gw.cpu(), up.answered()
                th.join()
            finally:
                gw.close()
        finally:
            up.close()
        us = (c1 - c0) / max(n1 - n0, 1) * 1e6
        points.append({"connections": conns, "delay_ms": delay_ms, "rps": (n1 - n0) / window,
                       "cpu_us_per_request": us, "errors": result.get("errors")})
        print(f"curve: {points[-1]}", file=sys.stderr, flush=True)
    rep.data["curve"] = points
    base = points[0]["cpu_us_per_request"]
    for p in points:
        rep.rows.append([f"cost curve {p['connections']} conns", f"{p['rps']:.0f}",
                         f"delay {p['delay_ms'] / 2:.0f}-{p['delay_ms'] * 1.5:.0f}", "–",
                         str(p["errors"]), "–",
                         f"{p['cpu_us_per_request']:.0f} µs/req "
                         f"({p['cpu_us_per_request'] / base:.2f}x)"])
    top = points[-1]["cpu_us_per_request"] / base
    rep.targets.append(f"curve: CPU/request at {points[-1]['connections']} <= 1.3x at "
                       f"{points[0]['connections']}: {top:.2f}x -> {'MET' if top <= 1.3 else 'NOT MET'}")
    plot(points, args.plot)


def _wrk_into(result: dict[str, Any], *args: Any) -> None:
    result.update(wrk(*args))


def plot(points: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install .[bench]): no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [p["connections"] for p in points]
    ys = [p["cpu_us_per_request"] for p in points]
    ax.plot(xs, ys, marker="o")
    for x, y, p in zip(xs, ys, points, strict=True):
        ax.annotate(f"{p['rps']:.0f} req/s", (x, y), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0, top=max(ys) * 1.15)  # room for the labels above the points
    ax.set_xlabel("connections (requests in flight)")
    ax.set_ylabel("gateway CPU µs per request")
    ax.set_title("SmartProxy: CPU per request vs requests in flight")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}", file=sys.stderr)


YARDSTICK = """
import time
def work():
    total = 0
    for i in range(2_000_000):
        total += i % 7
    return total
best = float("inf")
for _ in range(3):
    t0 = time.process_time()
    work()
    best = min(best, time.process_time() - t0)
print(round(best * 1000, 1))
"""


def yardstick(cpu: int | None) -> float:
    """This VM's speed now: ms of CPU a fixed pure-Python loop takes on the gateway's core (best
    of 3). Printed at the start and the end of a run: the same code's figures move with the
    VM's speed (on one VM this loop took 147-208 ms from one minute to the next, and S3 0.88 to
    1.19 ms of CPU per request), so runs are compared with it beside."""
    cmd = [sys.executable, "-c", YARDSTICK]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return float(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout)


# ---------------------------------------------------------------- stream client (S4)


def client_process(what: str, args: list[str], timeout: float, cpu: int | None) -> dict[str, Any]:
    """Run this script as one of its load clients (``--_streams``, ``--_closed``) on ``cpu``;
    its result is the JSON line it prints last."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, preexec_fn=_die_with_parent)
    if proc.returncode != 0:
        sys.exit(f"{what} failed: {proc.stderr.decode()[-2000:]}")
    return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))


def stream_client(addr: str, streams: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    args = ["--_streams", addr, "--streams", str(streams), "--s4-seconds", str(seconds)]
    return client_process("stream client", args, seconds + 120, cpu)


class _StreamConn(asyncio.Protocol):
    """One keep-alive connection sending stream requests one after another."""

    def __init__(self, request: bytes, out: dict[str, Any], done: asyncio.Event) -> None:
        self.request, self.out, self.done_ev = request, out, done
        self.buf: list[bytes] = []
        self.t_send = self.t_first = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if self.out["stop"] or self.transport is None:
            self.done_ev.set()
            return
        self.buf, self.t_first = [], 0.0
        self.t_send = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.t_first and b"data:" in data:
            self.t_first = time.perf_counter()
        self.buf.append(data)
        if data.endswith(b"0\r\n\r\n"):
            self.finish(b"".join(self.buf))

    def finish(self, raw: bytes) -> None:
        out = self.out
        out["done"] += 1
        out["ttfc"].append((self.t_first - self.t_send) * 1000)
        head, _, body = raw.partition(b"\r\n\r\n")
        events = _dechunk(body).split(b"\n\n")
        # an event as the fake upstream sent it is known (a dict lookup); another is parsed
        seqs = [KNOWN_EVENTS[e] if e in KNOWN_EVENTS else json.loads(e[6:])["seq"]
                for e in events if e.startswith(b"data: {") and b'"seq"' in e]
        if head.startswith(b"HTTP/1.1 200") and seqs == list(range(64)) and b"data: [DONE]" in body:
            out["complete"] += 1
        else:
            out["bad"] += 1
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.out["stop"]:
            self.out["bad"] += 1
        self.transport = None
        self.done_ev.set()


def _dechunk(body: bytes) -> bytes:
    out, at = [], 0
    while True:
        eol = body.find(b"\r\n", at)
        if eol < 0:
            break
        size = int(body[at:eol], 16)
        if size == 0:
            break
        out.append(body[eol + 2 : eol + 2 + size])
        at = eol + 4 + size
    return b"".join(out)


async def _streams_main(addr: str, streams: int, seconds: float) -> dict[str, Any]:
    host, port = addr.rsplit(":", 1)
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n"
               f"Authorization: Bearer {GATEWAY_KEY}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(STREAM_BODY)}\r\n\r\n{STREAM_BODY}").encode()
    out: dict[str, Any] = {"done": 0, "complete": 0, "bad": 0, "ttfc": [], "stop": False}
    loop = asyncio.get_running_loop()
    events = []
    t0 = time.perf_counter()
    for _ in range(streams):
        ev = asyncio.Event()
        events.append(ev)
        await loop.create_connection(lambda ev=ev: _StreamConn(request, out, ev), host, int(port))
    await asyncio.sleep(seconds)
    out["stop"] = True
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    ttfc = sorted(out.pop("ttfc"))
    out.pop("stop")
    out["seconds"] = time.perf_counter() - t0
    out["ttfc_p50"] = ttfc[len(ttfc) // 2] if ttfc else float("nan")
    out["ttfc_p95"] = ttfc[int(len(ttfc) * 0.95)] if ttfc else float("nan")
    return out


# ---------------------------------------------------------------- per-request client (S3-steady)


def closed_client(addr: str, conns: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    args = ["--_closed", addr, "--connections", str(conns), "--steady-seconds", str(seconds)]
    return client_process("closed-loop client", args, seconds + 240, cpu)


class _ClosedConn(asyncio.Protocol):
    """One keep-alive connection sending requests one after another (as each wrk connection
    does), recording per request: when it was sent, its latency, and how long the upstream
    says it held it (``X-Upstream-Held-Us``)."""

    def __init__(self, request: bytes, out: dict[str, Any], t0: float,
                 done: asyncio.Event) -> None:
        self.request, self.out, self.t0, self.done_ev = request, out, t0, done
        self.buf = b""
        self.t_send = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if self.out["stop"] or self.transport is None:
            self.done_ev.set()
            return
        self.t_send = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            if len(self.buf) < end + 4 + int(head[at + 15 : stop if stop > 0 else None]):
                return
        elif not self.buf.endswith(b"0\r\n\r\n"):  # chunked
            return
        latency = time.perf_counter() - self.t_send
        at = head.find(b"x-upstream-held-us:")
        stop = head.find(b"\r\n", at)
        held = int(head[at + 19 : stop if stop > 0 else None]) / 1000 if at >= 0 else -1.0
        self.out["rec"].append((round(self.t_send - self.t0, 3), round(latency * 1000, 3),
                                held, int(head[9:12])))
        self.buf = b""
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.out["stop"]:
            self.out["lost"] += 1
        self.transport = None
        self.done_ev.set()


async def _closed_main(addr: str, conns: int, seconds: float) -> dict[str, Any]:
    host, port = addr.rsplit(":", 1)
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n"
               f"Authorization: Bearer {GATEWAY_KEY}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n{BODY}").encode()
    out: dict[str, Any] = {"rec": [], "lost": 0, "stop": False}
    loop = asyncio.get_running_loop()
    events = []
    t0 = time.perf_counter()
    for _ in range(conns):
        ev = asyncio.Event()
        events.append(ev)
        await loop.create_connection(lambda ev=ev: _ClosedConn(request, out, t0, ev), host,
                                     int(port))
    await asyncio.sleep(max(seconds - (time.perf_counter() - t0), 0))
    out["stop"] = True  # requests in flight still finish (and are recorded)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    out.pop("stop")
    return out


def added_stats(result: dict[str, Any], window: tuple[float, float] | None) -> dict[str, Any]:
    """Per request, latency minus the time the upstream held it: what the client, the network
    and (through the gateway) the gateway added. ``window``: only requests sent in it."""
    recs = result["rec"]
    if window is not None:
        recs = [r for r in recs if window[0] <= r[0] < window[1]]
    ok = sorted(r[1] - r[2] for r in recs if r[3] == 200 and r[2] >= 0)
    bad = sum(1 for r in recs if r[3] != 200)

    def pct(q: float) -> float:
        return ok[min(int(len(ok) * q), len(ok) - 1)] if ok else float("nan")

    return {"requests": len(recs), "errors": bad + (result["lost"] if window is None else 0),
            "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": ok[-1] if ok else 0}


# ---------------------------------------------------------------- main


def own_redis(cpu: int | None, workdir: Path) -> str:
    """A ``redis-server`` for this run on a free port, pinned to ``cpu``, keeping nothing on
    disk; returns its URL once it answers."""
    import redis

    port = free_port()
    start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(workdir)], cpu, workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis.from_url(url).ping():
                return url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                sys.exit(f"redis-server did not start:\n{(workdir / 'redis.log').read_text()}")
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="s3,s3light,s3steady,s4,s5,curve", help="scenarios to run")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes (2 sockets per "
                        "request: 10k in flight needs 2 under a 20k open-file limit)")
    parser.add_argument("--storage", default="redis", choices=("redis", "memory", "sqlite"))
    parser.add_argument("--redis-url", default=None, help="an existing Redis (not pinned); "
                        "default: a redis-server started for the run, on the load's core")
    parser.add_argument("--pool", type=int, default=10000, help="server.max_connections")
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--s3-seconds", type=float, default=90)
    # wrk sends its first 10,000 requests in one instant (a burst queued on the gateway's core):
    # in 75 s that is ~half the requests counted and the p95 is the burst's; in 900 s ~3 %.
    parser.add_argument("--light-seconds", type=float, default=900)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--s4-seconds", type=float, default=20)
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--soak-warmup", type=float, default=20, help="load before idle fds")
    parser.add_argument("--curve", default="50,1000,5000,10000")
    parser.add_argument("--curve-rate", type=float, default=500, help="req/s at every point")
    parser.add_argument("--curve-window", type=float, default=20, help="seconds counted")
    parser.add_argument("--plot", default=str(HERE / "concurrency_curve.png"))
    parser.add_argument("--src", default=str(ROOT), help="tree holding the smartproxy/ to run")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--floor", action="store_true", help="S3 and S3-light also through a "
                        "bare aiohttp pass-through (floor_proxy.py, --workers processes)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--sample-after", type=float, default=0, help="S3, S3-light: seconds "
                        "memory is still sampled after wrk exits (0: the load only, as before)")
    parser.add_argument("--steady-seconds", type=float, default=120,
                        help="S3-steady: how long the per-request client sends")
    parser.add_argument("--steady-from", type=float, default=45,
                        help="S3-steady: requests sent from then on are steady state")
    parser.add_argument("--_streams", metavar="ADDR", help=argparse.SUPPRESS)
    parser.add_argument("--_closed", metavar="ADDR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    if args._streams:
        import uvloop

        print(json.dumps(uvloop.run(_streams_main(args._streams, args.streams, args.s4_seconds))))
        return 0
    if args._closed:
        import uvloop

        print(json.dumps(uvloop.run(_closed_main(args._closed, args.connections,
                                                 args.steady_seconds))))
        return 0
    args.curve = [int(c) for c in args.curve.split(",")]
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpus = pick_cpus(args.no_pin)
    rep = Report()
    started = time.strftime("%Y-%m-%d %H:%M")
    speed = [yardstick(cpus["proxy"])]
    runs = {"s3": s3, "s3light": s3_light, "s3steady": s3_steady, "s4": s4, "s5": s5,
            "curve": curve}
    redis_where = ""
    with tempfile.TemporaryDirectory(prefix="sp-conc-") as tmp:
        if args.storage == "redis":
            if args.redis_url is None:
                args.redis_url = own_redis(cpus["load"], Path(tmp))
                redis_where = f", redis-server (started for the run) on cpu {cpus['load']}"
            else:
                redis_where = f", Redis at {args.redis_url} (not pinned)"
        for name in args.only.split(","):
            runs[name](args, cpus, Path(tmp), rep)
    speed.append(yardstick(cpus["proxy"]))
    rep.data["yardstick_ms"] = speed
    print(f"\n{started}, gateway --workers {args.workers}, storage {args.storage}; pinning: "
          f"gateway on cpu {cpus['proxy']}, upstream on cpu {cpus['upstream']}, load on cpu "
          f"{cpus['load']}{redis_where}; yardstick (CPU ms of a fixed Python loop on the "
          f"gateway's core, start / end): {speed[0]:.0f} / {speed[1]:.0f}\n")
    print("| run | req/s | p50 / p95 / p99 ms | added p50 / p95 / p99 ms | errors | peak MB, all "
          "gateway processes: RSS sum / PSS sum | gateway CPU s per 1,000 |")
    print("|---|---:|---|---|---:|---:|---|")
    for row in rep.rows:
        print("| " + " | ".join(row) + " |")
    print()
    for line in rep.targets:
        print(f"- {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
