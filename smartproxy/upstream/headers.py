"""The header policy: what goes up with a client's request, and what comes back to the client.

Requests (a deny-list: everything else the client sends is forwarded, contract §3):
  - hop-by-hop headers (RFC 9110 §7.6.1: ``Connection``, ``Keep-Alive``, ``TE``, ``Trailer``,
    ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) and those the client lists in ``Connection``;
  - what the gateway sets itself: ``Host``, ``Content-Length``, ``Expect``, ``Accept-Encoding``
    (always ``identity``: usage is read from the body);
  - the client's credentials for the gateway: ``Authorization``, ``x-api-key``, ``api-key``;
  - what would reveal the client or its session to the provider: ``Cookie``, ``Cookie2``,
    ``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``, ``Via``, ``X-Client-IP``, ``True-Client-IP``,
    ``CF-Connecting-IP``;
  - ``OpenAI-Organization`` and ``OpenAI-Project`` unless the channel has
    ``forward_openai_org: true``: they select an account *behind the channel's key*, which is
    the operator's business, not the client's.

Responses (a deny-list too; status, body and content-type are never touched):
  - hop-by-hop headers, ``Content-Length`` (recomputed), ``Date``/``Server``. ``Content-Encoding``
    passes with the bytes it describes (an upstream may compress although asked for
    ``identity``); a stream the gateway decodes to read its events loses it (``encoding``);
  - ``Set-Cookie``/``Set-Cookie2`` (one upstream session must not reach many clients);
  - the provider account's internals: ``OpenAI-Organization``, ``OpenAI-Project``, and every
    ``x-debug-*`` / ``x-internal-*`` header;
  - any header whose value contains the channel's key or one of its header secrets, whatever
    its name (a provider's debug header echoing the key would otherwise reach the client).
  Every other upstream header passes unchanged, ``x-ratelimit-*`` included (they describe the
  channel's account); the client key's own ``x-ratelimit-*`` are added only for names the
  upstream answer does not carry (``answer.Answerer._response_headers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

from ..config import ChannelConfig

HOP_BY_HOP = frozenset(
    (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    )
)  # fmt: skip

REQUEST_DROP = HOP_BY_HOP | frozenset(
    (
        "host", "content-length", "expect", "accept-encoding",
        "authorization", "x-api-key", "api-key",
        "cookie", "cookie2", "forwarded", "x-forwarded-for", "x-forwarded-host",
        "x-forwarded-proto", "x-forwarded-port", "x-forwarded-server", "x-real-ip", "via",
        "x-client-ip", "true-client-ip", "cf-connecting-ip",
    )
)  # fmt: skip

ORG_HEADERS = frozenset(("openai-organization", "openai-project"))

RESPONSE_DROP = (
    HOP_BY_HOP
    | ORG_HEADERS
    | frozenset(
        ("content-length", "date", "server", "set-cookie", "set-cookie2")
    )
)
RESPONSE_DROP_PREFIXES = ("x-debug", "x-internal")

_MIN_SECRET = 8  # shorter values would match ordinary header text


def client_request_headers(headers: Mapping[str, str], user_agent: str) -> CIMultiDict[str]:
    """The client's headers that may go upstream (any channel), per the policy above."""
    drop: frozenset[str] | set[str] = REQUEST_DROP
    if "Connection" in headers:
        # Headers the client lists in Connection are hop-by-hop too (RFC 9110 7.6.1).
        drop = set(REQUEST_DROP)
        for value in _all(headers, "Connection"):
            drop.update(v.strip().lower() for v in value.split(","))
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in drop:
            out.add(k, v)
    out["Accept-Encoding"] = "identity"  # usage is read from the body; relay bytes as they come
    if "User-Agent" not in out:  # the client's own is forwarded; else say who calls, not aiohttp
        out["User-Agent"] = user_agent
    return out


def for_channel(headers: CIMultiDict[str], channel: ChannelConfig) -> CIMultiDict[str]:
    """``headers`` as this channel gets them: without the organization headers unless it
    forwards them (the same object when nothing is removed, the common case)."""
    if channel.forward_openai_org or (
        "openai-organization" not in headers and "openai-project" not in headers
    ):
        return headers
    out = headers.copy()
    for h in ORG_HEADERS:
        out.popall(h, None)
    return out


def channel_secrets(channel: ChannelConfig | None) -> tuple[str, ...]:
    if channel is None:
        return ()
    values = (channel.api_key, *channel.headers.values())
    return tuple(v for v in values if len(v) >= _MIN_SECRET)


def response_header_allowed(name: str, value: str, secrets: Iterable[str] = ()) -> bool:
    lower = name.lower()
    if lower in RESPONSE_DROP or lower.startswith(RESPONSE_DROP_PREFIXES):
        return False
    for secret in secrets:  # a loop, not any(): this runs for every header of every answer
        if secret in value:
            return False
    return True


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    return list(getall(name, ())) if getall is not None else [headers[name]]
