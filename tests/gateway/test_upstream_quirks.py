"""How the gateway answers what fake backends do (in-process gateway, real sockets on loopback)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from ricardo.gateway.keys import KeyBody

from tests.gateway.fakes import call, chat, gateway, sse

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


def chunk(content: str | None, finish: str | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    return {
        "id": "s",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {"id": "s", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def crlf(payload: dict | str) -> bytes:
    return sse(payload).replace(b"\n", b"\r\n")  # sse-starlette's line ends


async def crlf_split_stream(request: web.Request) -> web.StreamResponse:
    """A complete stream with CRLF line ends, whose second event's bytes arrive in two reads split between the
    blank line's CR and LF (a TCP segment may end anywhere)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    first, second = crlf(chunk("one")), crlf(chunk("two"))
    await response.write(first)
    await asyncio.sleep(0.05)
    await response.write(second[:-1])  # ...\r\n\r
    await asyncio.sleep(0.05)
    await response.write(second[-1:] + crlf(chunk("three", "stop")) + crlf(USAGE_CHUNK) + crlf("[DONE]"))
    return response


async def test_a_crlf_stream_split_between_cr_and_lf_is_relayed_complete() -> None:
    async with gateway({"a": ("A10G", [crlf_split_stream])}) as (url, state):
        status, raw = await call(url, chat(stream=True))
        text = raw.decode()
        assert status == 200
        assert '"error"' not in text, text
        assert text.rstrip().endswith("data: [DONE]"), text
        backend = state.pools["a"].backends[0]
        assert backend.outlier.consecutive == 0, "a complete answer counted as its backend's failure"


class Slow:
    """A backend that answers slowly (a stream: one event per 50 ms), and notes when the gateway hangs up on it."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            if not body.get("stream"):
                await asyncio.sleep(3)
                return await clean_answer(request)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for _ in range(60):
                await response.write(sse(chunk("x")))
                await asyncio.sleep(0.05)
            await response.write(sse(chunk("y", "stop")) + sse(USAGE_CHUNK) + sse("[DONE]"))
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.gone.set()
            raise


async def settled(state, seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if all(p.ledger.in_flight == 0 and all(b.in_flight == 0 for b in p.backends) for p in state.pools.values()):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_goes_away_releases_the_load_and_the_backend(stream: bool) -> None:
    slow = Slow()
    async with gateway({"a": ("A10G", [slow])}) as (url, state):
        session = aiohttp.ClientSession()
        sent = asyncio.create_task(session.post(url + "/v1/chat/completions", json=chat(stream=stream, max_tokens=100)))
        if stream:
            response = await sent
            await response.content.readany()  # the first events
        else:
            await asyncio.sleep(0.3)  # the answer's headers come with its end
        assert state.pools["a"].ledger.in_flight == 1
        sent.cancel()
        await session.close()  # the client hangs up
        await asyncio.wait_for(slow.gone.wait(), 2)
        assert await settled(state), [
            (p.ledger.in_flight, [b.in_flight for b in p.backends]) for p in state.pools.values()
        ]


async def pings_only(request: web.Request) -> web.StreamResponse:
    """A stream whose engine is stuck: it keeps the connection alive with SSE comments (sse-starlette pings every
    15 s by default) and never sends an event."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(200):
        await response.write(b": ping\n\n")
        await asyncio.sleep(0.2)
    return response


async def clean_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(sse(chunk("one")) + sse(chunk("two", "stop")) + sse(USAGE_CHUNK) + sse("[DONE]"))
    return response


TIGHT = {"limits": {"connect_timeout_s": 0.5, "first_byte_timeout_s": 1.0, "idle_timeout_s": 0.5}}


async def test_keepalive_comments_do_not_stand_for_a_first_event() -> None:
    """No event within the first-byte timeout is a failed attempt, retried on the next backend, however many comments
    came: a comment is not an event (the SSE spec dispatches none for it), and no byte has reached the client."""
    async with gateway({"a": ("A10G", [pings_only, clean_stream])}, **TIGHT) as (url, _):
        for _ in range(2):  # the rotation starts on either backend: one of the two requests meets the pinger first
            status, raw = await asyncio.wait_for(call(url, chat(stream=True)), 8)
            assert status == 200
            assert raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw, raw[-300:]


async def stalls_with_pings(request: web.Request) -> web.StreamResponse:
    """A stream whose engine stops after its first tokens, while its server keeps the connection alive with
    comments."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(sse(chunk("one")))
    for _ in range(200):
        await asyncio.sleep(0.2)
        await response.write(b": ping\n\n")
    return response


async def test_a_stream_that_stalls_behind_keepalive_comments_ends_within_the_idle_timeout() -> None:
    async with gateway({"a": ("A10G", [stalls_with_pings])}, **TIGHT) as (url, state):
        status, raw = await asyncio.wait_for(call(url, chat(stream=True)), 8)
        assert status == 200
        assert b'"code": "stall"' in raw or b'"code":"stall"' in raw, raw[-300:]
        assert await settled(state)


async def test_a_client_that_leaves_before_the_usage_is_still_charged_for_what_it_was_sent() -> None:
    """A key's budget and tokens per minute are charged from the usage, which comes last: a client that closes the
    stream once it has its content (before the finish chunk the gateway holds back for the usage) is charged
    nothing, and can generate without limit on a key with a budget."""
    slow = Slow()
    async with gateway({"a": ("A10G", [slow])}) as (url, state):
        key, plain = await state.keys.create(KeyBody(name="mallory", budget_usd_per_day=0.01, tokens_per_minute=100))
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {plain}"})
        response = await session.post(url + "/v1/chat/completions", json=chat(stream=True, max_tokens=100))
        assert response.status == 200
        received = 0
        while received < 40:  # 40 of the answer's tokens, then away
            received += (await response.content.readany()).count(b'"content"')
        response.close()
        await session.close()
        await asyncio.wait_for(slow.gone.wait(), 2)
        assert await settled(state)
        assert (await state.keys.spend_today()).get(key.id, 0.0) > 0, f"{received} tokens sent, nothing charged"
        # the pool's dollars and tokens count the same answer, so dollars per token stay the figure charged
        sample = state.metrics.registry.get_sample_value
        cost, output = (
            sample("ricardo_cost_usd_total", {"pool": "a"}),
            sample("ricardo_tokens_total", {"pool": "a", "type": "output"}),
        )
        assert cost and cost > 0 and output and output >= received, (cost, output, received)


async def test_an_embedding_the_backend_refuses_reaches_the_client_in_the_openai_error_shape() -> None:
    async with (
        gateway({"a": ("A10G", [tgi_validation_error])}, embedding_models={"llama2-7b": 0.02}) as (url, _),
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/embeddings", json={"model": "llama2-7b", "input": "hello"}) as response,
    ):
        body = await response.json()
    assert response.status == 422, body
    assert "Input validation error" in body["error"]["message"] and body["error"]["type"], body


def huge(size: int):
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(size // 65536 + 1):
            await response.write(b" " * 65536)  # JSON whitespace, never ending within the cap
        return response

    return answer


def endless_event(size: int):
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}))
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "')
        for _ in range(size // 65536 + 1):
            await response.write(b"b" * 65536)  # one event that never ends
        return response

    return answer


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_past_the_size_cap_fails_as_broken_instead_of_filling_memory(monkeypatch, stream) -> None:
    cap = 1 << 20
    monkeypatch.setattr("ricardo.gateway.dispatch.MAX_ANSWER_BYTES", cap)
    monkeypatch.setattr("ricardo.gateway.relay.MAX_ANSWER_BYTES", cap)
    handler = endless_event(2 * cap) if stream else huge(2 * cap)
    async with gateway({"a": ("A10G", [handler])}) as (url, state):
        status, raw = await asyncio.wait_for(call(url, chat(stream=stream)), 10)
        assert len(raw) < cap
        if stream:  # committed at the first event: the client hears how it ended
            assert status == 200 and raw.rstrip().endswith(b'"code":"broken"}}'), raw[-300:]
        else:
            assert status == 502, raw[:300]
        assert all(p.ledger.in_flight == 0 for p in state.pools.values())
