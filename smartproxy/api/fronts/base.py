"""What distinguishes one client-facing API shape (a "front") on the shared proxy path.

Every front runs the same steps (``proxy._proxy``): key, rate limit, budget, parse the body once,
model allowed, reservation, tokens per minute, route, dispatch, settle. A ``Front`` says what
differs: how its body is parsed into ``RequestFacts``, the wire shape of its answers (where usage
is, how a stream ends), the route it is logged under, and an optional routing step of its own
(``narrow``: the Responses front sends a ``previous_response_id`` back to the channel that made it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ...routing.router import RequestFacts, RouteDecision
from ...security.apikeys import Principal
from ...state import Gateway, Snapshot
from ...upstream.wire import Wire

Parse = Callable[[bytes, Snapshot, Principal | None, str], tuple[dict[str, Any], RequestFacts]]
Narrow = Callable[[Gateway, Snapshot, dict[str, Any], RouteDecision], Awaitable[RouteDecision]]
AnswerIds = Callable[[Gateway], Callable[[str, str], None]]


@dataclass(frozen=True, slots=True)
class Front:
    endpoint: str  # the client-facing route, as the request log records it
    path: str  # below /v1, as sent upstream
    parse: Parse
    wire: Wire
    narrow: Narrow | None = None  # a routing step of the front's own, after the router's
    answer_ids: AnswerIds | None = None  # where the ids of its answers go
