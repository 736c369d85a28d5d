"""The command line: check-config exit codes and messages, token, the run process itself."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from smartproxy.cli import main

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


def test_check_config_ok_on_samples(capsys):
    for name in ("go-configs-config.yaml", "dotnet-smartaiproxy.yaml"):
        assert main(["check-config", str(DATA / name)]) == 0
    assert main(["check-config", str(ROOT / "etc" / "smartproxy.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_lists_every_problem(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text(
        "channels:\n"
        "  - {name: a, type: openai, endpoint: 'not a url'}\n"
        "  - {name: b, type: openai}\n"
        "rules:\n"
        "  - {name: r, channel: a, expression: \"open('x')\"}\n"
        "storage: {backend: mongodb}\n"
    )
    assert main(["check-config", str(p)]) == 1
    err = capsys.readouterr().err
    assert "4 problem(s)" in err
    assert "channels[0].endpoint: not a URL" in err
    assert "channels[1].endpoint: is required" in err
    assert "rules[0].expression:" in err and "'r'" in err
    assert "storage.backend:" in err


def test_token_command_prints_a_verifiable_jwt(tmp_path, capsys):
    from smartproxy.config import load_config
    from smartproxy.security.jwt import JwtVerifier

    p = tmp_path / "c.yaml"
    p.write_text("security: {auth: {jwt: {secret: 'cli-secret-0123456789abcdef0123'}}}\n")
    assert main(["token", "--sub", "ops-alice", "--minutes", "5", "--config", str(p)]) == 0
    token = capsys.readouterr().out.strip()
    claims = JwtVerifier(load_config(p).security.jwt).verify(token)
    assert claims["sub"] == "ops-alice"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_smartproxy_serves_default_config_and_stops_on_sigterm(tmp_path):
    """`smartproxy` with the shipped default: curl-like chat with the dev key hits the mock channel."""
    port = _free_port()
    import smartproxy

    pkg_parent = str(Path(smartproxy.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "SMARTPROXY_CONFIG": "",
        "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartproxy", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
            headers={
                "Authorization": "Bearer sk-gw-dev-local-only",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["x-smartproxy-channel"] == "local-mock"
            assert b"chat.completion" in resp.read()
        # No jwt secret configured: one generated, a ready admin token in a 0600 file, not the log.
        token_file = tmp_path / "data" / "admin-token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        admin = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/channels", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(admin, timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"Admin token" in out and str(token_file).encode() in out
    assert token.encode() not in out and token.split(".")[2].encode() not in out


def _spawn(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    import smartproxy

    pkg_parent = str(Path(smartproxy.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "SMARTPROXY_CONFIG": "",
        **(env_extra or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "smartproxy", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_sigterm_lets_an_inflight_stream_finish(tmp_path, upstream_factory):
    import asyncio

    import aiohttp
    import yaml

    up, url = await upstream_factory("a", default="hold")
    port = _free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "shutdown_timeout": 20},
        "channels": [{"name": "a", "type": "openai", "endpoint": url, "api_key": "sk-up"}],
        "security": {"auth": {"api_keys": {"dev": "sk-dev-test-1"}, "jwt": {"secret": "x" * 32}}},
        "storage": {"backend": "sqlite", "path": str(tmp_path / "usage.db")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _spawn(["run", "--config", str(path)], tmp_path)
    try:
        deadline = time.monotonic() + 15
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "gateway did not start"
                await asyncio.sleep(0.05)
            resp = await s.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={"Authorization": "Bearer sk-dev-test-1"},
                json={"model": "m", "messages": [], "stream": True},
            )
            first = await resp.content.readany()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)  # the gateway is draining; the stream is still open
            assert proc.poll() is None
            up.release.set()
            rest = await resp.read()
            assert rest.endswith(b"data: [DONE]\n\n")
        out, _ = await asyncio.get_running_loop().run_in_executor(
            None, lambda: proc.communicate(timeout=20)
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out.decode()
    # usage was flushed to storage before exit
    import sqlite3

    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("select count(*) from request_log").fetchone()[0] == 1


async def _get_on(reader, writer, path: str) -> bytes:
    """One keep-alive GET on an open connection; the whole answer (head and body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(
        line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    ))
    return head + await reader.readexactly(length)


async def test_sigterm_turns_healthz_503_stops_accepting_and_cuts_at_shutdown_timeout(
    tmp_path, upstream_factory
):
    """Contract §1, in order: /healthz answers 503 (on a connection already open: a load
    balancer's health check), no new connection is accepted, in-flight requests get
    ``shutdown_timeout`` (2 s here) to finish, and then the process exits 0 — not after twice
    that (aiohttp's own shutdown waits the timeout once, cancels, and waits it again)."""
    import asyncio

    import aiohttp
    import yaml

    up, url = await upstream_factory("a", default="slow")  # no answer for 30 s
    port = _free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "shutdown_timeout": 2},
        "channels": [{"name": "a", "type": "openai", "endpoint": url, "api_key": "sk-up"}],
        "security": {"auth": {"api_keys": {"dev": "sk-dev-test-1"}, "jwt": {"secret": "x" * 32}}},
        "storage": {"backend": "memory"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _spawn(["run", "--config", str(path)], tmp_path)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                assert time.monotonic() < deadline, "gateway did not start"
                await asyncio.sleep(0.05)
        assert b" 200 " in await _get_on(reader, writer, "/healthz")
        async with aiohttp.ClientSession() as s:
            held = asyncio.ensure_future(s.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={"Authorization": "Bearer sk-dev-test-1"},
                json={"model": "m", "messages": []},
            ))
            while not up.seen:
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.3)
            answer = await _get_on(reader, writer, "/healthz")
            assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"draining")
            assert b"connection: close" in answer.lower()  # no next request on it
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            assert proc.poll() is None  # still draining the held request
            with pytest.raises(aiohttp.ClientError):
                resp = await held
                await resp.read()
        while proc.poll() is None:
            await asyncio.sleep(0.05)
        took = time.monotonic() - signalled
        writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert 1.9 < took < 3.5, f"exited {took:.1f} s after SIGTERM with shutdown_timeout 2"


def test_prometheus_listen_serves_metrics_and_nothing_else(tmp_path):
    """SmartAIProxy's ``monitor.prometheus_listen`` (its samples say 0.0.0.0:9100) adds /metrics
    on that address: not the proxy, the admin API or the dashboard, which stay on server.listen."""
    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    port, mport = _free_port(), _free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "channels": [{"name": "m", "type": "mock"}],
        "security": {"auth": {"api_keys": {"dev": "sk-dev-test-1"}, "jwt": {"secret": "x" * 32}}},
        "storage": {"backend": "memory"},
        "monitor": {"prometheus_listen": f"127.0.0.1:{mport}"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _spawn(["run", "--config", str(path)], tmp_path)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            names = {f.name for f in text_string_to_metric_families(r.read().decode())}
        assert "smartproxy_requests" in names
        for what in ("/v1/models", "/api/channels", "/dashboard", "/healthz", "/swagger"):
            req = urllib.request.Request(
                f"http://127.0.0.1:{mport}{what}",
                headers={"Authorization": "Bearer sk-dev-test-1"},
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=5)
            info.value.close()
            assert info.value.code == 404, what
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()


def test_workers_auto_is_one_per_usable_core_and_bad_counts_are_refused(capsys):
    from smartproxy.cli import build_parser, worker_count

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3
    assert build_parser().parse_args(["run", "--workers", "auto"]).workers == worker_count("auto")
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--workers", bad])
    assert "--workers" in capsys.readouterr().err


def test_open_file_limit_is_raised_to_the_hard_limit_and_logged(caplog):
    import logging
    import resource

    from smartproxy.cli import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with caplog.at_level(logging.INFO, logger="smartproxy"):
            now = raise_open_file_limit(2)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
        if hard != resource.RLIM_INFINITY:
            assert now == hard
        per_process = (now - 100) // 2
        assert f"open-file limit {now} per process: about {per_process} requests in flight" in (
            caplog.text
        )
        assert f"{per_process * 2} with 2 worker(s)" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_smartproxy_run_closes_idle_connections_after_its_timeouts(tmp_path):
    """`smartproxy run` serves with the configured client timeouts (issue [6]): a socket that
    sends nothing, and one with half a request line, are closed."""
    import yaml

    port = _free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "client_header_timeout": 0.5,
                   "keepalive_timeout": 0.5},
        "channels": [{"name": "m", "type": "mock"}],
        "security": {"auth": {"api_keys": {"dev": "sk-dev-test-1"}, "jwt": {"secret": "x" * 32}}},
        "storage": {"backend": "memory"},
        "audit": {"path": str(tmp_path / "audit.log")},
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _spawn(["run", "--config", str(path)], tmp_path)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        for first in (b"", b"POST /v1/chat/comp"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(first)
                started = time.monotonic()
                try:
                    while sock.recv(65536):  # until the gateway closes it (5 s: the test fails)
                        pass
                except ConnectionResetError:
                    pass  # closed by abort (RST): closed all the same
                assert time.monotonic() - started < 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "f.yaml", "--listen", "127.0.0.1:9", "--workers", "2", "run"],
        ["run", "--config", "f.yaml", "--listen", "127.0.0.1:9", "--workers", "2"],
        ["--config", "f.yaml", "run", "--listen", "127.0.0.1:9", "--workers", "2"],
    ],
)
def test_run_options_count_before_the_command_as_after_it(argv):
    """``smartproxy --config X run`` is ``smartproxy run --config X``: the subcommand's own
    defaults used to overwrite what came before it (the file from $SMARTPROXY_CONFIG was
    served instead, --workers 2 started one process)."""
    from smartproxy.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.config, args.listen, args.workers) == ("f.yaml", "127.0.0.1:9", 2)


def test_check_config_and_token_take_config_given_before_the_command(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(
        "channels: [{name: m, type: mock}]\n"
        "security: {auth: {jwt: {secret: 'a-secret-of-32-characters-or-more!'}}}\n"
    )
    assert main(["--config", str(good), "check-config"]) == 0
    assert str(good) in capsys.readouterr().out
    assert main(["--config", str(good), "token", "--sub", "ops"]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWT


def test_check_config_and_run_refuse_files_that_cannot_be_read(tmp_path, capsys):
    """A TLS certificate or JWT public key that cannot be read is a config problem, listed by
    check-config (which said OK) and refused by run before it serves (it was a traceback)."""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"server: {{enable_https: true, cert_file: {tmp_path}/no-cert.pem, "
        f"key_file: {tmp_path}/no-key.pem}}\n"
        "channels: [{name: m, type: mock}]\n"
        f"security: {{auth: {{jwt: {{algorithms: [RS256], public_key_file: {tmp_path}/no.pem}}}}}}\n"
    )
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "server.cert_file/key_file: cannot load" in err
    assert "security.auth.jwt.public_key_file: cannot read" in err
    assert main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "config refused" in err and "no-cert.pem" in err and "Traceback" not in err
    # beside other problems, the files are still named (every problem at once)
    path.write_text(path.read_text().replace("{name: m, type: mock}",
                                             "{name: m, type: mock}, {name: m, type: mock}"))
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "4 problem(s)" in err and "duplicate" in err
    assert "server.cert_file: cannot read" in err and "public_key_file: cannot read" in err


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("taken", ["server.listen", "monitor.prometheus_listen"])
def test_a_taken_address_is_refused_in_one_line_with_exit_1(tmp_path, workers, taken):
    """The port in use was an ``OSError`` traceback out of ``site.start()`` (audit finding); with
    ``--workers`` each worker died and was restarted forever."""
    import yaml

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy, free = holder.getsockname()[1], _free_port()
        port, mport = (busy, free) if taken == "server.listen" else (free, busy)
        cfg = {
            "channels": [{"name": "m", "type": "mock"}],
            "security": {"auth": {"jwt": {"secret": "x" * 32}}},
            "storage": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"},
            "monitor": {"prometheus_listen": f"127.0.0.1:{mport}"},
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = _spawn(["run", "--config", str(path), "--listen", f"127.0.0.1:{port}",
                       "--workers", str(workers)], tmp_path)  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # still serving or restarting workers: the bug
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
    text = out.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "smartproxy: worker" not in text, text
    refusals = [line for line in text.splitlines() if line.startswith("smartproxy:")]
    assert refusals == [
        f"smartproxy: cannot listen on http://127.0.0.1:{busy} ({taken}): Address already in use"
    ]


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_listen_address_is_logged_bracketed(tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no ::1")
    proc = _spawn(["run", "--listen", f"[::1]:{port}"], tmp_path)
    try:
        _wait_http(f"http://[::1]:{port}/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert f"serving on http://[::1]:{port} (config:".encode() in out
