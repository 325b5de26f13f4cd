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

Disaggregated pairs (`PairSeconds`: a prefill type and a decode type, with each role's replica-seconds per request
of each bucket, from the role model) are units beside the types: a bucket's slices may go to a pair, which then
has two integer counts (prefill replicas, decode replicas) and two fit constraints, one per role, each role
paid at its type's price. The same type may serve unified and in pairs: the counts are separate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
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
class PairSeconds:
    """A candidate pair for the planner: replica-seconds per request of each bucket on each role (inf: cannot)."""

    prefill: str
    decode: str
    prefill_seconds: np.ndarray
    decode_seconds: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.prefill}>{self.decode}"


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
    # pairs with replicas: {"prefill", "decode", "prefill_replicas", "decode_replicas", "load": [prefill, decode]}
    pairs: tuple[dict[str, Any], ...] = ()

    def desired_replicas(self) -> dict[str, dict[str, int]]:
        """Replicas per pool and role, as scaling hints want them: {type: {"unified": n}} for every candidate type
        and {"P>D": {"prefill": n, "decode": m}} for every pair the plan uses."""
        wanted: dict[str, dict[str, int]] = {hw: {"unified": n} for hw, n in self.allocation.items()}
        for pair in self.pairs:
            wanted[f"{pair['prefill']}>{pair['decode']}"] = {
                "prefill": pair["prefill_replicas"],
                "decode": pair["decode_replicas"],
            }
        return wanted

    def to_dict(self) -> dict[str, Any]:
        return {
            "allocation": self.allocation,
            "pairs": [{k: v for k, v in pair.items() if k != "assignment"} for pair in self.pairs],
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
    pairs: Sequence[PairSeconds] = (),
    kept: Mapping[str, Mapping[str, int]] | None = None,
) -> Plan:
    """The cheapest integer fleet for `rates` (req/s per (input bucket, output bucket) of `book`'s grid;
    a smaller array covers the first buckets).

    `prices` ($/h per GPU, default the book's) replace the book's; types without a price are not
    candidates, `only` restricts them further. `headroom` keeps each type's load at most
    (1 - headroom) of its GPUs. Demand in a bucket no candidate can serve is an error, or with
    `drop_unservable` is left out and reported as `unserved_rate`. Optimality is proven (relative
    gap 1e-6) unless `time_limit_s` runs out: then the best fleet found is returned, `optimal=False`.
    `request_seconds` ({type: grid of replica-seconds per request}) replaces 1 / capacity where given.
    `pairs` are disaggregated candidates beside the types (their roles' types need a price too).
    `kept` ({type: {"unified": n}, "P>D": {"prefill": n, "decode": m}}, as `Plan.desired_replicas`) are replicas
    the fleet keeps whatever the demand: the plan counts their capacity and adds the cheapest replicas to it.
    """
    started = time.perf_counter()
    rates = _on_grid(rates, book)
    if slice_factor < 1:
        raise PlanError(f"slice factor must be >= 1, got {slice_factor}")
    if not 0.0 <= headroom < 1.0:
        raise PlanError(f"headroom must be in [0, 1), got {headroom}")
    prices = book.prices if prices is None else _resolve_prices(book, prices)
    types = _candidates(book, prices, only)
    if not types and not pairs:
        raise PlanError("no candidate hardware with a price")

    buckets = np.argwhere(rates > 0)  # (k, 2) bucket indices with demand
    demand = rates[buckets[:, 0], buckets[:, 1]]
    for pair in pairs:
        if pair.prefill not in prices or pair.decode not in prices:
            raise PlanError(f"no price for a role of pair {pair.name}")
    # units: the types, then the pairs. load[k, u]: replicas of unit u (of a pair: prefill) that bucket k alone
    # would need, inf where u cannot serve it; decode_load[k, u] the same of a pair's decode role (0 for a type)
    names = types + [pair.name for pair in pairs]
    seconds = np.stack(
        [_seconds(book, hw, request_seconds)[buckets[:, 0], buckets[:, 1]] for hw in types]
        + [np.asarray(pair.prefill_seconds, float)[buckets[:, 0], buckets[:, 1]] for pair in pairs],
        axis=1,
    )
    decode_seconds = np.stack(
        [np.zeros(len(buckets)) for _ in types]
        + [np.asarray(pair.decode_seconds, float)[buckets[:, 0], buckets[:, 1]] for pair in pairs],
        axis=1,
    )
    servable = np.isfinite(seconds) & np.isfinite(decode_seconds)
    load = np.where(servable, demand[:, None] * np.where(servable, seconds, 0.0), np.inf)
    decode_load = np.where(servable, demand[:, None] * np.where(servable, decode_seconds, 0.0), 0.0)
    unservable = ~servable.any(axis=1)
    assert isinstance(unservable, np.ndarray)  # any() along an axis of a 2-D array is an array
    unserved_rate = float(demand[unservable].sum())
    if unservable.any() and drop_unservable:
        buckets, load, decode_load = buckets[~unservable], load[~unservable], decode_load[~unservable]
    elif unservable.any():
        where = ", ".join(
            _bucket_label(book, i, j) + f" ({demand[k]:.3g} req/s)" for k, (i, j) in enumerate(buckets) if unservable[k]
        )
        raise PlanError(f"no candidate type ({', '.join(types)}) can serve bucket(s) {where}")

    # count variables: one per type, two per pair (prefill, decode), each with its fit row and price
    n_types = len(types)
    count_price = [prices[hw] for hw in types]
    for pair in pairs:
        count_price += [prices[pair.prefill], prices[pair.decode]]
    n_counts = len(count_price)
    prefill_row = np.arange(len(names))  # unit u's (prefill) fit row = u; a pair's decode row follows the units
    decode_row = {n_types + q: len(names) + q for q in range(len(pairs))}
    count_of_row = list(range(n_types)) + [n_types + 2 * q for q in range(len(pairs))]
    count_of_row += [n_types + 2 * q + 1 for q in range(len(pairs))]

    assigned = np.argwhere(np.isfinite(load))  # (bucket k, unit u) that may be assigned
    n_assigned, n_units, n_buckets, n_rows = len(assigned), len(names), len(buckets), len(count_of_row)
    n_vars = n_assigned + n_counts
    cost = np.concatenate([np.zeros(n_assigned), count_price])
    # each bucket's slices all assigned: sum_u y[k, u] = N
    assign = coo_array((np.ones(n_assigned), (assigned[:, 0], np.arange(n_assigned))), shape=(n_buckets, n_vars))
    # each role's load fits its replicas: sum_k y[k, u] * load[k, u] / N - (1 - headroom) * n_role <= 0
    rows, cols, values = [], [], []
    for index, (k, u) in enumerate(assigned):
        rows.append(prefill_row[u])
        cols.append(index)
        values.append(load[k, u] / slice_factor)
        if u >= n_types:
            rows.append(decode_row[u])
            cols.append(index)
            values.append(decode_load[k, u] / slice_factor)
    for row, count in enumerate(count_of_row):
        rows.append(row)
        cols.append(n_assigned + count)
        values.append(headroom - 1.0)
    fit = coo_array((values, (rows, cols)), shape=(n_rows, n_vars))
    finite_load = np.where(np.isfinite(load), load, 0.0)
    most = np.zeros(n_counts)
    for row, count in enumerate(count_of_row):
        total = finite_load[:, row].sum() if row < n_units else decode_load[:, row - n_units + n_types].sum()
        most[count] = np.ceil(total / (1.0 - headroom)) + 1
    least = np.zeros(n_counts)
    kept = kept or {}
    for u, hw in enumerate(types):
        least[u] = kept.get(hw, {}).get("unified", 0)
    for q, pair in enumerate(pairs):
        for side, role in enumerate(("prefill", "decode")):
            least[n_types + 2 * q + side] = kept.get(pair.name, {}).get(role, 0)
    most = np.maximum(most, least)
    bounds = Bounds(
        np.concatenate([np.zeros(n_assigned), least]), np.concatenate([np.full(n_assigned, slice_factor), most])
    )
    result = milp(
        cost,
        integrality=np.ones(n_vars),
        constraints=[LinearConstraint(assign, slice_factor, slice_factor), LinearConstraint(fit, -np.inf, 0)],
        bounds=bounds,
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6},
    )
    if result.x is None:  # infeasible cannot happen (every bucket has a type), so: no fleet found in time
        raise PlanError(f"solver found no fleet: {result.message}")

    slices = np.round(result.x[:n_assigned]).astype(int)
    counts = np.round(result.x[n_assigned:]).astype(int)
    assignment = {name: np.zeros(book.shape) for name in names}
    used = dict.fromkeys(names, 0.0)
    used_decode = dict.fromkeys(names, 0.0)
    for (k, u), y in zip(assigned, slices, strict=True):
        if y:
            assignment[names[u]][tuple(buckets[k])] = y / slice_factor
            used[names[u]] += float(y / slice_factor * load[k, u])
            used_decode[names[u]] += float(y / slice_factor * decode_load[k, u])
    # no more replicas than the assigned load needs: a type priced 0 costs nothing at any count, and the solver
    # returned its upper bound (ceil(load) + 1) for it
    fitted = [used[name] for name in names] + [used_decode[pair.name] for pair in pairs]  # by fit row
    for row, count in enumerate(count_of_row):
        needed = max(least[count], np.ceil(fitted[row] / (1.0 - headroom) - 1e-9))
        counts[count] = min(counts[count], int(needed))
    chosen = []
    for q, pair in enumerate(pairs):
        n_prefill, n_decode = int(counts[n_types + 2 * q]), int(counts[n_types + 2 * q + 1])
        if n_prefill or n_decode:
            chosen.append(
                {
                    "prefill": pair.prefill,
                    "decode": pair.decode,
                    "prefill_replicas": n_prefill,
                    "decode_replicas": n_decode,
                    "load": [round(used[pair.name], 6), round(used_decode[pair.name], 6)],
                    "assignment": assignment[pair.name],
                }
            )
    return Plan(
        allocation={hw: int(n) for hw, n in zip(types, counts[:n_types], strict=True)},
        cost_per_hour=float(np.dot(count_price, counts)),
        assignment={hw: assignment[hw] for hw in types},
        load={hw: used[hw] for hw in types},
        unserved_rate=unserved_rate,
        slice_factor=slice_factor,
        headroom=headroom,
        optimal=result.status == 0,
        lower_bound=float(result.mip_dual_bound),
        solve_seconds=time.perf_counter() - started,
        pairs=tuple(chosen),
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
    return types


def _bucket_label(book: ProfileBook, i: int, j: int) -> str:
    return f"in {_span(book.input_edges, i)} x out {_span(book.output_edges, j)}"


def _span(edges: tuple[int, ...], k: int) -> str:
    low = edges[k - 1] + 1 if k else 0
    return f"{low}+" if k == len(edges) - 1 else f"{low}-{edges[k]}"
