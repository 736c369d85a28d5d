"""Where the fronts' routes join the proxy sub-app (``app.create_app`` calls ``add_fronts``)."""

from __future__ import annotations

from aiohttp import web

from .messages import add_messages_routes
from .responses import add_responses_routes


def add_fronts(app: web.Application) -> None:
    add_responses_routes(app)
    add_messages_routes(app)
