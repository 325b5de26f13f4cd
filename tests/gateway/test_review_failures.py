"""Review: how the gateway answers what fake backends do (in-process gateway, real sockets on loopback)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from tests.gateway.fakes import chat, gateway

# the gateway keys its app and requests by plain strings (as its CLI runs it, where warnings are not errors)
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


async def tgi_validation_error(request: web.Request) -> web.Response:
    # TGI's error shape: {"error": "<message>", "error_type": "<kind>"}, with 422 for a request it refuses
    return web.json_response(
        {"error": "Input validation error: `inputs` must have less than 4096 tokens", "error_type": "validation"},
        status=422,
    )


async def test_a_tgi_shaped_client_error_reaches_the_client_as_its_status_not_a_500() -> None:
    async with gateway({"a": ("A10G", [tgi_validation_error])}) as (url, state):
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=chat()) as response,
        ):
            body = await response.json()
        assert response.status == 422, body
        assert "Input validation error" in body["error"]["message"]
        assert all(p.ledger.in_flight == 0 for p in state.pools.values())


async def tgi_overloaded(request: web.Request) -> web.Response:
    return web.json_response({"error": "Model is overloaded", "error_type": "overloaded"}, status=429)


async def clean_answer(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "id": "c",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    )


async def test_a_tgi_shaped_429_is_retried_on_the_next_backend() -> None:
    async with gateway({"a": ("A10G", [tgi_overloaded, clean_answer])}) as (url, state):
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the rotation starts on either backend: one of the two requests meets the 429 first
                async with session.post(url + "/v1/chat/completions", json=chat()) as response:
                    body = await response.json()
                assert response.status == 200, body
        assert all(p.ledger.in_flight == 0 for p in state.pools.values())
