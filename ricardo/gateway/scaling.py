"""Scaling hints: desired replicas per pool (and role) from the observed traffic, the profiles and live prices.

Disaggregated prefill/decode pairs are not planned yet (the planner sizes unified types): each role of a pair is
sized on its own observed load (`size_pairs`), and the requests pairs serve stay out of the planner's window.

Every few seconds the gateway's loop calls `ScalingAdvisor.compute`: the arrival rate and a sample of the
request sizes of a sliding window (this replica's, merged with the other replicas' summaries from the store)
go through the planner `ricardo plan` and the simulator's fleet search use (`policies.sizing.plan_sizes`,
rule "ricardo": each request charged its own size, at the utilization the cost-aware router runs each type
at), and a `Damper` turns its answer into a target an autoscaler can follow without thrashing: up at once,
down only after the lower figure has held for `scale_down_hold_s`.

Everything here is pure and synchronous; the clock is always passed in (`now`, `t`: seconds), so a
simulation can drive it in virtual time. One advisor per model (the book is per model).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ricardo.policies.planner import Plan
from ricardo.policies.sizing import plan_sizes, size_demand
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook

UNIFIED = "unified"
PLANNER = "ricardo"
Key = TypeVar("Key", bound=Hashable)

# The request count is exact (so is the rate); the sizes are a sample. A window keeps up to WINDOW_SAMPLE sizes,
# a replica shares up to SHARED_SAMPLE (about 20 kB of JSON in the store), the planner charges up to PLAN_SAMPLE
# (its sizing takes ~0.1 s per 1,000 distinct sizes).
WINDOW_SAMPLE = 4000
SHARED_SAMPLE = 1000
PLAN_SAMPLE = 2000


# -- the sliding window of observed requests ---------------------------------------------------


def thin(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of at most `k` of these weighted points standing for all of them: systematic
    resampling (k evenly spaced points on the cumulative weight, each `total / k`, repeats merged). Deterministic;
    the points are taken as given (time order), so it is an even thinning of an evenly weighted series."""
    if len(weights) <= k:
        return np.arange(len(weights)), np.asarray(weights, dtype=float)
    cumulative = np.cumsum(weights)
    picks = np.searchsorted(cumulative, (np.arange(k) + 0.5) * cumulative[-1] / k, side="right")
    indices, repeats = np.unique(np.minimum(picks, len(weights) - 1), return_counts=True)
    return indices, repeats * cumulative[-1] / k


@dataclass(frozen=True)
class WindowSnapshot:
    """Requests seen during the last `span_s` seconds up to `at`: their exact count and a sample of their sizes,
    each sampled size standing for `weights` requests (the weights sum to the count)."""

    count: int
    span_s: float
    at: float
    inputs: np.ndarray
    outputs: np.ndarray
    weights: np.ndarray

    @property
    def rate(self) -> float:
        return self.count / self.span_s

    def to_dict(self, max_sizes: int = SHARED_SAMPLE) -> dict:
        """The JSON-able summary replicas share through the store (see `merge_summaries`): the count, the span and
        at most `max_sizes` sizes with the requests each stands for."""
        keep, weights = thin(self.weights, max_sizes)
        return {
            "at": self.at,
            "span_s": self.span_s,
            "count": self.count,
            "inputs": self.inputs[keep].tolist(),
            "outputs": self.outputs[keep].tolist(),
            "weights": np.round(weights, 3).tolist(),
        }


def is_summary(summary: Mapping) -> bool:
    """Whether `summary` is a window summary this version can merge (older replicas shared bucket counts)."""
    try:
        n = len(summary["inputs"])
        return (
            n == len(summary["outputs"]) == len(summary["weights"])
            and float(summary["span_s"]) > 0
            and (n > 0) == (int(summary["count"]) > 0)
            and min(summary["weights"], default=1.0) > 0
        )
    except (KeyError, TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Traffic:
    """Several replicas' windows together: the total rate and a sample of sizes, each standing for `weights` req/s
    (they sum to `rate`)."""

    rate: float
    requests: int
    inputs: np.ndarray
    outputs: np.ndarray
    weights: np.ndarray

    @property
    def sample_size(self) -> int:
        return len(self.inputs)


def merge_summaries(summaries: Iterable[Mapping], max_sizes: int = PLAN_SAMPLE) -> Traffic:
    """The traffic of several replicas' window summaries (`WindowSnapshot.to_dict`).

    Each replica saw its own share of the traffic over (about) the same span, so their rates add up, and a
    replica's sampled size stands for its share of that replica's rate: the merged mix weighs each replica by its
    count, however many sizes it shared. Past `max_sizes` sizes the union is thinned (`thin`). Nothing here ages
    summaries out (`at` says when each was taken): the store expires a replica's summary after a few intervals."""
    summaries = list(summaries)
    if not summaries:
        raise ValueError("no window summaries to merge")
    inputs, outputs, weights = [], [], []
    requests = 0
    for summary in summaries:
        if not is_summary(summary):
            raise ValueError("not a window summary of sizes (a replica of an older version?)")
        requests += int(summary["count"])
        inputs.append(np.asarray(summary["inputs"], dtype=int))
        outputs.append(np.asarray(summary["outputs"], dtype=int))
        shared = np.asarray(summary["weights"], dtype=float)
        # the requests the sizes stand for, scaled to the exact count (rounding), per second
        scale = int(summary["count"]) / shared.sum() if len(shared) else 0.0
        weights.append(shared * scale / float(summary["span_s"]))
    all_weights = np.concatenate(weights)
    keep, kept_weights = thin(all_weights, max_sizes)
    return Traffic(
        rate=float(all_weights.sum()),
        requests=requests,
        inputs=np.concatenate(inputs)[keep],
        outputs=np.concatenate(outputs)[keep],
        weights=kept_weights,
    )


class _Slot:
    """One slot of a window: how many requests arrived in it and a uniform sample of their sizes (reservoir)."""

    __slots__ = ("count", "index", "sizes")

    def __init__(self, index: int):
        self.index = index
        self.count = 0
        self.sizes: list[tuple[int, int]] = []


class RequestWindow:
    """Requests of the last `window_s` seconds, in `slot_s` slots: per slot the exact count and a uniform sample of
    the sizes (reservoir sampling, up to `sample_size` sizes over the whole window).

    `observe` is O(1) amortised and memory is bounded by window_s / slot_s + 1 slots of at most
    sample_size / (that many) sizes, whatever the request rate. A snapshot covers the current slot and the whole
    slots of the `window_s` before it (so between window_s and window_s + slot_s), but nothing before `start`
    (default: the first call); the rate divides by the time covered, so a freshly started gateway neither under-
    nor over-states it.
    """

    def __init__(
        self,
        window_s: float,
        *,
        slot_s: float = 1.0,
        sample_size: int = WINDOW_SAMPLE,
        start: float | None = None,
        seed: int = 0,
    ):
        if window_s <= 0 or slot_s <= 0 or slot_s > window_s:
            raise ValueError(f"need 0 < slot_s <= window_s, got slot_s={slot_s}, window_s={window_s}")
        self.window_s = float(window_s)
        self.slot_s = float(slot_s)
        self._n_slots = math.ceil(window_s / slot_s)
        self.slot_sample = max(1, sample_size // (self._n_slots + 1))
        self._slots: deque[_Slot] = deque()  # slot indices increasing
        self._start = start
        self._rng = random.Random(seed)

    def observe(self, t: float, input_tokens: int, output_tokens: int) -> None:
        if self._start is None:
            self._start = t
        index = math.floor(t / self.slot_s)
        if not self._slots or self._slots[-1].index < index:
            self._slots.append(_Slot(index))
            self._expire(index)
            slot = self._slots[-1]
        else:
            late = self._late_slot(index)
            if late is None:
                return
            slot = late
        slot.count += 1
        if len(slot.sizes) < self.slot_sample:
            slot.sizes.append((input_tokens, output_tokens))
        else:  # reservoir sampling (Vitter's algorithm R): every request of the slot kept with equal chance
            k = self._rng.randrange(slot.count)
            if k < self.slot_sample:
                slot.sizes[k] = (input_tokens, output_tokens)

    def snapshot(self, now: float) -> WindowSnapshot:
        if self._start is None:
            self._start = now
        current = math.floor(now / self.slot_s)
        self._expire(current)
        first = current - self._n_slots
        slots = [s for s in self._slots if s.index <= current]  # later slots: observations stamped ahead of `now`
        sizes = np.array([size for s in slots for size in s.sizes], dtype=int).reshape(-1, 2)
        weights = np.array([s.count / len(s.sizes) for s in slots for _ in s.sizes], dtype=float)
        span = max(now - max(first * self.slot_s, self._start), self.slot_s)
        return WindowSnapshot(sum(s.count for s in slots), span, now, sizes[:, 0], sizes[:, 1], weights)

    def _expire(self, current: int) -> None:
        while self._slots and self._slots[0].index < current - self._n_slots:
            self._slots.popleft()

    def _late_slot(self, index: int) -> _Slot | None:
        """An earlier slot, created in place if need be; None if it has left the window."""
        if index < self._slots[-1].index - self._n_slots:
            return None
        for position in range(len(self._slots) - 1, -1, -1):
            slot = self._slots[position]
            if slot.index == index:
                return slot
            if slot.index < index:
                break
        else:
            position = -1
        slot = _Slot(index)
        self._slots.insert(position + 1, slot)
        return slot


# -- from traffic to replicas per pool ----------------------------------------------------------


@dataclass(frozen=True)
class PoolSpec:
    name: str
    hardware: str
    price_per_hour: float
    current_replicas: int = 0
    role: str = UNIFIED


@dataclass(frozen=True)
class ReplicaPlan:
    replicas: dict[str, dict[str, int]]  # pool -> role -> replicas
    prices: dict[str, float]  # hardware -> $/h the planner used: its cheapest pool's
    plan: Plan | None  # None when no pool has a profiled hardware type
    unprofiled: tuple[str, ...]  # pools whose hardware the book has no profile for: held at the floor
    seconds: float  # wall time of the sizing and the solve


def plan_replicas(
    traffic: Traffic,
    book: ProfileBook,
    pools: Sequence[PoolSpec],
    slo: SLO,
    headroom: float = 0.0,
    min_replicas: int = 0,
    *,
    time_limit_s: float = 1.0,
) -> ReplicaPlan:
    """Replicas per pool for `traffic`: the cheapest fleet of `plan_sizes` (rule "ricardo") at `slo`.

    Pools sharing a hardware type are one candidate for the planner, priced at the cheapest of them;
    that pool gets the type's whole count (ties: the pool already running more replicas, then the first
    listed), the others only the floor: identical hardware costs less there. Every pool gets at least
    `min_replicas` (the floor is added after planning: its capacity is not counted). Demand no pool's
    hardware can serve is left out (`plan.unserved_rate`). Only unified pools are planned so far; the
    per-role shape is there for prefill/decode pairs.
    """
    if len({p.name for p in pools}) != len(pools):
        raise ValueError("pool names must be unique")
    if min_replicas < 0:
        raise ValueError(f"min_replicas must be >= 0, got {min_replicas}")
    if any(p.role != UNIFIED for p in pools):
        raise ValueError("only unified pools can be planned; prefill/decode pairs are not supported yet")
    owners: dict[str, PoolSpec] = {}  # hardware -> the pool that gets its replicas
    for pool in sorted(
        (p for p in pools if book.has(p.hardware)), key=lambda p: (p.price_per_hour, -p.current_replicas)
    ):
        owners.setdefault(book.canonical(pool.hardware), pool)
    prices = {hw: pool.price_per_hour for hw, pool in owners.items()}
    started = time.perf_counter()
    fleet = (
        plan_sizes(
            book,
            traffic.inputs,
            traffic.outputs,
            traffic.rate,
            slo,
            PLANNER,
            weights=traffic.weights,
            prices=prices,
            only=list(prices),
            headroom=headroom,
            time_limit_s=time_limit_s,
        )
        if owners
        else None
    )
    planned = {pool.name: fleet.allocation[hw] for hw, pool in owners.items()} if fleet else {}
    return ReplicaPlan(
        replicas={p.name: {p.role: max(planned.get(p.name, 0), min_replicas)} for p in pools},
        prices=prices,
        plan=fleet,
        unprofiled=tuple(p.name for p in pools if not book.has(p.hardware)),
        seconds=time.perf_counter() - started,
    )


# -- prefill/decode pairs: each role sized on its observed load ---------------------------------

# the load each role of a pair is sized to run at: a round figure below saturation, leaving the router room (not
# tuned on any trace)
PAIR_TARGET_UTILIZATION = 0.7


class LoadMeter:
    """The mean of a load figure sampled every so often over the last `window_s` seconds (samples taken at a steady
    pace, so their plain mean is the time average)."""

    def __init__(self, window_s: float):
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, float]] = deque()

    def sample(self, t: float, value: float) -> None:
        self._samples.append((t, value))
        while self._samples and self._samples[0][0] <= t - self.window_s:
            self._samples.popleft()

    def mean(self, now: float) -> float:
        values = [v for t, v in self._samples if t > now - self.window_s]
        return sum(values) / len(values) if values else 0.0


def size_pairs(
    loads: Mapping[str, Mapping[str, float]],
    pools: Sequence[PoolSpec],
    headroom: float = 0.0,
    min_replicas: int = 0,
    target: float = PAIR_TARGET_UTILIZATION,
) -> dict[str, dict[str, int]]:
    """Replicas per role of each pair (`pools` with role prefill or decode), from each role's observed load
    (`loads`: pool -> role -> mean load over the window, summed over gateway replicas), as an HPA scales on
    utilization: ceil(load / (target x (1 - headroom))), at least one replica of each role while the pair carries
    load, at least `min_replicas`.

    The loads the gateway measures (scaling_loop.py): each side's load in the pool's ledger, each request's share
    of a prefill and of a decode replica by the role model (policies/routing.py `pair_shares`).

    Hook: the planner can size pairs (`policies.sizing.plan_sizes(pairs=...)`, `desired_replicas`); once the traffic
    window keeps the requests pairs serve, plan_replicas passes the pair specs to it and this rule retires; the
    hints' shape (pool -> role -> replicas) stays."""
    sized: dict[str, dict[str, int]] = {}
    share = target * (1.0 - headroom)
    for pool in pools:
        load = float(loads.get(pool.name, {}).get(pool.role, 0.0))
        needed = math.ceil(load / share - 1e-9) if load > 0 else 0
        sized.setdefault(pool.name, {})[pool.role] = max(needed, min_replicas)
    return sized


# -- damping -----------------------------------------------------------------------------------


class Damper:
    """Scale up at once, scale down only to the highest target of the last `scale_down_hold_s` seconds.

    This is the Kubernetes HPA stabilization window for scale-down: the output at `now` is the max of the
    targets given in (now - hold, now]. A higher target is in that window as soon as it is given, so it
    wins at once; after any rise the output cannot fall for `hold` seconds, so no value can flap faster.
    """

    def __init__(self, scale_down_hold_s: float):
        if scale_down_hold_s < 0:
            raise ValueError(f"scale_down_hold_s must be >= 0, got {scale_down_hold_s}")
        self.hold_s = float(scale_down_hold_s)
        # per key, (t, target) with targets strictly decreasing: the front is the window's max
        self._history: dict[Hashable, deque[tuple[float, int]]] = {}
        self._last_now = -math.inf

    def update(
        self, now: float, targets: Mapping[Key, int], current: Mapping[Key, int] | None = None
    ) -> dict[Key, int]:
        """Damped targets. A key seen for the first time starts from `current` (its running replicas), as
        if that had been the target just before: a restarted gateway does not scale a fleet down at once.
        Keys no longer given are forgotten."""
        if now < self._last_now:
            raise ValueError(f"time went backwards: {now} < {self._last_now}")
        self._last_now = now
        for key in self._history.keys() - targets.keys():
            del self._history[key]
        damped = {}
        for key, target in targets.items():
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = deque()
                if current is not None and key in current:
                    history.append((now, int(current[key])))
            while history and history[-1][1] <= target:
                history.pop()
            history.append((now, int(target)))
            while history[0][0] <= now - self.hold_s and len(history) > 1:
                history.popleft()
            damped[key] = history[0][1]
        return damped


# -- the advisor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hints:
    computed_at: float
    desired: dict[str, dict[str, int]]  # pool -> role -> replicas, damped: what autoscalers should follow
    raw: dict[str, dict[str, int]]  # the planner's answer (with the floor) before damping
    cost_per_hour: float  # of the desired fleet, at the pools' prices
    inputs: dict  # what produced them (JSON-able)
    planner: dict  # the planner's fleet per hardware type, cost, solve time, optimality, unserved demand

    def to_dict(self) -> dict:
        return {
            "computed_at": self.computed_at,
            "desired": self.desired,
            "raw": self.raw,
            "cost_per_hour": round(self.cost_per_hour, 6),
            "inputs": self.inputs,
            "planner": self.planner,
        }


class ScalingAdvisor:
    """Window + planner + damper: feed it requests with `observe`, ask it for `Hints` every few seconds."""

    def __init__(
        self,
        book: ProfileBook,
        *,
        window_s: float = 60.0,
        scale_down_hold_s: float = 120.0,
        headroom: float = 0.0,
        min_replicas: int = 0,
        slot_s: float = 1.0,
        time_limit_s: float = 1.0,
        start: float | None = None,
        window_sample: int = WINDOW_SAMPLE,
        shared_sample: int = SHARED_SAMPLE,
        plan_sample: int = PLAN_SAMPLE,
    ):
        self.book = book
        self.window = RequestWindow(window_s, slot_s=slot_s, sample_size=window_sample, start=start)
        self.damper = Damper(scale_down_hold_s)
        self.headroom = headroom
        self.min_replicas = min_replicas
        self.time_limit_s = time_limit_s
        self.shared_sample = shared_sample
        self.plan_sample = plan_sample

    def observe(self, t: float, input_tokens: int, output_tokens: int) -> None:
        self.window.observe(t, input_tokens, output_tokens)

    def summary(self, now: float) -> dict:
        """This replica's window, for the store (other replicas pass it as one of `extra_summaries`). Not thread-
        safe against `observe`: take it on the thread that observes."""
        return self.window.snapshot(now).to_dict(self.shared_sample)

    def compute(
        self,
        now: float,
        pools: Sequence[PoolSpec],
        slo: SLO,
        *,
        book: ProfileBook | None = None,
        own: Mapping | None = None,
        extra_summaries: Iterable[Mapping] = (),
        pair_loads: Mapping[str, Mapping[str, float]] | None = None,
    ) -> Hints:
        """Hints at `now` for `pools` at `slo`, from this replica's window summary (`own`, default: `summary(now)`)
        merged with other replicas' summaries (not this one's own again); summaries this version cannot read are
        left out and counted in the inputs. `book` (default: the advisor's) may bring new profiles. Raises
        PlanError if the planner finds no fleet within its time limit: keep the previous hints then.

        A pair is given as one PoolSpec per role (prefill, decode); its roles are sized on `pair_loads` (pool ->
        role -> observed load, `size_pairs`), the unified pools by the planner."""
        book = book or self.book
        own = self.summary(now) if own is None else own
        others = list(extra_summaries)
        merged = [own, *filter(is_summary, others)]
        traffic = merge_summaries(merged, self.plan_sample)
        unified = [p for p in pools if p.role == UNIFIED]
        sides = [p for p in pools if p.role != UNIFIED]
        fleet = plan_replicas(
            traffic, book, unified, slo, self.headroom, self.min_replicas, time_limit_s=self.time_limit_s
        )
        loads = pair_loads or {}
        planned = fleet.replicas | size_pairs(loads, sides, self.headroom, self.min_replicas)
        raw = {(pool, role): n for pool, roles in planned.items() for role, n in roles.items()}
        current = {(p.name, p.role): p.current_replicas for p in pools}
        damped = self.damper.update(now, raw, current)
        desired: dict[str, dict[str, int]] = {}
        for (pool, role), n in damped.items():
            desired.setdefault(pool, {})[role] = n
        demand = (
            size_demand(book, traffic.inputs, traffic.outputs, traffic.rate, traffic.weights)
            if traffic.sample_size
            else np.zeros(book.shape)
        )
        described: dict[str, dict] = {}
        for p in pools:
            entry: dict = {
                "hardware": p.hardware,
                "role": p.role,
                "price_per_hour": p.price_per_hour,
                "current_replicas": p.current_replicas,
            }
            if p.role == UNIFIED:
                described[p.name] = entry
            else:
                pair = described.setdefault(p.name, {"role": "pair", "sized_on": "observed role load", "roles": {}})
                pair["roles"][p.role] = entry | {"load": round(float(loads.get(p.name, {}).get(p.role, 0.0)), 6)}
        return Hints(
            computed_at=now,
            desired=desired,
            raw=planned,
            cost_per_hour=sum(p.price_per_hour * desired[p.name][p.role] for p in pools),
            inputs={
                "window_s": self.window.window_s,
                "span_s": round(float(own["span_s"]), 6),
                "rate": round(traffic.rate, 6),
                "requests": traffic.requests,
                "sample_size": traffic.sample_size,
                "replicas_merged": len(merged),
                "summaries_ignored": len(others) - (len(merged) - 1),
                "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
                "planner": PLANNER,
                "input_edges": list(book.input_edges),
                "output_edges": list(book.output_edges),
                "rates": np.round(demand, 6).tolist(),  # the sample's mix at the total rate, on the book's grid
                "pools": described,
                "headroom": self.headroom,
                "min_replicas": self.min_replicas,
                "scale_down_hold_s": self.damper.hold_s,
                "pair_target_utilization": PAIR_TARGET_UTILIZATION,
            },
            planner=_planner_dict(fleet, traffic),
        )


def _planner_dict(fleet: ReplicaPlan, traffic: Traffic) -> dict:
    result = {
        "planner": PLANNER,
        "sizes": f"exact (interpolated), a sample of {traffic.sample_size} for {traffic.requests} requests",
        "sample_size": traffic.sample_size,
        "prices": fleet.prices,
        "unprofiled_pools": list(fleet.unprofiled),
        "plan_seconds": round(fleet.seconds, 6),
    }
    if fleet.plan is not None:
        result |= {key: value for key, value in fleet.plan.to_dict().items() if key != "assignment"}
    return result
