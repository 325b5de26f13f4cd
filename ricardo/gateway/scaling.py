"""Scaling hints: desired replicas per pool (and role) from the observed traffic, the profiles and live prices.

Every few seconds the gateway's loop calls `ScalingAdvisor.compute`: the request-size mix and arrival rate
of a sliding window (this replica's, merged with the other replicas' summaries from the store) go through
the Mélange planner, and a `Damper` turns its answer into a target an autoscaler can follow without
thrashing: up at once, down only after the lower figure has held for `scale_down_hold_s`.

Everything here is pure and synchronous; the clock is always passed in (`now`, `t`: seconds), so a
simulation can drive it in virtual time. One advisor per model (the book is per model).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ricardo.policies.planner import DEFAULT_SLICE_FACTOR, Plan, plan
from ricardo.profiles.catalog import ProfileBook

UNIFIED = "unified"
Key = TypeVar("Key", bound=Hashable)


# -- the sliding window of observed requests ---------------------------------------------------


@dataclass(frozen=True)
class WindowSnapshot:
    """Requests seen during the last `span_s` seconds up to `at`, counted per bucket of the book's grid."""

    counts: np.ndarray  # (input buckets x output buckets)
    span_s: float
    at: float
    input_edges: tuple[int, ...]
    output_edges: tuple[int, ...]

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def rate(self) -> float:
        return self.total / self.span_s

    @property
    def rates(self) -> np.ndarray:
        return self.counts / self.span_s

    def to_dict(self) -> dict:
        """The JSON-able summary replicas share through the store (see `merge_summaries`)."""
        return {
            "at": self.at,
            "span_s": self.span_s,
            "input_edges": list(self.input_edges),
            "output_edges": list(self.output_edges),
            "counts": self.counts.astype(int).tolist(),
        }


def merge_summaries(summaries: Iterable[Mapping]) -> tuple[np.ndarray, float]:
    """(req/s per bucket, total req/s) of several replicas' window summaries (`WindowSnapshot.to_dict`).

    Each replica saw its own share of the traffic over (about) the same span, so their rates add up.
    All summaries must be on the same bucket grid. Nothing here ages them out (`at` says when each was
    taken): the store should expire a replica's summary after a few intervals, e.g. with a TTL."""
    summaries = list(summaries)
    if not summaries:
        raise ValueError("no window summaries to merge")
    grid = (summaries[0]["input_edges"], summaries[0]["output_edges"])
    rates = np.zeros((len(grid[0]), len(grid[1])))
    for summary in summaries:
        if (summary["input_edges"], summary["output_edges"]) != grid:
            raise ValueError("window summaries on different bucket grids cannot be merged")
        rates += np.asarray(summary["counts"], dtype=float) / float(summary["span_s"])
    return rates, float(rates.sum())


class RequestWindow:
    """Requests of the last `window_s` seconds, counted per bucket of `book`'s grid in `slot_s` slots.

    `observe` is O(1) amortised and memory is bounded by window_s / slot_s + 1 grids of counts, whatever
    the request rate. A snapshot covers the current slot and the whole slots of the `window_s` before it
    (so between window_s and window_s + slot_s), but nothing before `start` (default: the first call); the
    rate divides by the time covered, so a freshly started gateway neither under- nor over-states it.
    """

    def __init__(self, window_s: float, book: ProfileBook, *, slot_s: float = 1.0, start: float | None = None):
        if window_s <= 0 or slot_s <= 0 or slot_s > window_s:
            raise ValueError(f"need 0 < slot_s <= window_s, got slot_s={slot_s}, window_s={window_s}")
        self.window_s = float(window_s)
        self.slot_s = float(slot_s)
        self.book = book
        self._n_slots = math.ceil(window_s / slot_s)
        self._slots: deque[tuple[int, np.ndarray]] = deque()  # (slot index, counts), slot indices increasing
        self._start = start

    def observe(self, t: float, input_tokens: int, output_tokens: int) -> None:
        if self._start is None:
            self._start = t
        slot = math.floor(t / self.slot_s)
        if not self._slots or self._slots[-1][0] < slot:
            self._slots.append((slot, np.zeros(self.book.shape)))
            self._expire(slot)
            counts = self._slots[-1][1]
        else:
            late = self._late_slot(slot)
            if late is None:
                return
            counts = late
        counts[self.book.bucket(input_tokens, output_tokens)] += 1

    def snapshot(self, now: float) -> WindowSnapshot:
        if self._start is None:
            self._start = now
        current = math.floor(now / self.slot_s)
        self._expire(current)
        first = current - self._n_slots
        counts = np.zeros(self.book.shape)
        for slot, slot_counts in self._slots:
            if slot <= current:  # later slots: observations stamped ahead of `now`
                counts += slot_counts
        span = max(now - max(first * self.slot_s, self._start), self.slot_s)
        return WindowSnapshot(counts, span, now, self.book.input_edges, self.book.output_edges)

    def _expire(self, current: int) -> None:
        while self._slots and self._slots[0][0] < current - self._n_slots:
            self._slots.popleft()

    def _late_slot(self, slot: int) -> np.ndarray | None:
        """The counts of an earlier slot, created in place if need be; None if it has left the window."""
        if slot < self._slots[-1][0] - self._n_slots:
            return None
        for position in range(len(self._slots) - 1, -1, -1):
            index, counts = self._slots[position]
            if index == slot:
                return counts
            if index < slot:
                break
        else:
            position = -1
        counts = np.zeros(self.book.shape)
        self._slots.insert(position + 1, (slot, counts))
        return counts


# -- from rates to replicas per pool -----------------------------------------------------------


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


def plan_replicas(
    rates: np.ndarray,
    book: ProfileBook,
    pools: Sequence[PoolSpec],
    headroom: float = 0.0,
    min_replicas: int = 0,
    *,
    slice_factor: int = DEFAULT_SLICE_FACTOR,
    time_limit_s: float = 1.0,
) -> ReplicaPlan:
    """Replicas per pool for `rates` (req/s per bucket of `book`'s grid): the planner's cheapest fleet.

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
    fleet = (
        plan(
            rates,
            book,
            prices,
            only=list(prices),
            headroom=headroom,
            drop_unservable=True,
            slice_factor=slice_factor,
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
    )


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
        headroom: float = 0.1,
        min_replicas: int = 0,
        slot_s: float = 1.0,
        slice_factor: int = DEFAULT_SLICE_FACTOR,
        time_limit_s: float = 1.0,
        start: float | None = None,
    ):
        self.book = book
        self.window = RequestWindow(window_s, book, slot_s=slot_s, start=start)
        self.damper = Damper(scale_down_hold_s)
        self.headroom = headroom
        self.min_replicas = min_replicas
        self.slice_factor = slice_factor
        self.time_limit_s = time_limit_s

    def observe(self, t: float, input_tokens: int, output_tokens: int) -> None:
        self.window.observe(t, input_tokens, output_tokens)

    def summary(self, now: float) -> dict:
        """This replica's window, for the store (other replicas pass it as one of `extra_summaries`)."""
        return self.window.snapshot(now).to_dict()

    def compute(
        self,
        now: float,
        pools: Sequence[PoolSpec],
        book: ProfileBook | None = None,
        extra_summaries: Iterable[Mapping] = (),
    ) -> Hints:
        """Hints at `now` for `pools`, from this window merged with other replicas' summaries (not this
        one's own again); summaries on another bucket grid are left out and counted in the inputs.
        `book` (default: the advisor's) may bring new profiles, on the same grid. Raises PlanError if
        the planner finds no fleet within its time limit: keep the previous hints then."""
        book = book or self.book
        if (book.input_edges, book.output_edges) != (self.book.input_edges, self.book.output_edges):
            raise ValueError("the book's bucket grid differs from the window's: make a new advisor")
        own = self.window.snapshot(now)
        others = list(extra_summaries)
        grid = [list(own.input_edges), list(own.output_edges)]
        merged = [own.to_dict()] + [s for s in others if [s["input_edges"], s["output_edges"]] == grid]
        rates, total = merge_summaries(merged)
        fleet = plan_replicas(
            rates,
            book,
            pools,
            self.headroom,
            self.min_replicas,
            slice_factor=self.slice_factor,
            time_limit_s=self.time_limit_s,
        )
        raw = {(pool, role): n for pool, roles in fleet.replicas.items() for role, n in roles.items()}
        current = {(p.name, p.role): p.current_replicas for p in pools}
        damped = self.damper.update(now, raw, current)
        desired: dict[str, dict[str, int]] = {}
        for (pool, role), n in damped.items():
            desired.setdefault(pool, {})[role] = n
        return Hints(
            computed_at=now,
            desired=desired,
            raw=fleet.replicas,
            cost_per_hour=sum(p.price_per_hour * sum(desired[p.name].values()) for p in pools),
            inputs={
                "window_s": self.window.window_s,
                "span_s": round(own.span_s, 6),
                "rate": round(total, 6),
                "replicas_merged": len(merged),
                "summaries_ignored": len(others) - (len(merged) - 1),
                "input_edges": grid[0],
                "output_edges": grid[1],
                "rates": np.round(rates, 6).tolist(),
                "pools": {
                    p.name: {
                        "hardware": p.hardware,
                        "role": p.role,
                        "price_per_hour": p.price_per_hour,
                        "current_replicas": p.current_replicas,
                    }
                    for p in pools
                },
                "headroom": self.headroom,
                "min_replicas": self.min_replicas,
                "scale_down_hold_s": self.damper.hold_s,
            },
            planner=_planner_dict(fleet),
        )


def _planner_dict(fleet: ReplicaPlan) -> dict:
    result = {"prices": fleet.prices, "unprofiled_pools": list(fleet.unprofiled)}
    if fleet.plan is not None:
        result |= {key: value for key, value in fleet.plan.to_dict().items() if key != "assignment"}
    return result
