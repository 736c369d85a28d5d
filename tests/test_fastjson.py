"""``fastjson``: parsing as ``json`` does, and editing top-level members in place."""

from __future__ import annotations

import json

import pytest

from smartproxy import fastjson


def test_loads_accepts_json_orjson_refuses_but_not_nan_and_refuses_deep_nesting() -> None:
    assert fastjson.loads(b'"\\ud800"') == "\ud800"  # a lone surrogate escape is JSON
    for not_json in (b'{"a": NaN}', b"[Infinity]", b'{"t": -Infinity}'):
        with pytest.raises(ValueError, match="not JSON"):
            fastjson.loads(not_json)
    with pytest.raises(ValueError):
        fastjson.loads(b"[" * 5000 + b"]" * 5000)


def test_members_are_located_past_nested_keys_strings_and_whitespace() -> None:
    raw = b' {"x": [1, {"model": 2}], "s" : "} \\" {", "model"\n:\t"a" , "n": null } '
    spans = fastjson.top_level_members(raw)
    assert spans is not None
    assert {k: raw[a:b] for k, (a, b) in spans.items() if k} == {
        "x": b'[1, {"model": 2}]',
        "s": b'"} \\" {"',
        "model": b'"a"',
        "n": b"null",
    }
    assert raw[spans[""][0]] == ord("}")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "a", "model": "b"}',  # a key twice: which one counts is json's business
        b'{"mod\\u0065l": "a"}',  # an escaped key
        b'["model"]',
        '{"model": "a"}'.encode("utf-16"),
        '{"model": "a"}'.encode("utf-16-le"),
        b'\xef\xbb\xbf{"model": "a"}',  # a BOM
    ],
)
def test_what_cannot_be_located_exactly_is_left_to_the_caller(raw: bytes) -> None:
    assert fastjson.top_level_members(raw) is None
    assert fastjson.with_members(raw, {"model": "b"}) is None


def test_with_members_changes_only_the_values_it_sets() -> None:
    raw = (
        b'{ "model" : "gpt-4o-mini",\n  "seed": 18446744073709551616, "t": 1.0e0,'
        b' "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9 \\"q\\""}],'
        b' "stream": true }'
    )
    out = fastjson.with_members(
        raw, {"model": "llama-3", "stream_options": {"include_usage": True}}
    )
    assert out == (
        b'{ "model" : "llama-3",\n  "seed": 18446744073709551616, "t": 1.0e0,'
        b' "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9 \\"q\\""}],'
        b' "stream": true ,"stream_options":{"include_usage":true}}'
    )
    assert json.loads(out)["seed"] == 18446744073709551616


def test_with_members_replaces_an_existing_member_and_fills_an_empty_object() -> None:
    raw = b'{"stream_options": {"x": 1}, "model": "a"}'
    out = fastjson.with_members(raw, {"stream_options": {"x": 1, "include_usage": True}})
    assert out == b'{"stream_options": {"x":1,"include_usage":true}, "model": "a"}'
    assert fastjson.with_members(b"{ }", {"a": "\u00e9"}) == '{ "a":"\u00e9"}'.encode()
