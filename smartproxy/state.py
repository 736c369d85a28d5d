"""The gateway's long-lived parts (``Gateway``) and the frozen view of one config (``Snapshot``).

A request reads ``gateway.snapshot`` once and uses only that. A reload builds and validates a whole
new ``Snapshot`` and swaps one reference; breakers, rate buckets and usage counters live in the
``Gateway``, keyed by channel / key name, so they survive reloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from datetime import time as dt_time
from zoneinfo import ZoneInfo

import aiohttp
import backoff
from aiohttp import web

from . import __version__
from .audit import SIGNAL, Actor, AuditLog, audit_path, config_diff, config_secrets, scrub
from .config import ChannelConfig, Config, load_config
from .config.file import ConfigFile
from .errors import ConfigError
from .localtime import MinuteClock
from .metrics import Metrics
from .providers.base import Provider
from .routing.router import ChannelState, Ranked, rank_by_price
from .routing.rules import RuleSet, compile_rules
from .security.apikeys import KeyRing, Principal
from .security.authlog import FailureLines
from .security.jwt import JwtVerifier, generate_secret
from .security.ratelimit import FailurePenalty, RateLimiter
from .storage.base import KeyCheck, UsageStore
from .storage.counters import InProcessCounters
from .upstream.failures import RecentFailures
from .upstream.health import HealthBook
from .upstream.retry import Jitter, Sleep
from .upstream.slots import LocalSlots, SlotBook

log = logging.getLogger("smartproxy")


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: Config
    rules: RuleSet
    keyring: KeyRing
    channels: dict[str, ChannelConfig]
    tz: ZoneInfo
    loaded_at: float
    minutes: MinuteClock = field(compare=False, repr=False)
    # model -> (channels serving it, their rules): filled as models are asked for (bounded).
    _by_model: dict[str, tuple[tuple[ChannelConfig, ...], RuleSet]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # (model, local minute) -> its channels in price order, and those of them with a quota.
    _ranked: dict[tuple[str, dt_time], tuple[Ranked, tuple[ChannelConfig, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def serving(self, model: str) -> tuple[tuple[ChannelConfig, ...], RuleSet]:
        """The channels that serve ``model`` (file order) and the rules of those channels
        (evaluation order): what the router needs for one request, computed once per model."""
        hit = self._by_model.get(model)
        if hit is None:
            channels = tuple(c for c in self.config.channels if c.serves(model))
            names = {c.name for c in channels}
            rules = RuleSet(r for r in self.rules if r.channel in names)
            if len(self._by_model) >= 1024:  # model names come from clients: stay bounded
                self._by_model.clear()
            hit = self._by_model[model] = (channels, rules)
        return hit

    def ranked(self, model: str, hhmm: dt_time) -> tuple[Ranked, tuple[ChannelConfig, ...]]:
        """The channels serving ``model`` in price order at local minute ``hhmm`` (for
        ``route_by_price``) and those of them that have a quota (they need live usage)."""
        key = (model, hhmm)
        hit = self._ranked.get(key)
        if hit is None:
            ranked = rank_by_price(self.serving(model)[0], hhmm)
            limited = tuple(c.channel for _, c in ranked if c.channel.has_quota)
            if len(self._ranked) >= 1024:
                self._ranked.clear()
            hit = self._ranked[key] = (ranked, limited)
        return hit

    @classmethod
    def build(cls, config: Config) -> Snapshot:
        """Everything derived from a config, built once; raises ConfigError like the loader."""
        from .routing.rules import RuleError

        try:
            rules = compile_rules(config.rules)
        except RuleError as exc:
            raise ConfigError([f"rules: {exc}"]) from exc
        return cls(
            config=config,
            rules=rules,
            keyring=KeyRing(config.security.api_keys),
            channels={c.name: c for c in config.channels},
            tz=config.server.tz,
            loaded_at=time.time(),
            minutes=MinuteClock(config.server.tz),
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class Gateway:
    """Long-lived state behind the app's one ``GATEWAY`` key."""

    snapshot: Snapshot
    store: UsageStore
    metrics: Metrics
    config_path: str | None = None
    clock: Callable[[], datetime] = utc_now
    health: HealthBook = field(default_factory=HealthBook)
    slots: SlotBook = field(default_factory=LocalSlots)  # max_concurrency: in flight, queue
    failures: RecentFailures = field(default_factory=RecentFailures)  # for the dashboard
    limiter: RateLimiter = field(default_factory=RateLimiter)
    penalty: FailurePenalty = field(default_factory=FailurePenalty)
    auth_lines: FailureLines = field(default_factory=FailureLines)  # failed-auth lines, limited
    providers: dict[str, Provider] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    # How the failover loop waits between attempts; tests inject a recording sleep and no jitter.
    retry_sleep: Sleep = asyncio.sleep
    retry_jitter: Jitter = backoff.full_jitter
    jwt_secret: str | None = None  # generated when the config has none
    draining: bool = False
    # --workers N: tells the sibling workers to re-read the config file after an admin change
    on_admin_change: Callable[[], None] | None = None
    # --workers N: the folder of the workers' Unix sockets and this one's (``metrics_merge``)
    peers_dir: str | None = None
    peer_socket: str = ""
    started_at: float = field(default_factory=time.time)
    last_reload_error: str | None = None
    # The latest change refused, from the file (SIGHUP, POST /api/reload) or an admin write:
    # {"at", "source", "error"}; /health shows it (contract §6).
    last_refused: dict[str, str] | None = None
    last_reload_at: float | None = None
    version: str = __version__
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # The config text admin writes edit (the file, or the built-in default kept in memory).
    config_file: ConfigFile = field(init=False)
    audit: AuditLog = field(init=False)
    counters: InProcessCounters | None = field(init=False)
    shared: bool = field(init=False)  # the store is shared by several processes (redis)

    def __post_init__(self) -> None:
        if not self.snapshot.config.security.jwt.secret and not self.jwt_secret:
            self.jwt_secret = generate_secret()
        self._verifier = self.make_verifier(self.snapshot)
        self.config_file = ConfigFile(self.config_path)
        self.audit = AuditLog(audit_path(self.snapshot.config))
        # Counters in this process (memory, sqlite): the request path skips the coroutines.
        self.counters = self.store if isinstance(self.store, InProcessCounters) else None
        self.shared = bool(getattr(self.store, "shared", False))
        if self.shared:  # failed calls to a shared store are counted from its first one
            self.store.on_error_count = self.metrics.storage_error  # type: ignore[attr-defined]

    # -- config
    @property
    def config(self) -> Config:
        return self.snapshot.config

    def verifier(self) -> JwtVerifier:
        return self._verifier

    def make_verifier(self, snap: Snapshot) -> JwtVerifier:
        """The admin JWT verifier for ``snap`` (reads key files); raises ConfigError."""
        jwt_cfg = snap.config.security.jwt
        return JwtVerifier(jwt_cfg, secret=None if jwt_cfg.secret else self.jwt_secret)

    def install(self, snap: Snapshot, verifier: JwtVerifier | None = None) -> None:
        """Swap in a validated snapshot (one reference; requests in flight keep theirs).

        Only what is keyed by a name that left the config is dropped (breakers, metric series);
        usage counters, reservations and rate buckets are keyed by name and simply carry on.
        """
        verifier = verifier or self.make_verifier(snap)
        old = self.snapshot.config
        removed = set(self.snapshot.channels) - set(snap.channels)
        self.snapshot = snap
        self._verifier = verifier
        self.health.forget(set(snap.channels))
        for name in removed:
            self.metrics.forget_channel(name)
        self.audit.path = audit_path(snap.config)
        _warn_restart_only(old, snap.config)

    def refused(self, source: str, error: str) -> None:
        """Remember a refused config change for /health (the running config stays)."""
        at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.last_refused = {"at": at, "source": source, "error": error}

    async def reload_from_file(self, *, reason: str, actor: Actor = SIGNAL) -> Snapshot:
        """Re-read the config file; on any problem keep the running snapshot and raise ConfigError.

        Holds ``write_lock`` while reading, so an admin write (which re-reads the file under the
        same lock) is either fully before or fully after it: neither change is lost.
        """
        async with self.write_lock:
            old = self.snapshot.config
            try:
                config = keep_listener(old, await asyncio.to_thread(load_config, self.config_path))
                snap = Snapshot.build(config)
                self.install(snap)
            except ConfigError as exc:
                # A loader message may quote a value: never let a known secret through.
                problems = [scrub(p, config_secrets(old)) for p in exc.problems]
                self.last_reload_error = "\n".join(problems)
                self.last_reload_at = time.time()
                self.refused(f"reload ({reason})", "; ".join(problems))
                self.metrics.config_reload(False)
                log.error("config reload (%s) refused, the running config stays: %s", reason,
                          "; ".join(problems))
                self.audit.record(actor, "reload", self.config_path, ok=False,
                                  reason="; ".join(problems))
                raise ConfigError(problems) from None
            self.config_file.reset()  # without a file: back to the built-in default
            self.last_reload_error = None
            self.last_reload_at = time.time()
            self.metrics.config_reload(True)
            log.info("config reloaded (%s): %d channels, %d rules", reason,
                     len(snap.config.channels), len(snap.rules))
            self.audit.record(actor, "reload", self.config_path, ok=True,
                              diff=config_diff(old, snap.config))
            return snap

    async def channel_states(
        self, snap: Snapshot, now: datetime, channels: Sequence[ChannelConfig] | None = None
    ) -> dict[str, ChannelState]:
        """Live numbers the router needs: usage with in-flight reservations, breaker/cool-down
        (of ``channels``, by default every channel of ``snap``)."""
        channels = snap.config.channels if channels is None else channels
        names = [c.name for c in channels]
        counters = self.counters
        if counters is not None:
            usage = counters.usage_now(names, now)
        elif (view := getattr(self.store, "usage_now", None)) is not None:
            usage = view(names, now)  # a shared store's routing view: no round trip
        else:
            usage = await self.store.usage(names, now)
        peek = self.health.peek
        out = {}
        for name in names:
            u = usage[name]
            out[name] = ChannelState(
                u.day_tokens_with_reserved,
                u.hour_tokens_with_reserved,
                u.day_requests + u.reserved_requests,
                peek(name, now),
            )
        return out

    # -- background work that must outlive a cancelled request (usage settlement)
    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def drain_background(self) -> None:
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)
        drain = getattr(self.store, "drain", None)  # a shared store's queued writes
        if drain is not None:
            await drain()


def keep_listener(running: Config, new: Config, *, note: bool = True) -> Config:
    """The socket is bound: a new config keeps the running host and port (``--listen`` may have
    set them). ``server.listen`` keeps the file's text, so there is something to say only when the
    file's address changed and differs from the one in use: then a restart applies it."""
    r, n = running.server, new.server
    if note and n.listen != r.listen and (n.host, n.port) != (r.host, r.port):
        log.info("server.listen %s in the file differs from the running listener %s:%d: a restart "
                 "applies it", n.listen, r.host, r.port)
    return replace(new, server=replace(n, host=r.host, port=r.port))


def _warn_restart_only(old: Config, new: Config) -> None:
    """Say so when a reload changes what only a restart applies (sockets, pool, storage, logs)."""
    changed = [
        name
        for name, a, b in (
            ("server.max_connections", old.server.max_connections, new.server.max_connections),
            ("server TLS", (old.server.enable_https, old.server.cert_file, old.server.key_file),
             (new.server.enable_https, new.server.cert_file, new.server.key_file)),
            ("storage", old.storage, new.storage),
            ("log", old.log, new.log),
            ("monitor", old.monitor, new.monitor),
        )
        if a != b
    ]
    if changed:
        log.warning("config reload: changes to %s take effect only after a restart",
                    ", ".join(changed))


def quota_left(limit: int, used_with_reserved: int) -> int | None:
    """Tokens a limit still allows (in-flight reservations count as used); None = unlimited."""
    return max(0, limit - used_with_reserved) if limit else None


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)

# Per-request values set by the proxy layer (typed keys: aiohttp warns on plain string keys).
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
RATELIMIT_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("ratelimit_headers", dict)
# The key's limits, left by the gate for a shared store to check with the first reservation.
KEY_CHECK = web.RequestKey("key_check", KeyCheck)
