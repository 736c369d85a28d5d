"""Rule type check at load, and run-time failures logged once a minute and counted ([6])."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import DEV_KEY, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.config import ConfigError, parse_config
from smartproxy.routing import rules as rules_module
from smartproxy.routing.rules import CompiledRule, RuleError, check_expression


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("abs('x') > 1", "abs() needs a number, not a string (column 1)"),
        ("day_tokens_used / 0 > 1", "division by zero (column 1)"),
        ("hour_tokens_used % 0 == 1", "division by zero"),
        ("model < 5", "cannot order a string and a number"),
        ("channel_name + 1 == 2", "cannot add a string and a number"),
        ("stream and -model", "unary '-' needs a number, not a string (column 12)"),
        ("max(priority, 'a') == 1", "max() of a number and a string"),
        ("hour in 5", "'in' needs a list or a string"),
        ("5 in model", "'in' a string needs a string on the left"),
        ("time_of_day >= None", "cannot order a string and None"),
    ],
)
def test_what_can_only_fail_is_refused_at_load(expression: str, problem: str) -> None:
    with pytest.raises(RuleError) as exc:
        check_expression(expression, rule_name="r")
    assert problem in str(exc.value)


@pytest.mark.parametrize(
    "expression",
    [
        "max_tokens > 100",  # max_tokens may be None: not certain to fail
        "time < '06:00' or time >= '22:00'",
        "'mini' in model and stream + 1 > 1",
        "min(daily_limit - day_tokens_used, hour_limit) > prompt_tokens / 2",
        "(model if stream else channel_name) == 'x'",
        "hour in (1, 2, 3) and effective_price * 1000 < 1",
    ],
)
def test_well_typed_rules_load(expression: str) -> None:
    check_expression(expression, rule_name="r")


def test_the_loader_names_the_rule_and_its_path() -> None:
    cfg = base_config(
        channels=[channel("a", "http://h/v1")],
        rules=[{"name": "bad", "channel": "a", "expression": "abs('x') > 1"}],
    )
    with pytest.raises(ConfigError, match=r"rules\[0\]\.expression: rule 'bad': abs\(\)"):
        parse_config(cfg)


def test_run_time_failures_are_logged_once_a_minute_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(rules_module.time, "monotonic", lambda: now[0])
    rule = CompiledRule("big", "c", 1, "max_tokens > day_tokens_used")
    caplog.set_level(logging.WARNING, "smartproxy.rules")
    for used in range(5):
        assert rule.explain({"max_tokens": None, "day_tokens_used": used}) == (
            False, "TypeError: '>' not supported between instances of 'NoneType' and 'int'"
        )  # fmt: skip
    now[0] += 61
    rule.explain({"max_tokens": None, "day_tokens_used": 9})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "rule 'big' failed at run time" in lines[0]
    assert "6 failure(s)" in lines[1]
    assert rule.errors == 6 and rule.new_errors() == 6 and rule.new_errors() == 0


async def test_the_error_metric_counts_failing_requests(gateway_factory: Any) -> None:
    cfg = base_config(
        channels=[{"name": "m", "type": "mock"}],
        rules=[{"name": "big", "channel": "m", "expression": "max_tokens > day_tokens_used"}],
    )
    gw = await gateway_factory(cfg)
    for _ in range(3):
        resp = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {DEV_KEY}"},
        )
        assert resp.status == 200
    text = await (await gw.client.get("/metrics")).text()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "smartproxy_rule_errors"]
    samples = {s.labels["rule"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert samples == {"big": 3.0}
