"""The key gate: what the proxy checks about a client's API key before it routes a request.

In request order: ``authenticate`` (401 ``invalid_api_key``; repeated failures from one address
are slowed by ``Gateway.penalty``), ``rate_limit`` (requests per minute, 429
``rate_limit_exceeded`` with ``Retry-After``), ``budget`` (``daily_budget_usd``, 429
``insufficient_quota``), ``check_model_allowed`` (403 ``model_not_allowed``) and ``limit_tokens``
(``tokens_per_minute``, checked against the request's reservation estimate). When the request
settles, ``charge_key`` charges the tokens it really used and its cost to the key.

Each step leaves the key's ``x-ratelimit-*`` headers in ``request[RATELIMIT_HEADERS]``; the proxy
middleware puts them on every answer the gateway makes, the upstream relay on an upstream answer
for the names that answer does not carry (an upstream header is never dropped or overwritten). Limits and spend are keyed by the key's
*name* and live outside the config snapshot, so they survive reloads.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

from aiohttp import web

from ..errors import AuthenticationFailed, PermissionDenied, QuotaExceeded, RateLimited
from ..localtime import MinuteClock
from ..security.apikeys import Principal, extract_key, key_prefix
from ..security.authlog import left_out_note
from ..security.budget import DailySpend, budget_spent, check_budget, day_start
from ..security.ratelimit import RateDecision
from ..state import KEY_CHECK, PRINCIPAL, RATELIMIT_HEADERS, Gateway, Snapshot
from ..storage.base import Admission, KeyCheck, RequestRecord, StorageError

log = logging.getLogger("smartproxy.proxy")

# Each key's spend today (daily_budget_usd), on the proxy app: it lives as long as the process.
SPEND: web.AppKey[DailySpend] = web.AppKey("spend", DailySpend)


async def authenticate(request: web.Request, gw: Gateway, snap: Snapshot) -> Principal:
    """The key's principal, or ``AuthenticationFailed`` (401) after the address's penalty delay."""
    address = request.remote or "-"
    try:
        presented = extract_key(request.headers)
    except ValueError as exc:
        await _auth_failed(gw, address, "malformed", None)
        raise AuthenticationFailed(f"{exc}; send 'Authorization: Bearer <key>'") from None
    if not presented:
        await _auth_failed(gw, address, "missing", None)
        raise AuthenticationFailed(
            "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        )
    principal = snap.keyring.authenticate(presented)
    if principal is None:
        await _auth_failed(gw, address, "unknown", presented)
        raise AuthenticationFailed(f"incorrect API key provided: {key_prefix(presented)}")
    gw.penalty.record_success(address)
    request[PRINCIPAL] = principal
    log.debug("%s %s from %s: key %r", request.method, request.path, address, principal.name)
    return principal


async def _auth_failed(gw: Gateway, address: str, reason: str, presented: str | None) -> None:
    gw.metrics.auth_failure(reason)
    # The address and at most a short prefix of what was sent: never a whole key. At most one
    # line per address per second (a key-guessing flood must not fill the disk).
    left_out = gw.auth_lines.take(address)
    if left_out is not None:
        log.warning(
            "API key rejected (%s) from %s%s%s",
            reason,
            address,
            f" key {key_prefix(presented)}" if presented else "",
            left_out_note(left_out),
        )
    # Repeated failures from one address slow down (bounded); only this request waits.
    await gw.penalty.punish(address)


def rate_limit(
    request: web.Request, gw: Gateway, snap: Snapshot, principal: Principal, *, defer: bool = True
) -> None:
    """Take one request from the key's bucket; 429 with ``Retry-After`` when it is empty.

    With a shared store (redis) and ``defer``, nothing is checked here: the key's limits ride
    with the request's first reservation (one atomic Redis step, see ``KeyCheck``)."""
    default = snap.config.security.rate_limit
    key = principal.key
    rpm = (
        key.requests_per_minute
        if key.requests_per_minute is not None
        else default.requests_per_minute
    )
    burst = key.burst if key.burst is not None else default.burst
    if defer and gw.shared:
        request[RATELIMIT_HEADERS] = {}
        check = KeyCheck(principal.name, rpm, max(1, burst),
                         day=snap.minutes.at(gw.clock()).day_key)
        check.answer = partial(_answer, request, gw, snap, principal, check)
        check.local = [partial(_local_rate_limit, request, gw, principal, rpm, burst)]
        request[KEY_CHECK] = check
        return
    request[RATELIMIT_HEADERS] = {}
    _local_rate_limit(request, gw, principal, rpm, burst)


def _local_rate_limit(
    request: web.Request, gw: Gateway, principal: Principal, rpm: float, burst: int
) -> None:
    decision = gw.limiter.check(principal.name, rpm, burst)
    headers = request[RATELIMIT_HEADERS]
    headers.update(decision.headers())
    if not decision.allowed:
        _refused_rate(gw, principal, rpm, burst, decision.retry_after, headers)


def _refused_rate(gw: Gateway, principal: Principal, rpm: float, burst: int, retry_after: float,
                  headers: dict[str, str]) -> None:
    gw.metrics.rate_limited(principal.name)
    log.info("rate limited key %r: %g requests/minute, burst %d", principal.name, rpm, burst)
    raise RateLimited(
        f"rate limit reached for key {principal.name!r}: {rpm:g} requests per minute, "
        f"burst {burst}; retry after {retry_after:.1f}s",
        headers=dict(headers),
    )


def _refused_tokens(gw: Gateway, principal: Principal, tpm: int, tokens: int,
                    retry_after: float, headers: dict[str, str]) -> None:
    gw.metrics.rate_limited(principal.name)
    log.info("rate limited key %r: %d tokens per minute", principal.name, tpm)
    raise RateLimited(
        f"rate limit reached for key {principal.name!r}: {tpm} tokens per minute "
        f"(this request may use up to {tokens}); retry after {retry_after:.1f}s",
        code="rate_limit_exceeded",
        param="max_tokens",
        headers=dict(headers),
    )


def _answer(request: web.Request, gw: Gateway, snap: Snapshot, principal: Principal,
            check: KeyCheck, adm: Admission) -> None:
    """What the shared store said about the key: its headers, and the 429 when it refused."""
    headers = request[RATELIMIT_HEADERS]
    code = adm.code
    if check.rpm > 0:
        left, cap, reset_ms = adm.requests
        retry = adm.wait_ms / 1000 if code == 10 else 0.0
        headers.update(RateDecision(code != 10, cap, max(0, left), reset_ms / 1000, retry).headers())
    if check.tpm > 0 and code != 10 and code != 12:
        left, cap, reset_ms = adm.tokens
        retry = adm.wait_ms / 1000 if code == 11 else 0.0
        headers.update(
            RateDecision(code != 11, cap, left, reset_ms / 1000, retry, "tokens").headers()
        )
    if code == 10:
        _refused_rate(gw, principal, check.rpm, check.burst, adm.wait_ms / 1000, headers)
    if code == 11:
        _refused_tokens(gw, principal, check.tpm, check.tpm_tokens, adm.wait_ms / 1000, headers)
    if code == 12:
        gw.metrics.rate_limited(principal.name)
        log.info("key %r refused: daily budget $%g spent", principal.name, check.budget)
        exc = budget_spent(principal.name, adm.spent, check.budget, gw.clock(), snap.tz)
        exc.headers = {**headers, **exc.headers}
        raise exc


def limit_tokens(request: web.Request, gw: Gateway, principal: Principal, tokens: int) -> None:
    """``tokens_per_minute``: is there room for this request's reservation estimate?

    Nothing is taken here; the tokens the request really used are charged when it settles
    (``_charge_key``), so a key's estimate errors never accumulate.
    """
    tpm = principal.key.tokens_per_minute
    if not tpm:
        return
    check = request.get(KEY_CHECK)
    if check is not None:  # a shared store checks it with the first reservation
        check.tpm, check.tpm_tokens = tpm, tokens
        if check.local is not None:
            check.local.append(partial(_local_tokens, request, gw, principal, tpm, tokens))
        return
    _local_tokens(request, gw, principal, tpm, tokens)


def _local_tokens(
    request: web.Request, gw: Gateway, principal: Principal, tpm: int, tokens: int
) -> None:
    decision = gw.limiter.check_tokens(principal.name, tpm, tokens)
    headers = request.get(RATELIMIT_HEADERS)
    if headers is None:
        headers = request[RATELIMIT_HEADERS] = {}
    headers.update(decision.headers())
    if not decision.allowed:
        _refused_tokens(gw, principal, tpm, tokens, decision.retry_after, headers)


def budget(request: web.Request, gw: Gateway, snap: Snapshot, principal: Principal) -> None:
    """``daily_budget_usd``: 429 ``insufficient_quota`` once the key's cost today reaches it."""
    limit = principal.key.daily_budget_usd
    if not limit:
        return
    check = request.get(KEY_CHECK)
    if check is not None:  # a shared store checks the spend of every process
        check.budget = limit
        if check.local is not None:
            check.local.append(partial(_local_budget, request, gw, snap, principal, limit))
        return
    _local_budget(request, gw, snap, principal, limit)


def _local_budget(
    request: web.Request, gw: Gateway, snap: Snapshot, principal: Principal, limit: float
) -> None:
    try:
        check_budget(request.app[SPEND], principal.name, limit, gw.clock(), snap.tz)
    except QuotaExceeded as exc:
        gw.metrics.rate_limited(principal.name)
        log.info("key %r refused: daily budget $%g spent", principal.name, limit)
        exc.headers = {**request.get(RATELIMIT_HEADERS, {}), **exc.headers}
        raise


def charge_key(
    gw: Gateway, spend: DailySpend, principal: Principal, minutes: MinuteClock, record: RequestRecord
) -> None:
    """At settlement: the tokens really used go to the key's tokens-per-minute bucket and the
    cost to its spend of the day the request started (the request log's day). (A shared store
    charges its own buckets in the settle script; these stay this process's fallback.)"""
    tpm = principal.key.tokens_per_minute
    if tpm:
        gw.limiter.add_tokens(principal.name, tpm, record.total_tokens)
    if record.cost > 0:
        spend.add(principal.name, record.cost, minutes.at_epoch(record.ts).day)


def check_model_allowed(principal: Principal, model: str) -> None:
    """403 ``model_not_allowed`` for a model outside the key's ``models`` list.

    403, not 404: the key is known and the answer is about its permissions. It is given before
    routing, whether or not any channel serves the model, so it tells nothing about other models.
    """
    allowed = principal.key.models
    if allowed and model not in allowed:
        log.info("key %r refused model %r (not in its models list)", principal.name, model)
        raise PermissionDenied(
            f"key {principal.name!r} may not use model {model!r}; "
            f"its models are: {', '.join(allowed)}",
            param="model",
        )


async def seed_spend(gw: Gateway, spend: DailySpend) -> None:
    """Today's spend per key from the request log, so a restart does not refill daily budgets."""
    now = gw.clock()
    tz = gw.snapshot.tz
    try:
        rows = await gw.store.query(day_start(now, tz), None, "api_key")
    except StorageError as exc:
        log.error("cannot read today's spend per key; daily budgets start from 0: %s", exc)
        return
    spend.seed(rows, now.astimezone(tz).date())


def spend_ctx(gateway: Gateway) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # Runs after the root app's cleanup_ctx has started the store (aiohttp runs the root's
        # startup callbacks, which include its cleanup_ctx, before the sub-apps' ones).
        await seed_spend(gateway, app[SPEND])
        yield

    return ctx


def setup_gate(app: web.Application, gateway: Gateway) -> None:
    """Give the proxy app its spend book, seeded from the request log at start."""
    app[SPEND] = DailySpend()
    app.cleanup_ctx.append(spend_ctx(gateway))
