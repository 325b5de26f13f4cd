"""One request's trip: shape it, rank the pools, try backends in order, relay the answer, account for it.

Retries and fallbacks happen only before the first byte reaches the client; after that a failure
becomes an SSE error event, never a silent switch to another backend mid-answer. Upstream usage is
always requested (`stream_options.include_usage`), and the extra usage chunk is stripped for clients
that did not ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ricardo.gateway.keys import ClientKey
from ricardo.gateway.pools import Backend, Pool
from ricardo.gateway.state import GatewayState
from ricardo.policies.ledger import Ticket
from ricardo.policies.types import Choice, RequestShape
from ricardo.predictor.features import RequestFeatures
from ricardo.protocol.openai import Endpoint, OpenAIError, error_body, error_for_status, parse_request, sse

log = logging.getLogger("ricardo.gateway")

RETRIABLE_STATUSES = {429, 500, 502, 503, 504}
HOP_BY_HOP = {
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
}
UPSTREAM_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# Counts the gateways a request has passed through: a backend that is (or leads back to) a gateway would otherwise
# loop until file descriptors run out. Two gateways in a row are legitimate (a regional tier in front of another).
HOPS_HEADER = "x-ricardo-hops"
MAX_HOPS = 2
# a larger body is shaped in a thread: counting its tokens exactly can take 0.1 s per MB (base64, long words), and
# the tokenizer releases the GIL meanwhile; a smaller one is shaped on the loop, where a thread hop would cost more
SHAPE_IN_THREAD_BYTES = 64 * 1024


@dataclass(eq=False)
class Trip:
    """What the gateway knows about one request while it is in flight."""

    endpoint: Endpoint
    request_id: str
    shape: RequestShape
    features: RequestFeatures
    started: float
    key: ClientKey | None = None
    pool: Pool | None = None
    backend: Backend | None = None
    choice: Choice | None = None
    ticket: Ticket | None = None
    attempts: int = 0
    first_token_at: float | None = None
    usage: dict | None = None
    status: int = 200
    tried: set = field(default_factory=set)


async def handle(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
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
        request_id = uuid.uuid4().hex  # a header we could not send on is not propagated
    if len(raw) > SHAPE_IN_THREAD_BYTES:
        shape, features = await asyncio.to_thread(state.shaper.shape, endpoint, body, req, request.headers)
    else:
        shape, features = state.shaper.shape(endpoint, body, req, request.headers)
    state.shaper.check_context(shape, state.book_for(shape.slo).context_tokens)
    now = time.monotonic()
    choices = state.rank(shape, now)
    state.metrics.routing_seconds.observe(time.monotonic() - started)
    if not choices:
        raise OpenAIError(
            503, f"no pool can serve `{req.model}` now", "service_unavailable", headers={"Retry-After": "1"}
        )
    state.metrics.decisions.labels(state.policy_name, choices[0].pool).inc()
    trip = Trip(endpoint, request_id, shape, features, started, key)
    payload = _upstream_body(body, req.stream)
    headers = _forwarded_headers(request, request_id, hops)
    upstream = await _open_upstream(state, trip, choices, payload, headers)
    try:
        if req.stream:
            return await _relay_stream(request, state, trip, upstream, client_wants_usage=req.include_usage)
        return await _relay_json(state, trip, upstream)
    finally:
        upstream.release()
        _account(state, trip)


def _upstream_body(body: dict, stream: bool) -> bytes:
    if stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True  # always learn the usage, even if the client did not ask
        body = {**body, "stream_options": options}
    return json.dumps(body, separators=(",", ":")).encode()


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
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != HOPS_HEADER}
    headers["x-request-id"] = request_id
    headers["Content-Type"] = "application/json"
    headers[HOPS_HEADER] = str(hops + 1)
    return headers


async def _open_upstream(
    state: GatewayState, trip: Trip, choices: list[Choice], payload: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """Try backends in the policy's order until one answers 200; raise the most telling error otherwise."""
    limits = state.config.limits
    last_error: OpenAIError | None = None
    for choice in choices:
        pool = state.pools[choice.pool]
        while trip.attempts < limits.max_attempts:
            backend = pool.pick_backend(time.monotonic(), trip.tried)
            if backend is None:
                break
            trip.attempts += 1
            trip.tried.add(backend)
            _start(state, trip, pool, backend, choice)
            try:
                async with asyncio.timeout(limits.first_byte_timeout_s):
                    response = await backend.session.post(
                        backend.url + UPSTREAM_PATHS[trip.endpoint],
                        data=payload,
                        headers=headers,
                        allow_redirects=False,  # a redirect could lead anywhere the gateway can reach
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else "connect"
                last_error = error_for_status(504 if kind == "timeout" else 502, f"upstream {pool.name} failed: {kind}")
                _abandon(state, trip, kind, retry_after=None)
                continue
            if response.status == 200:
                backend.record_success()
                return response
            error = await _upstream_error(response)
            response.release()
            if response.status not in RETRIABLE_STATUSES:
                _stop(state, trip)
                raise error  # the request itself is wrong; another backend would say the same
            last_error = error
            _abandon(
                state,
                trip,
                f"http_{response.status}",
                retry_after=_retry_after(response),
                at_once=response.status in (429, 503),
            )  # overloaded, it says; a 500 may be the request's fault
        if trip.attempts >= limits.max_attempts:
            break
    if last_error is None:
        raise OpenAIError(503, "no backend is available now", "service_unavailable", headers={"Retry-After": "1"})
    if last_error.status in (429, 503):
        last_error.headers.setdefault("Retry-After", "1")
    raise last_error


def _start(state: GatewayState, trip: Trip, pool: Pool, backend: Backend, choice: Choice) -> None:
    trip.pool, trip.backend, trip.choice = pool, backend, choice
    trip.ticket = pool.ledger.dispatch(trip.shape, state.book_for(trip.shape.slo), time.monotonic())
    backend.in_flight += 1


def _stop(state: GatewayState, trip: Trip) -> None:
    pool, backend, ticket = trip.pool, trip.backend, trip.ticket
    assert pool is not None and backend is not None and ticket is not None  # started
    pool.ledger.abandon(ticket)
    backend.in_flight -= 1


def _abandon(state: GatewayState, trip: Trip, reason: str, retry_after: float | None, at_once: bool = True) -> None:
    pool, backend = trip.pool, trip.backend
    assert pool is not None and backend is not None  # started
    backend.record_failure(time.monotonic(), retry_after, at_once=at_once)
    state.metrics.fallbacks.labels(pool.name, reason).inc()
    state.metrics.upstream_errors.labels(pool.name, reason).inc()
    log.warning(
        "request %s: backend %s of pool %s failed (%s); trying the next",
        trip.request_id,
        backend.shown,
        pool.name,
        reason,
    )
    _stop(state, trip)
    trip.pool = trip.backend = None


async def _upstream_error(response: aiohttp.ClientResponse) -> OpenAIError:
    """Normalise an upstream error (OpenAI-shaped, vLLM's flat shape, or plain text) to ours."""
    status = response.status
    try:
        body = await response.json(content_type=None)
        detail = body.get("error", body) if isinstance(body, dict) else {}
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
    except (ValueError, aiohttp.ClientError):
        detail, message = {}, None
    message = message or f"upstream answered HTTP {status}"
    if status == 508:  # a gateway further on found the loop: the client should hear that, not a bare 502
        return OpenAIError(508, message, "api_error", code="loop_detected")
    if status >= 500 or status < 400:  # a redirect is not followed: it could lead anywhere the gateway can reach
        return error_for_status(502 if status != 503 else 503, f"upstream error: {message}")
    return OpenAIError(
        status,
        message,
        detail.get("type") or "invalid_request_error",
        detail.get("param"),
        detail.get("code") if isinstance(detail.get("code"), str) else None,
    )


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _routing_headers(state: GatewayState, trip: Trip) -> dict[str, str]:
    assert trip.pool is not None and trip.choice is not None  # a backend of the pool answered
    return {
        "x-request-id": trip.request_id,
        "x-ricardo-pool": trip.pool.name,
        "x-ricardo-policy": state.policy_name,
        "x-ricardo-cost-usd": f"{trip.choice.cost_usd:.6g}",
        "x-ricardo-predicted-output-tokens": str(trip.shape.output_p50),
        "x-ricardo-attempts": str(trip.attempts),
    }


async def _relay_json(state: GatewayState, trip: Trip, upstream: aiohttp.ClientResponse) -> web.Response:
    raw = await upstream.read()  # no first-token time: a whole answer says nothing about TTFT or TPOT
    try:
        trip.usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        trip.usage = None
    return web.Response(body=raw, content_type="application/json", headers=_routing_headers(state, trip))


async def _relay_stream(
    request: web.Request, state: GatewayState, trip: Trip, upstream: aiohttp.ClientResponse, client_wants_usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **_routing_headers(state, trip)}
    )
    await response.prepare(request)
    buffer = b""
    try:
        async for data in upstream.content.iter_any():
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            out = [event + b"\n\n" for event in events if event.strip() and _keep(trip, event, client_wants_usage)]
            if out:
                await response.write(b"".join(out))
    except ConnectionResetError:
        trip.status = 499  # the client left; releasing the upstream frees the backend
        return response
    except (aiohttp.ClientError, TimeoutError) as exc:
        trip.status = 502
        pool = trip.pool
        assert pool is not None  # it is streaming
        state.metrics.upstream_errors.labels(pool.name, "mid_stream").inc()
        log.warning("request %s: stream from pool %s broke: %s", trip.request_id, pool.name, exc)
        await _write_quietly(response, sse(error_body("upstream stream broke off", "upstream_error")))
        return response
    await _write_quietly(response, None)
    return response


def _keep(trip: Trip, event: bytes, client_wants_usage: bool) -> bool:
    """Note what the gateway needs from one SSE event and say whether the client should see it."""
    if trip.first_token_at is None and _has_content(event):
        trip.first_token_at = time.monotonic()
    if b'"usage":{' in event:
        with contextlib.suppress(ValueError, KeyError):
            trip.usage = json.loads(event[event.index(b"{") :])["usage"]
        if b'"choices":[]' in event:
            return client_wants_usage
    return True


def _has_content(event: bytes) -> bool:
    if event.startswith(b"data: [DONE]"):
        return False
    try:
        choice = json.loads(event[event.index(b"{") :])["choices"][0]
    except (ValueError, KeyError, IndexError):
        return False
    return bool(choice.get("text") or (choice.get("delta") or {}).get("content"))


async def _write_quietly(response: web.StreamResponse, data: bytes | None) -> None:
    try:
        if data:
            await response.write(data)
        await response.write_eof()
    except ConnectionResetError:
        pass


def _account(state: GatewayState, trip: Trip) -> None:
    """Everything that learns from a finished request: pool load, metrics, the predictor."""
    if trip.pool is None:
        return
    end = time.monotonic()
    pool = trip.pool.name
    m = state.metrics
    m.requests.labels(trip.shape.model, pool, str(trip.status)).inc()
    m.duration.labels(pool).observe(end - trip.started)
    if trip.first_token_at is not None:
        m.ttft.labels(pool).observe(trip.first_token_at - trip.started)
    usage = trip.usage or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if isinstance(completion_tokens, int) and completion_tokens > 1 and trip.first_token_at is not None:
        m.tpot.labels(pool).observe((end - trip.first_token_at) / (completion_tokens - 1))
    assert trip.ticket is not None  # dispatched
    if trip.first_token_at is not None:
        trip.pool.ledger.first_token(trip.ticket, trip.first_token_at)
    clean = trip.status == 200 and isinstance(completion_tokens, int)
    trip.pool.ledger.finish(trip.ticket, end, completion_tokens if clean else None)
    _stop(state, trip)
    if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int) and trip.status == 200:
        m.tokens.labels(pool, "input").inc(prompt_tokens)
        m.tokens.labels(pool, "output").inc(completion_tokens)
        m.token_usage.labels("input").observe(prompt_tokens)
        m.token_usage.labels("output").observe(completion_tokens)
        cost = state.request_cost(trip.pool, prompt_tokens, completion_tokens)
        m.cost.labels(pool).inc(cost)
        if trip.key is not None:
            state.keys.charge(trip.key, cost, prompt_tokens + completion_tokens)
        state.shaper.observe(trip.shape, trip.features, prompt_tokens, completion_tokens, m)
        for listener in state.outcome_listeners:
            listener(prompt_tokens, completion_tokens)
