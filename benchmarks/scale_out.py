"""What shared limits cost, and what a second worker buys (issue [7], must-show 8).

Throughput (requests/s, 0 ms upstream, wrk with ``--connections``) of the gateway with:

* one worker on ``sqlite`` (the default; counters in the process),
* one worker on ``redis`` (one Redis round trip before dispatch, one batched after),
* ``--workers 2`` on ``redis`` (the only way to run two workers).

Target: one worker on redis >= 0.75x one worker on sqlite.

Pinning on a 2-core machine (taskset): a one-worker gateway gets core 0 to itself; the fake
upstream, wrk and redis-server share core 1. ``--workers 2`` cannot have a core of its own per
worker here: its workers are pinned to both cores and share core 1 with the upstream, wrk and
Redis, so on 2 cores it measures the contention, not the scaling (the README says so).
Redis: a private ``redis-server`` on a free port (``--save "" --appendonly no``).

Run: ``python benchmarks/scale_out.py [--duration 8] [--rounds 3] [--connections 50]``
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy_overhead as po  # noqa: E402  (the shared process, pinning and wrk helpers)


def gateway_config(workdir: Path, port: int, upstream_port: int, storage: str,
                   redis_port: int) -> Path:
    path = po.gateway_config(workdir, port, upstream_port, "sqlite")
    text = path.read_text()
    if storage == "redis":
        db = workdir / f"log-{port}.db"
        line = next(ln for ln in text.splitlines() if ln.startswith("storage:"))
        text = text.replace(line, (
            f'storage: {{backend: "redis", url: "redis://127.0.0.1:{redis_port}/0", '
            f'key_prefix: "bench{port}:", path: "{db}"}}'))
    path.write_text(text)
    return path


def start_gateway(workdir: Path, storage: str, workers: int, cpus: str | None,
                  upstream_port: int, redis_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = po.free_port()
    cfg = gateway_config(workdir, port, upstream_port, storage, redis_port)
    cmd = [sys.executable, "-m", "smartproxy", "run", "--config", str(cfg), "--listen",
           f"127.0.0.1:{port}", "--workers", str(workers)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    log = workdir / f"gateway-{storage}-{workers}-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(po.ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(workdir), preexec_fn=po._die_with_parent)
    po._CHILDREN.append(proc)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {po.GATEWAY_KEY}"}
    po.wait_ready(proc, url, log, headers)
    return proc, url


def gateway_cpu(pid: int) -> float:
    """CPU seconds of the gateway process and its workers (children) so far."""
    import psutil

    total = 0.0
    proc = psutil.Process(pid)
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.loadgen = "wrk"
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        sys.exit("needs wrk and redis-server (apt-get install -y wrk redis-server)")
    atexit.register(po.stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = sorted(os.sched_getaffinity(0))
    pin = len(cores) >= 2 and shutil.which("taskset") is not None
    own, shared = (str(cores[0]), cores[1]) if pin else (None, None)
    both = f"{cores[0]},{cores[1]}" if pin else None
    targets = [("1 worker, sqlite", "sqlite", 1, own), ("1 worker, redis", "redis", 1, own),
               ("2 workers, redis", "redis", 2, both)]
    results: dict[str, list[float]] = {name: [] for name, *_ in targets}
    cpu_us: dict[str, list[float]] = {name: [] for name, *_ in targets}
    with tempfile.TemporaryDirectory(prefix="smartproxy-scale-") as tmp:
        workdir = Path(tmp)
        up_port, redis_port = po.free_port(), po.free_port()
        up = po.start([sys.executable, str(po.HERE / "fast_upstream.py"), "--port", str(up_port),
                       "--delay-ms", "0", "--jitter-ms", "0"], shared, workdir / "up.log")
        po.wait_ready(up, f"http://127.0.0.1:{up_port}/v1/chat/completions",
                      workdir / "up.log", {})
        po.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(workdir)], shared, workdir / "redis.log")
        time.sleep(0.3)
        for rnd in range(args.rounds):
            for name, storage, workers, cpus in targets:
                print(f"[round {rnd + 1}/{args.rounds}] {name} ...", file=sys.stderr, flush=True)
                proc, url = start_gateway(workdir, storage, workers, cpus, up_port, redis_port)
                try:
                    if args.warmup > 0:
                        po.run_load(args, url, args.warmup, shared, workdir)
                    before = gateway_cpu(proc.pid)
                    res, _ = po.run_load(args, url, args.duration, shared, workdir)
                    used = gateway_cpu(proc.pid) - before
                finally:
                    po.stop(proc)
                bad = res["errors"] + res["non2xx"]
                if bad:
                    print(f"  {name}: {bad} errors/non-2xx answers", file=sys.stderr)
                results[name].append(res["requests"] / (res["duration_s"] or args.duration))
                cpu_us[name].append(used / max(1, res["requests"]) * 1e6)
        po.stop_all()
    base = statistics.median(results["1 worker, sqlite"])
    redis1 = statistics.median(results["1 worker, redis"])
    print(f"\n{args.rounds} rounds x {args.duration:g} s, {args.connections} connections, "
          f"medians; pinned: {'yes' if pin else 'no'} (gateway core {own}, upstream + wrk + "
          f"redis core {shared}; 2 workers on cores {both})\n")
    base_cpu = statistics.median(cpu_us["1 worker, sqlite"])
    print("| gateway | req/s (median) | runs | vs 1 worker sqlite | gateway CPU µs/request | "
          "CPU ratio (sqlite/this) |")
    print("|---|---:|---|---:|---:|---:|")
    for name, *_ in targets:
        runs = results[name]
        med = statistics.median(runs)
        cpu = statistics.median(cpu_us[name])
        print(f"| {name} | {med:,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} | "
              f"{med / base:.2f}x | {cpu:,.0f} | {base_cpu / cpu:.2f}x |")
    print(f"\none worker on redis / one worker on sqlite: {redis1 / base:.2f} req/s, "
          f"{base_cpu / statistics.median(cpu_us['1 worker, redis']):.2f} by CPU per request "
          "(target >= 0.75)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
