"""Dispatch against backends that are busy rather than broken (in-process gateway, fake backends on loopback)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from tests.gateway.fakes import call, chat, gateway, sse
from tests.gateway.test_upstream_quirks import USAGE_CHUNK, chunk

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


async def long_stream(request: web.Request) -> web.StreamResponse:
    """A healthy stream that takes 3 s: one event every 0.1 s."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(30):
        await response.write(sse(chunk("x")))
        await asyncio.sleep(0.1)
    await response.write(sse(chunk("y", "stop")) + sse(USAGE_CHUNK) + sse("[DONE]"))
    return response


async def test_a_request_waiting_for_a_connection_to_a_busy_backend_does_not_count_as_its_failure() -> None:
    """With every connection to a backend taken by healthy streams, a new request waits for one; that wait is the
    gateway's own limit, not the backend's slowness: bounded by the connect timeout (not the first-byte one), and
    not an outcome that ejects the backend."""
    settings = {
        "limits": {"connections_per_backend": 1, "connect_timeout_s": 0.5, "first_byte_timeout_s": 2.0},
        "outlier": {"consecutive_failures": 1},
    }
    async with gateway({"a": ("A10G", [long_stream])}, **settings) as (url, state):
        backend = state.pools["a"].backends[0]
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions", json=chat(stream=True)) as first:
                await first.content.readany()  # the only connection is the first stream's now
                sent = time.monotonic()
                status, raw = await call(url, chat(stream=True))
                waited = time.monotonic() - sent
                rest = await first.read()
        assert status != 200, raw
        assert waited < 1.5, f"waited {waited:.1f} s for a connection: the first-byte timeout, not the connect one"
        assert backend.outlier.in_service(), "a backend busy with healthy streams was ejected"
        assert rest.rstrip().endswith(b"data: [DONE]") and b'"error"' not in rest
