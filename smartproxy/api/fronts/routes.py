"""Where the fronts' routes join the proxy sub-app (``app.create_app`` calls ``add_fronts``)."""

from __future__ import annotations

from aiohttp import web

from .base import Narrow, Parse
from .messages import add_messages_routes, parse_messages
from .responses import add_responses_routes, parse_responses, sticky

# How each front reads a body (``POST /api/route`` reads a dry run's body the same way).
FRONT_PARSERS: dict[str, Parse] = {
    "/responses": parse_responses,
    "/messages": parse_messages,
    "/messages/count_tokens": parse_messages,
}
# How each front narrows the routed candidates (the dry run shows the same decision).
FRONT_NARROW: dict[str, Narrow] = {"/responses": sticky}


def add_fronts(app: web.Application) -> None:
    add_responses_routes(app)
    add_messages_routes(app)
