"""Embeddings against backends that are busy rather than broken, as chat/completions meet them
(tests/gateway/test_dispatch_busy_backends.py): in-process gateway, fake backends on loopback."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from ricardo.gateway.config import ShutdownConfig
from ricardo.gateway.shutdown import drain

from tests.gateway.fakes import gateway

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

PRICED = {"embedding_models": {"llama2-7b": 0.02}}
EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "llama2-7b",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}


async def embed(url: str) -> tuple[int, dict, dict]:
    """POST an embedding request to the gateway; the status, the headers and the JSON answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/embeddings", json={"model": "llama2-7b", "input": "hello"}) as response,
    ):
        return response.status, dict(response.headers), await response.json()


async def slow_embedding(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.sleep(2)
    return web.json_response(EMBEDDING)


async def test_an_embedding_waiting_for_a_connection_to_a_busy_backend_waits_the_connect_timeout_only() -> None:
    """With every connection to a backend taken, a new request waits for one: the gateway's own queue, bounded by
    the connect timeout as a completion's wait is, not by the whole-answer timeout."""
    settings = {"limits": {"connections_per_backend": 1, "connect_timeout_s": 0.5, "response_timeout_s": 60.0}}
    async with gateway({"a": ("A10G", [slow_embedding])}, **settings, **PRICED) as (url, _):
        first = asyncio.create_task(embed(url))
        await asyncio.sleep(0.3)  # the only connection is the first request's now
        sent = time.monotonic()
        status, _, body = await embed(url)
        waited = time.monotonic() - sent
        assert waited < 1.5, f"waited {waited:.1f} s for a connection: the whole-answer timeout, not the connect one"
        assert status != 200, body
        status, _, body = await first
        assert status == 200, body


def busy(status: int):
    async def answer(request: web.Request) -> web.Response:
        body = {"error": {"message": "queue full", "type": "server_error"}}
        return web.json_response(body, status=status, headers={"Retry-After": "20"})

    return answer


async def test_an_embedding_every_backend_answers_429_is_a_429_for_the_client() -> None:
    async with gateway({"a": ("A10G", [busy(429), busy(429)])}, **PRICED) as (url, _):
        status, headers, body = await embed(url)
    assert status == 429, body
    assert body["error"]["message"] and body["error"]["type"], body
    assert headers.get("Retry-After") == "20"


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_backends_retry_after_rests_it_and_reaches_the_embedding_client(status: int) -> None:
    async with gateway({"a": ("A10G", [busy(status)])}, **PRICED) as (url, state):
        answered, headers, body = await embed(url)
        backend = state.pools["a"].backends[0]
        assert backend.cooldown_until - time.monotonic() > 15, "rested 1 s, not the 20 s it asked for"
    assert answered == status, body
    assert headers.get("Retry-After") == "20"


async def fails(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "EngineCore encountered an issue"}}, status=500)


async def test_a_backend_whose_embeddings_fail_is_ejected_as_one_whose_completions_fail() -> None:
    """Its failed answers are outcomes for its outlier detector, whatever the endpoint: the health probe of an
    embedding model is GET /v1/models (it takes no chat completion), which a backend failing every answer passes."""
    settings = {"outlier": {"consecutive_failures": 1}}
    async with gateway({"a": ("A10G", [fails])}, **settings, **PRICED) as (url, state):
        status, _, body = await embed(url)
        assert status == 502, body
        assert state.pools["a"].backends[0].outlier.state == "ejected"


async def embedding(request: web.Request) -> web.Response:
    return web.json_response(EMBEDDING)


async def test_a_clean_embedding_on_a_half_open_backend_brings_it_back_into_service() -> None:
    """After an ejection and a passed probe, one real request decides (gateway/outlier.py): an embedding is one too;
    else a backend serving embeddings only stays half-open for good, where no failure counts."""
    async with gateway({"a": ("A10G", [embedding])}, **PRICED) as (url, state):
        detector = state.pools["a"].backends[0].outlier
        for _ in range(detector.rules.consecutive_failures):
            detector.record(time.monotonic(), ok=False)
        assert detector.probe_due(detector.ejected_until)
        detector.probe_result(time.monotonic(), ok=True)
        assert detector.state == "half-open"
        status, _, body = await embed(url)
        assert status == 200, body
        assert detector.state == "in service"


async def test_an_embedding_still_in_flight_at_the_drain_deadline_gets_a_503() -> None:
    """At the drain deadline, a request not yet answered gets a 503 with Retry-After (README: graceful shutdown), as a
    completion does, not a connection cut under it."""
    async with gateway({"a": ("A10G", [slow_embedding])}, **PRICED) as (url, state):
        answer = asyncio.create_task(embed(url))
        await asyncio.sleep(0.3)  # with the backend
        await drain(state, ShutdownConfig(unready_wait_s=0, drain_timeout_s=0.5))
        status, headers, body = await asyncio.wait_for(answer, 2)
    assert status == 503, body
    assert headers.get("Retry-After") == "1" and "shutting down" in body["error"]["message"]
