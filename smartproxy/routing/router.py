"""The candidate order of contract §4, as pure functions: facts and state in, decision out.

``route`` is called once per request with the channels and compiled rules of one config
snapshot, the live per-channel state (usage already including in-flight reservations, breaker
state) and the request's start instant. It does no I/O and keeps nothing between calls, so the
same inputs always give the same ``RouteDecision``; the dry run (``POST /api/route``) shows that
decision as is, with the reason each channel was left out and what each rule evaluated to.

Order:
1. channels whose rule matched, in rule priority order (each rule sees its own channel's
   variables; a channel is listed once, at its first matching rule);
2. every other candidate by (not free, effective price, ``priority``, position in the file).

Quotas (contract §4): a channel is a candidate while used + reserved by requests in flight is
below each limit; the request then reserves its estimate (prompt + ``max_tokens``) and settles what
it really used. So a quota is spent to its end (``day_tokens_used < daily_limit``), a small quota is
never refused to its first request, and concurrent requests overrun it by at most one request.
``reserve_tokens`` is accepted for the dry run's report; it no longer decides admission.

Cost per request: the variables are built lazily (the request half once, each channel's half once
and only if a rule reads it), rules come pre-sorted from ``compile_rules``, and each rule
remembers its recent outcomes by the values it read (``rules.py``), since a rule is a pure
function of them. ``benchmarks/route_path_bench.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from types import MappingProxyType
from typing import NamedTuple

from ..config import ChannelConfig
from .pricing import discount_active_local, local_time, minute_of
from .rules import CompiledRule, RuleSet

_UNAVAILABLE = {"open": "circuit open", "cooldown": "cooling down after 429"}


@dataclass(slots=True)  # built per request: a frozen init costs ~0.16 µs a field
class RequestFacts:
    """What the router needs to know about a request, parsed once from its body."""

    model: str
    stream: bool = False
    api_key_name: str = ""
    prompt_tokens: int = 0  # estimate
    max_tokens: int | None = None
    path: str = "/chat/completions"  # the client endpoint below /v1


# The value objects made per channel and per rule on every request are NamedTuples: immutable
# like a frozen dataclass, but built ~3x faster (a frozen dataclass sets each field through
# object.__setattr__), which matters at 10 channels x 10 rules per request.
class ChannelState(NamedTuple):
    """Live state of one channel; the ``*_used`` counts already include in-flight reservations."""

    day_tokens_used: int = 0
    hour_tokens_used: int = 0
    day_requests_used: int = 0
    circuit: str = "healthy"  # healthy | half_open | open | cooldown


class Candidate(NamedTuple):
    channel: ChannelConfig
    effective_price: float
    discount_active: bool
    rule: str | None  # the rule that placed it first, None when ordered by price


class Exclusion(NamedTuple):
    channel: str
    reason: str


class RuleTrace(NamedTuple):
    rule: str
    channel: str
    matched: bool
    error: str | None  # runtime error, or why the rule was not evaluated


@dataclass(slots=True)  # built per request: a frozen init costs ~0.16 µs a field
class RouteDecision:
    candidates: tuple[Candidate, ...]
    matched_rule: str | None
    excluded: tuple[Exclusion, ...]
    rules: tuple[RuleTrace, ...]


_FRESH = ChannelState()
_NO_VARIABLES: Mapping[str, object] = MappingProxyType({})


# ----------------------------------------------------------------------------- variables
def request_variables(facts: RequestFacts, local: datetime) -> dict[str, object]:
    """The request half of the rule variables; ``local`` is the start in ``server.timezone``."""
    hhmm = f"{local.hour:02d}:{local.minute:02d}"
    return {
        "model": facts.model,
        "stream": facts.stream,
        "api_key_name": facts.api_key_name,
        "prompt_tokens": facts.prompt_tokens,
        "max_tokens": facts.max_tokens,
        "time": hhmm,
        "time_of_day": hhmm,
        "hour": local.hour,
        "minute": local.minute,
        "weekday": local.weekday(),
    }


def channel_variables(
    channel: ChannelConfig, state: ChannelState, price: float, discounted: bool
) -> dict[str, object]:
    """The channel half of the rule variables (an absent or 0 limit reads as ``inf``)."""
    return {
        "channel_name": channel.name,
        "day_tokens_used": state.day_tokens_used,
        "hour_tokens_used": state.hour_tokens_used,
        "day_requests_used": state.day_requests_used,
        "daily_limit": channel.daily_limit or float("inf"),
        "hour_limit": channel.hour_limit or float("inf"),
        "price_per_token": channel.price_per_token,
        "effective_price": price,
        "discount_active": discounted,
        "priority": channel.priority,
        "channel_status": state.circuit if channel.active else "disabled",
    }


def rule_variables(
    facts: RequestFacts, channel: ChannelConfig, state: ChannelState, at: datetime, tz: tzinfo
) -> dict[str, object]:
    """Every variable of contract §4 for one rule's channel at instant ``at``."""
    local = local_time(at, tz)
    discounted = discount_active_local(channel, minute_of(local))
    price = _price(channel, discounted)
    return request_variables(facts, local) | channel_variables(channel, state, price, discounted)


def _price(channel: ChannelConfig, discounted: bool) -> float:
    if discounted and channel.discount_price is not None:
        return channel.discount_price
    return channel.price_per_token


# ----------------------------------------------------------------------------- candidates
def exclusion_reason(
    channel: ChannelConfig,
    model: str,
    state: ChannelState,
    reserve_tokens: int = 0,
    path: str = "/chat/completions",
) -> str | None:
    """Why ``channel`` cannot take this request now, or None if it can."""
    if not channel.active:
        return "disabled"
    if (why := channel.cannot_serve(path)) is not None:
        return why
    if not channel.serves(model):
        return f"does not serve model {model!r}"
    if state.circuit in _UNAVAILABLE:
        return _UNAVAILABLE[state.circuit]
    day, hour = channel.daily_limit, channel.hour_limit
    if day and state.day_tokens_used >= day:
        return f"daily token quota used ({state.day_tokens_used}/{day})"
    if hour and state.hour_tokens_used >= hour:
        return f"hourly token quota used ({state.hour_tokens_used}/{hour})"
    requests = channel.daily_request_limit
    if requests and state.day_requests_used >= requests:
        return f"daily request quota used ({state.day_requests_used}/{requests})"
    return None


def route(
    channels: Sequence[ChannelConfig],
    rules: Sequence[CompiledRule],
    facts: RequestFacts,
    states: Mapping[str, ChannelState],
    at: datetime,
    tz: tzinfo,
    *,
    reserve_tokens: int = 0,
) -> RouteDecision:
    """Order the channels that may take this request (contract §4); see the module docstring."""
    local = local_time(at, tz)
    hhmm = minute_of(local)
    # name -> (file position, state, the candidate as ranked by price)
    pool: dict[str, tuple[int, ChannelState, Candidate]] = {}
    excluded: list[Exclusion] = []
    for index, channel in enumerate(channels):
        state = states.get(channel.name, _FRESH)
        reason = exclusion_reason(channel, facts.model, state, reserve_tokens, facts.path)
        if reason is not None:
            excluded.append(Exclusion(channel.name, reason))
            continue
        discounted = discount_active_local(channel, hhmm)
        price = _price(channel, discounted)
        pool[channel.name] = (index, state, Candidate(channel, price, discounted, None))

    chosen: list[Candidate] = []
    placed_by: dict[str, str] = {}
    traces: list[RuleTrace] = []
    # Variables are built lazily and once: the request half when a rule first reads it, each
    # channel's half when a rule of that channel first reads it; never merged per rule.
    request_vars: dict[str, object] | None = None
    channel_vars: dict[str, dict[str, object]] = {}
    # compile_rules() sorts once at load; other sequences are sorted here (stable: file order)
    ordered = rules if isinstance(rules, RuleSet) else sorted(rules, key=_rule_priority)
    for rule in ordered:
        entry = pool.get(rule.channel)
        if entry is None:
            reason = next((e.reason for e in excluded if e.channel == rule.channel), None)
            note = f"not evaluated: {reason or 'does not exist'}"
            traces.append(RuleTrace(rule.name, rule.channel, False, note))
            continue
        if rule.channel in placed_by:
            note = f"not evaluated: channel already placed by rule {placed_by[rule.channel]!r}"
            traces.append(RuleTrace(rule.name, rule.channel, False, note))
            continue
        _, state, ranked = entry
        if request_vars is None and rule.request_names:
            request_vars = request_variables(facts, local)
        cvars: dict[str, object] | None = None
        if rule.channel_names:
            cvars = channel_vars.get(rule.channel)
            if cvars is None:
                cvars = channel_vars[rule.channel] = channel_variables(
                    ranked.channel, state, ranked.effective_price, ranked.discount_active
                )
        matched, error = rule.explain_split(request_vars or _NO_VARIABLES, cvars)
        traces.append(RuleTrace(rule.name, rule.channel, matched, error))
        if matched:
            placed_by[rule.channel] = rule.name
            chosen.append(
                Candidate(ranked.channel, ranked.effective_price, ranked.discount_active, rule.name)
            )

    rest = sorted(
        (entry for name, entry in pool.items() if name not in placed_by), key=_price_order
    )
    chosen.extend(candidate for _, _, candidate in rest)
    return RouteDecision(
        candidates=tuple(chosen),
        matched_rule=next((t.rule for t in traces if t.matched), None),
        excluded=tuple(excluded),
        rules=tuple(traces),
    )


def _rule_priority(rule: CompiledRule) -> int:
    return rule.priority


def _price_order(entry: tuple[int, ChannelState, Candidate]) -> tuple[bool, float, int, int]:
    index, _, candidate = entry
    price = candidate.effective_price
    return price > 0, price, candidate.channel.priority, index


# ----------------------------------------------------------------------------- without rules
# When no rule names a channel serving the model, step 1 is empty and the order is step 2 alone:
# price order, which changes only with the minute (discount windows). ``rank_by_price`` computes
# it once per (model, minute) (``Snapshot.ranked``); ``route_by_price`` then only drops the
# channels whose live state excludes them, and needs usage only for channels with quotas.
Ranked = tuple[tuple[int, Candidate], ...]  # (position in the file, candidate), in price order

_BY_CIRCUIT = {c: ChannelState(circuit=c) for c in ("healthy", "half_open", "open", "cooldown")}


def rank_by_price(channels: Sequence[ChannelConfig], hhmm: time) -> Ranked:
    """Every channel as a step-2 candidate at local minute ``hhmm``, in step-2 order."""
    pool = []
    for index, channel in enumerate(channels):
        discounted = discount_active_local(channel, hhmm)
        price = _price(channel, discounted)
        pool.append((index, _FRESH, Candidate(channel, price, discounted, None)))
    pool.sort(key=_price_order)
    return tuple((index, candidate) for index, _, candidate in pool)


def route_by_price(
    ranked: Ranked,
    model: str,
    states: Mapping[str, ChannelState],
    circuit_of: Callable[[str, datetime], str],
    at: datetime,
    *,
    reserve_tokens: int = 0,
    path: str = "/chat/completions",
) -> RouteDecision:
    """``route()`` for channels no rule names: the same decision, from ``rank_by_price``.

    ``states`` needs to hold only the channels with a quota; for the others only the circuit
    matters, read through ``circuit_of(name, at)``.
    """
    chosen: list[Candidate] = []
    excluded: list[tuple[int, Exclusion]] = []
    for index, candidate in ranked:
        channel = candidate.channel
        state = states.get(channel.name)
        if state is None:
            circuit = circuit_of(channel.name, at)
            state = _BY_CIRCUIT.get(circuit) or ChannelState(circuit=circuit)
        reason = exclusion_reason(channel, model, state, reserve_tokens, path)
        if reason is None:
            chosen.append(candidate)
        else:
            excluded.append((index, Exclusion(channel.name, reason)))
    if len(excluded) > 1:
        excluded.sort(key=_first)  # file order, as route() lists them
    return RouteDecision(
        candidates=tuple(chosen),
        matched_rule=None,
        excluded=tuple(e for _, e in excluded),
        rules=(),
    )


def _first(entry: tuple[int, Exclusion]) -> int:
    return entry[0]
