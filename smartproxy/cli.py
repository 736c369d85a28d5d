"""Command line: ``smartproxy [run] [--config PATH] [--listen HOST:PORT] [--workers N]``,
``smartproxy check-config PATH``, ``smartproxy token --sub NAME [--minutes N] [--config PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, find_config, load_config, parse_listen
from .errors import CannotListen, ConfigError
from .logs import log_level, setup_logging
from .security.jwt import generate_secret
from .serving import check_files, check_listen, config_mtime
from .supervisor import Workers, WorkerSpec, hand_over, serve_process, spawn_worker

log = logging.getLogger("smartproxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartproxy", description="SmartProxy AI gateway")
    parser.add_argument("--version", action="version", version=f"smartproxy {__version__}")
    sub = parser.add_subparsers(dest="command")

    def run_options(p: argparse.ArgumentParser, default: object) -> None:
        # Given before the command or after it (``smartproxy --config X run``): a subcommand's
        # own default would overwrite what was given before it, so only the top level has one.
        p.add_argument("--config", default=default, help="config file (default: "
                       "$SMARTPROXY_CONFIG, ./etc/smartproxy.yaml, then the built-in default)")
        p.add_argument("--listen", default=default, help="HOST:PORT; overrides server.listen")
        p.add_argument("--workers", type=worker_count, default=1 if default is None else default,
                       help="processes sharing the port (SO_REUSEPORT); 'auto' = one per core")

    run_options(parser, None)
    run_options(sub.add_parser("run", help="serve the gateway (the default)"), argparse.SUPPRESS)
    check = sub.add_parser("check-config", help="validate a config file; exit 1 listing every problem")
    check.add_argument("path", nargs="?", help="config file (default: --config, then as for run)")
    token = sub.add_parser("token", help="print an admin JWT signed with the configured secret")
    token.add_argument("--sub", required=True, help="who the token is for (audit log 'sub')")
    token.add_argument("--minutes", type=int, default=None, help="lifetime (default: jwt.expiry_minutes)")
    token.add_argument("--config", default=argparse.SUPPRESS, help="config file")
    return parser


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one process per core this one may use."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - macOS has no sched_getaffinity
            return max(1, os.cpu_count() or 1)
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def raise_open_file_limit(workers: int) -> int:
    """Raise this process's open-file soft limit to the hard limit (workers inherit it) and log
    how many requests that lets be in flight: each proxied request holds two sockets, the
    client's and the upstream's. Returns the soft limit now in effect."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    per_process = max(0, (soft - _RESERVED_FILES) // 2)
    log.info("open-file limit %d per process: about %d requests in flight per process, %d with "
             "%d worker(s) (2 sockets per proxied request)", soft, per_process,
             per_process * workers, workers)
    return int(soft)


_RESERVED_FILES = 100  # listening sockets, logs, the usage store, redis connections, pipes


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if command == "check-config":
        return check_config(args.path or args.config)
    if command == "token":
        return print_token(args.config, args.sub, args.minutes)
    return run(args.config, args.listen, args.workers)


def check_config(path: str | None) -> int:
    from .state import Snapshot

    path = find_config(path)
    problems: list[str] = []
    try:
        config = load_config(path)
        Snapshot.build(config)
    except ConfigError as exc:  # the files it names are checked all the same
        problems = [*exc.problems, *_file_problems(path)]
    else:
        try:
            check_files(config)
        except ConfigError as exc:
            problems = list(exc.problems)
    if problems:
        print(f"{path or '(built-in default)'}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    ignored = f"; ignored SmartAIProxy keys: {', '.join(config.ignored_keys)}" if config.ignored_keys else ""
    print(f"{path or '(built-in default)'}: OK ({len(config.channels)} channels, "
          f"{len(config.rules)} rules{ignored})")
    return 0


def _file_problems(path: str | None) -> list[str]:
    """For a config refused for other reasons: what ``check_files`` would also say of the
    files it names (TLS certificate and key, JWT public key), so every problem is listed."""
    from .config import expand_env, read_yaml

    try:  # the loader's own reader: alias bombs and deep nesting are refused, not expanded
        text = Path(path).read_text(encoding="utf-8") if path else None
        doc = expand_env(read_yaml(text, str(path), doubled=[])) if text is not None else None
    except (OSError, ValueError, ConfigError):
        return []
    server, jwt = _section(doc, "server"), _section(_section(_section(doc, "security"), "auth"),
                                                    "jwt")
    wanted: list[tuple[str, Any]] = []
    if server.get("enable_https"):
        wanted += [("server.cert_file", server.get("cert_file")),
                   ("server.key_file", server.get("key_file"))]
    if jwt.get("public_key_file"):
        wanted.append(("security.auth.jwt.public_key_file", jwt.get("public_key_file")))
    return [f"{where}: cannot read {file!r}" for where, file in wanted
            if not isinstance(file, str) or not os.access(file, os.R_OK)]


def _section(doc: Any, key: str) -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def print_token(path: str | None, sub: str, minutes: int | None) -> int:
    from .security.jwt import mint_token_cli

    try:
        config = load_config(find_config(path))
        print(mint_token_cli(config, sub, minutes))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"smartproxy token: {exc}", file=sys.stderr)
        return 1
    return 0


def with_listen(config: Config, listen: str) -> Config:
    """``--listen``: the address to bind. ``server.listen`` keeps the file's text, so reloads and
    admin writes warn only when the file's address really changes (``state.keep_listener``)."""
    host, port = parse_listen(listen)
    return replace(config, server=replace(config.server, host=host, port=port))


def run(path: str | None, listen: str | None, workers: int) -> int:
    path = find_config(path)
    try:
        config = load_config(path)
        if listen:
            config = with_listen(config, listen)
        check_files(config)
    except (ConfigError, ValueError) as exc:
        print(f"smartproxy: config refused:\n{exc}", file=sys.stderr)
        return 1
    setup_logging(config)
    if config.ignored_keys:
        log.warning("SmartAIProxy keys accepted but without effect here: %s",
                    ", ".join(config.ignored_keys))
    if workers < 1:
        print("smartproxy: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and config.storage.backend != "redis":
        print(f"smartproxy: --workers {workers} needs shared limits: set storage.backend: redis "
              f"(with storage.url). With storage.backend: {config.storage.backend} each worker "
              f"would count quotas, rate limits, budgets and breakers alone, letting {workers} "
              "times the quota through.", file=sys.stderr)
        return 2
    raise_open_file_limit(workers)
    try:
        if workers > 1:
            check_listen(config)  # once here, not once per worker
            return _run_workers(path, config, workers)
        return serve_process(path, config, reuse_port=False)
    except CannotListen as exc:
        print(f"smartproxy: {exc}", file=sys.stderr)
        return 1


def _run_workers(path: str | None, config: Config, workers: int) -> int:
    """Fork N processes that each bind the port with SO_REUSEPORT. The parent forwards SIGHUP,
    SIGTERM and SIGINT to them and restarts a worker that dies (not one that exits on a stop);
    once they run, it becomes the lean ``supervisor`` (``hand_over``)."""
    # One generated admin secret for all workers, so a token is accepted by whichever one answers.
    secret = None if config.security.jwt.secret else generate_secret()
    # Load the whole application here, once: the workers then share its memory copy-on-write
    # (frozen, so that no collection in a worker writes to the shared objects' headers).
    from . import app  # noqa: F401

    gc.collect()
    gc.freeze()
    loaded = config_mtime(path)  # the file as ``config`` was read from it
    # Each worker also listens on a Unix socket here (mode 0700): a scrape of /metrics reaching
    # one worker adds the others' counts (``metrics_merge``).
    try:
        peers_dir: str | None = tempfile.mkdtemp(prefix="smartproxy-workers-")
    except OSError as exc:  # no writable $TMPDIR: each scrape then shows one worker
        log.warning("no folder for the workers' metrics sockets (%s): /metrics will show "
                    "only the worker a scrape reaches", exc)
        peers_dir = None
    spec = WorkerSpec(path, config, secret, loaded, peers_dir)
    spawn = partial(spawn_worker, spec=spec)
    children = {spawn(index): index for index in range(workers)}
    hand_over({
        "children": children,
        "log_level": log_level(config),
        "log_file": config.log.file,
        "peers_dir": peers_dir,
    }, spec)
    # Still here: exec failed (logged); this process supervises as it is.
    try:
        return Workers(children, spawn).run()
    finally:
        if peers_dir is not None:
            shutil.rmtree(peers_dir, ignore_errors=True)
