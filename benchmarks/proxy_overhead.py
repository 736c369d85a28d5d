"""What the gateway costs on top of a bare pass-through proxy (issue [1], must-show 7).

One command starts, on 127.0.0.1 free ports, a fast fake upstream (``fast_upstream.py``), the floor
(``floor_proxy.py``: a ~20-line aiohttp pass-through) and the gateway (``python -m smartproxy run``
with one openai channel, one API key, a rate limit too high to bite, no access log), then drives
each with wrk (or, without wrk, a Python load generator) and prints a markdown table:

* requests/s at ``--connections`` with no upstream delay (throughput: the proxy is the bottleneck),
* p50/p95/p99 at ``--connections`` with a ``--delay-ms`` upstream (latency at light CPU load;
  each delay gets a uniform ``--jitter-ms`` on top, default 1 ms, against timer rounding),

for direct-to-upstream, through the floor and through the gateway (memory and sqlite storage), and
the ratios the issue sets as targets: gateway req/s / floor req/s >= 0.6 and gateway added p50 /
floor added p50 <= 1.5 (added = through-proxy p50 - direct p50).

Run: ``python benchmarks/proxy_overhead.py [--duration 10] [--connections 50] [--warmup 2]``
On 2+ cores each server is pinned with taskset: the proxy under test gets core 0 to itself, the
upstream and the load generator share core 1 (with 3+ cores each gets its own).
wrk: ``apt-get install -y wrk`` (Debian/Ubuntu) or ``brew install wrk``; ``--loadgen python``
forces the fallback, which is slower than wrk and so understates req/s of fast targets.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GATEWAY_KEY = "sk-gw-bench-0123456789abcdef"
MODEL = "gpt-4o-mini"
BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": "Write one short sentence about benchmarking HTTP gateways.",
            },
        ],
        "max_tokens": 64,
        "temperature": 0,
    },
    separators=(",", ":"),
)

# wrk: POST the chat body with the key; print one JSON line of results when done.
WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.body = os.getenv("BENCH_BODY")
function done(s, latency, requests)
  local e = s.errors
  io.write(string.format('{"requests":%d,"duration_s":%.3f,"p50":%.3f,"p95":%.3f,"p99":%.3f,' ..
    '"errors":%d,"non2xx":%d}\n', s.requests, s.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""

# ---------------------------------------------------------------- processes and their cleanup

_CHILDREN: list[subprocess.Popen[bytes]] = []


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if this script dies, even by SIGKILL (no orphaned servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(cmd: list[str], cpu: int | None, log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **kw
        )
    _CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop_all() -> None:
    for proc in list(_CHILDREN):
        stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, headers: dict[str, str]) -> str:
    """POST the bench body until it answers 200; returns the x-smartproxy-channel header, if any."""
    deadline = time.monotonic() + 30
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        req = urllib.request.Request(url, data=BODY.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
                return str(resp.headers.get("x-smartproxy-channel", ""))
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    sys.exit(f"{url} not ready within 30 s ({last}); log:\n{log.read_text()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and of the taskset it exec'd into) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ---------------------------------------------------------------- load generators


@dataclass
class LoadResult:
    rps: float
    p50: float
    p95: float
    p99: float
    errors: int
    cpu: dict[str, float] = field(default_factory=dict)  # role -> % of one core


def run_load(
    args: argparse.Namespace, url: str, seconds: float, cpu: int | None, workdir: Path
) -> tuple[dict[str, Any], float]:
    """One load run; returns (result JSON, CPU seconds the load generator used)."""
    env = {**os.environ, "BENCH_KEY": GATEWAY_KEY, "BENCH_BODY": BODY}
    if args.loadgen == "wrk":
        lua = workdir / "chat.lua"
        lua.write_text(WRK_LUA)
        cmd = [
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            url,
        ]
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_loadgen",
            url,
            "--connections",
            str(args.connections),
            "--duration",
            str(seconds),
        ]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    resource_children()  # baseline: only what this load generator uses counts
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=_die_with_parent
    )
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        sys.exit(f"load generator overran its time: {err.decode()[-2000:]}")
    rusage = resource_children()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith('{"requests"')]
    if proc.returncode != 0 or not lines:
        sys.exit(f"load generator failed ({proc.returncode}): {out.decode()}{err.decode()}")
    return json.loads(lines[-1]), rusage


_last_children_cpu = 0.0


def resource_children() -> float:
    """CPU seconds of the load generator just reaped (difference of RUSAGE_CHILDREN)."""
    import resource

    global _last_children_cpu
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    used, _last_children_cpu = total - _last_children_cpu, total
    return used


async def python_loadgen(url: str, connections: int, duration: float) -> dict[str, Any]:
    """The fallback: ``connections`` keep-alive clients POSTing back to back for ``duration``."""
    import aiohttp

    latencies: list[float] = []
    errors = non2xx = 0
    body = BODY.encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}"}
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        end = time.perf_counter() + duration

        async def client() -> None:
            nonlocal errors, non2xx
            while (t0 := time.perf_counter()) < end:
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        non2xx += resp.status >= 400
                except (aiohttp.ClientError, OSError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "p50": q[49] * 1000,
        "p95": q[94] * 1000,
        "p99": q[98] * 1000,
        "errors": errors,
        "non2xx": non2xx,
    }


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    kind: str  # direct | floor | gateway
    storage: str = ""
    src: Path = ROOT  # the source tree the gateway runs from


def config_yaml(port: int, upstream_port: int, storage: str, *, timeout: float = 30,
                max_connections: int = 1000) -> str:
    """A benchmark gateway: one OpenAI-shaped channel, one key, no rate limit in the way;
    ``storage`` is the inside of the ``storage:`` mapping."""
    return f"""server:
  listen: "127.0.0.1:{port}"
  timeout: {timeout:g}
  max_connections: {max_connections}
  timezone: "UTC"
channels:
  - name: "bench-upstream"
    type: "openai"
    endpoint: "http://127.0.0.1:{upstream_port}/v1"
    api_key: "sk-upstream-bench"
    models: ["{MODEL}"]
    price_per_token: 0.000001
rules: []
security:
  auth:
    api_keys: {{bench: "{GATEWAY_KEY}"}}
    jwt: {{secret: "bench-only-jwt-secret-not-for-production"}}
  rate_limit: {{requests_per_minute: 600000000, burst: 10000000}}
storage: {{{storage}}}
log: {{level: "warning"}}
"""


def gateway_config(workdir: Path, port: int, upstream_port: int, storage: str) -> Path:
    path = workdir / f"gateway-{storage}-{port}.yaml"
    path.write_text(config_yaml(
        port, upstream_port, f'backend: "{storage}", path: "{workdir / f"usage-{port}.db"}"'))
    return path


def start_target(
    t: Target, upstream_port: int, cpu: int | None, workdir: Path
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start the proxy for ``t`` in front of the upstream; returns (process or None, chat URL)."""
    if t.kind == "direct":
        return None, f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    port = free_port()
    log = workdir / f"{t.name.replace(' ', '_')}-{port}.log"
    if t.kind == "floor":
        cmd = [
            sys.executable,
            str(HERE / "floor_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream_port}",
        ]
        proc = start(cmd, cpu, log)
    else:
        cfg = gateway_config(workdir, port, upstream_port, t.storage)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(t.src), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        cmd = [
            sys.executable,
            "-m",
            "smartproxy",
            "run",
            "--config",
            str(cfg),
            "--listen",
            f"127.0.0.1:{port}",
        ]
        proc = start(cmd, cpu, log, env=env, cwd=str(workdir))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}"}
    channel = wait_ready(proc, url, log, headers)
    if t.kind == "gateway" and channel != "bench-upstream":
        sys.exit(f"the gateway did not route to the bench upstream (channel {channel!r})")
    return proc, url


def measure(
    args: argparse.Namespace,
    t: Target,
    upstream: tuple[subprocess.Popen[bytes], int],
    cpus: dict[str, int | None],
    workdir: Path,
) -> LoadResult:
    up_proc, up_port = upstream
    proc, url = start_target(t, up_port, cpus["proxy"], workdir)
    try:
        if args.warmup > 0:
            run_load(args, url, args.warmup, cpus["load"], workdir)
        before = {
            "proxy": cpu_seconds(proc.pid) if proc else 0.0,
            "upstream": cpu_seconds(up_proc.pid),
        }
        res, load_cpu = run_load(args, url, args.duration, cpus["load"], workdir)
        wall = res["duration_s"] or args.duration
        cpu = {
            "upstream": (cpu_seconds(up_proc.pid) - before["upstream"]) / wall * 100,
            "load": load_cpu / wall * 100,
        }
        if proc:
            cpu["proxy"] = (cpu_seconds(proc.pid) - before["proxy"]) / wall * 100
    finally:
        if proc:
            stop(proc)
    return LoadResult(
        res["requests"] / wall,
        res["p50"],
        res["p95"],
        res["p99"],
        res["errors"] + res["non2xx"],
        cpu,
    )


def median_result(runs: list[LoadResult]) -> LoadResult:
    med = statistics.median
    return LoadResult(
        med(r.rps for r in runs),
        med(r.p50 for r in runs),
        med(r.p95 for r in runs),
        med(r.p99 for r in runs),
        sum(r.errors for r in runs),
        {k: med(r.cpu.get(k, 0.0) for r in runs) for k in runs[0].cpu},
    )


# ---------------------------------------------------------------- main


def pick_cpus(no_pin: bool) -> dict[str, int | None]:
    n = len(os.sched_getaffinity(0))
    if no_pin or n < 2 or shutil.which("taskset") is None:
        return {"proxy": None, "upstream": None, "load": None}
    cores = sorted(os.sched_getaffinity(0))
    return {"proxy": cores[0], "upstream": cores[1], "load": cores[2] if n >= 3 else cores[1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded load first")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="upstream delay, latency runs")
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=1.0,
        help="uniform 0..J ms added to each delay, so that the upstream's 1 ms timer rounding "
        "does not depend on a proxy's processing time (see fast_upstream.py)",
    )
    parser.add_argument("--storage", default="memory,sqlite", help="gateway backends to run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all runs; report medians")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        action="append",
        default=[],
        help="also run the gateway from DIR (a tree holding smartproxy/), e.g. a patched copy",
    )
    parser.add_argument("--_loadgen", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._loadgen:
        print(
            json.dumps(asyncio.run(python_loadgen(args._loadgen, args.connections, args.duration)))
        )
        return 0
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
        if args.loadgen == "python":
            print(
                "wrk not found (install: apt-get install -y wrk); using the slower Python "
                "load generator",
                file=sys.stderr,
            )
    elif args.loadgen == "wrk" and not shutil.which("wrk"):
        sys.exit("wrk not found: install it with 'apt-get install -y wrk' or use --loadgen python")

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    cpus = pick_cpus(args.no_pin)
    storages = [s for s in args.storage.split(",") if s]
    targets = [Target("direct", "direct"), Target("floor", "floor")]
    targets += [Target(f"gateway ({s})", "gateway", s) for s in storages]
    for src in args.compare:  # A/B a patched copy of the package in the same run
        tree = Path(src).resolve()
        if not (tree / "smartproxy" / "__init__.py").is_file():
            sys.exit(f"--compare {src}: no smartproxy/__init__.py there")
        targets += [Target(f"gateway@{tree.name} ({s})", "gateway", s, tree) for s in storages]
    results: dict[str, dict[str, list[LoadResult]]] = {
        t.name: {"rps": [], "lat": []} for t in targets
    }
    with tempfile.TemporaryDirectory(prefix="smartproxy-bench-") as tmp:
        workdir = Path(tmp)
        ups = {}
        for label, delay, jitter in (("fast", 0.0, 0.0), ("slow", args.delay_ms, args.jitter_ms)):
            port = free_port()
            log = workdir / f"upstream-{label}.log"
            proc = start(
                [
                    sys.executable,
                    str(HERE / "fast_upstream.py"),
                    "--port",
                    str(port),
                    "--delay-ms",
                    str(delay),
                    "--jitter-ms",
                    str(jitter),
                ],
                cpus["upstream"],
                log,
            )
            wait_ready(proc, f"http://127.0.0.1:{port}/v1/chat/completions", log, {})
            ups[label] = (proc, port)
        added: dict[str, list[float]] = {t.name: [] for t in targets}
        for rnd in range(args.rounds):
            for t in targets:
                # Each proxy's latency run is paired with a direct run just before it: "added"
                # is their difference, so drift in the machine's load between targets cancels.
                phases = [("rps", t, "fast"), ("lat", t, "slow")]
                if t.kind != "direct":
                    phases.insert(1, ("lat", targets[0], "slow"))
                for phase, target, label in phases:
                    print(
                        f"[round {rnd + 1}/{args.rounds}] {target.name}: {phase} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    result = measure(args, target, ups[label], cpus, workdir)
                    results[target.name][phase].append(result)
                if t.kind != "direct":
                    added[t.name].append(results[t.name]["lat"][-1].p50 - result_p50(results))
        stop_all()
    report(
        args,
        cpus,
        targets,
        {n: {p: median_result(r) for p, r in d.items()} for n, d in results.items()},
        {n: statistics.median(a) for n, a in added.items() if a},
    )
    return 0


def result_p50(results: dict[str, dict[str, list[LoadResult]]]) -> float:
    """p50 of the direct latency run just before the last proxy latency run."""
    return results["direct"]["lat"][-1].p50


def report(
    args: argparse.Namespace,
    cpus: dict[str, int | None],
    targets: list[Target],
    res: dict[str, dict[str, LoadResult]],
    added_p50: dict[str, float],
) -> None:
    floor = res["floor"]
    floor_added = added_p50["floor"]
    pin = (
        ", ".join(f"{k} on core {v}" for k, v in cpus.items())
        if cpus["proxy"] is not None
        else "not pinned"
    )
    print(
        f"\n### Proxy overhead: {args.connections} connections, {args.duration:g} s per run "
        f"(+{args.warmup:g} s warm-up), load generator {args.loadgen}, {pin}"
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
        + "\n"
    )
    print(
        "| target | req/s (0 ms upstream) | proxy CPU µs/req | CPU % proxy / upstream / loadgen | "
        f"p50 ms ({args.delay_ms:g}+U(0,{args.jitter_ms:g}) ms upstream) | p95 ms | p99 ms "
        "| added p50 ms (paired) | errors |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    out: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "cpus": cpus,
        "targets": {},
    }
    for t in targets:
        r, lat = res[t.name]["rps"], res[t.name]["lat"]
        added = added_p50.get(t.name, 0.0)
        cpu = " / ".join(
            f"{r.cpu[k]:.0f}" if k in r.cpu else "-" for k in ("proxy", "upstream", "load")
        )
        us = f"{r.cpu['proxy'] * 1e4 / r.rps:.0f}" if "proxy" in r.cpu and r.rps else "-"
        print(
            f"| {t.name} | {r.rps:,.0f} | {us} | {cpu} "
            f"| {lat.p50:.2f} | {lat.p95:.2f} | {lat.p99:.2f} | "
            f"{'-' if t.kind == 'direct' else f'{added:.2f}'} | {r.errors + lat.errors} |"
        )
        out["targets"][t.name] = {"rps": vars(r), "latency": vars(lat), "added_p50_ms": added}
    print()
    ok_all = True
    for t in targets:
        if t.kind != "gateway":
            continue
        g = res[t.name]
        rps_ratio = g["rps"].rps / floor["rps"].rps
        ok1 = rps_ratio >= 0.6
        if floor_added > 0:
            ratio = added_p50[t.name] / floor_added
            added_ratio: float | None = ratio
            ok2 = ratio <= 1.5
            verdict = f"**{ratio:.2f}x** (target <= 1.5: {'met' if ok2 else 'MISSED'})"
        else:  # the floor's overhead drowned in the noise: no ratio can be formed
            added_ratio, ok2 = None, False
            verdict = "n/a (floor's added p50 <= 0: noise; rerun with --rounds 3)"
        ok_all = ok_all and ok1 and ok2
        print(
            f"- {t.name}: req/s vs floor = **{rps_ratio:.2f}x** (target >= 0.6: "
            f"{'met' if ok1 else 'MISSED'}); added p50 vs floor = {verdict}"
        )
        out["targets"][t.name].update(rps_ratio=rps_ratio, added_p50_ratio=added_ratio)
    if cpus["proxy"] is not None and cpus["upstream"] == cpus["load"]:
        busy = max(  # direct is always limited by that core: it has no proxy
            res[t.name]["rps"].cpu.get("upstream", 0) + res[t.name]["rps"].cpu.get("load", 0)
            for t in targets
            if t.kind != "direct"
        )
        if busy > 90:
            print(
                f"- note: upstream + load generator used {busy:.0f}% of their shared core; "
                "the req/s of the fastest target may be limited by that core, not the proxy"
            )
    if args.loadgen == "python":
        print(
            "- note: the Python load generator saturates before fast targets do; the req/s "
            "ratio is not meaningful without wrk"
        )
    errors = sum(res[t.name][p].errors for t in targets for p in ("rps", "lat"))
    if errors:
        print(f"- WARNING: {errors} failed requests (connect/read/timeout errors or HTTP >= 400)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"- targets {'met' if ok_all else 'NOT met'}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
