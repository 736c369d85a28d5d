"""The client's address, believing ``X-Forwarded-For`` only from ``server.trusted_proxies``.

Behind a load balancer every request comes from the balancer's address; the balancer writes the
real client into ``X-Forwarded-For``. That header is believed only when the connection comes from a
trusted proxy (anyone else can write it), and then read from the right: the first address that
is not itself a trusted proxy is the client. Auth-failure penalties, logs and audit lines use it.
"""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(remote: str | None, forwarded_for: str | None,
                   trusted: tuple[str, ...]) -> str | None:
    """``remote``, or the client ``X-Forwarded-For`` names when ``remote`` is trusted."""
    if not trusted or not forwarded_for or remote is None:
        return remote
    networks = _networks(trusted)
    if not _trusted(remote, networks):
        return remote
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop if _is_ip(hop) else remote
    return hops[0] if hops else remote


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
