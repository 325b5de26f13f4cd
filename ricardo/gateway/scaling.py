"""Scaling hints: desired replicas per pool (and role) from the observed traffic, the profiles and live prices.

Every few seconds the gateway's loop calls `ScalingAdvisor.compute`: per model, the arrival rate and a sample of the
request sizes of a sliding window (this replica's, merged with the other replicas' summaries from the store) go
through the planner `ricardo plan` and the simulator's fleet search use (`policies.sizing.plan_sizes`, rule
"ricardo": each request charged its own size, at the utilization the cost-aware router runs each type at) on that
model's book, over the pools serving that model: unified types and prefill/decode pairs in one solve, a pair's
roles sized separately (`sizing.desired_replicas`). A `Damper` turns the answer into a target an autoscaler can
follow without thrashing: up at once, down only after the lower figure has held for `scale_down_hold_s`.

Everything here is pure and synchronous; the clock is always passed in (`now`, `t`: seconds), so a
simulation can drive it in virtual time.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ricardo.policies.planner import Plan
from ricardo.policies.sizing import desired_replicas, plan_sizes, size_demand
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook
from ricardo.profiles.roles import DEFAULT_LINK_GBPS

UNIFIED = "unified"
PAIR_ROLES = ("prefill", "decode")
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
            and 0 < float(summary["span_s"]) < math.inf
            and (n > 0) == (int(summary["count"]) > 0)
            # values as `to_dict` writes them (another writer's could stop every tick of the lease holder)
            and all(_count(v) for v in (*summary["inputs"], *summary["outputs"]))
            and all(_number(w) and 0 < w < math.inf for w in summary["weights"])
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        return False


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object) -> bool:
    """A request size: a whole number of tokens a profile's arrays can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 53


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
    """A unified pool, or one side (role prefill or decode) of a pair: a pair is given as one spec per role, both
    with its name, model and `link_gbps`."""

    name: str
    hardware: str
    price_per_hour: float
    current_replicas: int = 0
    role: str = UNIFIED
    model: str = ""  # the model the pool serves: it is planned on that model's book with that model's traffic
    link_gbps: float | None = None  # a pair's: the link its KV cache crosses


@dataclass(frozen=True)
class ReplicaPlan:
    replicas: dict[str, dict[str, int]]  # pool -> role -> replicas
    prices: dict[str, float]  # hardware -> $/h the planner used: its cheapest pool's
    plan: Plan | None  # None when no pool has a profiled hardware type
    unprofiled: tuple[str, ...]  # pools whose hardware the book has no profile (or role model) for: held at the floor
    seconds: float  # wall time of the sizing and the solve


def pair_sides(pools: Sequence[PoolSpec]) -> dict[str, dict[str, PoolSpec]]:
    """The pairs among `pools`: name -> role -> spec, each pair with exactly one prefill and one decode spec."""
    sides: dict[str, dict[str, PoolSpec]] = {}
    for pool in pools:
        if pool.role not in (UNIFIED, *PAIR_ROLES):
            raise ValueError(f"pool {pool.name}: unknown role {pool.role!r}")
        if pool.role != UNIFIED:
            if pool.role in sides.get(pool.name, {}):
                raise ValueError(f"pool {pool.name}: its {pool.role} side is given twice")
            sides.setdefault(pool.name, {})[pool.role] = pool
    if any(len(roles) != len(PAIR_ROLES) for roles in sides.values()):
        raise ValueError("a pair needs one prefill and one decode spec")
    if len({p.name for p in pools if p.role == UNIFIED}) + len(sides) != len({p.name for p in pools}):
        raise ValueError("pool names must be unique")
    return sides


def plan_replicas(
    traffic: Traffic,
    book: ProfileBook,
    pools: Sequence[PoolSpec],
    slo: SLO,
    headroom: float = 0.0,
    min_replicas: int = 0,
    *,
    time_limit_s: float = 1.0,
    kept: Mapping[str, Mapping[str, int]] | None = None,
) -> ReplicaPlan:
    """Replicas per pool and role for `traffic`: the cheapest fleet of `plan_sizes` (rule "ricardo") at `slo`, unified
    types and the configured prefill/decode pairs (each role's replicas: `sizing.desired_replicas`) in one solve.

    Pools sharing a hardware type are one candidate for the planner, priced at the cheapest of them;
    that pool gets the type's whole count (ties: the pool already running more replicas, then the first
    listed), the others only the floor: identical hardware costs less there. Pairs of the same two types likewise.
    A pair's side is priced as the unified pools of its type where there are some (the planner has one price per
    type), else at the cheapest side of its type. Every pool gets at least `min_replicas` (the floor is added after
    planning: its capacity is not counted). Demand no candidate can serve is left out (`plan.unserved_rate`).
    `kept` (pool -> role -> replicas) are replicas the fleet keeps whatever the demand (a damper's, `FleetDamper`):
    the plan counts their capacity and adds the cheapest replicas to it; each pool gets at least its kept count.
    """
    if min_replicas < 0:
        raise ValueError(f"min_replicas must be >= 0, got {min_replicas}")
    sides = pair_sides(pools)

    def profiled_pair(roles: Mapping[str, PoolSpec]) -> bool:
        return all(book.has(s.hardware) and book.role(book.canonical(s.hardware)) is not None for s in roles.values())

    def cheapest_first(pool: PoolSpec | Mapping[str, PoolSpec]) -> tuple[float, int]:
        roles = [pool] if isinstance(pool, PoolSpec) else list(pool.values())
        return sum(p.price_per_hour for p in roles), -sum(p.current_replicas for p in roles)

    # the planner's units, each pool's in order of preference (sizing.desired_replicas gives the first the count)
    units: dict[str, str | tuple[str, str]] = {}
    prices: dict[str, float] = {}
    for pool in sorted((p for p in pools if p.role == UNIFIED and book.has(p.hardware)), key=cheapest_first):
        units[pool.name] = book.canonical(pool.hardware)
        prices.setdefault(book.canonical(pool.hardware), pool.price_per_hour)
    only = list(prices)
    links: dict[tuple[str, str], float] = {}
    pairs = sorted(((n, r) for n, r in sides.items() if profiled_pair(r)), key=lambda item: cheapest_first(item[1]))
    for name, roles in pairs:
        types = (book.canonical(roles["prefill"].hardware), book.canonical(roles["decode"].hardware))
        units[name] = types
        links.setdefault(types, roles["prefill"].link_gbps or DEFAULT_LINK_GBPS)
    for side in sorted((s for _, roles in pairs for s in roles.values()), key=lambda s: s.price_per_hour):
        prices.setdefault(book.canonical(side.hardware), side.price_per_hour)
    kept = kept or {}
    kept_units: dict[str, dict[str, int]] = {}
    for name, unit in units.items():
        label = unit if isinstance(unit, str) else f"{unit[0]}>{unit[1]}"
        for role, n in kept.get(name, {}).items():
            kept_units.setdefault(label, {}).setdefault(role, 0)
            kept_units[label][role] += n
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
            only=only,
            headroom=headroom,
            time_limit_s=time_limit_s,
            pairs=links,
            kept=kept_units,
        )
        if units and (only or traffic.sample_size)  # pairs alone and no traffic: nothing to plan
        else None
    )
    planned = desired_replicas(fleet, units) if fleet else {}
    first_of: dict[str | tuple[str, str], str] = {}
    for name, unit in units.items():
        first = first_of.setdefault(unit, name)
        if first != name and first in planned:  # the unit's count went to its first pool: this pool's kept are in it
            for role, n in kept.get(name, {}).items():
                planned[first][role] = max(planned[first].get(role, 0) - n, 0)
    replicas: dict[str, dict[str, int]] = {}
    for p in pools:
        wanted = max(planned.get(p.name, {}).get(p.role, 0), kept.get(p.name, {}).get(p.role, 0))
        replicas.setdefault(p.name, {})[p.role] = max(wanted, min_replicas)
    return ReplicaPlan(
        replicas=replicas,
        prices=prices,
        plan=fleet,
        unprofiled=tuple(dict.fromkeys(p.name for p in pools if p.name not in units)),
        seconds=time.perf_counter() - started,
    )


# -- damping -----------------------------------------------------------------------------------


class Damper:
    """Scale up at once; keep what a pool rose to for `scale_down_hold_s`; plan the rest around what is kept.

    Each key (pool, role) keeps its count for `hold` seconds after it last rose to it, or after the planner's own
    answer last asked for at least that many (as the Kubernetes HPA's scale-down window keeps the highest
    recommendation it saw): no count falls within the hold of a rise, so none flaps faster. Where the planner's answer
    would take a kept replica away, the fleet is planned again around the kept replicas (`replan`, given them): the
    planner counts their capacity and adds only what the traffic needs beyond it. Holding each pool's highest target
    on its own summed two fleets whenever the plan swapped types (3 A10G + 1 A100 -> 2 A100 at a ramp's peak): over
    the AIBrix ramp that held fleet cost 1.13x this one and followed the load less closely (bench/scaling/dampers.py).
    """

    def __init__(self, scale_down_hold_s: float):
        if scale_down_hold_s < 0:
            raise ValueError(f"scale_down_hold_s must be >= 0, got {scale_down_hold_s}")
        self.hold_s = float(scale_down_hold_s)
        self._kept: dict[Hashable, tuple[int, float]] = {}  # key -> (its count, when it was last asked for)
        self._last_now = -math.inf

    def update(
        self,
        now: float,
        targets: Mapping[Key, int],
        current: Mapping[Key, int] | None = None,
        replan: Callable[[dict[Key, int]], Mapping[Key, int]] | None = None,
    ) -> dict[Key, int]:
        """Damped targets from the planner's `targets`. `replan(kept)` plans again keeping at least `kept` replicas
        of those keys (default: each target raised to its kept count). A key seen for the first time starts from
        `current` (its running replicas), as if just asked for: a restarted gateway does not scale a fleet down at
        once. Keys no longer given are forgotten."""
        if now < self._last_now:
            raise ValueError(f"time went backwards: {now} < {self._last_now}")
        self._last_now = now
        for key in self._kept.keys() - targets.keys():
            del self._kept[key]
        if current is not None:
            for key in targets.keys() - self._kept.keys():
                if key in current:
                    self._kept[key] = (int(current[key]), now)
        kept: dict[Key, int] = {
            key: count
            for key in targets
            if key in self._kept
            for count, asked in [self._kept[key]]
            if count > 0 and now - asked < self.hold_s
        }
        damped = dict(targets)
        if any(targets[key] < count for key, count in kept.items()):
            planned = replan(kept) if replan is not None else targets
            damped = {key: max(int(planned.get(key, 0)), kept.get(key, 0)) for key in targets}
        for key, count in damped.items():
            previous = self._kept.get(key)
            if previous is None or count > previous[0] or targets[key] >= count:
                self._kept[key] = (count, now)
            else:
                self._kept[key] = (count, previous[1])
        return damped


# -- the advisor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hints:
    computed_at: float
    desired: dict[str, dict[str, int]]  # pool -> role -> replicas, damped: what autoscalers should follow
    raw: dict[str, dict[str, int]]  # the planner's answer (with the floor) before damping
    cost_per_hour: float  # of the desired fleet, at the pools' prices
    inputs: dict  # what produced them (JSON-able); per model under "models"
    planner: dict  # per model: the planner's fleet per hardware type and pair, cost, solve time, unserved demand

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
    """A window per model + planner + damper: feed it requests with `observe`, ask it for `Hints` every few seconds.
    Each model's pools are planned on that model's book with that model's traffic."""

    def __init__(
        self,
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
        RequestWindow(window_s, slot_s=slot_s)  # the window's own checks, before the first request
        self.window_s, self.slot_s, self.window_sample = float(window_s), float(slot_s), window_sample
        self.windows: dict[str, RequestWindow] = {}  # model -> its requests
        self._start = start  # every model's window covers time from here (a model first seen later had no requests)
        self.damper = Damper(scale_down_hold_s)
        self.headroom = headroom
        self.min_replicas = min_replicas
        self.time_limit_s = time_limit_s
        self.shared_sample = shared_sample
        self.plan_sample = plan_sample

    def observe(self, t: float, model: str, input_tokens: int, output_tokens: int) -> None:
        window = self.windows.get(model)
        if window is None:
            if self._start is None:
                self._start = t
            window = self.windows[model] = RequestWindow(
                self.window_s, slot_s=self.slot_s, sample_size=self.window_sample, start=self._start
            )
        window.observe(t, input_tokens, output_tokens)

    def summaries(self, now: float) -> dict[str, dict]:
        """This replica's windows, model -> summary, for the store (other replicas pass them as one of
        `extra_summaries`). Not thread-safe against `observe`: take them on the thread that observes."""
        if self._start is None:
            self._start = now
        snapshots = {model: w.snapshot(now) for model, w in self.windows.items()}
        for model, snapshot in snapshots.items():
            if snapshot.count == 0:  # none of its requests in the window (a model no longer asked for, or removed)
                del self.windows[model]  # forgotten, not published empty for ever; a new request starts it afresh
        return {model: snapshot.to_dict(self.shared_sample) for model, snapshot in snapshots.items() if snapshot.count}

    def compute(
        self,
        now: float,
        pools: Sequence[PoolSpec],
        slo: SLO,
        books: Mapping[str, ProfileBook],
        *,
        own: Mapping[str, Mapping] | None = None,
        extra_summaries: Iterable[object] = (),
        planned_as: Mapping[str, str] | None = None,
    ) -> Hints:
        """Hints at `now` for `pools` at `slo`: each model's pools (`PoolSpec.model`) planned on `books[model]` with
        that model's traffic, this replica's windows (`own`, default: `summaries(now)`) merged with other replicas'
        (`extra_summaries`, one model -> summary mapping each; what this version cannot read is left out and counted
        in the inputs). `planned_as` maps a request's model to the model whose pools serve it, where they differ (a
        pool answering several model ids runs one model). Raises PlanError if the planner finds no fleet within its
        time limit: keep the previous hints then."""
        own = self.summaries(now) if own is None else own
        planned_as = planned_as or {}
        windows: dict[str, list[Mapping]] = {}
        merged = ignored = 0
        for replica in [own, *extra_summaries]:
            if not isinstance(replica, Mapping):
                ignored += 1
                continue
            merged += 1
            for model, summary in replica.items():
                if is_summary(summary):
                    windows.setdefault(planned_as.get(model, model), []).append(summary)
                else:
                    ignored += 1
        raw: dict[str, dict[str, int]] = {}
        planned_with: dict[str, tuple[Traffic, ProfileBook, list[PoolSpec]]] = {}
        per_model: dict[str, dict] = {}
        planner: dict[str, dict] = {}
        for model in dict.fromkeys([p.model for p in pools] + list(windows)):
            traffic = merge_summaries(windows[model], self.plan_sample) if model in windows else NO_TRAFFIC
            served = [p for p in pools if p.model == model]
            per_model[model] = {
                "rate": round(traffic.rate, 6),
                "requests": traffic.requests,
                "sample_size": traffic.sample_size,
                "pools": list(dict.fromkeys(p.name for p in served)),
            }
            if not served:  # requests of a model no pool serves any more
                continue
            book = books[model]
            fleet = plan_replicas(
                traffic, book, served, slo, self.headroom, self.min_replicas, time_limit_s=self.time_limit_s
            )
            raw |= fleet.replicas
            planned_with[model] = (traffic, book, served)
            planner[model] = _planner_dict(fleet, traffic)
            demand = (
                size_demand(book, traffic.inputs, traffic.outputs, traffic.rate, traffic.weights)
                if traffic.sample_size
                else np.zeros(book.shape)
            )
            per_model[model] |= {
                "book": book.model,
                "input_edges": list(book.input_edges),
                "output_edges": list(book.output_edges),
                "rates": np.round(demand, 6).tolist(),  # the sample's mix at the model's rate, on its book's grid
            }
        flat = {(pool, role): n for pool, roles in raw.items() for role, n in roles.items()}

        def replan(kept: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
            """Each model's fleet planned again around its kept replicas, where the plan took some away."""
            replanned = dict(flat)
            for traffic, book, served in planned_with.values():
                mine = {(p.name, p.role) for p in served}
                if all(flat[key] >= n for key, n in kept.items() if key in mine):
                    continue
                by_pool: dict[str, dict[str, int]] = {}
                for (pool, role), n in kept.items():
                    if (pool, role) in mine:
                        by_pool.setdefault(pool, {})[role] = n
                fleet = plan_replicas(
                    traffic,
                    book,
                    served,
                    slo,
                    self.headroom,
                    self.min_replicas,
                    time_limit_s=self.time_limit_s,
                    kept=by_pool,
                )
                replanned |= {(pool, role): n for pool, roles in fleet.replicas.items() for role, n in roles.items()}
            return replanned

        damped = self.damper.update(now, flat, {(p.name, p.role): p.current_replicas for p in pools}, replan)
        desired: dict[str, dict[str, int]] = {}
        for (pool, role), n in damped.items():
            desired.setdefault(pool, {})[role] = n
        return Hints(
            computed_at=now,
            desired=desired,
            raw=raw,
            cost_per_hour=sum(p.price_per_hour * desired[p.name][p.role] for p in pools),
            inputs={
                "window_s": self.window_s,
                "span_s": round(max((float(s["span_s"]) for s in own.values()), default=0.0), 6),
                "rate": round(sum(m["rate"] for m in per_model.values() if m["pools"]), 6),
                "requests": sum(m["requests"] for m in per_model.values() if m["pools"]),
                "replicas_merged": merged,
                "summaries_ignored": ignored,
                "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
                "planner": PLANNER,
                "models": per_model,
                "pools": _describe(pools),
                "headroom": self.headroom,
                "min_replicas": self.min_replicas,
                "scale_down_hold_s": self.damper.hold_s,
            },
            planner=planner,
        )


NO_TRAFFIC = Traffic(0.0, 0, np.zeros(0, int), np.zeros(0, int), np.zeros(0))


def _describe(pools: Sequence[PoolSpec]) -> dict[str, dict]:
    described: dict[str, dict] = {}
    for p in pools:
        entry: dict = {
            "hardware": p.hardware,
            "role": p.role,
            "price_per_hour": p.price_per_hour,
            "current_replicas": p.current_replicas,
        }
        if p.role == UNIFIED:
            described[p.name] = entry | {"model": p.model}
        else:
            pair: dict = {"role": "pair", "model": p.model, "link_gbps": p.link_gbps, "roles": {}}
            described.setdefault(p.name, pair)["roles"][p.role] = entry
    return described


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
