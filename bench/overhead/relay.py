"""The floor of the gateway's stack: the thinnest honest relay on it, to measure what no logic at all would cost.

    python bench/overhead/relay.py --port 8100 --backend http://127.0.0.1:9001

Not a product: a yardstick for the overhead bench (run.py's `relay` target). It runs as the gateway runs (one uvloop
event loop through `run_event_loop`, an aiohttp `AppRunner` with the access log off and handler cancellation on, one
pooled `ClientSession` with the gateway's connector, timeout and cookie jar, `pools.new_session`) and does only what
any relay must: `POST /v1/chat/completions` reads the client's body, posts it to the backend and answers with the
backend's status and body, read whole and sent as it came; a streamed answer (one the backend sends as
`text/event-stream`: the request is not looked into) is passed on chunk by chunk as it arrives, its headers leaving
with its first chunk as the gateway's do. No parsing, no routing, no retries, no checks, no metrics: what the gateway
costs above this is its logic; what this costs above the backend is aiohttp's two HTTP legs and the event loop.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from ricardo.gateway.config import LimitsConfig
from ricardo.gateway.pools import new_session
from ricardo.protocol.runtime import run_event_loop, stop_on_signals

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")
UPSTREAM: web.AppKey[str] = web.AppKey("upstream")


class _Relayed(web.StreamResponse):
    """Headers with the first chunk, not in a write of their own (as the gateway's relay.py sends them)."""

    _send_headers_immediately = False


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    headers = {"Content-Type": "application/json"}
    async with session.post(request.app[UPSTREAM], data=body, headers=headers) as upstream:
        if upstream.content_type != "text/event-stream":
            return web.Response(status=upstream.status, body=await upstream.read(), content_type=upstream.content_type)
        response = _Relayed(
            status=upstream.status, headers={"Content-Type": upstream.headers.get("Content-Type", "text/event-stream")}
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build_app(backend: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = backend.rstrip("/") + "/v1/chat/completions"

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = new_session(LimitsConfig(), api_key=None)  # the gateway's: 512 connections a backend
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(host: str, port: int, backend: str) -> None:
    runner = web.AppRunner(build_app(backend), access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"relay listening on http://{host}:{port} for {backend}", flush=True)
    try:
        await stop_on_signals().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="base URL of the backend, e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    run_event_loop(serve(args.host, args.port, args.backend))


if __name__ == "__main__":
    main()
