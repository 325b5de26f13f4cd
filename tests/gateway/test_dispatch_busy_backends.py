"""Dispatch against backends that are busy rather than broken (in-process gateway, fake backends on loopback)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from ricardo.gateway.pools import new_session

from tests.gateway.fakes import call, chat, gateway, port, serve, sse
from tests.gateway.test_upstream_quirks import USAGE_CHUNK, chunk, clean_answer, clean_stream

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
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=chat(stream=True)) as first,
        ):
            await first.content.readany()  # the only connection is the first stream's now
            sent = time.monotonic()
            status, raw = await call(url, chat(stream=True))
            waited = time.monotonic() - sent
            rest = await first.read()
        assert status != 200, raw
        assert waited < 1.5, f"waited {waited:.1f} s for a connection: the first-byte timeout, not the connect one"
        assert backend.outlier.in_service(), "a backend busy with healthy streams was ejected"
        assert rest.rstrip().endswith(b"data: [DONE]") and b'"error"' not in rest


class DropsTheConnection:
    """A backend that reads each request, then drops the connection without an answer (as a server does that dies
    or is restarted with requests under way): it may well have started on them."""

    def __init__(self) -> None:
        self.received = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.received += 1
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(1)  # cancelled: the connection is gone
        raise AssertionError("unreachable")


async def test_a_request_a_backend_received_on_a_new_connection_is_not_sent_to_it_again() -> None:
    """Sending a POST again on a fresh connection is right only where the one it went on was a kept-alive connection
    the server had closed (it never reached the backend); on a new connection, the backend got it and may be
    generating: sent again, it does the work twice."""
    drops = DropsTheConnection()
    async with gateway({"a": ("A10G", [drops])}) as (url, state):
        backend = state.pools["a"].backends[0]
        await backend.session.close()  # no kept-alive connection left from the start's probe
        backend.session = new_session(state.config.limits, None)
        status, raw = await call(url, chat())
        assert status == 502, raw
        assert drops.received == 1, f"the backend got the request {drops.received} times"


async def test_a_request_met_by_a_kept_alive_connection_the_server_closed_is_sent_again() -> None:
    """The other side of the rule: a kept-alive connection the server closed as the request went on it (llama.cpp's
    server closes them after a stream) is no failure of the backend's; the request is sent again, on a new one."""
    answered = DropsTheConnection()

    async def second_meets_a_closed_connection(request: web.Request) -> web.StreamResponse:
        if answered.received == 1:
            return await answered(request)  # drops it, as a server that had closed it would
        answered.received += 1
        return await clean_answer(request)

    async with gateway({"a": ("A10G", [second_meets_a_closed_connection])}) as (url, state):
        for _ in range(2):
            status, raw = await call(url, chat())
            assert status == 200, raw
        assert answered.received == 3
        assert state.pools["a"].backends[0].outlier.consecutive == 0


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_backends_retry_after_reaches_the_client(status: int) -> None:
    """A backend that says it is busy for 20 s is rested 20 s: a client told to come back in 1 s would only meet a
    gateway with nothing to send it to, again and again."""

    async def busy(request: web.Request) -> web.Response:
        body = {"error": {"message": "busy", "type": "server_error"}}
        return web.json_response(body, status=status, headers={"Retry-After": "20"})

    async with gateway({"a": ("A10G", [busy])}) as (url, _):
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=chat()) as response,
        ):
            await response.read()
        assert response.status == status
        assert response.headers.get("Retry-After") == "20"


async def test_a_retry_after_that_is_no_number_of_seconds_rests_the_backend_as_no_retry_after_would() -> None:
    async def forever(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "busy"}}, status=503, headers={"Retry-After": "inf"})

    async with gateway({"a": ("A10G", [forever])}) as (url, state):
        status, raw = await call(url, chat())
        assert status == 503, raw
        backend = state.pools["a"].backends[0]
        assert backend.cooldown_until - time.monotonic() < 5, "rested for ever"


async def answers_busy(request: web.Request) -> web.Response:
    """Every request, the probe's too: TGI's answer with its queue full (max_concurrent_requests)."""
    return web.json_response({"error": "Model is overloaded", "error_type": "overloaded"}, status=429)


@pytest.mark.parametrize("trial", [False, True])
async def test_a_probe_a_busy_backend_answers_429_does_not_take_it_down_or_eject_it_for_longer(trial: bool) -> None:
    """A probe meets the backend's own load: a 429 says it is alive and busy, as it says to a request (which rests
    it); not that it is down, nor, for the probe after an ejection, that its answers fail (ejected twice as long)."""
    busy = web.Application()
    busy.router.add_post("/v1/chat/completions", answers_busy)
    busy_runner = await serve(busy, busy_port := port())
    try:
        async with gateway({"a": ("A10G", [clean_answer])}) as (_, state):
            pool = state.pools["a"]
            backend = pool.backends[0]
            backend.url = f"http://127.0.0.1:{busy_port}"  # the backend is busy now
            detector = backend.outlier
            if trial:
                for _ in range(detector.rules.consecutive_failures):
                    detector.record(time.monotonic(), ok=False)
                assert detector.state == "ejected"
                ejections = detector.ejections
                assert detector.probe_due(detector.ejected_until)
            await state.health._check(pool, backend, trial=trial)
            assert backend.healthy, "a busy backend was marked down"
            assert not backend.available(time.monotonic()), "a busy backend is rested, as after a request's 429"
            if trial:
                assert detector.ejections == ejections, "ejected again, for twice as long, for being busy"
                assert detector.state == "ejected" and detector.ejected_until - time.monotonic() < 2
    finally:
        await busy_runner.cleanup()


async def error_first(request: web.Request) -> web.StreamResponse:
    """A stream whose first event is an error (vLLM's shape: the engine failed the request once the stream began)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    error = {"error": {"message": "EngineCore encountered an issue", "type": "InternalServerError", "code": 500}}
    await response.write(sse(error) + sse("[DONE]"))
    return response


async def test_a_stream_whose_first_event_is_an_error_is_retried_on_the_next_backend() -> None:
    """Nothing has reached the client when the first event arrives: an error there is a failed attempt, retried like
    an error status, not relayed as the client's answer while another backend could give it one."""
    async with gateway({"a": ("A10G", [error_first, clean_stream])}) as (url, state):
        for _ in range(2):  # the rotation starts on either backend: one of the two requests meets the error first
            status, raw = await call(url, chat(stream=True))
            assert status == 200
            assert b'"error"' not in raw and raw.rstrip().endswith(b"data: [DONE]"), raw[-300:]
        failing = state.pools["a"].backends[0]
        assert failing.outlier.consecutive >= 1, "the error is still its backend's failure"


async def refuses_in_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    error = {"error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": None, "code": 400}}
    await response.write(sse(error) + sse("[DONE]"))
    return response


async def test_a_stream_whose_first_event_refuses_the_request_answers_the_client_that_status() -> None:
    async with gateway({"a": ("A10G", [refuses_in_stream])}) as (url, state):
        status, raw = await call(url, chat(stream=True))
        assert status == 400, raw
        assert b"max_tokens is too large" in raw
        assert state.pools["a"].backends[0].outlier.consecutive == 0, "the request's fault, not the backend's"


async def test_an_answer_to_a_request_sent_before_a_backend_said_it_was_busy_does_not_end_its_rest() -> None:
    """A backend that answered 429 with Retry-After: 20 is rested 20 s. A 200 that comes afterwards, to a request
    sent before, says it took that one, not that it is free now: the rest stands."""
    first_sent = asyncio.Event()

    async def busy_after_the_first(request: web.Request) -> web.Response:
        if not first_sent.is_set():
            first_sent.set()
            await asyncio.sleep(0.5)  # it took this one; its answer's headers come later
            return await clean_answer(request)
        return web.json_response({"error": {"message": "queue full"}}, status=429, headers={"Retry-After": "20"})

    async with gateway({"a": ("A10G", [busy_after_the_first])}) as (url, state):
        backend = state.pools["a"].backends[0]
        first = asyncio.create_task(call(url, chat()))
        await first_sent.wait()
        status, _ = await call(url, chat())
        assert status == 429
        status, _ = await first
        assert status == 200
        assert not backend.available(time.monotonic()), "the rest it asked for ended at once"
