"""Request body limits: ``server.max_body_mb`` on ``/v1``, a small fixed one on admin writes.

The root app's ``client_max_size`` is set to the configured limit too (``app.create_app``), so
that a handler reading ``request.read()`` directly never falls back to aiohttp's 1 MiB; this
module reads bodies itself so that the refusal is an OpenAI-shaped 413 given as soon as the
declared ``Content-Length`` (or the bytes received so far) pass the limit, without buffering
the rest. The connection is closed after a 413: the client may still be sending the body.
Stalled bodies are the connection watchdog's business (``smartproxy.server``).
"""

from __future__ import annotations

from aiohttp import web

from ..errors import PayloadTooLarge
from ..lean import shrink

ADMIN_MAX_BODY = 1024 * 1024  # config entries are small; a larger admin body is a mistake


def _too_large(limit: int, what: str) -> PayloadTooLarge:
    mib = limit / (1024 * 1024)
    return PayloadTooLarge(
        f"request body too large: {what} bytes, the limit is {limit} bytes ({mib:g} MiB)",
        headers={"Connection": "close"},
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or ``PayloadTooLarge`` once it is known to exceed ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit, str(declared))
    content = request.content
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, f"more than {limit}")
        chunks.append(chunk)
    shrink(content, "_buffer")  # read to its end: the deque's block need not stay (``lean``)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large_response(limit: int, *, anthropic: bool = False) -> web.Response:
    """aiohttp's own 413 (``HTTPRequestEntityTooLarge`` from ``request.read()``), reshaped
    (Anthropic-shaped on ``/v1/messages``)."""
    resp = _too_large(limit, f"more than {limit}").to_response(anthropic=anthropic)
    resp.force_close()
    return resp
