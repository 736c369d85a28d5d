"""``GET /dashboard``: the web dashboard, three static files shipped inside the package.

The page (``smartproxy/static/dashboard/``) is plain HTML, CSS and JavaScript: no build step, no
CDN, nothing fetched from another origin. Serving it needs no credentials and shows no data; the
page asks for an admin JWT, keeps it in ``sessionStorage`` and reads everything it shows from the
admin API (``/api``) with it. Its Content-Security-Policy allows only same-origin scripts, styles
and requests, and no inline script or style, so an injected string can never run.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "dashboard"
PAGE_PATH = "/dashboard"
ASSET_PREFIX = "/dashboard/static/"
# Only these files are served (a whitelist: no path can leave the folder).
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new version of the gateway serves its own page at once
}


async def page(request: web.Request) -> web.FileResponse:
    """The web dashboard (sign in with an admin JWT; it then reads the admin API).
    ---
    summary: Web dashboard
    tags: [ops]
    security: []
    description: >-
      One page served from files inside the package (no CDN, no build step). Without a token it
      shows only a sign-in form; the admin JWT pasted there is kept in sessionStorage and sent as
      a Bearer token to /api/status, /api/usage, /api/usage/timeseries, /api/channels and
      /api/route. It refreshes itself every 10 seconds.
    responses:
      '200':
        description: HTML page
        content:
          text/html:
            schema: {type: string}
            example: "<!DOCTYPE html><html lang=\\"en\\">...</html>"
    """
    return web.FileResponse(
        STATIC_DIR / "index.html",
        headers={**_HEADERS, "Content-Type": "text/html; charset=utf-8"},
    )


async def page_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(PAGE_PATH)


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.FileResponse(
        STATIC_DIR / name, headers={**_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    )


def setup_dashboard(app: web.Application) -> None:
    """Serve the page and its files on ``app`` (the ops app, mounted at the root)."""
    app.router.add_get(PAGE_PATH, page)
    app.router.add_get(PAGE_PATH + "/", page_slash)
    app.router.add_get(ASSET_PREFIX + "{name}", asset)
