"""Steps 3 and 4 of the request path, shared by every front and by ``POST /api/route``: the body
parsed once into ``RequestFacts`` (``parse_body``), the tokens held against quotas while the
request runs (``reservation``), the candidate order (``decide``) and the error when no channel can
take the request (``raise_no_candidate``). The request path itself is in ``proxy``, which
re-exports these names.
"""

from __future__ import annotations

from typing import Any

from .. import fastjson
from ..errors import BadRequest, NotFound
from ..routing.estimate import prompt_tokens as estimate_prompt
from ..routing.router import RequestFacts, RouteDecision, route, route_by_price
from ..security.apikeys import Principal
from ..state import Gateway, Snapshot
from .validate import check_fields, require_utf8


def parse_body(
    raw: bytes, snap: Snapshot, principal: Principal | None, path: str = "/chat/completions"
) -> tuple[dict[str, Any], RequestFacts]:
    if not raw:
        raise BadRequest("request body is empty; send a JSON object", code="invalid_json")
    try:
        body = fastjson.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"could not parse the JSON body: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", code="missing_model", param="model")
    require_utf8(model, "model")
    check_fields(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0
    ):
        raise BadRequest("'max_tokens' must be a non-negative integer", param="max_tokens")
    usage_cfg = snap.config.usage
    prompt_tokens = estimate_prompt(body, usage_cfg.chars_per_token)
    facts = RequestFacts(
        model=model,
        stream=stream,
        api_key_name=principal.name if principal else "",
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        path=path,
    )
    return body, facts


def reservation(snap: Snapshot, facts: RequestFacts, body: dict[str, Any], path: str) -> int:
    """Tokens held against quotas while the request runs: the prompt estimate plus the most the
    answer may use (``max_tokens`` or ``usage.default_max_tokens``, times ``n`` choices).
    Embeddings produce no completion tokens, so only the prompt is held."""
    if path == "/embeddings":
        return facts.prompt_tokens
    if path == "/messages/count_tokens":  # counting makes no tokens
        return 0
    choices = check_fields(body)
    completion = (
        facts.max_tokens if facts.max_tokens is not None else snap.config.usage.default_max_tokens
    )
    return facts.prompt_tokens + completion * choices


async def decide(
    gw: Gateway, snap: Snapshot, facts: RequestFacts, reserve: int, *, explain: bool = False
) -> RouteDecision:
    """The candidate order for a request that would hold ``reserve`` tokens (pure routing over
    live channel state; nothing is reserved here).

    The proxy routes over the channels serving the model only (their exclusions are what a 503
    lists); ``explain`` (``POST /api/route``) goes over every channel and rule, so the answer
    also says which channels do not serve the model and which rules were not evaluated.
    """
    now = gw.clock()
    if explain:
        channels, rules = snap.config.channels, snap.rules
    else:
        channels, rules = snap.serving(facts.model)
        if not rules:  # price order alone: ranked once per minute, only live state checked
            ranked, limited = snap.ranked(facts.model, snap.minutes.at(now).hhmm)
            states = await gw.channel_states(snap, now, limited) if limited else {}
            return route_by_price(
                ranked,
                facts.model,
                states,
                gw.health.peek,
                now,
                reserve_tokens=reserve,
                path=facts.path,
            )
    states = await gw.channel_states(snap, now, channels)
    return route(channels, rules, facts, states, now, snap.tz, reserve_tokens=reserve)


def raise_no_candidate(snap: Snapshot, facts: RequestFacts, decision: RouteDecision) -> None:
    serving = [c for c in snap.config.channels if c.active and c.serves(facts.model)]
    if not serving:
        raise NotFound(
            f"the model {facts.model!r} does not exist or no channel serves it",
            code="model_not_found",
            param="model",
        )
    if all(c.cannot_serve(facts.path) for c in serving):  # e.g. embeddings on anthropic only
        why = "; ".join(f"{c.name}: {c.cannot_serve(facts.path)}" for c in serving)
        raise NotFound(
            f"no channel serves model {facts.model!r} on /v1{facts.path}: {why}",
            code="model_not_found",
            param="model",
        )
    why = "; ".join(f"{e.channel}: {e.reason}" for e in decision.excluded)
    from ..errors import NoChannelAvailable

    raise NoChannelAvailable(
        f"no channel is available for model {facts.model!r}: {why}", param="model"
    )
