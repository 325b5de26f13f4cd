"""`/v1/embeddings`, passed through to the pools of an embedding model and priced by its input tokens.

An embedding is one forward pass over the input: no output to predict, no stream, no SLO per token. So it skips
the policy and the ledger: the cheapest pool that serves the model, its least-loaded backend, the next backend on
a failure before the answer (as `dispatch` does), and the cost `prompt_tokens` x the model's price
(`embedding_models` in the config, $ per million input tokens), charged to the client's key like any answer and
sent as completions send it, in the usage (`usage.ricardo_cost_usd`), never a header. Only the usage of the answer is
parsed (`dispatch.checked_answer`): its vectors, the bulk of it, pass through as they came.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from aiohttp import web

from ricardo.gateway.dispatch import (
    BUSY_STATUSES,
    RETRIABLE_STATUSES,
    checked_answer,
    connect_timeout,
    read_bounded,
    retry_after_of,
    upstream_error,
    with_retry_after,
)
from ricardo.gateway.pools import post
from ricardo.gateway.proxy import _forwarded_headers, _hops
from ricardo.gateway.shutdown import SHUTTING_DOWN, unavailable
from ricardo.gateway.state import GatewayState
from ricardo.gateway.trip import answer_failed
from ricardo.protocol.openai import OpenAIError, error_for_status, parse_embedding_request

UPSTREAM_PATH = "/v1/embeddings"


async def handle(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    if state.refusing:
        raise unavailable()
    with state.passing_through():
        try:
            return await _handle(request, state)
        except asyncio.CancelledError as exc:
            if exc.args != (SHUTTING_DOWN,):
                raise  # the client went away
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the drain deadline (gateway/shutdown.py): answered with a word, as a completion is
            raise unavailable() from None


async def _handle(request: web.Request, state: GatewayState) -> web.Response:
    hops = _hops(request)
    key = await state.keys.admit(request)
    payload = await request.read()
    _, req = parse_embedding_request(payload)
    price = state.config.embedding_models.get(req.model)
    if req.model not in state.models:
        raise OpenAIError(
            404, f"The model `{req.model}` does not exist.", "not_found_error", "model", "model_not_found"
        )
    if price is None:
        raise OpenAIError(400, f"The model `{req.model}` does not embed (see `embedding_models`).", param="model")
    request_id = request.headers.get("x-request-id", "")
    if not (request_id.isascii() and request_id.isprintable() and 0 < len(request_id) <= 200):
        request_id = uuid.uuid4().hex
    headers = _forwarded_headers(request, request_id, hops)
    pools = sorted((p for p in state.pools.values() if req.model in p.models), key=lambda p: p.price_per_hour)
    tried: set = set()
    last_error = OpenAIError(503, "no backend is available now", "service_unavailable", headers={"Retry-After": "1"})
    retry_after: float | None = None  # what the last busy backend said: the client is told the same
    for pool in pools:
        while len(tried) < state.config.limits.max_attempts:
            backend = pool.pick_backend(time.monotonic(), tried)
            if backend is None:
                break
            tried.add(backend)
            t = pool.timeouts
            backend.in_flight += 1
            trial = backend.outlier.begin()  # the half-open trial, if it is one: its outcome decides, as a completion's
            judged = False  # whether the backend's answer was judged (answer_failed, outcome): that ends its trial
            try:
                sent_at = time.monotonic()
                try:
                    async with asyncio.timeout(t.response_s):
                        response = await post(
                            backend.session,
                            backend.url + UPSTREAM_PATH,
                            data=payload,
                            headers=headers,
                            timeout=connect_timeout(t.connect_s),  # the wait for a free connection too, as dispatch's
                            allow_redirects=False,
                        )
                        async with response:
                            status, raw = response.status, await read_bounded(response)
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                    # unreachable, or every connection to it busy: it rests, as in dispatch; no word on its answers
                    backend.rest(time.monotonic(), None)
                    last_error = error_for_status(502, f"upstream {pool.name} failed: {type(exc).__name__}")
                    continue
                except (aiohttp.ClientError, TimeoutError) as exc:  # it broke off or hung: a failed answer, as dispatch
                    judged = True
                    answer_failed(state, pool, backend, "timeout" if isinstance(exc, TimeoutError) else "broken", trial)
                    last_error = error_for_status(502, f"upstream {pool.name} failed: {type(exc).__name__}")
                    continue
                finally:
                    backend.in_flight -= 1
                if status in RETRIABLE_STATUSES:
                    # as dispatch: a busy backend rests as long as it asks, and the client hears its 429 (or 503)
                    if status in BUSY_STATUSES:
                        retry_after = retry_after_of(response)
                        backend.rest(time.monotonic(), retry_after)
                    else:  # a 500 may be the request's fault, but counts as the backend's, as in dispatch
                        judged = True
                        answer_failed(state, pool, backend, f"http_{status}", trial)
                    last_error = upstream_error(status, raw)
                    continue
                backend.reached(sent_at)
                if status != 200:  # the request's fault (4xx): what the backend says, in the OpenAI error shape
                    raise upstream_error(status, raw)
                whole = checked_answer(raw, "data")
                usage = whole.usage if whole is not None else None
                tokens = usage.get("prompt_tokens") if usage is not None else None
                judged = True
                if whole is None or usage is None or not isinstance(tokens, int) or isinstance(tokens, bool):
                    answer_failed(state, pool, backend, "bad_json", trial)
                    last_error = error_for_status(502, f"upstream {pool.name} answered no embeddings")
                    continue
                backend.outcome(time.monotonic(), True, trial)
            finally:
                if trial and not judged:  # no word on its answers (unreachable, busy, a 4xx, the client left)
                    backend.outlier.end_trial()
            cost = tokens * price / 1e6
            m = state.metrics
            m.requests.labels(req.model, pool.name, "200").inc()
            m.tokens.labels(pool.name, "input").inc(tokens)
            m.cost.labels(pool.name).inc(cost)
            if key is not None:
                state.keys.charge(key, cost, tokens)
            content = whole.with_usage({**usage, "ricardo_cost_usd": cost})
            routing = {"x-request-id": request_id, "x-ricardo-pool": pool.name}
            return web.Response(body=content, content_type="application/json", headers=routing)
    raise with_retry_after(last_error, retry_after)
