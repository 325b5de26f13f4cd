"""A virtual-time cluster: pools of emulated engines behind the real routing policy code.

Every arrival advances all engines to its time, retires the requests that finished (their latency feeds
the pools' live estimates, as in the gateway), builds the same `PoolView`s the gateway builds,
asks the policy for a ranking and submits the request to the least-loaded engine of the first
pool that has one, as the gateway's dispatcher does. Nothing here sleeps: an hour of trace runs
in seconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ricardo.emulator.sizes import PredictedSizes, Sizes
from ricardo.emulator.virtual import Timing, VirtualEngine
from ricardo.policies.ledger import PoolLedger, Ticket
from ricardo.policies.routing import Policy, get_policy
from ricardo.policies.types import SLO, PoolView, RequestShape
from ricardo.profiles.engine_params import EngineParams


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float
    input_tokens: int
    output_tokens: int
    prompt: str | None = None  # the text, where the trace has it (the predictor reads it as the gateway would)


@dataclass(eq=False)
class SimRequest:
    timing: Timing
    pool: _Pool | None = None
    replica: _Replica | None = None
    ticket: Ticket | None = None
    refused: str | None = None  # why no pool took it: "context" (beyond the model's window), "capacity"
    sizes_handle: Any = None  # what the sizes source needs to learn this request's length when it finishes


@dataclass(eq=False)
class _Replica:
    engine: VirtualEngine
    in_flight: int = 0


@dataclass(eq=False)
class _Pool:
    ledger: PoolLedger  # the load and live estimates, kept as the gateway keeps them
    replicas: list[_Replica]

    @property
    def name(self) -> str:
        return self.ledger.name

    def view(self) -> PoolView:
        return self.ledger.view(len(self.replicas))


@dataclass
class SimResult:
    requests: list[SimRequest]
    fleet: dict[str, int]
    prices: dict[str, float]
    slo: SLO
    duration_s: float
    per_pool: dict[str, int] = field(default_factory=dict)
    sizes: str = "predicted"  # what the router was told of each answer's length

    @property
    def cost_per_hour(self) -> float:
        return sum(self.prices[h] * n for h, n in self.fleet.items())

    def refused(self, reason: str) -> int:
        return sum(r.refused == reason for r in self.requests)

    def summary(self) -> dict:
        served = [r for r in self.requests if r.pool is not None]
        lpt = np.array([r.timing.latency_per_token for r in served]) * 1000
        ttft = np.array([r.timing.ttft for r in served]) * 1000
        tokens = sum(r.timing.prompt_tokens + r.timing.output_tokens for r in self.requests)
        met = int(np.sum(lpt <= self.slo.tpot_ms)) if len(lpt) else 0
        hours = self.duration_s / 3600

        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) if len(a) else math.nan

        held = len(self.requests) - self.refused("context")
        return {
            "requests": len(self.requests),
            "refused_context": self.refused("context"),  # beyond the model's window: 400 before routing
            "unserved": self.refused("capacity"),  # no pool could take them
            "slo_attainment": met / held if held else math.nan,  # of the requests the model can hold
            "slo_tpot_ms": self.slo.tpot_ms,
            "cost_per_hour": self.cost_per_hour,
            "usd_per_million_tokens": self.cost_per_hour * hours / tokens * 1e6 if tokens else math.nan,
            "duration_s": self.duration_s,
            "fleet": dict(self.fleet),
            "per_pool_requests": dict(self.per_pool),
            "sizes": self.sizes,
            "latency_per_token_ms": {"p50": pct(lpt, 50), "p90": pct(lpt, 90), "p99": pct(lpt, 99)},
            "ttft_ms": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99)},
        }


def simulate(
    trace: Iterable[TraceRequest],
    fleet: dict[str, int],
    engine_params: dict[str, EngineParams],
    book,
    prices: dict[str, float],
    policy: str | Policy,
    slo: SLO,
    model: str = "llama2-7b",
    seed: int = 0,
    sizes: Sizes | None = None,
) -> SimResult:
    """Replay `trace` on a fleet {hardware: replicas}; one pool per hardware type. The router is told each
    request's predicted size (`sizes`; default: the gateway's predictor, fresh, learning as requests finish)."""
    rank = get_policy(policy) if isinstance(policy, str) else policy
    told: Sizes = sizes if sizes is not None else PredictedSizes()
    context = book.context_tokens
    rng = random.Random(seed)
    pools = {
        hw: _Pool(PoolLedger(hw, hw, prices[hw]), [_Replica(VirtualEngine(engine_params[hw])) for _ in range(n)])
        for hw, n in fleet.items()
        if n > 0
    }
    engines = [(pool, replica) for pool in pools.values() for replica in pool.replicas]
    in_flight: dict[int, SimRequest] = {}  # id(timing) -> request
    requests: list[SimRequest] = []
    per_pool = {hw: 0 for hw in pools}
    last = 0.0
    for index, item in enumerate(trace):
        last = item.arrival
        for _, replica in engines:
            replica.engine.advance_to(item.arrival)
            _retire(replica.engine, in_flight, told)
        # every answer has a first token: a trace's 0-token answers (an aborted request) count as one
        request = SimRequest(Timing(item.arrival, item.input_tokens, max(1, item.output_tokens)))
        requests.append(request)
        if context is not None and item.input_tokens + max(1, item.output_tokens) > context:
            request.refused = "context"  # the gateway answers 400 context_length_exceeded before routing
            continue
        p50, p90, request.sizes_handle = told.predict(item.input_tokens, item.output_tokens, item.prompt, model)
        shape = RequestShape(model, item.input_tokens, p50, p90, slo)
        views = [pool.view() for pool in pools.values()]
        for choice in rank(shape, views, book, draw=rng.random(), index=index):
            pool = pools[choice.pool]
            replica = min(pool.replicas, key=lambda r: r.in_flight)
            if item.input_tokens + item.output_tokens > replica.engine.engine.capacity:
                continue
            request.pool, request.replica = pool, replica
            request.ticket = pool.ledger.dispatch(shape, book, item.arrival)
            replica.in_flight += 1
            replica.engine.submit(request.timing)
            per_pool[pool.name] += 1
            in_flight[id(request.timing)] = request
            break
        else:
            request.refused = "capacity"  # no pool could take it (none serves its size, or none has room)
    for _, replica in engines:
        replica.engine.drain()
        _retire(replica.engine, in_flight, told)
    return SimResult(requests, dict(fleet), prices, slo, duration_s=max(last, 1e-9), per_pool=per_pool, sizes=told.name)


def _retire(engine: VirtualEngine, in_flight: dict[int, SimRequest], sizes: Sizes) -> None:
    """Tell the pools' ledgers and the predictor about the engine's finished requests."""
    for timing in engine.finished:
        request = in_flight.pop(id(timing))
        pool, replica, ticket = request.pool, request.replica, request.ticket
        assert pool is not None and replica is not None and ticket is not None  # in flight: it was placed
        replica.in_flight -= 1
        pool.ledger.first_token(ticket, timing.first_token_at)
        pool.ledger.finish(ticket, timing.finished_at, timing.output_tokens)
        sizes.observe(request.sizes_handle, timing.output_tokens)
    engine.finished.clear()
