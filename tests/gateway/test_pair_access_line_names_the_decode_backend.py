"""The access line of a request a disaggregated pair answered names the decode backend that answered it, not the
prefill backend that only prefilled it (fake prefill and decode backends in process, on loopback)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from ricardo.gateway.app import build_app
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.security import AdminAccess
from ricardo.gateway.state import GatewayState

from tests.gateway.fakes import ADMIN_TOKEN, backend_app, call, chat, port, serve

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

PARAMS = {"do_remote_prefill": True, "remote_engine_id": "e", "remote_block_ids": [0], "remote_host": "h"}


def answer(content: str, prompt: int, completion: int, **extra) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        **extra,
    }


async def prefill_ok(request: web.Request) -> web.Response:
    return web.json_response(answer("a", 10, 1, kv_transfer_params=PARAMS))


async def decode_ok(request: web.Request) -> web.Response:
    return web.json_response(answer("decoded", 10, 5))


@contextlib.asynccontextmanager
async def pair_gateway(prefill, decode) -> AsyncIterator[tuple[str, GatewayState, list[str], list[str]]]:
    runners, sides = [], {}
    try:
        for role, handlers in (("prefill", prefill), ("decode", decode)):
            urls = []
            for handler in handlers:
                at = port()
                runners.append(await serve(backend_app(handler), at))
                urls.append(f"http://127.0.0.1:{at}")
            sides[role] = urls
        gw_port = port()
        config = GatewayConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": gw_port,
                "models": ["llama2-7b"],
                "policy": "least-outstanding",
                "health_interval_s": 60,
                "admin_token": ADMIN_TOKEN,
                "pools": [
                    {
                        "name": "pair",
                        "prefill": {"hardware": "H100", "backends": sides["prefill"]},
                        "decode": {"hardware": "A10G", "backends": sides["decode"]},
                        "link_gbps": 100,
                    }
                ],
            }
        )
        state = GatewayState(config, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", web.NotAppKeyWarning)
            app = build_app(config, state, AdminAccess(ADMIN_TOKEN))
        runners.append(await serve(app, gw_port))
        yield f"http://127.0.0.1:{gw_port}", state, sides["prefill"], sides["decode"]
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def test_the_access_line_names_the_decode_backend_that_answered(caplog):
    async with pair_gateway([prefill_ok], [decode_ok]) as (url, _state, _prefill, decode):
        with caplog.at_level(logging.INFO, logger="ricardo.access"):
            status, raw = await call(url, chat())
        assert status == 200 and b"decoded" in raw
        lines = [r for r in caplog.records if getattr(r, "path", None) == "/v1/chat/completions"]
        assert lines, [r.name for r in caplog.records]
        assert lines[-1].backend == decode[0]  # the answer came from the decode side, not the prefill side
