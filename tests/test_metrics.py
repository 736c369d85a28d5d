"""Metrics: exposed names are the contract's, values count, label values survive the text format."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.metrics import Metrics

# Contract §7 (plus build info and in-flight), as exposed: series name -> type.
CONTRACT_TYPES = {
    "smartproxy_requests_total": "counter",
    "smartproxy_request_duration_seconds": "histogram",
    "smartproxy_upstream_requests_total": "counter",
    "smartproxy_upstream_duration_seconds": "histogram",
    "smartproxy_tokens_total": "counter",
    "smartproxy_cost_usd_total": "counter",
    "smartproxy_channel_tokens_used": "gauge",
    "smartproxy_channel_quota_tokens": "gauge",
    "smartproxy_circuit_state": "gauge",
    "smartproxy_retries_total": "counter",
    "smartproxy_auth_failures_total": "counter",
    "smartproxy_rate_limited_total": "counter",
    "smartproxy_config_reloads_total": "counter",
    "smartproxy_build_info": "gauge",
    "smartproxy_in_flight_requests": "gauge",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    body, _ = metrics.render()
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


def exercise(m: Metrics, channel: str = "free-groq") -> None:
    m.observe_request("/v1/chat/completions", 200, 0.02)
    m.observe_upstream(channel, 200, 0.015)
    m.add_usage(channel, 10, 32, 0.0042)
    m.set_quota(channel, "day", 420, 500_000)
    m.set_circuit(channel, 0)
    m.retry(channel)
    m.auth_failure("unknown_key")
    m.rate_limited("team-a")
    m.config_reload(True)


def test_every_contract_series_is_exposed_with_its_exact_name_and_type() -> None:
    m = Metrics()
    exercise(m)
    body, content_type = m.render()
    text = body.decode()
    for name, kind in CONTRACT_TYPES.items():
        assert f"# TYPE {name} {kind}\n" in text, name
    found = names(samples(m))
    for name, kind in CONTRACT_TYPES.items():
        expected = f"{name}_count" if kind == "histogram" else name
        assert expected in found, name
    assert not any(n.endswith("_total_total") for n in found)
    assert content_type.startswith("text/plain; version=0.0.4")


def test_requests_are_counted_by_endpoint_and_status() -> None:
    m = Metrics()
    for status in (200, 200, "200", 429):
        m.observe_request("/v1/chat/completions", status, 0.2)
    m.observe_request("/v1/models", 200, 0.001)
    found = samples(m)
    total = "smartproxy_requests_total"
    assert value(found, total, endpoint="/v1/chat/completions", status="200") == 3
    assert value(found, total, endpoint="/v1/chat/completions", status="429") == 1
    assert value(found, total, endpoint="/v1/models", status="200") == 1
    count = "smartproxy_request_duration_seconds_count"
    assert value(found, count, endpoint="/v1/chat/completions") == 4


def test_duration_buckets_span_5ms_to_120s() -> None:
    m = Metrics()
    m.observe_request("/v1/chat/completions", 200, 0.003)
    m.observe_request("/v1/chat/completions", 200, 90.0)
    m.observe_request("/v1/chat/completions", 200, 500.0)
    found = samples(m)
    les = sorted(
        float(dict(labels)["le"])
        for name, labels in found
        if name == "smartproxy_request_duration_seconds_bucket"
    )
    assert les[0] == 0.005 and les[-2] == 120.0 and les[-1] == math.inf
    bucket = "smartproxy_request_duration_seconds_bucket"
    ep = "/v1/chat/completions"
    assert value(found, bucket, endpoint=ep, le="0.005") == 1
    assert value(found, bucket, endpoint=ep, le="120.0") == 2
    assert value(found, bucket, endpoint=ep, le="+Inf") == 3


def test_upstream_usage_retries_and_events() -> None:
    m = Metrics()
    m.observe_upstream("a", 500, 1.0)
    m.observe_upstream("a", "timeout", 30.0)
    m.observe_upstream("b", 200, 0.5)
    m.retry("b")
    m.add_usage("b", 100, 50, 0.25)
    m.add_usage("b", 1, 2, 0.5)
    m.auth_failure("missing")
    m.auth_failure("missing")
    m.rate_limited("team-a")
    m.config_reload(True)
    m.config_reload(False)
    found = samples(m)
    assert value(found, "smartproxy_upstream_requests_total", channel="a", status="timeout") == 1
    assert value(found, "smartproxy_upstream_requests_total", channel="a", status="500") == 1
    assert value(found, "smartproxy_upstream_duration_seconds_sum", channel="a") == 31.0
    assert value(found, "smartproxy_retries_total", channel="b") == 1
    assert value(found, "smartproxy_tokens_total", channel="b", kind="prompt") == 101
    assert value(found, "smartproxy_tokens_total", channel="b", kind="completion") == 52
    assert value(found, "smartproxy_cost_usd_total", channel="b") == pytest.approx(0.75)
    assert value(found, "smartproxy_auth_failures_total", reason="missing") == 2
    assert value(found, "smartproxy_rate_limited_total", api_key="team-a") == 1
    assert value(found, "smartproxy_config_reloads_total", result="success") == 1
    assert value(found, "smartproxy_config_reloads_total", result="failure") == 1


def test_quota_gauges_and_unlimited_reads_inf() -> None:
    m = Metrics()
    m.set_quota("free", "day", 900, 1000)
    m.set_quota("free", "hour", 12, None)
    m.set_quota("free", "hour", 15, 0)  # 0 = unlimited, as in the config file
    found = samples(m)
    assert value(found, "smartproxy_channel_tokens_used", channel="free", window="day") == 900
    assert value(found, "smartproxy_channel_quota_tokens", channel="free", window="day") == 1000
    assert value(found, "smartproxy_channel_tokens_used", channel="free", window="hour") == 15
    assert value(found, "smartproxy_channel_quota_tokens", channel="free", window="hour") == (
        math.inf
    )
    with pytest.raises(ValueError, match="window"):
        m.set_quota("free", "week", 1, 2)


def test_circuit_state_accepts_numbers_and_names() -> None:
    m = Metrics()
    m.set_circuit("a", "open")
    m.set_circuit("b", "half-open")
    m.set_circuit("c", "HALF_OPEN")
    m.set_circuit("d", 0)
    found = samples(m)
    states = {c: value(found, "smartproxy_circuit_state", channel=c) for c in "abcd"}
    assert states == {"a": 2, "b": 1, "c": 1, "d": 0}
    with pytest.raises(ValueError):
        m.set_circuit("a", "broken")
    with pytest.raises(ValueError):
        m.set_circuit("a", 3)


@pytest.mark.parametrize("channel", ["免费渠道A", 'a"b\\c', "line\nbreak", "tab\tand } brace"])
def test_awkward_label_values_round_trip(channel: str) -> None:
    m = Metrics()
    exercise(m, channel)
    m.rate_limited(channel)
    found = samples(m)
    assert value(found, "smartproxy_upstream_requests_total", channel=channel, status="200") == 1
    assert value(found, "smartproxy_tokens_total", channel=channel, kind="completion") == 32
    assert value(found, "smartproxy_rate_limited_total", api_key=channel) == 1


def test_forget_channel_removes_only_its_series() -> None:
    m = Metrics()
    exercise(m, "gone")
    exercise(m, "kept")
    m.observe_upstream("gone", "200", 0.1)  # "200" and 200 share one series
    m.forget_channel("gone")
    found = samples(m)
    channels = {dict(labels).get("channel") for _, labels in found}
    assert "gone" not in channels
    assert "kept" in channels
    # the cache was cleared too: a channel re-added under the same name starts from zero
    m.retry("gone")
    assert value(samples(m), "smartproxy_retries_total", channel="gone") == 1


def test_each_instance_has_its_own_registry_and_build_info() -> None:
    first, second = Metrics("1.2.3"), Metrics()
    first.auth_failure("expired")
    found = samples(second)
    assert ("smartproxy_auth_failures_total", frozenset({("reason", "expired")})) not in found
    assert value(samples(first), "smartproxy_build_info", version="1.2.3") == 1


def test_collect_hook_refreshes_gauges_before_render() -> None:
    calls: list[int] = []

    def refresh() -> None:
        calls.append(1)
        m.set_quota("a", "day", 10 * len(calls), 100)

    m = Metrics(collect_hook=refresh)
    assert value(samples(m), "smartproxy_channel_tokens_used", channel="a", window="day") == 10
    assert value(samples(m), "smartproxy_channel_tokens_used", channel="a", window="day") == 20


def test_in_flight_gauge_tracks_requests() -> None:
    m = Metrics()
    m.in_flight_now += 1  # the hot path counts in a plain int; the gauge reads it on scrape
    assert value(samples(m), "smartproxy_in_flight_requests") == 1
    m.in_flight_now -= 1
    assert value(samples(m), "smartproxy_in_flight_requests") == 0
