"""An in-process gateway in front of scripted fake backends, all on loopback, for tests of the gateway's answers to
what a backend does (error shapes, cut streams, disconnects) that the emulator does not do."""

from __future__ import annotations

import contextlib
import json
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from ricardo.gateway.app import build_app
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.security import AdminAccess
from ricardo.gateway.state import GatewayState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN_TOKEN = "test-admin-token-0123456789"
PROBE_ANSWER = {
    "id": "p",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(app: web.Application, at: int) -> web.AppRunner:
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", at).start()
    return runner


def backend_app(handler: Handler, models: tuple[str, ...] = ("llama2-7b",)) -> web.Application:
    """A backend whose completions and embeddings `handler` answers; a health probe (x-ricardo-probe) gets a clean
    answer."""

    async def completions(request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-ricardo-probe"):
            return web.json_response(PROBE_ANSWER)
        return await handler(request)

    async def listed(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", completions)
    app.router.add_get("/v1/models", listed)
    return app


@contextlib.asynccontextmanager
async def gateway(pools: dict[str, tuple[str, list[Handler]]], **settings) -> AsyncIterator[tuple[str, GatewayState]]:
    """A gateway (in this process) with pools of fake backends: name -> (hardware, one handler per backend)."""
    runners = []
    config_pools = []
    try:
        for name, (hardware, handlers) in pools.items():
            urls = []
            for handler in handlers:
                at = port()
                runners.append(await serve(backend_app(handler), at))
                urls.append(f"http://127.0.0.1:{at}")
            config_pools.append({"name": name, "hardware": hardware, "backends": urls})
        gw_port = port()
        config = GatewayConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": gw_port,
                "models": ["llama2-7b"],
                "health_interval_s": 60,
                "admin_token": ADMIN_TOKEN,
                **settings,
                "pools": config_pools,
            }
        )
        state = GatewayState(config, seed=1)
        with warnings.catch_warnings():  # the gateway's app keys are plain strings, as its CLI builds them
            warnings.simplefilter("ignore", web.NotAppKeyWarning)
            app = build_app(config, state, AdminAccess(ADMIN_TOKEN))
        runners.append(await serve(app, gw_port))
        yield f"http://127.0.0.1:{gw_port}", state
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def chat(stream: bool = False, max_tokens: int = 8) -> dict:
    return {
        "model": "llama2-7b",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


async def call(url: str, body: dict) -> tuple[int, bytes]:
    """POST `body` to the gateway's chat completions; the status and the whole answer."""
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/chat/completions", json=body) as response:
        return response.status, await response.read()
