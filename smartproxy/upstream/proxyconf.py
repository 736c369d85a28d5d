"""Which outbound proxy a channel's requests go through, decided once per config.

Order: the channel's ``proxy``, else ``server.proxy``, else — only when neither is set anywhere
— the environment's ``HTTPS_PROXY`` / ``HTTP_PROXY`` (by the endpoint's scheme) unless
``NO_PROXY`` names the endpoint's host. Proxies are HTTP proxies: an ``https://`` upstream is
reached through a ``CONNECT`` tunnel, an ``http://`` one by absolute-form requests.

Credentials in the proxy URL (``http://user:pass@host:3128``) become a ``Proxy-Authorization``
header and are removed from the URL, so no error message, log line or metric label can carry them;
admin views show the URL masked (``configkinds.mask_url``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

from yarl import URL

from ..config import ChannelConfig, ServerConfig
from ..providers.base import ProxyRoute


def proxy_url(channel: ChannelConfig, server: ServerConfig,
              env: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL in effect for ``channel`` (credentials included), or None: direct."""
    if channel.proxy or server.proxy:
        return channel.proxy or server.proxy
    if not channel.endpoint:
        return None
    proxies = _environment(os.environ if env is None else env)
    endpoint = URL(channel.endpoint)
    chosen = proxies.get(endpoint.scheme)
    if not chosen or (endpoint.host and _bypassed(endpoint.host, proxies)):
        return None
    return chosen


def proxy_route(channel: ChannelConfig, server: ServerConfig,
                env: Mapping[str, str] | None = None) -> ProxyRoute | None:
    """What the provider passes to aiohttp: the URL without credentials, and the auth header."""
    chosen = proxy_url(channel, server, env)
    if chosen is None:
        return None
    url = URL(chosen)
    headers: dict[str, str] = {}
    if url.user is not None:
        pair = f"{url.user}:{url.password or ''}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        url = url.with_user(None)
    return ProxyRoute(url=str(url), headers=headers)


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    """``scheme -> proxy`` from ``*_PROXY`` variables (lower case wins, as curl does)."""
    out: dict[str, str] = {}
    for name in sorted(env, key=lambda n: n.islower()):  # upper first, lower overrides
        value = env[name]
        if value and name.lower().endswith("_proxy"):
            out[name.lower()[: -len("_proxy")]] = value
    return out


def _bypassed(host: str, proxies: dict[str, str]) -> bool:
    """``NO_PROXY``: ``*``, or hosts/domains (``example.com`` covers its subdomains too)."""
    host = host.lower().rstrip(".")
    for entry in proxies.get("no", "").split(","):
        entry = entry.strip().lower().lstrip(".")
        if entry == "*":
            return True
        entry = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry  # "host:port"
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False
