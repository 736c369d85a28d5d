"""Rule expressions: translation, the load-time whitelist, evaluation through asteval."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import asteval
import pytest
from conftest import fresh_python

from smartproxy.config import RuleConfig, parse_config
from smartproxy.errors import ConfigError
from smartproxy.routing import rules as rules_mod
from smartproxy.routing.rules import (
    CompiledRule,
    RuleError,
    check_expression,
    compile_rules,
    translate,
)

VARS: dict[str, object] = {
    "model": "gpt-4o-mini",
    "stream": False,
    "api_key_name": "team-a",
    "prompt_tokens": 120,
    "max_tokens": 500,
    "time": "03:15",
    "time_of_day": "03:15",
    "hour": 3,
    "minute": 15,
    "weekday": 2,
    "channel_name": "free-groq",
    "day_tokens_used": 900,
    "hour_tokens_used": 40,
    "day_requests_used": 7,
    "daily_limit": 1000,
    "hour_limit": math.inf,
    "price_per_token": 0.0,
    "effective_price": 0.0,
    "discount_active": False,
    "priority": 1,
    "channel_status": "healthy",
}


def with_vars(**changes: object) -> dict[str, object]:
    return VARS | changes


# ----------------------------------------------------------------------------- translation
@pytest.mark.parametrize(
    ("source", "python"),
    [
        ("a && b", "a and b"),
        ("a&&b||c", "a and b or c"),
        ("!a", "not a"),
        ("a&&!b", "a and not b"),
        ("!(a || b)", "not (a or b)"),
        ("x != 1", "x != 1"),
        ("x != 1 && !y", "x != 1 and not y"),
        ("a AND b OR NOT c", "a and b or not c"),
        ("true || false", "True or False"),
        ("True and False", "True and False"),
        ("ANDROID == ORACLE", "ANDROID == ORACLE"),  # whole words only
        ("and_x or truely", "and_x or truely"),
        ("And Or Not", "And Or Not"),  # upper case only
        ("model == 'a && !b || true AND NOT'", "model == 'a && !b || true AND NOT'"),
        ('model == "x || y" && true', 'model == "x || y" and True'),
        ("model == 'it\\'s && true' && true", "model == 'it\\'s && true' and True"),
        ("model == '''a ' && b''' && true", "model == '''a ' && b''' and True"),
        ("1e5 > 2 AND 0xFF > 1", "1e5 > 2 and 0xFF > 1"),
        ("  \n  a\n  && b \n", "a   and b"),  # newlines become blanks
    ],
)
def test_translate(source: str, python: str) -> None:
    assert translate(source) == python


# ----------------------------------------------------------------------------- accepted rules
@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        # the SmartAIProxy samples
        ("day_tokens_used < daily_limit && hour_tokens_used < hour_limit", VARS, True),
        ("day_tokens_used < daily_limit && hour_tokens_used < hour_limit",
         with_vars(day_tokens_used=1000), False),
        ("time >= '00:00' && time <= '06:00'", VARS, True),
        ("time >= '00:00' && time <= '06:00'", with_vars(time="06:01"), False),
        ("time_of_day >= '00:00' AND time_of_day <= '06:00'", VARS, True),
        ("time_of_day >= '00:00' AND time_of_day <= '06:00'",
         with_vars(time_of_day="23:00"), False),
        ("true", VARS, True),
        ("false", VARS, False),
        # the rest of the language
        ("NOT stream && model in ('gpt-4o-mini', 'gpt-4o')", VARS, True),
        ("model not in ['gpt-4o-mini']", VARS, False),
        ("'mini' in model", VARS, True),
        ("min(day_tokens_used, 10) == 10 and max(1, 2) == 2 and abs(-3) == 3", VARS, True),
        ("(daily_limit - day_tokens_used) / daily_limit > 0.05", VARS, True),
        ("hour_limit == inf", VARS, True),
        ("prompt_tokens + max_tokens <= 1000 if stream else prompt_tokens < 100", VARS, False),
        ("weekday < 5 and 9 <= hour < 18", VARS, False),
        ("channel_status == 'healthy' and priority % 2 == 1", VARS, True),
        ("effective_price * 1000000 < 1 or discount_active", VARS, True),
        ("2 ** 10 == 1024 and 10 ** -2 < 1 and -2 ** 2 == -4", VARS, True),
        ("max_tokens is None", with_vars(max_tokens=None), True),
        ("api_key_name + '-x' == 'team-a-x'", VARS, True),
        ("day_requests_used // 2 == 3", VARS, True),
    ],
)  # fmt: skip
def test_accepted_expressions_evaluate(
    expression: str, variables: dict[str, object], expected: bool
) -> None:
    check_expression(expression, rule_name="r")
    rule = CompiledRule("r", "free-groq", 1, expression)
    assert rule.evaluate(variables) is expected
    assert rule.last_error is None


# ----------------------------------------------------------------------------- rejected rules
REJECTED = [
    ("__import__('os')", "calls to '__import__' are not allowed"),
    ("__import__('os').system('true')", "not allowed"),
    ("().__class__", "attribute access is not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("model.upper() == 'X'", "calls to 'model.upper' are not allowed"),
    ("model.__len__", "attribute access is not allowed"),
    ("open('x')", "calls to 'open' are not allowed"),
    ("len(model) > 3", "calls to 'len' are not allowed"),
    ("print(1)", "calls to 'print' are not allowed"),
    ("eval('1')", "calls to 'eval' are not allowed"),
    ("[x for x in (1, 2)]", "list comprehensions are not allowed"),
    ("{x for x in (1, 2)}", "set comprehensions are not allowed"),
    ("{x: 1 for x in (1, 2)}", "dict comprehensions are not allowed"),
    ("(x for x in (1, 2))", "generator expressions are not allowed"),
    ("lambda: 1", "lambda is not allowed"),
    ("(lambda: 1)()", "calls to 'lambda: 1' are not allowed"),
    ("(10**9999)**9999", "'**' is only allowed between number literals"),
    ("10**9999", "'**' is only allowed between number literals"),
    ("2 ** 65", "'**' is only allowed between number literals"),
    ("10000000 ** 2", "'**' is only allowed between number literals"),
    ("hour ** 2 > 1", "'**' is only allowed between number literals"),
    ("2 ** hour > 1", "'**' is only allowed between number literals"),
    ("'a'*10**9", "'*' with a string operand is not allowed"),
    ("'a' * 3 == 'aaa'", "'*' with a string operand is not allowed"),
    ("model*100000000", "'*' with a string operand is not allowed"),
    ("100000000 * channel_name", "'*' with a string operand is not allowed"),
    ("(model + 'x') * 99", "'*' with a string operand is not allowed"),
    ("(model or 1) * 99", "'*' with a string operand is not allowed"),
    ("max(model, 'a') * 9", "'*' with a string operand is not allowed"),
    ("'%s' % model", "'%' with a string operand is not allowed"),
    ("99999999999999999999 > hour", "integer literal larger than 1e18"),
    ("model == '" + "x" * 1001 + "'", "string literal longer than 1000 characters"),
    ("foo > 1", "unknown name 'foo'"),
    ("day_tokns_used < 1", "unknown name 'day_tokns_used' (did you mean 'day_tokens_used'?)"),
    ("__builtins__", "name '__builtins__' is not allowed"),
    ("x = 1", "assignment is not allowed"),
    ("(x := 1)", "assignment (:=) is not allowed"),
    ("import os", "import is not allowed"),
    ("model[0] == 'g'", "subscripts are not allowed"),
    ("f'{model}' == 'x'", "f-strings are not allowed"),
    ("min(*(1, 2))", "min() takes plain positional arguments only"),
    ("abs(x=1)", "abs() takes plain positional arguments only"),
    ("abs(1, 2)", "abs() takes exactly 1 argument"),
    ("min(hour)", "min() takes 2 to 50 arguments"),
    ("min", "'min' may only be called"),
    ("{'a': 1}", "dict literals are not allowed"),
    ("hour & 1", "operator '&' is not allowed"),
    ("hour << 1000000", "operator '<<' is not allowed"),
    ("~hour", "operator '~' is not allowed"),
    ("(1, 2)", "tuples outside 'in (...)' are not allowed"),
    ("[hour] == 1", "lists outside 'in [...]' are not allowed"),
    ("hour in (hour, 1)", "only constants may appear"),
    ("b'x' == model", "bytes literals are not allowed"),
    ("hour <", "syntax error"),
    ("", "expression is empty"),
    ("hour > 1 and " * 400 + "true", "expression is longer than"),
    ("-" * 120 + "hour", "nested more than 100 levels"),
    ("hour in (" + ", ".join(["1"] * 400) + ")", "more than 400 parts"),
    ("model == '\\d'", "syntax error: invalid escape sequence"),  # whatever the -W flags
    ("'unterminated && true", "syntax error: unterminated string literal"),
]


@pytest.mark.parametrize(("expression", "problem"), REJECTED, ids=lambda v: str(v)[:40])
def test_rejected_at_load_naming_rule(expression: str, problem: str) -> None:
    with pytest.raises(RuleError) as info:
        check_expression(expression, rule_name="night")
    message = str(info.value)
    assert message.startswith("rule 'night': ")
    assert problem in message
    with pytest.raises(RuleError, match="rule 'night'"):
        compile_rules([RuleConfig(name="night", channel="c", expression=expression)])


def test_rejection_never_evaluates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing runs while checking: no interpreter entry point is called, no file is written."""
    runs: list[object] = []

    def spy(self: object, node: object, *args: object, **kwargs: object) -> None:
        runs.append(node)

    for target in (rules_mod._Evaluator, asteval.Interpreter):
        for method in ("run", "eval", "__call__"):
            monkeypatch.setattr(target, method, spy)
    marker = tmp_path / "marker"
    dangerous = [
        f"open({str(marker)!r}, 'w')",
        f"__import__('os').system('touch {marker}')",
        f"[open({str(marker)!r}, 'w') for _ in (1,)]",
        f"(lambda: open({str(marker)!r}, 'w'))()",
        f"(f := open({str(marker)!r}, 'w'))",
        f"().__class__.__base__.__subclasses__() or open({str(marker)!r}, 'w')",
    ]
    for expression in dangerous:
        with pytest.raises(RuleError, match="rule 'evil'"):
            check_expression(expression, rule_name="evil")
        with pytest.raises(RuleError, match="rule 'evil'"):
            CompiledRule("evil", "c", 1, expression)
    assert runs == []
    assert not marker.exists()


@pytest.mark.parametrize(
    ("expression", "column"),
    [
        ("open('x')", "(column 1)"),
        ("hour > 1 && foo", "(column 13)"),  # columns count the original "&&", not " and "
        ("!stream && !foo", "(column 13)"),
        ("model == 'é' && bogus", "(column 17)"),  # characters, not UTF-8 bytes
        ("hour > 1 AND model.x", "(column 14)"),
        ("hour > 1\n&& bogus", "(line 2, column 4)"),
        ("hour = 1", "(column 6)"),
        ("model == '''a\nb''' and foo", "(line 2, column 10)"),
        ("hour > 1 and (", "(column 14)"),
    ],
)
def test_error_column_points_at_original_text(expression: str, column: str) -> None:
    with pytest.raises(RuleError) as info:
        check_expression(expression, rule_name="r")
    assert str(info.value).endswith(column)


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize(
    ("expression", "variables", "error"),
    [
        ("time < max_tokens", VARS, "TypeError"),  # loads (max_tokens may be None)
        ("max_tokens > 100", with_vars(max_tokens=None), "TypeError"),
        ("day_tokens_used / (hour - 3) > 1", VARS, "ZeroDivisionError"),
        ("1e6 ** 64 > 1", VARS, "OverflowError"),
        ("hour > 1", {"model": "x"}, "variable 'hour' was not provided"),
    ],
)
def test_runtime_error_is_false_with_error_kept(
    expression: str, variables: dict[str, object], error: str
) -> None:
    rule = CompiledRule("r", "c", 1, expression)
    matched, message = rule.explain(variables)
    assert matched is False
    assert message is not None and error in message
    assert rule.last_error == message


def test_error_then_success_clears_last_error() -> None:
    rule = CompiledRule("r", "c", 1, "hour > 1")
    assert rule.evaluate(with_vars(hour="x")) is False
    assert rule.last_error is not None
    assert rule.evaluate(with_vars(hour=5)) is True
    assert rule.last_error is None


def test_literal_list_after_in_is_built_once() -> None:
    rule = CompiledRule("r", "c", 1, "model in ['a', 'gpt-4o-mini'] and hour not in (-1, 25)")
    assert rule.evaluate(VARS) is True
    assert rule.evaluate(with_vars(model="b")) is False


# ----------------------------------------------------------------------------- compile_rules
def test_compile_rules_sorts_by_priority_keeping_file_order_on_ties() -> None:
    configs = [
        RuleConfig(name="c", channel="x", expression="true", priority=5),
        RuleConfig(name="a", channel="x", expression="true", priority=1),
        RuleConfig(name="d", channel="x", expression="true", priority=5),
        RuleConfig(name="b", channel="x", expression="true", priority=1),
        RuleConfig(name="e", channel="x", expression="true", priority=-2),
    ]
    assert [r.name for r in compile_rules(configs)] == ["e", "a", "b", "c", "d"]


def test_compiled_rule_keeps_its_text() -> None:
    rule = CompiledRule("r", "ch", 3, "stream && true")
    assert (rule.name, rule.channel, rule.priority) == ("r", "ch", 3)
    assert rule.expression == "stream && true"
    assert rule.python == "stream and True"


def test_config_loader_reports_rule_problem_with_path() -> None:
    doc: dict[str, Any] = {
        "channels": [{"name": "m", "type": "mock"}],
        "rules": [
            {"name": "ok", "channel": "m", "expression": "true"},
            {"name": "night", "channel": "m", "expression": "open('x')"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert info.value.problems == (
        "rules[1].expression: rule 'night': calls to 'open' are not allowed "
        "(only min, max, abs) (column 1)",
    )


# ----------------------------------------------------------------------- split variables, memo
def split_vars(variables: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    request = {k: v for k, v in variables.items() if k in rules_mod.REQUEST_VARIABLES}
    channel = {k: v for k, v in variables.items() if k in rules_mod.CHANNEL_VARIABLES}
    return request, channel


def test_variable_halves_partition_the_contract() -> None:
    assert rules_mod.REQUEST_VARIABLES | rules_mod.CHANNEL_VARIABLES == rules_mod.VARIABLES
    assert not rules_mod.REQUEST_VARIABLES & rules_mod.CHANNEL_VARIABLES
    rule = CompiledRule("r", "c", 1, "day_tokens_used < daily_limit && model == 'x' || hour > 2")
    assert rule.request_names == ("hour", "model")
    assert rule.channel_names == ("daily_limit", "day_tokens_used")


@pytest.mark.parametrize(
    ("expression", "variables"),
    [
        ("day_tokens_used + prompt_tokens < daily_limit AND NOT stream", VARS),
        ("day_tokens_used + prompt_tokens < daily_limit AND NOT stream", with_vars(stream=True)),
        ("time < max_tokens", VARS),  # runtime error
        ("max_tokens > 100", with_vars(max_tokens=None)),
        ("true", VARS),
        ("min(daily_limit - day_tokens_used, hour_limit) > 50", with_vars(day_tokens_used=990)),
        ("model == 'gpt-4o-mini' && (hour >= 2 || NOT stream)", VARS),
        ("effective_price < price_per_token AND discount_active", VARS),
        ("time_of_day >= '22:00' || time_of_day < '06:00'", VARS),
        ("time_of_day >= '22:00' || time_of_day < '06:00'", with_vars(time_of_day="12:00")),
        ("max_tokens * 2 > 'x'", VARS),  # runtime error, remembered
    ],
)
def test_explain_split_agrees_with_explain_first_time_and_remembered(
    expression: str, variables: dict[str, object]
) -> None:
    expected = CompiledRule("r", "c", 1, expression).explain(variables)
    rule = CompiledRule("r", "c", 1, expression)
    request, channel = split_vars(variables)
    assert rule.explain_split(request, channel) == expected  # evaluated
    assert rule.last_error == expected[1]
    rule.evaluate(with_vars(hour="x", time=7))  # another outcome in between (last_error moves)
    assert rule.explain_split(request, channel) == expected  # remembered
    assert rule.last_error == expected[1]


def test_remembered_outcomes_tell_types_apart() -> None:
    # int 10**16 + 1 > 10**16, but the float 1e16 + 1 == 1e16: equal inputs of another type
    # must not share an outcome
    rule = CompiledRule("r", "c", 1, "max_tokens + 1 > 10000000000000000")
    assert rule._evaluator.memo is not None
    assert rule.explain_split({"max_tokens": 10**16}, None) == (True, None)
    assert rule.explain_split({"max_tokens": 1e16}, None) == (False, None)
    assert rule.explain_split({"max_tokens": 10**16}, None) == (True, None)
    assert len(rule._evaluator.memo) == 2


def test_remembered_outcomes_are_bounded_and_missing_variables_reported() -> None:
    rule = CompiledRule("r", "c", 1, "max_tokens > 100")
    assert rule._evaluator.memo is not None
    for n in range(rules_mod.MEMO_SIZE * 2 + 3):
        assert rule.explain_split({"max_tokens": n}, None) == (n > 100, None)
        assert len(rule._evaluator.memo) <= rules_mod.MEMO_SIZE
    matched, error = rule.explain_split({}, None)
    assert matched is False and error == "variable 'max_tokens' was not provided"
    channel_rule = CompiledRule("r", "c", 1, "day_tokens_used > 1")
    assert channel_rule.explain_split(VARS, None) == (
        False, "variable 'day_tokens_used' was not provided")
    rule.forget()
    assert not rule._evaluator.memo


@pytest.mark.parametrize(
    "expression",
    ["day_tokens_used < daily_limit", "hour_tokens_used < 5", "day_requests_used < 9",
     "prompt_tokens < 1000 || model == 'x'"],
)
def test_rules_reading_per_request_counters_are_not_remembered(expression: str) -> None:
    rule = CompiledRule("r", "c", 1, expression)
    assert rule._evaluator.memo is None
    request, channel = split_vars(VARS)
    assert rule.explain_split(request, channel) == rule.explain(VARS)
    rule.forget()  # nothing to forget: no error


def test_compile_rules_returns_a_rule_set_the_router_need_not_sort() -> None:
    compiled = compile_rules([RuleConfig(name="b", channel="x", expression="true", priority=2),
                              RuleConfig(name="a", channel="y", expression="true", priority=1)])
    assert isinstance(compiled, rules_mod.RuleSet) and isinstance(compiled, tuple)
    assert [r.name for r in compiled] == ["a", "b"]


def test_a_worker_loads_neither_numpy_nor_ctypes_for_asteval() -> None:
    """asteval imports numpy (when installed) and ctypes at its own import; rules need neither
    (no numpy functions, no attribute access): a gateway process does not hold them (~20 MB and
    ~1.1 MB), and both can still be imported afterwards by whoever wants them."""
    rule = {"name": "r", "expression": "max_tokens > 10", "channel": "a"}
    chan = {"name": "a", "type": "openai", "endpoint": "http://127.0.0.1:9/v1", "api_key": "k"}
    assert fresh_python(
        "import sys",
        "from smartproxy.app import create_app",
        "from smartproxy.config import parse_config",
        f"create_app(parse_config({{'rules': [{rule!r}], 'channels': [{chan!r}]}}))",
        "print([m for m in ('numpy', 'ctypes') if m in sys.modules])",
        "import ctypes",
        "print(ctypes.sizeof(ctypes.c_int))",
    ) == ["[]", "4"]
