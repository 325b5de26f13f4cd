"""Fleets for the simulator: the profile book to plan with, the planner's fleet for a trace, and the search
for the cheapest fleet at which a policy keeps a target share of requests within the SLO."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ricardo.emulator.cluster import TraceRequest, fleet_cost, key_hardware, pair_key, parse_key, simulate
from ricardo.emulator.sizes import sizes_named
from ricardo.policies.planner import PairSeconds, Plan, plan
from ricardo.policies.routing import SLACK_TARGET, Policy
from ricardo.policies.sizing import PLANNERS, pair_seconds, plan_sizes, planner_seconds, size_demand
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook, load_default_book
from ricardo.profiles.engine_params import EngineParams
from ricardo.profiles.roles import DEFAULT_LINK_GBPS


def book_for_slo(slo_tpot_ms: float, price_set: str = "melange", full_catalog: bool = False) -> ProfileBook:
    """The shipped profile book at a TPOT SLO: measured tables at theirs, the engine model's at another."""
    return load_default_book(price_set=price_set, include_estimated=full_catalog, slo_tpot_ms=slo_tpot_ms)


def mean_rate(requests: Sequence[TraceRequest]) -> float:
    span = requests[-1].arrival - requests[0].arrival
    return (len(requests) - 1) / span if span > 0 else float(len(requests))


def demand(requests: Sequence[TraceRequest], book: ProfileBook) -> np.ndarray:
    """req/s per bucket of the book's grid: the requests' exact size mix at their mean arrival rate."""
    return size_demand(book, *lengths(requests), mean_rate(requests))


def lengths(requests: Sequence[TraceRequest]) -> tuple[list[int], list[int]]:
    return [r.input_tokens for r in requests], [r.output_tokens for r in requests]


def plan_fleet(
    requests: Sequence[TraceRequest],
    book: ProfileBook,
    slo: SLO,
    headroom: float = 0.0,
    planner: str = "ricardo",
    disaggregated: bool = False,
    only: Sequence[str] | None = None,
    link_gbps: float = DEFAULT_LINK_GBPS,
) -> dict[str, int]:
    """The planner's cheapest fleet for the requests' size mix at their mean arrival rate (see
    `policies.sizing` for the planners), pairs keyed by role (`cluster.pair_key`) with `disaggregated`,
    over the types `only` (default: every priced type), the pairs' KV cache crossing a `link_gbps` link."""
    priced = list(only) if only is not None else [hw for hw in book.hardware_names() if hw in book.prices]
    result = plan_sizes(
        book,
        *lengths(requests),
        mean_rate(requests),
        slo,
        planner,
        headroom=headroom,
        only=priced,
        disaggregated=disaggregated,
        link_gbps=link_gbps,
    )
    return fleet_of(result)


def fleet_of(result: Plan) -> dict[str, int]:
    """A plan as the simulator's fleet: {type: replicas, pair_key(prefill, decode, role): replicas}."""
    fleet = {hw: n for hw, n in result.allocation.items() if n}
    for pair in result.pairs:
        if pair["prefill_replicas"] and pair["decode_replicas"]:
            fleet[pair_key(pair["prefill"], pair["decode"], "prefill")] = pair["prefill_replicas"]
            fleet[pair_key(pair["prefill"], pair["decode"], "decode")] = pair["decode_replicas"]
    return fleet


def servable(requests: Sequence[TraceRequest], book: ProfileBook, hardware: Sequence[str]) -> np.ndarray:
    """Which requests at least one of `hardware` can serve within the SLO at their true size, by the profile."""
    tables = np.stack([book.capacity(hw) for hw in hardware])
    i, j = book.buckets([r.input_tokens for r in requests], [r.output_tokens for r in requests])
    served: np.ndarray = np.any(tables[:, i, j] > 0, axis=0)
    return served


def alone_within_slo(requests: Sequence[TraceRequest], engines: Sequence[EngineParams], slo: SLO) -> np.ndarray:
    """Which requests meet the TPOT SLO alone on an idle replica of at least one of `engines`.

    A request with a long prompt and one or two output tokens can miss a tight SLO on any hardware (its
    latency per output token is its whole prefill): no fleet or router serves it in time, so a target
    that counts it measures the trace, not the approach.
    """

    def meets(size: tuple[int, int]) -> bool:
        return any(
            sum(size) <= min(params.kv_capacity_tokens, params.model.max_context)
            and params.alone_seconds_per_token(*size) * 1000 <= slo.tpot_ms
            for params in engines
        )

    sizes = [(r.input_tokens, max(1, r.output_tokens)) for r in requests]
    known = {size: meets(size) for size in set(sizes)}
    return np.array([known[size] for size in sizes])


PLAN_TIME_LIMIT_S = 10.0  # the gateway's live planner stops at 1 s; a search wants proven optima


@dataclass
class Trial:
    scale: float  # the planner sized the fleet for `scale` x the mean rate
    fleet: dict[str, int]
    cost_per_hour: float
    attainment: float  # share of the judged requests within the SLO
    summary: dict  # the simulator's summary


@dataclass
class Search:
    """The cheapest fleet found that meets the target (None: none up to the largest scale tried)."""

    best: Trial | None
    trials: list[Trial] = field(default_factory=list)
    by_types: dict[tuple[str, ...], Trial | None] = field(default_factory=dict)  # per candidate type set
    without_pairs: Trial | None = None  # with pairs allowed (`cheapest_verified(disaggregated=True)`): the best without


class FleetSearch:
    """Finds, for one trace, SLO and policy, the cheapest planner fleet that keeps `target` of the requests
    within the SLO in the simulator.

    Candidate fleets are the planner's for `scale` x the trace's demand (same mix, more or less load),
    restricted to some hardware types. Cost grows with the scale and attainment nearly does too (the
    planner's mix can change from one scale to the next, so not always), so the search brackets the
    smallest passing scale from 1 by doubling or halving, then scans the bracket upwards in steps of each
    of `factors`: the first passing fleet of the finest scan is the answer.
    Scales below 1 are allowed: a planner's fleet can be larger than the simulator needs (Mélange's charges each
    request its bucket's upper edge; integer counts round up). The caller marks in `judged` the requests that
    count (those some type can serve in time: `servable`, `alone_within_slo`), the same for every approach.
    """

    def __init__(
        self,
        requests: Sequence[TraceRequest],
        book: ProfileBook,
        engines: dict[str, EngineParams],
        slo: SLO,
        judged: np.ndarray,
        target: float = 0.99,
        seed: int = 0,
        slack_target: float = SLACK_TARGET,
        sizes: str = "predicted",
        link_gbps: float = DEFAULT_LINK_GBPS,
    ):
        self.requests, self.book, self.engines, self.slo = requests, book, engines, slo
        self.judged, self.target, self.seed = judged, target, seed
        self.sizes = sizes  # what the router is told of each answer: the gateway's prediction, or the truth
        self.link_gbps = link_gbps
        self.demand = demand(requests, book)
        self.seconds = {name: planner_seconds(book, *lengths(requests), slo, name, slack_target) for name in PLANNERS}
        self._pairs: dict[str, list[PairSeconds]] = {}  # per planner, the pair candidates, computed when first asked
        self._slack_target = slack_target
        self._runs: dict[tuple, tuple[float, dict]] = {}  # (policy, seed, sizes, fleet) -> `evaluate`'s answer

    def pair_candidates(self, planner: str) -> list[PairSeconds]:
        if planner not in self._pairs:
            priced = [hw for hw in self.book.hardware_names() if hw in self.book.prices]
            self._pairs[planner] = pair_seconds(
                self.book,
                *lengths(self.requests),
                self.slo,
                priced,
                planner,
                link_gbps=self.link_gbps,
                slack_target=self._slack_target,
            )
        return self._pairs[planner]

    def plan(self, scale: float, only: Sequence[str], planner: str = "exact", pairs: bool = False) -> Plan:
        """The planner's fleet for `scale` x the demand, charging each request
        - "exact": its own size at the profile's operating point (the bound's planner);
        - "ricardo": its own size at the utilization the cost-aware policy runs its hardware at (`request_seconds`);
        - "melange": its bucket's upper edge at the operating point (Mélange's planner).
        With `pairs`, the pairs of `only`'s types may be chosen too."""
        candidates = [p for p in self.pair_candidates(planner) if {p.prefill, p.decode} <= set(only)] if pairs else []
        return plan(
            self.demand * scale,
            self.book,
            only=only,
            drop_unservable=True,
            request_seconds=self.seconds[planner],
            time_limit_s=PLAN_TIME_LIMIT_S,
            pairs=candidates,
        )

    def evaluate(self, fleet: dict[str, int], policy: str | Policy) -> tuple[float, dict]:
        """(share of judged requests within the SLO, the simulation's summary) of `policy` on `fleet`. The simulation
        is deterministic, so a fleet that two candidate sets' searches both reach (a planner's mix that is one type
        alone, a hedge's that equals the planner's) is run once."""
        key = (policy, self.seed, self.sizes, tuple(sorted(fleet.items())))  # a caller may change seed or sizes
        if key not in self._runs:
            self._runs[key] = self._simulated(fleet, policy)
        return self._runs[key]

    def _simulated(self, fleet: dict[str, int], policy: str | Policy) -> tuple[float, dict]:
        result = simulate(
            self.requests,
            fleet,
            self.engines,
            self.book,
            self.book.prices,
            policy,
            self.slo,
            seed=self.seed,
            sizes=sizes_named(self.sizes),
            link_gbps=self.link_gbps,
        )
        lpt = np.array([r.timing.latency_per_token if r.pool is not None else math.inf for r in result.requests])
        met = (lpt * 1000 <= self.slo.tpot_ms) & self.judged
        return float(met.sum() / max(1, self.judged.sum())), result.summary()

    def cheapest(
        self,
        policy: str | Policy,
        only: Sequence[str],
        *,
        planner: str = "exact",
        lowest: float = 1 / 16,
        highest: float = 64.0,
        factors: Sequence[float] = (1.25, 1.04),
        on_trial: Callable[[Trial], None] | None = None,
        pairs: bool = False,
    ) -> Search:
        search = Search(None)
        trials: dict[tuple, Trial] = {}
        best: dict[float, Trial] = {}  # the passing trial of each passing scale

        def passes(scale: float) -> bool:
            fleet = self._fleet(scale, only, planner, pairs)
            key = tuple(sorted(fleet.items()))
            if key not in trials:
                attainment, summary = self.evaluate(fleet, policy) if fleet else (0.0, {})
                cost = fleet_cost(fleet, self.book.prices)
                trials[key] = Trial(scale, fleet, cost, attainment, summary)
                search.trials.append(trials[key])
                if on_trial:
                    on_trial(trials[key])
            if trials[key].attainment >= self.target:
                best[scale] = trials[key]
                return True
            return False

        # bracket the smallest passing scale by doubling (or halving), then narrow it by each factor in turn
        failing: float | None = None
        if passes(1.0):
            passing = 1.0
            while passing / 2 >= lowest:
                if not passes(passing / 2):
                    failing = passing / 2
                    break
                passing /= 2
        else:
            failing = 1.0
            while True:
                if failing * 2 > highest:
                    return search
                if passes(failing * 2):
                    break
                failing *= 2
            passing = failing * 2
        for factor in factors:
            if failing is None:  # passing at the lowest scale: nothing to narrow
                break
            scale = failing * factor
            while scale < passing:
                if passes(scale):
                    passing = scale
                    break
                failing, scale = scale, scale * factor
        search.best = best[passing]
        return search

    def cheapest_verified(
        self,
        policy: str | Policy,
        types: Sequence[str],
        *,
        planner: str = "ricardo",
        singles: Sequence[str] | None = None,
        on_trial: Callable[[Trial], None] | None = None,
        disaggregated: bool = False,
        hedges: Sequence[str] = ("melange",),
    ) -> Search:
        """The cheapest fleet the simulator verifies, as ricardo searches it: the planner's fleet over every type,
        each of `hedges`' (other planners') fleets over every type, and the planner's over each type alone (of
        `singles`, default every type), each at its smallest passing scale (`cheapest`), each of those trimmed (one
        replica at a time, dearest type first, as long as the target still holds), and the cheapest kept.
        `Search.by_types` keeps each candidate set's own result, a hedge's under `(*types, "+" + hedge)`.

        The hedge: the planner's mix rests on its model of the router (the utilization it runs each type at, at
        predicted sizes), and where that model is wrong for a traffic the mix needs more scale than it should. A
        plain capacity plan (Mélange's, each request at its bucket's upper edge) makes no such guess, so the search
        verifies it too, with the same router: where the router keeps at least the attainment of Mélange's on
        Mélange's fleet (bench/economics/same_fleet.md), ricardo's answer is never dearer than Mélange's.

        The planner sizes each type for the load the router is expected to put on it, but the router decides
        each request on the live state, so a planned mix can need more scale than a single type (a tight SLO
        where the dearer type's few requests cost more than they save), and a uniform scale-up over-provisions
        the types that did not need it. Each candidate the search keeps is a fleet the simulator ran.

        With `disaggregated`, the same search runs a second time with the planner's pairs allowed over every type
        (its own smallest passing scale, then trimmed), and the cheaper of the two answers is kept: a fleet with
        pairs allowed is never dearer than the one without. `Search.by_types[(*types, "+pairs")]` is the
        pairs search's own answer, `Search.without_pairs` the other's."""
        alone = list(types if singles is None else singles) if len(types) > 1 else []
        sets = [(tuple(types), False, planner)]
        sets += [(tuple(types), False, other) for other in hedges if other != planner and len(types) > 1]
        sets += [((hw,), False, planner) for hw in alone]
        plain = self._verified(policy, sets, on_trial)
        if not disaggregated:
            return plain
        with_pairs = self._verified(policy, [(tuple(types), True, planner)], on_trial)
        search = Search(None, plain.trials + with_pairs.trials)
        search.by_types = plain.by_types | {(*types, "+pairs"): with_pairs.best}
        search.without_pairs = plain.best
        passing = [found.best for found in (plain, with_pairs) if found.best is not None]
        # ties go to the fleet without pairs: the simpler one
        search.best = min(passing, key=lambda trial: trial.cost_per_hour) if passing else None
        return search

    def _verified(
        self,
        policy: str | Policy,
        sets: Sequence[tuple[tuple[str, ...], bool, str]],
        on_trial: Callable[[Trial], None] | None,
    ) -> Search:
        """`cheapest` of each (types, pairs allowed, planner) candidate set, each trimmed, the cheapest kept. A set's
        result is kept under its types, with "+" and the planner's name where that is not the first set's."""
        found = {
            only if planner == sets[0][2] else (*only, f"+{planner}"): self.cheapest(
                policy, only, planner=planner, on_trial=on_trial, pairs=pairs
            )
            for only, pairs, planner in sets
        }
        search = Search(None, [trial for f in found.values() for trial in f.trials])
        search.by_types = {only: f.best for only, f in found.items()}
        passing = [f.best for f in found.values() if f.best is not None]
        if not passing:
            return search
        # each candidate trimmed, not only the cheapest: trimming is greedy, and the cheapest before it need not be
        # the cheapest after (so a candidate added could make the answer dearer)
        evaluated = {tuple(sorted(trial.fleet.items())): trial for trial in search.trials}
        trimmed = [self._trimmed(best, policy, evaluated, search, on_trial) for best in passing]
        search.best = min(trimmed, key=lambda trial: trial.cost_per_hour)
        return search

    def _trimmed(
        self,
        best: Trial,
        policy: str | Policy,
        evaluated: dict[tuple, Trial],
        search: Search,
        on_trial: Callable[[Trial], None] | None,
    ) -> Trial:
        """`best` less one replica at a time, dearest type first, as long as the target still holds; a fleet the
        search ran already (`evaluated`) is not run again."""
        improved = True
        while improved:
            improved = False
            for key in sorted(best.fleet, key=lambda k: -self.book.prices[key_hardware(k)]):
                smaller = _without_one(best.fleet, key)
                if not smaller:
                    continue
                signature = tuple(sorted(smaller.items()))
                trial = evaluated.get(signature)
                if trial is None:
                    attainment, summary = self.evaluate(smaller, policy)
                    trial = Trial(best.scale, smaller, fleet_cost(smaller, self.book.prices), attainment, summary)
                    evaluated[signature] = trial
                    search.trials.append(trial)
                    if on_trial:
                        on_trial(trial)
                if trial.attainment >= self.target:
                    best, improved = trial, True
                    break
        return best

    def _fleet(self, scale: float, only: Sequence[str], planner: str, pairs: bool = False) -> dict[str, int]:
        return fleet_of(self.plan(scale, only, planner, pairs))


def _without_one(fleet: dict[str, int], key: str) -> dict[str, int]:
    """The fleet with one replica fewer of `key`; a pair left without one of its roles goes whole."""
    smaller = {k: n - (k == key) for k, n in fleet.items() if n - (k == key) > 0}
    parsed = parse_key(key)
    if parsed is not None and key not in smaller:
        other = pair_key(parsed[0], parsed[1], "decode" if parsed[2] == "prefill" else "prefill")
        smaller.pop(other, None)
    return smaller
