"""The floor: a minimal aiohttp pass-through proxy with no features, for ``proxy_overhead.py``.

Reads the body, POSTs it to the upstream over one pooled ``ClientSession``, returns status, body and
content type. Whatever a real gateway costs beyond this is the price of its features.
Run: ``python benchmarks/floor_proxy.py --port 9102 --upstream http://127.0.0.1:9101``
"""

import argparse

import aiohttp
import uvloop
from aiohttp import web

args = argparse.ArgumentParser()
args.add_argument("--port", type=int, default=9102)
args.add_argument("--upstream", default="http://127.0.0.1:9101")
args.add_argument("--pool", type=int, default=1000, help="upstream connections at most")
args.add_argument("--reuse-port", action="store_true", help="share the port with other copies")
opts = args.parse_args()
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=opts.pool))
    yield
    await app[SESSION].close()


async def proxy(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-upstream"}
    async with request.app[SESSION].post(
        opts.upstream + request.path, data=body, headers=headers
    ) as r:
        return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)


app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/v1/{tail:.*}", proxy)
web.run_app(
    app,
    host="127.0.0.1",
    port=opts.port,
    access_log=None,
    print=None,
    loop=uvloop.new_event_loop(),
    reuse_port=opts.reuse_port or None,
    backlog=4096,
)
