"""A virtual-time cluster: pools of emulated engines behind the real routing policy code.

Every arrival advances all engines to its time, retires the requests that finished (their latency feeds
the pools' live estimates, as in the gateway), builds the same `PoolView`s the gateway builds,
asks the policy for a ranking and submits the request to the least-loaded engine of the first
pool that has one, as the gateway's dispatcher does. Nothing here sleeps: an hour of trace runs
in seconds.

A disaggregated pair (fleet keys `pair_key(prefill, decode, role)`) is a pool of prefill engines and decode
engines: a request is prefilled on the least-loaded prefill engine (a one-token request), its KV cache crosses
the link (input tokens x the model's KV bytes per token / `link_gbps`), then the least-loaded decode engine
admits it without computing its prompt, the transferred blocks counted in its KV cache; its first token comes
with that admission. The pair's ledger gets the same events as a unified pool's.
"""

from __future__ import annotations

import heapq
import itertools
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
from ricardo.policies.types import SLO, PairSpec, PoolView, RequestShape
from ricardo.profiles.engine_params import EngineParams
from ricardo.profiles.roles import DEFAULT_LINK_GBPS, transfer_seconds

ROLES = ("prefill", "decode")


def pair_key(prefill: str, decode: str, role: str) -> str:
    """The fleet key of one role of a pair: {\"A>B:prefill\": 2, \"A>B:decode\": 3} is a pair of 2 A prefill and 3 B
    decode workers."""
    return f"{prefill}>{decode}:{role}"


def parse_key(key: str) -> tuple[str, str, str] | None:
    """(prefill type, decode type, role) of a pair's fleet key; None for a unified type."""
    types, sep, role = key.rpartition(":")
    prefill, arrow, decode = types.partition(">")
    return (prefill, decode, role) if sep and arrow and role in ROLES else None


def key_hardware(key: str) -> str:
    """The hardware type a fleet key pays for (a pair role's own type)."""
    parsed = parse_key(key)
    return key if parsed is None else parsed[0 if parsed[2] == "prefill" else 1]


def fleet_cost(fleet: dict[str, int], prices: dict[str, float]) -> float:
    """$/h of a fleet whose keys are types or pair roles."""
    return sum(prices[key_hardware(key)] * n for key, n in fleet.items())


def split_fleet(fleet: dict[str, int]) -> tuple[dict[str, int], list[dict]]:
    """({type: unified replicas}, [{prefill, decode, prefill_replicas, decode_replicas}]) of a fleet."""
    unified: dict[str, int] = {}
    pairs: dict[tuple[str, str], dict] = {}
    for key, n in fleet.items():
        parsed = parse_key(key)
        if parsed is None:
            unified[key] = n
            continue
        entry = pairs.setdefault(
            parsed[:2], {"prefill": parsed[0], "decode": parsed[1], "prefill_replicas": 0, "decode_replicas": 0}
        )
        entry[f"{parsed[2]}_replicas"] = n
    return unified, list(pairs.values())


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
    replicas: list[_Replica]  # of a pair: its prefill engines
    decode: list[_Replica] = field(default_factory=list)  # of a pair: its decode engines
    transfer_per_token: float = 0.0  # of a pair: seconds the KV cache of one prompt token takes over the link

    @property
    def name(self) -> str:
        return self.ledger.name

    def view(self) -> PoolView:
        return self.ledger.view(len(self.replicas), len(self.decode))

    def fits(self, input_tokens: int, output_tokens: int) -> bool:
        """Can its engines hold the request's KV cache (the decode side's, for a pair)?"""
        if self.ledger.pair is None:
            return input_tokens + output_tokens <= self.replicas[0].engine.engine.capacity
        prefill, decode = self.replicas[0].engine.engine, self.decode[0].engine.engine
        return input_tokens + 1 <= prefill.capacity and input_tokens + output_tokens <= decode.capacity


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
        return fleet_cost(self.fleet, self.prices)

    def refused(self, reason: str) -> int:
        return sum(r.refused == reason for r in self.requests)

    def summary(self) -> dict:
        served = [r for r in self.requests if r.pool is not None]
        lpt = np.array([r.timing.latency_per_token for r in served]) * 1000
        ttft = np.array([r.timing.ttft for r in served]) * 1000
        tokens = sum(r.timing.prompt_tokens + r.timing.output_tokens for r in self.requests)
        met = int(np.sum(lpt <= self.slo.tpot_ms)) if len(lpt) else 0
        hours = self.duration_s / 3600

        def pct(a: np.ndarray, q: float) -> float | None:  # None, not NaN: the summary is printed as JSON
            return float(np.percentile(a, q)) if len(a) else None

        held = len(self.requests) - self.refused("context")
        return {
            "requests": len(self.requests),
            "refused_context": self.refused("context"),  # beyond the model's window: 400 before routing
            "unserved": self.refused("capacity"),  # no pool could take them
            "slo_attainment": met / held if held else None,  # of the requests the model can hold
            "slo_tpot_ms": self.slo.tpot_ms,
            "cost_per_hour": self.cost_per_hour,
            "usd_per_million_tokens": self.cost_per_hour * hours / tokens * 1e6 if tokens else None,
            "duration_s": self.duration_s,
            "fleet": split_fleet(self.fleet)[0],
            "pairs": split_fleet(self.fleet)[1],
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
    link_gbps: float = DEFAULT_LINK_GBPS,
) -> SimResult:
    """Replay `trace` on a fleet {hardware: replicas, pair_key(...): replicas}; one pool per hardware type and per
    pair. The router is told each request's predicted size (`sizes`; default: the gateway's predictor, fresh,
    learning as requests finish)."""
    rank = get_policy(policy) if isinstance(policy, str) else policy
    told: Sizes = sizes if sizes is not None else PredictedSizes()
    context = book.context_tokens
    rng = random.Random(seed)
    pools = _pools(fleet, engine_params, prices, link_gbps)
    engines = [replica for pool in pools.values() for replica in pool.replicas + pool.decode]
    prefill_engines = [replica for pool in pools.values() if pool.decode for replica in pool.replicas]
    last_engines = [replica for pool in pools.values() for replica in (pool.decode or pool.replicas)]
    in_flight: dict[int, SimRequest] = {}  # id(timing) -> request
    prefilling: dict[int, SimRequest] = {}  # id(prefill timing) -> request, on a pair's prefill engine
    handoffs: list[tuple[float, int, SimRequest]] = []  # (KV cache arrives at the decode side, order, request)
    order = itertools.count()
    requests: list[SimRequest] = []
    per_pool = dict.fromkeys(pools, 0)
    last = 0.0

    def hand_off(until: float) -> None:
        """Run the prefill engines to `until`; hand every prompt whose KV cache has arrived by then to a decode
        engine of its pair (the least loaded when it arrives)."""
        for replica in prefill_engines:
            replica.engine.advance_to(until)
            for timing in _finished_by(replica.engine, until):
                request = prefilling.pop(id(timing))
                replica.in_flight -= 1
                assert request.pool is not None
                arrives = timing.finished_at + request.timing.prompt_tokens * request.pool.transfer_per_token
                heapq.heappush(handoffs, (arrives, next(order), request))
        while handoffs and handoffs[0][0] <= until:
            at, _, request = heapq.heappop(handoffs)
            assert request.pool is not None
            decode = min(request.pool.decode, key=lambda r: r.in_flight)
            decode.in_flight += 1
            request.replica = decode
            decode.engine.submit_prefilled(request.timing, at)

    for index, item in enumerate(trace):
        last = item.arrival
        hand_off(item.arrival)
        for replica in last_engines:
            replica.engine.advance_to(item.arrival)
            _retire(replica.engine, in_flight, told, item.arrival)
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
            if not pool.fits(item.input_tokens, item.output_tokens):
                continue
            replica = min(pool.replicas, key=lambda r: r.in_flight)
            request.pool = pool
            request.ticket = pool.ledger.dispatch(shape, book, item.arrival, choice)
            replica.in_flight += 1
            if pool.decode:  # a pair: prefill first (one token), the decode side takes it at hand-off
                prefill = Timing(item.arrival, item.input_tokens, 1)
                prefilling[id(prefill)] = request
                replica.engine.submit(prefill)
            else:
                request.replica = replica
                replica.engine.submit(request.timing)
            per_pool[pool.name] += 1
            in_flight[id(request.timing)] = request
            break
        else:
            request.refused = "capacity"  # no pool could take it (none serves its size, or none has room)
    for replica in prefill_engines:
        replica.engine.drain()
    hand_off(math.inf)
    for replica in engines:
        replica.engine.drain()
        _retire(replica.engine, in_flight, told, math.inf)
    return SimResult(requests, dict(fleet), prices, slo, duration_s=max(last, 1e-9), per_pool=per_pool, sizes=told.name)


def _pools(
    fleet: dict[str, int], engine_params: dict[str, EngineParams], prices: dict[str, float], link_gbps: float
) -> dict[str, _Pool]:
    """One pool per unified type and per pair (named "prefill>decode") of the fleet."""
    pools: dict[str, _Pool] = {}
    for hw, n in split_fleet(fleet)[0].items():
        if n > 0:
            replicas = [_Replica(VirtualEngine(engine_params[hw])) for _ in range(n)]
            pools[hw] = _Pool(PoolLedger(hw, hw, prices[hw]), replicas)
    for pair in split_fleet(fleet)[1]:
        prefill, decode = pair["prefill"], pair["decode"]
        if pair["prefill_replicas"] <= 0 or pair["decode_replicas"] <= 0:
            continue
        spec = PairSpec(prefill, decode, prices[prefill], prices[decode], link_gbps)
        name = f"{prefill}>{decode}"
        ledger = PoolLedger(name, decode, prices[prefill] + prices[decode], pair=spec)
        pools[name] = _Pool(
            ledger,
            [_Replica(VirtualEngine(engine_params[prefill])) for _ in range(pair["prefill_replicas"])],
            [_Replica(VirtualEngine(engine_params[decode])) for _ in range(pair["decode_replicas"])],
            transfer_seconds(1, engine_params[decode].model.kv_bytes_per_token, link_gbps),
        )
    return pools


def _finished_by(engine: VirtualEngine, until: float) -> list[Timing]:
    """The engine's requests finished by `until`, taken from its list. An iteration that starts before `until` may
    end after it: the requests it finishes stay listed until then (the router must not learn them early)."""
    done = [timing for timing in engine.finished if timing.finished_at <= until]
    engine.finished = [timing for timing in engine.finished if timing.finished_at > until]
    return done


def _retire(engine: VirtualEngine, in_flight: dict[int, SimRequest], sizes: Sizes, until: float) -> None:
    """Tell the pools' ledgers and the predictor about the engine's requests finished by `until`."""
    for timing in _finished_by(engine, until):
        request = in_flight.pop(id(timing))
        pool, replica, ticket = request.pool, request.replica, request.ticket
        assert pool is not None and replica is not None and ticket is not None  # in flight: it was placed
        replica.in_flight -= 1
        pool.ledger.first_token(ticket, timing.first_token_at)
        pool.ledger.finish(ticket, timing.finished_at, timing.output_tokens)
        sizes.observe(request.sizes_handle, timing.output_tokens)
