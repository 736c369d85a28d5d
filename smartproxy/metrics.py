"""Prometheus metrics of contract §7, one ``CollectorRegistry`` per :class:`Metrics`.

Every app (and every test) owns its own registry, so nothing leaks through the process-wide
default registry. Counters are declared without the ``_total`` suffix because prometheus_client
appends it; the exposed names are exactly the contract's.

Label values are the caller's job to keep bounded: ``endpoint`` is the route template
(``/v1/chat/completions``), never a raw path; ``api_key`` is the key's *name*, never the key.

``smartproxy_channel_quota_tokens`` of an unlimited window is ``+Inf``: the series still exists
(so a dashboard lists the channel) and ``used / quota`` reads 0, so usage alerts never fire on it.

The series every proxied request moves (requests, upstream attempts, their durations, tokens,
cost, retries) are plain Python numbers (:class:`HotCounter`, :class:`HotHistogram`) that a
collector turns into metric families on scrape: an update is a dict lookup and an add, where
prometheus_client's ``inc()``/``observe()`` take a lock (and ``.labels()`` validates and converts
every value); the gateway runs on one event loop thread, and a scrape runs on that thread too.
Rare events (auth failures, reloads) and gauges stay prometheus_client objects.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import __version__

_go_float: Callable[[float], str] = floatToGoString  # untyped upstream; "+Inf", "0.005"

# 5 ms .. 120 s: a cached or mock answer takes milliseconds, a long completion minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    math.inf,
)  # fmt: skip
QUEUE_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf,
)  # fmt: skip

CIRCUIT_VALUES: dict[str, int] = {
    "closed": 0,
    "half-open": 1,
    "half_open": 1,
    "open": 2,
}

WINDOWS = ("day", "hour")

M = TypeVar("M", Counter, Gauge)


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


V = TypeVar("V")


class _HotSeries(Generic[V]):
    """A labelled series kept as a dict (label values -> value), exported on scrape."""

    __slots__ = ("name", "doc", "labels", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[Hashable, ...], V] = {}

    def forget(self, position: int, value: str) -> None:
        """Drop every label set whose label at ``position`` equals ``value``."""
        for key in [k for k in self.values if str(k[position]) == value]:
            del self.values[key]


class HotCounter(_HotSeries[float]):
    """A labelled counter: label values -> total."""

    __slots__ = ()

    def inc(self, key: tuple[Hashable, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        merged: dict[tuple[str, ...], float] = {}  # 200 and "200" are one series
        for key, total in self.values.items():
            labels = tuple(str(v) for v in key)
            merged[labels] = merged.get(labels, 0) + total
        for labels, total in merged.items():
            fam.add_metric(labels, total)
        return fam


class HotHistogram(_HotSeries[list[float]]):
    """A labelled histogram: label values -> [count in bucket 0, ..., in bucket n-1, sum]."""

    __slots__ = ("bounds",)

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]):
        super().__init__(name, doc, labels)
        self.bounds = bounds

    def observe(self, key: tuple[Hashable, ...], seconds: float) -> None:
        counts = self.values.get(key)
        if counts is None:
            counts = self.values[key] = [0.0] * (len(self.bounds) + 1)
        counts[bisect_left(self.bounds, seconds)] += 1  # the first bucket with bound >= value
        counts[-1] += seconds

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, counts in self.values.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip(self.bounds, counts, strict=False):
                cumulative += n
                buckets.append((_go_float(bound), cumulative))
            fam.add_metric([str(v) for v in key], buckets, counts[-1])
        return fam


class _HotCollector:
    """Registers the hot series with a ``CollectorRegistry``."""

    def __init__(self, series: tuple[HotCounter | HotHistogram, ...]) -> None:
        self.series = series

    def collect(self) -> Iterator[Metric]:
        for s in self.series:
            yield s.family()


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
        self.requests_total = HotCounter(
            "smartproxy_requests", "Client requests answered.", ("endpoint", "status")
        )
        self.request_duration_seconds = HotHistogram(
            "smartproxy_request_duration_seconds",
            "Time from request received to response finished.",
            ("endpoint",),
            DURATION_BUCKETS,
        )
        self.upstream_requests_total = HotCounter(
            "smartproxy_upstream_requests",
            "Upstream attempts by channel and HTTP status (or error/timeout).",
            ("channel", "status"),
        )
        self.upstream_duration_seconds = HotHistogram(
            "smartproxy_upstream_duration_seconds",
            "Duration of one upstream attempt.",
            ("channel",),
            DURATION_BUCKETS,
        )
        self.tokens_total = HotCounter(
            "smartproxy_tokens", "Tokens used, kind = prompt|completion.", ("channel", "kind")
        )
        self.cost_usd_total = HotCounter("smartproxy_cost_usd", "Cost in USD.", ("channel",))
        self.retries_total = HotCounter(
            "smartproxy_retries", "Upstream attempts after the first.", ("channel",)
        )
        self.rule_errors_total = HotCounter(
            "smartproxy_rule_errors",
            "Rule evaluations that raised at run time (the rule counted as false).",
            ("rule",),
        )
        self._hot: tuple[HotCounter | HotHistogram, ...] = (
            self.rule_errors_total,
            self.requests_total,
            self.request_duration_seconds,
            self.upstream_requests_total,
            self.upstream_duration_seconds,
            self.tokens_total,
            self.cost_usd_total,
            self.retries_total,
        )
        r.register(_HotCollector(self._hot))
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
        self.storage_errors_total = Counter(
            "smartproxy_storage_errors",
            "Calls to the shared usage store (redis) that failed or timed out.",
            registry=r,
        )
        self.in_flight = Gauge(
            "smartproxy_in_flight_requests", "Client requests being answered.", registry=r
        )
        self.in_flight_now = 0  # the hot path adds to a plain int; the gauge reads it on scrape
        self.in_flight.set_function(lambda: self.in_flight_now)
        self.channel_in_flight = Gauge(
            "smartproxy_channel_in_flight",
            "Requests in flight to the channel (max_concurrency caps it).",
            ["channel"],
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "smartproxy_queue_wait_seconds",
            "Time requests waited for a channel slot (every candidate at max_concurrency).",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.build_info = Info("smartproxy_build", "Build information.", registry=r)
        self.build_info.info({"version": version})

        self._used = _Children(self.channel_tokens_used)
        self._quota = _Children(self.channel_quota_tokens)
        self._circuit = _Children(self.circuit_state)
        self._channel_in_flight = _Children(self.channel_in_flight)
        self._auth = _Children(self.auth_failures_total)
        self._limited = _Children(self.rate_limited_total)
        self._reloads = _Children(self.config_reloads_total)
        # Every series carrying a channel label (always the first label), for forget_channel().
        self._by_channel: tuple[_Children[Gauge] | HotCounter | HotHistogram, ...] = (
            self.upstream_requests_total,
            self.upstream_duration_seconds,
            self.tokens_total,
            self.cost_usd_total,
            self.retries_total,
            self._used,
            self._quota,
            self._circuit,
            self._channel_in_flight,
        )

    # -- hot path --------------------------------------------------------------------------

    def observe_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self.requests_total.inc((endpoint, status))
        self.request_duration_seconds.observe((endpoint,), seconds)

    def observe_upstream(self, channel: str, status: int | str, seconds: float) -> None:
        """One upstream attempt; ``status`` is the HTTP status or a word like "timeout"."""
        self.upstream_requests_total.inc((channel, status))
        self.upstream_duration_seconds.observe((channel,), seconds)

    def add_usage(self, channel: str, prompt: int, completion: int, cost: float) -> None:
        tokens = self.tokens_total
        tokens.inc((channel, "prompt"), prompt)
        tokens.inc((channel, "completion"), completion)
        self.cost_usd_total.inc((channel,), cost)

    def rule_errors(self, rule: str, count: int) -> None:
        if count:
            self.rule_errors_total.inc((rule,), count)

    def retry(self, channel: str) -> None:
        self.retries_total.inc((channel,))

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

    def set_channel_in_flight(self, channel: str, count: int) -> None:
        self._channel_in_flight.get(channel).set(count)

    def queue_wait(self, seconds: float) -> None:
        """One wait for a channel slot (whether a slot came or the queue timed out)."""
        self.queue_wait_seconds.observe(seconds)

    def storage_error(self) -> None:
        self.storage_errors_total.inc()

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
