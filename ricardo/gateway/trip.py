"""One request in flight, and the events of its life: an attempt starts on a backend, fails, or the trip ends.

Every path out of a request (clean answer, upstream failure, client gone, shutdown) ends in `account`, which
releases what `start` took (the pool ledger's ticket, the backend's in-flight count) exactly once, and tells
the backend's outlier detector how the answer ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ricardo.gateway.keys import ClientKey
from ricardo.gateway.pools import Backend, Pool
from ricardo.policies.ledger import Ticket
from ricardo.policies.types import Choice, RequestShape
from ricardo.predictor.features import RequestFeatures
from ricardo.protocol.openai import Endpoint

if TYPE_CHECKING:
    from ricardo.gateway.state import GatewayState

log = logging.getLogger("ricardo.gateway")


@dataclass(eq=False)
class Trip:
    """What the gateway knows about one request while it is in flight."""

    endpoint: Endpoint
    request_id: str
    shape: RequestShape
    features: RequestFeatures
    started: float
    key: ClientKey | None = None  # the client's API key, charged for the answer
    pool: Pool | None = None
    backend: Backend | None = None
    choice: Choice | None = None
    ticket: Ticket | None = None
    attempts: int = 0
    first_token_at: float | None = None
    usage: dict | None = None
    prefill_usage: dict | None = None  # a pair's: the prefill side's answer's (its prompt tokens count)
    cost_usd: float | None = None  # the answer's actual cost (`priced`), once its usage is known
    status: int = 200
    # how the answer ended for the backend: True clean, False its failure, None says nothing (client gone)
    outcome: bool | None = None
    tried: set = field(default_factory=set)
    trial: bool = False  # the attempt in progress is its backend's half-open trial (gateway/outlier.py)
    task: asyncio.Task | None = None  # the handler's, which shutdown cancels
    aborted: str | None = None  # why the gateway itself ends the request early (shutdown)
    served_by: str | None = None  # the last backend attempted (shown, without credentials), for the access log
    sequences: int = 1  # answers the backend generates (`n` per prompt); usage counts them all
    prompt: str | None = None  # the prompt text, only where the config asks for it in the access log (log_prompts)
    relayed_events: int = 0  # a stream's events sent on, about one token each: what a client that left is charged


def start(state: GatewayState, trip: Trip, pool: Pool, backend: Backend, choice: Choice) -> None:
    """An attempt starts on `backend`."""
    trip.pool, trip.backend, trip.choice, trip.served_by = pool, backend, choice, backend.shown
    trip.prefill_usage = None  # a failed pair attempt's: this attempt's answer is counted on its own
    trip.ticket = pool.ledger.dispatch(
        trip.shape, state.book_for(trip.shape.model, trip.shape.slo), time.monotonic(), choice
    )
    trip.trial = backend.outlier.begin()
    backend.in_flight += 1
    if trip.shape.stream:
        pool.waits(id(trip), trip.started)


def hand_over(trip: Trip, decode: Backend) -> None:
    """A pair's prefill side answered cleanly: its backend is done (a clean outcome, released), and the request
    moves, with the pool's load it holds, to the decode backend (gateway/handoff.py)."""
    prefill = trip.backend
    assert prefill is not None and trip.pool is not None  # started on the prefill side
    prefill.outcome(time.monotonic(), True, trip.trial)
    trip.trial = False
    prefill.in_flight -= 1
    trip.backend, trip.served_by = decode, decode.shown  # the access line names the backend that answers
    trip.trial = decode.outlier.begin()
    decode.in_flight += 1


def _release(trip: Trip) -> None:
    pool, backend, ticket = trip.pool, trip.backend, trip.ticket
    assert pool is not None and backend is not None and ticket is not None  # started
    pool.ledger.abandon(ticket)  # a no-op if `finish` released it already
    pool.left(id(trip))
    backend.in_flight -= 1
    if trip.trial:  # it ended without saying anything about the backend: the next request is the trial
        backend.outlier.end_trial()
        trip.trial = False
    trip.pool = trip.backend = None


def give_up(trip: Trip) -> None:
    """The attempt ends without an answer for the client and without saying anything about the backend
    (it answered that the request itself is wrong)."""
    _release(trip)


def fail(
    state: GatewayState, trip: Trip, kind: str, *, overloaded: bool = False, retry_after: float | None = None
) -> None:
    """The attempt failed before anything reached the client; the caller tries the next backend. `overloaded`:
    the backend could not be reached or said it is overloaded (it rests); otherwise the failure is an outcome."""
    pool, backend = trip.pool, trip.backend
    assert pool is not None and backend is not None  # started
    now = time.monotonic()
    if overloaded:
        backend.rest(now, retry_after)
    else:
        failed(state, trip, kind)
    state.metrics.fallbacks.labels(pool.name, kind).inc()
    log.warning("request %s: backend %s of pool %s failed (%s)", trip.request_id, backend.shown, pool.name, kind)
    _release(trip)


def failed(state: GatewayState, trip: Trip, kind: str) -> None:
    """Count a failed answer of the trip's backend: a metric, its outlier detector."""
    pool, backend = trip.pool, trip.backend
    assert pool is not None and backend is not None  # started
    if backend.role != "unified" and not kind.startswith(backend.role):  # a side of a pair: which one failed
        kind = f"{backend.role}_{kind}"
    answer_failed(state, pool, backend, kind, trip.trial)
    trip.trial = False


def answer_failed(state: GatewayState, pool: Pool, backend: Backend, kind: str, trial: bool = False) -> None:
    """Count a failed answer of `backend` (`trial`: the half-open trial's): a metric, its outlier detector; an
    embedding's too (gateway/embeddings.py), which has no trip."""
    now = time.monotonic()
    state.metrics.upstream_errors.labels(pool.name, kind).inc()
    ejected = backend.outcome(now, False, trial)
    if ejected:
        state.metrics.ejections.labels(pool.name, backend.shown).inc()
        log.warning(
            "backend %s of pool %s ejected for %.0f s after failed answers (%s)",
            backend.shown,
            pool.name,
            backend.outlier.ejected_until - now,
            kind,
        )


def priced(state: GatewayState, trip: Trip, usage: dict) -> dict:
    """Note the answer's usage and price its actual tokens on the pool that served it; return the usage with the
    cost for the client (`ricardo_cost_usd`, and the estimate the pool was chosen on, `ricardo_expected_cost_usd`).
    Called when the usage arrives, before the client sees it: `account` charges this same figure to the metrics
    and the client's key, so what a client is told and what the gateway counts agree to the last digit."""
    usage = trip.usage = _as_one_call(trip, usage)
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if trip.pool is None or not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
        return usage
    trip.cost_usd = state.request_cost(trip.pool, prompt_tokens, completion_tokens, trip.shape.slo, trip.shape.model)
    extension = {"ricardo_cost_usd": trip.cost_usd}
    if trip.choice is not None:
        extension["ricardo_expected_cost_usd"] = trip.choice.cost_usd
    return {**usage, **extension}


def _as_one_call(trip: Trip, usage: dict) -> dict:
    """A pair's usage as one call would report it: the prompt was the prefill side's work, so its prompt tokens are
    the prefill side's (a decode side may count only the few it computed itself, after pulling the KV cache)."""
    prompt_tokens = (trip.prefill_usage or {}).get("prompt_tokens")
    if not isinstance(prompt_tokens, int) or usage.get("prompt_tokens") == prompt_tokens:
        return usage
    usage = {**usage, "prompt_tokens": prompt_tokens}
    if isinstance(usage.get("completion_tokens"), int) and "total_tokens" in usage:
        usage["total_tokens"] = prompt_tokens + usage["completion_tokens"]
    return usage


def _met_slo(trip: Trip, clean: bool, tpot_s: float | None) -> bool:
    """Whether a stream met its SLO, judged as loadgen judges it: a clean answer whose first token came within the
    TTFT SLO and whose TPOT (none below two tokens) is within the TPOT SLO; a failed answer misses."""
    if not clean or trip.first_token_at is None:
        return False
    slo = trip.shape.slo
    return trip.first_token_at - trip.started <= slo.ttft_ms / 1000 and (tpot_s is None or tpot_s <= slo.tpot_ms / 1000)


def account(state: GatewayState, trip: Trip) -> None:
    """Everything that learns from a finished request: pool load, the backend's outcomes, metrics, the predictor."""
    pool, backend = trip.pool, trip.backend
    if pool is None or backend is None:
        return
    end = time.monotonic()
    m, pm = state.metrics, pool.metrics
    pm.requests(trip.shape.model, trip.status).inc()
    pm.duration.observe(end - trip.started)
    if trip.outcome is True:
        backend.outcome(end, True, trip.trial)
        trip.trial = False
    if trip.first_token_at is not None:
        pm.ttft.observe(trip.first_token_at - trip.started)
    usage = _as_one_call(trip, trip.usage or {})
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    clean = trip.status == 200 and trip.outcome is True
    tpot_s = None  # (latency - TTFT) / (output tokens - 1), as loadgen measures it
    if clean and isinstance(completion_tokens, int) and completion_tokens > 1 and trip.first_token_at is not None:
        tpot_s = (end - trip.first_token_at) / (completion_tokens - 1)
        pm.tpot.observe(tpot_s)
    if trip.shape.stream and trip.status != 499:  # a client gone is not judged
        (pm.slo_met if _met_slo(trip, clean, tpot_s) else pm.slo_missed).inc()
    assert trip.ticket is not None  # dispatched
    if trip.first_token_at is not None:
        pool.ledger.first_token(trip.ticket, trip.first_token_at)
    # the ledger learns latency only from a clean answer's token count
    pool.ledger.finish(trip.ticket, end, completion_tokens if clean and isinstance(completion_tokens, int) else None)
    _release(trip)
    if clean and isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
        pm.input_tokens.inc(prompt_tokens)
        pm.output_tokens.inc(completion_tokens)
        m.input_usage.observe(prompt_tokens)
        m.output_usage.observe(completion_tokens)
        cost = trip.cost_usd  # the figure the client was told (`priced`), else priced now
        if cost is None:
            cost = trip.cost_usd = state.request_cost(
                pool, prompt_tokens, completion_tokens, trip.shape.slo, trip.shape.model
            )
        pm.cost.inc(cost)
        if trip.key is not None:
            state.keys.charge(trip.key, cost, prompt_tokens + completion_tokens)
        state.shaper.observe(trip.shape, trip.features, prompt_tokens, completion_tokens, m, trip.sequences)
    elif trip.key is not None and trip.status == 499 and trip.relayed_events:
        # the client left a stream before its usage came (it comes last): charged for what it was sent, else a key's
        # budget and tokens per minute could be evaded by closing every stream once its content is in
        prompt = prompt_tokens if isinstance(prompt_tokens, int) else trip.shape.input_tokens
        sent = completion_tokens if isinstance(completion_tokens, int) else trip.relayed_events
        cost = state.request_cost(pool, prompt, sent, trip.shape.slo, trip.shape.model)
        pm.cost.inc(cost)
        pm.input_tokens.inc(prompt)  # the same tokens as the dollars: the dashboard's $ per 1M tokens divides them
        pm.output_tokens.inc(sent)
        state.keys.charge(trip.key, cost, prompt + sent)
