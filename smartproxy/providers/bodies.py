"""Request bodies as aiohttp sends them.

aiohttp warns (``ResourceWarning``) when a bytes body above 1 MiB is sent in one write, because
writing it may hold the event loop; long-context requests (``server.max_body_mb`` allows 32 MiB)
are routinely that large, so they go as a file-like payload, which aiohttp writes in chunks.
"""

from __future__ import annotations

import io

LARGE_BODY = 1024 * 1024  # aiohttp's TOO_LARGE_BYTES_BODY


def upload(body: bytes) -> bytes | io.BytesIO:
    return io.BytesIO(body) if len(body) > LARGE_BODY else body
