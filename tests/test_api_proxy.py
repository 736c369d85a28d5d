"""Unit tests of the proxy sub-app's own steps (smartproxy/api/proxy.py): parsing the body once
and choosing the headers that go upstream. The key gate is in test_api_gate.py; the whole path
through HTTP in test_e2e_proxy.py and test_e2e_auth.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import base_config

from smartproxy import __version__
from smartproxy.api.proxy import forward_headers, parse_body
from smartproxy.app import create_app
from smartproxy.config import ApiKeyConfig, parse_config
from smartproxy.errors import BadRequest
from smartproxy.security.apikeys import Principal
from smartproxy.state import GATEWAY, Snapshot


def snapshot() -> Snapshot:
    return create_app(parse_config(base_config()))[GATEWAY].snapshot


def request(headers: dict[str, str]) -> Any:
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers)


def principal() -> Principal:
    return Principal("k", ApiKeyConfig(name="k", key="sk-unit-test-key-123"))


# ----------------------------------------------------------------------------- body
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_json"),
        (b"{oops", "invalid_json"),
        (b"[1]", "invalid_json"),
        (b'{"model": "m", "x": NaN}', "invalid_json"),  # not JSON (RFC 8259): never forwarded
        (b'{"model": "m", "temperature": -Infinity}', "invalid_json"),
        (b'{"model": "m", "t": Infinity}', "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": ""}', "missing_model"),
        (b'{"model": "m", "stream": "yes"}', "invalid_request"),
        (b'{"model": "m", "max_tokens": -1}', "invalid_request"),
        (b'{"model": "m", "max_tokens": true}', "invalid_request"),
    ],
)
def test_parse_body_rejects(raw, code):
    with pytest.raises(BadRequest) as err:
        parse_body(raw, snapshot(), None)
    assert err.value.code == code


def test_parse_body_facts_carry_the_key_name():
    raw = json.dumps(
        {
            "model": "m",
            "stream": True,
            "max_completion_tokens": 7,
            "messages": [{"role": "user", "content": "x" * 400}],
        }
    ).encode()
    body, facts = parse_body(raw, snapshot(), principal())
    assert body["model"] == "m" and facts.stream and facts.max_tokens == 7
    # text chars ("m", "user", 400 x) / 4 = 101.25, + 3 for the request and 4 for its message
    assert facts.api_key_name == "k" and facts.prompt_tokens == 109
    assert parse_body(raw, snapshot(), None)[1].api_key_name == ""


# ----------------------------------------------------------------------------- headers
def test_forward_headers_drop_credentials_and_hop_by_hop():
    req = request(
        {
            "Authorization": "Bearer x",
            "x-api-key": "y",
            "Connection": "close, X-Hop",
            "X-Hop": "1",
            "X-Keep": "2",
            "Content-Length": "3",
            "Accept-Encoding": "br",
        }
    )
    out = forward_headers(req)
    assert dict(out) == {
        "X-Keep": "2",
        "Accept-Encoding": "identity",
        "User-Agent": f"SmartProxy/{__version__}",  # the client sent none
    }
    assert forward_headers(request({"User-Agent": "OpenAI/Python 1.0"}))["User-Agent"] == (
        "OpenAI/Python 1.0"
    )


def test_reservation_per_endpoint_and_choices() -> None:
    from smartproxy.api.proxy import reservation
    from smartproxy.config import parse_config
    from smartproxy.routing.router import RequestFacts
    from smartproxy.state import Snapshot

    snap = Snapshot.build(parse_config({"usage": {"default_max_tokens": 500}}))
    facts = RequestFacts(model="m", prompt_tokens=10, max_tokens=None)
    assert reservation(snap, facts, {}, "/chat/completions") == 510
    assert reservation(snap, facts, {}, "/embeddings") == 10  # no completion tokens
    with_max = RequestFacts(model="m", prompt_tokens=10, max_tokens=20)
    assert reservation(snap, with_max, {"n": 3}, "/chat/completions") == 70
    from smartproxy.errors import BadRequest

    with pytest.raises(BadRequest):  # parse_body refuses it first; never reserved as 1 choice
        reservation(snap, with_max, {"n": "x"}, "/completions")
    zero = RequestFacts(model="m", prompt_tokens=10, max_tokens=0)
    assert reservation(snap, zero, {}, "/chat/completions") == 10


def test_request_ids_differ_in_a_forked_worker():
    """``--workers`` forks from a parent that imported the proxy module: each worker must make
    its own ids (two workers gave different requests the same x-request-id)."""
    import os
    import warnings

    from smartproxy.api.proxy import new_request_id

    mine = new_request_id()
    r, w = os.pipe()
    with warnings.catch_warnings():  # 3.12+: fork with threads alive (other tests' pools)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the worker
        os.write(w, new_request_id().encode())
        os._exit(0)
    os.close(w)
    theirs = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert theirs.startswith("req-") and len(theirs) == len(mine)
    assert theirs[4:16] != mine[4:16]  # another 12-hex prefix


async def test_405_says_what_is_allowed_on_proxy_admin_and_ops_routes(gateway_factory) -> None:
    """RFC 9110: every 405 carries ``Allow``; the gateway's own error bodies replaced aiohttp's
    answer and lost it (audit finding); on /api the code said ``not_found``."""
    import aiohttp
    from conftest import base_config

    gw = await gateway_factory(base_config())
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/chat/completions") as r:
            assert r.status == 405 and "POST" in r.headers["Allow"]
            assert (await r.json())["error"]["code"] == "method_not_allowed"
        async with s.put(gw.root + "/api/channels", headers=gw.admin_headers()) as r:
            assert r.status == 405
            assert {"GET", "POST"} <= {m.strip() for m in r.headers["Allow"].split(",")}
            assert (await r.json())["error"]["code"] == "method_not_allowed"
        async with s.post(gw.root + "/healthz") as r:
            assert r.status == 405 and "GET" in r.headers["Allow"]
