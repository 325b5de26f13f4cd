"""The fleet planner: the cheapest mix of GPU types that serves a request-size mix within the SLO (Mélange).

Mélange (Griggs et al. 2024, arXiv 2404.14527) splits each request-size bucket's rate into
`slice_factor` equal slices, assigns every slice wholly to one hardware type, and asks for integer
GPU counts such that each type's load fits: for every type g,

    sum over slices s assigned to g of  rate_s / max_rps_g(bucket_s)  <=  n_g * (1 - headroom)

minimising sum_g price_g * n_g. Mélange charges every request of a bucket 1 / max_rps_g(bucket), the
replica-seconds of a request as long as the bucket's upper edge; given `request_seconds` (the mean
replica-seconds per request of each bucket for the actual sizes, `ProfileBook.bucket_request_seconds`)
the load is rate_s x request_seconds_g(bucket_s) instead, which is what ricardo plans with: the upper
edge overstates the load of a trace's requests by up to 2x. Slices of one bucket are interchangeable, so instead of one
binary per (slice, type) this solves for y[b, g] in {0..N} = how many of bucket b's N slices go to type g: the
same feasible fleets and optimum, without the symmetry that slows branch and bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from ricardo.errors import InvalidInput
from ricardo.profiles.catalog import ProfileBook

DEFAULT_SLICE_FACTOR = 8


class PlanError(InvalidInput):
    """The planning problem is malformed or has no solution."""

    status = 422


@dataclass(frozen=True)
class Plan:
    allocation: dict[str, int]  # GPUs of each candidate type (0 included)
    cost_per_hour: float
    assignment: dict[str, np.ndarray]  # type -> share of each bucket's rate it serves (book grid)
    load: dict[str, float]  # GPU-equivalents of work assigned to each type, before headroom
    unserved_rate: float  # req/s left out because no candidate type can serve their bucket (drop_unservable)
    slice_factor: int
    headroom: float
    optimal: bool  # False: the time limit cut the search; `cost_per_hour` is the best fleet found by then
    lower_bound: float  # the solver's proven lower bound on the optimal cost
    solve_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "allocation": self.allocation,
            "cost_per_hour": round(self.cost_per_hour, 6),
            "load": {hw: round(v, 6) for hw, v in self.load.items()},
            "unserved_rate": round(self.unserved_rate, 6),
            "optimal": self.optimal,
            "lower_bound": round(self.lower_bound, 6),
            "slice_factor": self.slice_factor,
            "headroom": self.headroom,
            "solve_seconds": round(self.solve_seconds, 6),
            "assignment": {hw: np.round(a, 6).tolist() for hw, a in self.assignment.items()},
        }


def plan(
    rates: np.ndarray,
    book: ProfileBook,
    prices: Mapping[str, float] | None = None,
    *,
    slice_factor: int = DEFAULT_SLICE_FACTOR,
    only: Iterable[str] | None = None,
    headroom: float = 0.0,
    drop_unservable: bool = False,
    time_limit_s: float = 1.0,
    request_seconds: Mapping[str, np.ndarray] | None = None,
) -> Plan:
    """The cheapest integer fleet for `rates` (req/s per (input bucket, output bucket) of `book`'s grid;
    a smaller array covers the first buckets).

    `prices` ($/h per GPU, default the book's) replace the book's; types without a price are not
    candidates, `only` restricts them further. `headroom` keeps each type's load at most
    (1 - headroom) of its GPUs. Demand in a bucket no candidate can serve is an error, or with
    `drop_unservable` is left out and reported as `unserved_rate`. Optimality is proven (relative
    gap 1e-6) unless `time_limit_s` runs out: then the best fleet found is returned, `optimal=False`.
    `request_seconds` ({type: grid of replica-seconds per request}) replaces 1 / capacity where given.
    """
    started = time.perf_counter()
    rates = _on_grid(rates, book)
    if slice_factor < 1:
        raise PlanError(f"slice factor must be >= 1, got {slice_factor}")
    if not 0.0 <= headroom < 1.0:
        raise PlanError(f"headroom must be in [0, 1), got {headroom}")
    prices = book.prices if prices is None else _resolve_prices(book, prices)
    types = _candidates(book, prices, only)

    buckets = np.argwhere(rates > 0)  # (k, 2) bucket indices with demand
    # load[k, t]: GPUs of type t that bucket k alone would need (inf where t cannot serve it)
    seconds = np.stack([_seconds(book, hw, request_seconds)[buckets[:, 0], buckets[:, 1]] for hw in types], axis=1)
    demand = rates[buckets[:, 0], buckets[:, 1]]
    load = np.where(np.isfinite(seconds), demand[:, None] * seconds, np.inf)
    unservable = ~np.isfinite(load).any(axis=1)
    assert isinstance(unservable, np.ndarray)  # any() along an axis of a 2-D array is an array
    unserved_rate = float(demand[unservable].sum())
    if unservable.any() and drop_unservable:
        buckets, load = buckets[~unservable], load[~unservable]
    elif unservable.any():
        where = ", ".join(
            _bucket_label(book, i, j) + f" ({demand[k]:.3g} req/s)" for k, (i, j) in enumerate(buckets) if unservable[k]
        )
        raise PlanError(f"no candidate type ({', '.join(types)}) can serve bucket(s) {where}")

    pairs = np.argwhere(np.isfinite(load))  # (bucket k, type t) that may be assigned
    n_pairs, n_types, n_buckets = len(pairs), len(types), len(buckets)
    cost = np.concatenate([np.zeros(n_pairs), [prices[hw] for hw in types]])
    # each bucket's slices all assigned: sum_t y[k, t] = N
    assign = coo_array((np.ones(n_pairs), (pairs[:, 0], np.arange(n_pairs))), shape=(n_buckets, n_pairs + n_types))
    # each type's load fits its GPUs: sum_k y[k, t] * load[k, t] / N - (1 - headroom) * n_t <= 0
    share = load[pairs[:, 0], pairs[:, 1]] / slice_factor
    rows = np.concatenate([pairs[:, 1], np.arange(n_types)])
    cols = np.concatenate([np.arange(n_pairs), n_pairs + np.arange(n_types)])
    fit = coo_array(
        (np.concatenate([share, np.full(n_types, headroom - 1.0)]), (rows, cols)), shape=(n_types, n_pairs + n_types)
    )
    finite_load = np.where(np.isfinite(load), load, 0.0)
    most_gpus = np.ceil(finite_load.sum(axis=0) / (1.0 - headroom)) + 1
    bounds = Bounds(np.zeros(n_pairs + n_types), np.concatenate([np.full(n_pairs, slice_factor), most_gpus]))
    result = milp(
        cost,
        integrality=np.ones(n_pairs + n_types),
        constraints=[LinearConstraint(assign, slice_factor, slice_factor), LinearConstraint(fit, -np.inf, 0)],
        bounds=bounds,
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6},
    )
    if result.x is None:  # infeasible cannot happen (every bucket has a type), so: no fleet found in time
        raise PlanError(f"solver found no fleet: {result.message}")

    slices = np.round(result.x[:n_pairs]).astype(int)
    counts = np.round(result.x[n_pairs:]).astype(int)
    assignment = {hw: np.zeros(book.shape) for hw in types}
    used = dict.fromkeys(types, 0.0)
    for (k, t), y in zip(pairs, slices, strict=True):
        if y:
            assignment[types[t]][tuple(buckets[k])] = y / slice_factor
            used[types[t]] += float(y / slice_factor * load[k, t])
    return Plan(
        allocation={hw: int(n) for hw, n in zip(types, counts, strict=True)},
        cost_per_hour=float(sum(prices[hw] * n for hw, n in zip(types, counts, strict=True))),
        assignment=assignment,
        load=used,
        unserved_rate=unserved_rate,
        slice_factor=slice_factor,
        headroom=headroom,
        optimal=result.status == 0,
        lower_bound=float(result.mip_dual_bound),
        solve_seconds=time.perf_counter() - started,
    )


def _seconds(book: ProfileBook, hardware: str, given: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Replica-seconds per request of each bucket on `hardware` (inf = cannot serve)."""
    if given is not None and hardware in given:
        seconds = np.asarray(given[hardware], dtype=float)
        if seconds.shape != book.shape or np.isnan(seconds).any() or (seconds <= 0).any():
            raise PlanError(f"request_seconds[{hardware}] must be a {book.shape} grid of positive numbers")
        return seconds
    return book.table_seconds(hardware)


def _on_grid(rates: np.ndarray, book: ProfileBook) -> np.ndarray:
    rates = np.atleast_2d(np.asarray(rates, dtype=float))
    if rates.ndim != 2 or rates.shape[0] > book.shape[0] or rates.shape[1] > book.shape[1]:
        raise PlanError(f"rates of shape {rates.shape} do not fit the profile's bucket grid {book.shape}")
    if not np.isfinite(rates).all() or (rates < 0).any():
        raise PlanError("rates must be finite and >= 0")
    padded = np.zeros(book.shape)
    padded[: rates.shape[0], : rates.shape[1]] = rates
    return padded


def _resolve_prices(book: ProfileBook, prices: Mapping[str, float]) -> dict[str, float]:
    unknown = [hw for hw in prices if not book.has(hw)]
    if unknown:
        raise PlanError(f"prices for hardware without a profile: {', '.join(unknown)}")
    return {book.canonical(hw): float(p) for hw, p in prices.items()}


def _candidates(book: ProfileBook, prices: Mapping[str, float], only: Iterable[str] | None) -> list[str]:
    if only is None:
        types = [hw for hw in book.hardware_names() if hw in prices]
    else:
        types = []
        for name in only:
            if not book.has(name):
                raise PlanError(f"unknown hardware {name!r}; known: {', '.join(book.hardware_names())}")
            hw = book.canonical(name)
            if hw not in prices:
                raise PlanError(f"no price for {hw} (give one)")
            if hw not in types:
                types.append(hw)
    if not types:
        raise PlanError("no candidate hardware with a price")
    return types


def _bucket_label(book: ProfileBook, i: int, j: int) -> str:
    return f"in {_span(book.input_edges, i)} x out {_span(book.output_edges, j)}"


def _span(edges: tuple[int, ...], k: int) -> str:
    low = edges[k - 1] + 1 if k else 0
    return f"{low}+" if k == len(edges) - 1 else f"{low}-{edges[k]}"
