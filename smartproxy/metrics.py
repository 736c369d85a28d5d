"""Prometheus metrics of contract §7, one ``CollectorRegistry`` per :class:`Metrics`.

Every app (and every test) owns its own registry, so nothing leaks through the process-wide
default registry. Counters are declared without the ``_total`` suffix because prometheus_client
appends it; the exposed names are exactly the contract's.

Label values are the caller's job to keep bounded: ``endpoint`` is the route template
(``/v1/chat/completions``), never a raw path; ``api_key`` is the key's *name*, never the key.

``smartproxy_channel_quota_tokens`` of an unlimited window is ``+Inf``: the series still exists
(so a dashboard lists the channel) and ``used / quota`` reads 0, so usage alerts never fire on it.

The observe_* helpers run on every request, so they cache the labelled child per label tuple:
a dict hit costs ~0.2 µs where ``.labels()`` (validation, str() of each value, a lock) costs
~1.3 µs. Measured here: observe_request ~3.5 µs, observe_upstream ~3.3 µs, add_usage ~2.4 µs
(mostly prometheus_client's locked inc/observe).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from . import __version__

# 5 ms .. 120 s: a cached or mock answer takes milliseconds, a long completion minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    math.inf,
)  # fmt: skip

CIRCUIT_VALUES: dict[str, int] = {
    "closed": 0,
    "half-open": 1,
    "half_open": 1,
    "open": 2,
}

WINDOWS = ("day", "hour")

M = TypeVar("M", Counter, Gauge, Histogram)


class _Children(Generic[M]):
    """Labelled children of one metric, cached by the caller's label tuple."""

    __slots__ = ("metric", "cache")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self.cache: dict[tuple[Hashable, ...], M] = {}

    def get(self, *values: Hashable) -> M:
        child = self.cache.get(values)
        if child is None:
            child = self.metric.labels(*(str(v) for v in values))
            self.cache[values] = child
        return child

    def forget(self, position: int, value: str) -> None:
        """Drop every label set whose label at ``position`` equals ``value``."""
        for key in [k for k in self.cache if str(k[position]) == value]:
            del self.cache[key]
            try:
                self.metric.remove(*(str(v) for v in key))
            except KeyError:  # 200 and "200" share one child; the first removal took it
                pass


class Metrics:
    """All metric objects of the gateway plus the small helpers the request path calls.

    Each metric attribute is named after its exposed series without the ``smartproxy_`` prefix
    (``requests_total``, ``channel_quota_tokens``, ...), so the helpers' names stay free; the one
    exception is ``in_flight`` (smartproxy_in_flight_requests), a plain gauge to inc()/dec().
    """

    def __init__(
        self,
        version: str = __version__,
        *,
        collect_hook: Callable[[], None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Run by render() first, to refresh gauges (quota used, breaker state) from live state.
        self.collect_hook = collect_hook
        r = self.registry
        self.requests_total = Counter(
            "smartproxy_requests", "Client requests answered.", ["endpoint", "status"], registry=r
        )
        self.request_duration_seconds = Histogram(
            "smartproxy_request_duration_seconds",
            "Time from request received to response finished.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_requests_total = Counter(
            "smartproxy_upstream_requests",
            "Upstream attempts by channel and HTTP status (or error/timeout).",
            ["channel", "status"],
            registry=r,
        )
        self.upstream_duration_seconds = Histogram(
            "smartproxy_upstream_duration_seconds",
            "Duration of one upstream attempt.",
            ["channel"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens_total = Counter(
            "smartproxy_tokens",
            "Tokens used, kind = prompt|completion.",
            ["channel", "kind"],
            registry=r,
        )
        self.cost_usd_total = Counter(
            "smartproxy_cost_usd", "Cost in USD.", ["channel"], registry=r
        )
        self.channel_tokens_used = Gauge(
            "smartproxy_channel_tokens_used",
            "Tokens used in the current window (day|hour).",
            ["channel", "window"],
            registry=r,
        )
        self.channel_quota_tokens = Gauge(
            "smartproxy_channel_quota_tokens",
            "Token limit of the window (day|hour); +Inf when unlimited.",
            ["channel", "window"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "smartproxy_circuit_state", "0 closed, 1 half-open, 2 open.", ["channel"], registry=r
        )
        self.retries_total = Counter(
            "smartproxy_retries", "Upstream attempts after the first.", ["channel"], registry=r
        )
        self.auth_failures_total = Counter(
            "smartproxy_auth_failures", "Refused credentials.", ["reason"], registry=r
        )
        self.rate_limited_total = Counter(
            "smartproxy_rate_limited",
            "Requests refused with 429, by key name.",
            ["api_key"],
            registry=r,
        )
        self.config_reloads_total = Counter(
            "smartproxy_config_reloads",
            "Config reloads, result = success|failure.",
            ["result"],
            registry=r,
        )
        self.in_flight = Gauge(
            "smartproxy_in_flight_requests", "Client requests being answered.", registry=r
        )
        self.in_flight_now = 0  # the hot path adds to a plain int; the gauge reads it on scrape
        self.in_flight.set_function(lambda: self.in_flight_now)
        self.build_info = Info("smartproxy_build", "Build information.", registry=r)
        self.build_info.info({"version": version})

        self._requests = _Children(self.requests_total)
        self._request_duration = _Children(self.request_duration_seconds)
        self._upstream = _Children(self.upstream_requests_total)
        self._upstream_duration = _Children(self.upstream_duration_seconds)
        self._tokens = _Children(self.tokens_total)
        self._cost = _Children(self.cost_usd_total)
        self._used = _Children(self.channel_tokens_used)
        self._quota = _Children(self.channel_quota_tokens)
        self._circuit = _Children(self.circuit_state)
        self._retries = _Children(self.retries_total)
        self._auth = _Children(self.auth_failures_total)
        self._limited = _Children(self.rate_limited_total)
        self._reloads = _Children(self.config_reloads_total)
        # Every series carrying a channel label (always the first label), for forget_channel().
        self._by_channel: tuple[_Children[Counter] | _Children[Gauge] | _Children[Histogram], ...]
        self._by_channel = (
            self._upstream,
            self._upstream_duration,
            self._tokens,
            self._cost,
            self._used,
            self._quota,
            self._circuit,
            self._retries,
        )

    # -- hot path --------------------------------------------------------------------------

    def observe_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self._requests.get(endpoint, status).inc()
        self._request_duration.get(endpoint).observe(seconds)

    def observe_upstream(self, channel: str, status: int | str, seconds: float) -> None:
        """One upstream attempt; ``status`` is the HTTP status or a word like "timeout"."""
        self._upstream.get(channel, status).inc()
        self._upstream_duration.get(channel).observe(seconds)

    def add_usage(self, channel: str, prompt: int, completion: int, cost: float) -> None:
        self._tokens.get(channel, "prompt").inc(prompt)
        self._tokens.get(channel, "completion").inc(completion)
        self._cost.get(channel).inc(cost)

    def retry(self, channel: str) -> None:
        self._retries.get(channel).inc()

    def auth_failure(self, reason: str) -> None:
        self._auth.get(reason).inc()

    def rate_limited(self, key_name: str) -> None:
        self._limited.get(key_name).inc()

    # -- gauges and rare events ------------------------------------------------------------

    def set_quota(self, channel: str, window: str, used: float, limit: float | None) -> None:
        """Tokens used in ``window`` (day|hour) and its limit; ``None`` or 0 means unlimited."""
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
        self._used.get(channel, window).set(used)
        self._quota.get(channel, window).set(limit if limit else math.inf)

    def set_circuit(self, channel: str, value: int | str) -> None:
        """Breaker state as 0/1/2 or "closed"/"half-open"/"open" (aiobreaker's names work)."""
        if isinstance(value, str):
            try:
                value = CIRCUIT_VALUES[value.lower()]
            except KeyError:
                raise ValueError(f"unknown circuit state {value!r}") from None
        if value not in (0, 1, 2):
            raise ValueError(f"circuit state must be 0, 1 or 2, not {value!r}")
        self._circuit.get(channel).set(value)

    def config_reload(self, ok: bool) -> None:
        self._reloads.get("success" if ok else "failure").inc()

    def forget_channel(self, name: str) -> None:
        """Remove every series of a deleted channel, so it stops being exported."""
        for children in self._by_channel:
            children.forget(0, name)

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``.

        The content type carries a charset, so pass it as a header, not as aiohttp's
        ``content_type=`` argument. Every name here is a legacy-valid Prometheus name and the
        default escaping is used, so the body is text format 0.0.4, which every scraper reads.
        """
        if self.collect_hook is not None:
            self.collect_hook()
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4
