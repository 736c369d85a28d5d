"""Which proxy a channel uses: its own, ``server.proxy``, else the environment (NO_PROXY aside)."""

from __future__ import annotations

from smartproxy.audit import config_secrets
from smartproxy.config import ChannelConfig, Config, ServerConfig
from smartproxy.upstream.proxyconf import proxy_route, proxy_url

HTTPS = ChannelConfig(name="a", type="openai", endpoint="https://api.example.com/v1")
ENV = {"HTTPS_PROXY": "http://env-proxy:3128", "http_proxy": "http://plain:3128"}


def test_channel_then_server_then_environment() -> None:
    server = ServerConfig(proxy="http://server-proxy:3128")
    own = ChannelConfig(name="b", type="openai", endpoint=HTTPS.endpoint, proxy="http://own:1")
    assert proxy_url(own, server, ENV) == "http://own:1"
    assert proxy_url(HTTPS, server, ENV) == "http://server-proxy:3128"  # env not consulted
    assert proxy_url(HTTPS, ServerConfig(), ENV) == "http://env-proxy:3128"
    http = ChannelConfig(name="c", type="openai", endpoint="http://10.0.0.5:8000/v1")
    assert proxy_url(http, ServerConfig(), ENV) == "http://plain:3128"
    assert proxy_url(HTTPS, ServerConfig(), {}) is None
    mock = ChannelConfig(name="m", type="mock", endpoint="")
    assert proxy_url(mock, ServerConfig(), ENV) is None


def test_no_proxy_names_hosts_and_domains() -> None:
    for no_proxy in ("example.com", ".example.com", "api.example.com", "*", "x.org, example.com"):
        assert proxy_url(HTTPS, ServerConfig(), {**ENV, "NO_PROXY": no_proxy}) is None, no_proxy
    assert proxy_url(HTTPS, ServerConfig(), {**ENV, "NO_PROXY": "ample.com"}) is not None


def test_credentials_leave_the_url_for_a_header_and_are_known_secrets() -> None:
    ch = ChannelConfig(name="a", type="openai", endpoint=HTTPS.endpoint,
                       proxy="http://bob:s%3Acret@proxy:3128")
    route = proxy_route(ch, ServerConfig())
    assert route is not None and route.url == "http://proxy:3128"
    assert route.headers == {"Proxy-Authorization": "Basic Ym9iOnM6Y3JldA=="}  # bob:s:cret
    assert proxy_route(HTTPS, ServerConfig(), {}) is None
    assert "s%3Acret" in config_secrets(Config(channels=(ch,)))
