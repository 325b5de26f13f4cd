"""One request's trip: shape it, rank the pools, admit or shed it, attempt backends, relay the answer, account.

The rooms of the trip, importing one way: `proxy` (this: the whole trip) -> `relay` (a stream to the client,
checked for completeness) -> `dispatch` (choosing and attempting backends, retries before the first byte; on a
disaggregated pair, `handoff`'s prefill-then-decode attempt) -> `trip` (the request's state and its events: start,
fail, hand over, account).

Retries and fallbacks happen only before anything reaches the client: for a stream, until its first event has
arrived; a whole answer is read and checked before it is sent. After that, a failure ends the stream with an
SSE error event. A client that goes away cancels the handler (aiohttp's handler cancellation), which closes
the upstream connection, so the backend can stop working on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from aiohttp import web

from ricardo.gateway.dispatch import HOPS_HEADER, dispatch
from ricardo.gateway.logs import PROMPT_LOG_CHARS, TRIP_KEY
from ricardo.gateway.pools import QueueDelays
from ricardo.gateway.relay import relay_stream
from ricardo.gateway.shaping import PRIORITY_GRANT
from ricardo.gateway.shutdown import unavailable
from ricardo.gateway.state import GatewayState
from ricardo.gateway.trip import Trip, account, priced
from ricardo.policies.admission import AdmissionLimits, admit
from ricardo.protocol.openai import Endpoint, OpenAIError, compact_json, parse_request

log = logging.getLogger("ricardo.gateway")

# hop-by-hop headers, what the gateway sets itself (host, length, the hop count), the client's credentials, and the
# body's encoding: aiohttp decodes a gzip or deflate body, and the gateway sends on the decoded bytes
NOT_FORWARDED = {
    HOPS_HEADER,
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "cookie",
    "accept-encoding",
    "content-encoding",
}
# a larger body is shaped in a thread: counting its tokens exactly can take 0.1 s per MB (base64, long words), and
# the tokenizer releases the GIL meanwhile; a smaller one is shaped on the loop, where a thread hop would cost more
SHAPE_IN_THREAD_BYTES = 64 * 1024
# Two gateways in a row are legitimate (a regional tier in front of another); a third means a loop (HOPS_HEADER)
MAX_HOPS = 2


async def handle(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    with state.passing_through():
        return await _handle(request, state, endpoint)


async def _handle(request: web.Request, state: GatewayState, endpoint: Endpoint) -> web.StreamResponse:
    if state.refusing:
        raise unavailable()
    started = time.monotonic()
    hops = _hops(request)
    key = await state.keys.admit(request)
    raw = await request.read()
    body, req = parse_request(endpoint, raw)
    if req.model not in state.models:
        raise OpenAIError(
            404, f"The model `{req.model}` does not exist.", "not_found_error", "model", "model_not_found"
        )
    request_id = request.headers.get("x-request-id", "")
    if not (request_id.isascii() and request_id.isprintable() and 0 < len(request_id) <= 200):
        # a header we could not send on is not propagated; an id needs to be unique, not unguessable: no syscall
        request_id = f"{random.getrandbits(128):032x}"
    # by the client's API key (state.keys.admit); looked up only then: a missing key costs a raised KeyError
    granted = request.get(PRIORITY_GRANT) if key is not None else None
    if len(raw) > SHAPE_IN_THREAD_BYTES:
        shaped = await asyncio.to_thread(state.shaper.shape, endpoint, body, req, request.headers, granted)
    else:
        shaped = state.shaper.shape(endpoint, body, req, request.headers, granted)
    shape, features = shaped.shape, shaped.features
    state.shaper.check_context(shape, state.book_for(shape.model, shape.slo).context_tokens, shaped.longest_input)
    views = state.views(shape, time.monotonic())
    choices = state.rank(shape, views)
    state.metrics.routing_seconds.observe(time.monotonic() - started)
    if not choices:
        raise OpenAIError(
            503, f"no pool can serve `{req.model}` now", "service_unavailable", headers={"Retry-After": "1"}
        )
    admission = state.config.admission
    if admission.enabled:
        limits = AdmissionLimits(admission.max_utilization, admission.priority_factor)
        now = time.monotonic()
        delays = QueueDelays(state.pools, [v.name for v in views if v.name in state.pools], now)
        decision = admit(shape, choices, {v.name: v for v in views}, limits, delays)
        if not decision.admit:
            state.metrics.shed.labels(req.model, str(shape.priority)).inc()
            raise OpenAIError(
                429,
                f"overloaded: {decision.reason}; retry later",
                "rate_limit_error",
                code="overloaded",
                headers={"Retry-After": str(admission.retry_after_s)},
            )
    state.pools[choices[0].pool].metrics.decisions.inc()  # ranked from state.pools in this same step
    trip = Trip(endpoint, request_id, shape, features, started, key, task=asyncio.current_task())
    trip.sequences = shaped.sequences
    if state.config.log_prompts:  # asked for: the access line carries it (gateway/logs.py)
        trip.prompt = req.text()[:PROMPT_LOG_CHARS]
    payload = _upstream_body(raw, body, req.stream)
    headers = _forwarded_headers(request, request_id, hops)
    request[TRIP_KEY] = trip  # for the access line
    state.trips.add(trip)
    answer = None
    try:
        answer = await dispatch(state, trip, choices, payload, headers, req.stream)
        if req.stream:
            return await relay_stream(
                request, state, trip, answer, _routing_headers(state, trip), client_wants_usage=req.include_usage
            )
        whole = answer.whole
        assert whole is not None  # a whole answer, checked
        content = whole.raw
        if whole.usage is not None:  # the actual cost goes in the body: a header would leave before it is known
            content = whole.with_usage(priced(state, trip, whole.usage))
        return web.Response(body=content, content_type="application/json", headers=_routing_headers(state, trip))
    except asyncio.CancelledError:
        if trip.aborted is None:
            trip.status = 499  # the client went away
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the gateway cancelled it itself, to answer with a word
        trip.status = 503
        raise unavailable(trip.aborted) from None
    finally:
        state.trips.discard(trip)
        if answer is not None:
            if trip.outcome is True:
                answer.response.release()
            else:
                answer.response.close()  # the backend sees the connection close and can stop the work
        account(state, trip)


INCLUDE_USAGE = b',"stream_options":{"include_usage":true}}'


def _upstream_body(raw: bytes, body: dict, stream: bool) -> bytes:
    """What goes upstream: the client's bytes as they came, parsed once and not serialised again, except that a
    stream always asks for its usage (the gateway learns from it, even if the client did not ask). Without
    `stream_options`, that field is spliced in before the object's closing brace (the parse proved it one JSON
    object); with other options, the body is serialised again with usage among them. So is a
    body that may name its model or stream flag twice: JSON parsers differ on which one wins, and the backend
    must read the request the gateway checked and routed."""
    twice = raw.count(b'"model"') != 1 or raw.count(b'"stream"') > 1 or b"\\u" in raw  # "mod\u0065l" is "model"
    if twice or not raw.lstrip().startswith(b"{"):  # or not plain UTF-8 (a BOM, UTF-16: json.loads reads them)
        return _serialised(body, stream)
    if not stream:
        return raw
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return raw
    end = raw.rstrip()
    if options is None and "stream_options" not in body and end.endswith(b"}"):
        return end[:-1] + INCLUDE_USAGE
    return _serialised(body, stream)


def _serialised(body: dict, stream: bool) -> bytes:
    if stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body = {**body, "stream_options": options}
    return compact_json(body).encode()


def _hops(request: web.Request) -> int:
    value = request.headers.get(HOPS_HEADER, "0")
    if not (value.isascii() and value.isdigit()):
        raise OpenAIError(400, f"{HOPS_HEADER} must be a non-negative integer", param=HOPS_HEADER)
    hops = int(value) if len(value) < 10 else MAX_HOPS + 1  # int() refuses strings of over 4300 digits
    if hops > MAX_HOPS:
        raise OpenAIError(
            508,
            f"loop detected: this request has passed through {hops} gateways; a backend leads back to a gateway",
            "api_error",
            code="loop_detected",
        )
    return hops


def _forwarded_headers(request: web.Request, request_id: str, hops: int) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
    headers["x-request-id"] = request_id
    headers["Content-Type"] = "application/json"
    headers[HOPS_HEADER] = str(hops + 1)
    return headers


def _routing_headers(state: GatewayState, trip: Trip) -> dict[str, str]:
    assert trip.pool is not None and trip.choice is not None  # a backend of the pool answered
    return {
        "x-request-id": trip.request_id,
        "x-ricardo-pool": trip.pool.name,
        "x-ricardo-policy": state.policy_name,
        # the estimate the pool was chosen on; the actual cost follows in the answer's usage (ricardo_cost_usd)
        "x-ricardo-expected-cost-usd": f"{trip.choice.cost_usd:.6g}",
        "x-ricardo-predicted-output-tokens": str(trip.shape.output_p50),
        "x-ricardo-attempts": str(trip.attempts),
    }
