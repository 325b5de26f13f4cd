"""A stream whose chunks are JSON with Python's default separators (`"usage": {`, as servers that build events with
`json.dumps` write them): its final usage chunk is still found, priced for the client and counted by the gateway."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from tests.gateway.fakes import chat, gateway

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


async def spaced_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        },
    ]
    for chunk in chunks:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())  # json.dumps: `"usage": {`, with a space
    await response.write(b"data: [DONE]\n\n")
    return response


async def test_a_spaced_usage_chunk_is_priced_and_counted():
    async with gateway({"p": ("A10G", [spaced_stream])}) as (url, state):
        body = chat(stream=True) | {"stream_options": {"include_usage": True}}
        async with aiohttp.ClientSession() as session, session.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            raw = (await r.read()).decode()
        events = [e[len("data: ") :] for e in raw.split("\n\n") if e.startswith("data: ") and e != "data: [DONE]"]
        usage = [json.loads(e)["usage"] for e in events if json.loads(e).get("usage")]
        assert usage and "ricardo_cost_usd" in usage[-1]  # priced, as any usage the client asked for
        cost = state.metrics.registry.get_sample_value("ricardo_cost_usd_total", {"pool": "p"})
        assert cost is not None and cost > 0  # and billed
