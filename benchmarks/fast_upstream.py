"""A fast fake OpenAI-compatible upstream for proxy benchmarks (aiohttp on uvloop).

``POST /v1/chat/completions`` (and ``/v1/completions``, ``/v1/embeddings``) answer a fixed,
OpenAI-shaped JSON body with ``usage``, after ``--delay-ms``. ``GET /v1/models`` lists one model.
The answer is built once at start: the upstream should cost as little CPU as possible so that what
a benchmark measures is the proxy in front of it, not this server.

Timers on the event loop fire on whole milliseconds, so a fixed delay turns a proxy's
sub-millisecond cost into a sawtooth: depending on where in the millisecond a request arrives,
adding 0.3 ms of processing can make the measured latency *smaller*. ``--jitter-ms J`` draws each
delay uniformly from ``[delay, delay + J)``, which makes the rounding independent of the arrival
time; ``proxy_overhead.py`` uses J = 1 for its latency runs.

Run: ``python benchmarks/fast_upstream.py --port 9101 [--delay-ms 50] [--jitter-ms 1]``
It prints ``ready http://HOST:PORT`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]

MODEL = "gpt-4o-mini"

CHAT = {
    "id": "chatcmpl-bench0000000000000000",
    "object": "chat.completion",
    "created": int(time.time()),
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Benchmarking a gateway: measure what it adds on top of the floor.",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 28, "completion_tokens": 15, "total_tokens": 43},
}
COMPLETION = {
    "id": "cmpl-bench0000000000000000",
    "object": "text_completion",
    "created": CHAT["created"],
    "model": MODEL,
    "choices": [{"index": 0, "text": "Hello!", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
EMBEDDINGS = {
    "object": "list",
    "model": "text-embedding-3-small",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0091, 0.0154, 0.0007]}],
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
MODELS = {
    "object": "list",
    "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
}


def fixed(doc: Mapping[str, object], delay: float, jitter: float = 0.0) -> Handler:
    body = json.dumps(doc, separators=(",", ":")).encode()

    async def handler(request: web.Request) -> web.Response:
        await request.read()  # a real server reads the request; so does this one
        if delay > 0:
            await asyncio.sleep(delay + jitter * random.random())
        return web.Response(body=body, content_type="application/json")

    return handler


def make_app(delay_ms: float, jitter_ms: float = 0.0) -> web.Application:
    delay, jitter = delay_ms / 1000.0, jitter_ms / 1000.0
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fixed(CHAT, delay, jitter))
    app.router.add_post("/v1/completions", fixed(COMPLETION, delay, jitter))
    app.router.add_post("/v1/embeddings", fixed(EMBEDDINGS, delay, jitter))
    app.router.add_get("/v1/models", fixed(MODELS, 0.0))
    return app


async def serve(host: str, port: int, delay_ms: float, jitter_ms: float = 0.0) -> None:
    runner = web.AppRunner(make_app(delay_ms, jitter_ms), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    print(f"ready http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering")
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="add a uniform 0..J ms to each delay"
    )
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.delay_ms, args.jitter_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
