"""The planner against independent checks.

What the brute-force check proves, for a given profile, prices, slice factor N and headroom h:
(a) the planner's fleet is feasible: its assignment gives every bucket's rate out in multiples of
    1/N, only to types with capacity for that bucket, and each type's load fits (1 - h) x its count;
(b) no integer fleet is cheaper: any fleet costing less than the planner's fits under (is <=, type by
    type) a *maximal* cheaper fleet (one more GPU of any type would cost >= the plan), all of which lie
    in the box n_g <= cost / price_g that we enumerate. Feasibility only grows with n, so it suffices
    that every maximal cheaper fleet is infeasible. We show that with an LP (scipy linprog) over the
    fractional routing, which relaxes slice routing for every N; where the LP is feasible, with an
    exact slice-level MILP (one binary per (slice, type), the paper's formulation, not the planner's
    aggregated one). When the LP alone rules every cheaper fleet out, the plan is optimal for every
    slice factor, even continuous routing.
Tolerances: costs compared to 1e-9 $/h; feasibility to the LP/MILP solvers' 1e-7.
"""

from itertools import pairwise, product

import numpy as np
import pytest
from ricardo.policies.planner import Plan, PlanError, plan
from ricardo.profiles.catalog import ProfileBook, load_default_book
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

RATES = (1, 4, 16, 32)
SINGLE = ("L4", "A10G", "A100-80GB", "H100")


@pytest.fixture(scope="module")
def book() -> ProfileBook:
    return load_default_book()


@pytest.fixture(scope="module")
def arena(book) -> np.ndarray:
    return book.workload("arena")


def _loads(book, rates, types):
    """(buckets with demand, load[k, t] in GPUs of type t for all of bucket k, servable mask)."""
    buckets = np.argwhere(rates > 0)
    capacity = np.stack([book.capacity(hw)[buckets[:, 0], buckets[:, 1]] for hw in types], axis=1)
    demand = rates[buckets[:, 0], buckets[:, 1]]
    ok = capacity > 0
    return buckets, np.where(ok, demand[:, None] / np.where(ok, capacity, 1.0), 0.0), ok


def _lp_feasible(load, ok, counts) -> bool:
    """Can the buckets be routed fractionally onto `counts` GPUs?"""
    n_buckets, n_types = load.shape
    a_eq = np.kron(np.eye(n_buckets), np.ones(n_types))
    a_ub = np.zeros((n_types, n_buckets * n_types))
    for t in range(n_types):
        a_ub[t, t::n_types] = load[:, t]
    result = linprog(
        np.zeros(n_buckets * n_types),
        A_ub=a_ub,
        b_ub=counts,
        A_eq=a_eq,
        b_eq=np.ones(n_buckets),
        bounds=list(zip(np.zeros(ok.size), ok.ravel().astype(float), strict=True)),
        method="highs",
    )
    return result.status == 0


def _slices_feasible(load, ok, counts, n_slices) -> bool:
    """Can N equal slices of every bucket each go wholly to one type and fit `counts`? (binary per slice)"""
    load = np.repeat(load / n_slices, n_slices, axis=0)
    ok = np.repeat(ok, n_slices, axis=0)
    n, n_types = load.shape
    a_ub = np.zeros((n_types, n * n_types))
    for t in range(n_types):
        a_ub[t, t::n_types] = load[:, t]
    result = milp(
        np.zeros(n * n_types),
        integrality=np.ones(n * n_types),
        bounds=Bounds(0, ok.ravel().astype(float)),
        constraints=[
            LinearConstraint(np.kron(np.eye(n), np.ones(n_types)), 1, 1),
            LinearConstraint(a_ub, -np.inf, counts),
        ],
    )
    return result.status == 0


def cheaper_feasible_fleets(book, rates, types, prices, cost, n_slices, headroom=0.0):
    """Every maximal fleet cheaper than `cost` that can serve `rates`; also how many were checked by which test."""
    _, load, ok = _loads(book, rates, types)
    prices = np.array([prices[hw] for hw in types])
    box = [range(int((cost - 1e-9) // p) + 1) for p in prices]
    feasible, checked = [], {"maximal": 0, "lp_feasible": 0}
    for counts in product(*box):
        spent = prices @ counts
        if spent >= cost - 1e-9 or any(spent + p < cost - 1e-9 for p in prices):
            continue
        checked["maximal"] += 1
        capacity = np.array(counts) * (1.0 - headroom)
        if _lp_feasible(load, ok, capacity):
            checked["lp_feasible"] += 1
            if _slices_feasible(load, ok, capacity, n_slices):
                feasible.append(dict(zip(types, counts, strict=True)))
    return feasible, checked


def assert_plan_feasible(book, rates, result: Plan):
    n_slices = result.slice_factor
    served = sum(result.assignment.values())
    assert np.allclose(served[rates > 0], 1.0) and np.all(served[rates == 0] == 0)
    for hw, share in result.assignment.items():
        assert np.allclose(share * n_slices, np.round(share * n_slices))  # whole slices
        assert np.all(share[book.capacity(hw) == 0] == 0)  # only where the type has capacity
        with np.errstate(divide="ignore", invalid="ignore"):
            load = np.nansum(np.where(share > 0, share * rates / book.capacity(hw), 0.0))
        assert load == pytest.approx(result.load[hw])
        assert load <= result.allocation[hw] * (1 - result.headroom) + 1e-7
    assert result.cost_per_hour == pytest.approx(sum(book.price(hw) * n for hw, n in result.allocation.items()))


def lp_lower_bound(book, rates, types) -> float:
    """The ILP with integrality dropped (fractional GPUs, fractional routing)."""
    _, load, ok = _loads(book, rates, types)
    n_buckets, n_types = load.shape
    prices = [book.price(hw) for hw in types]
    cost = np.concatenate([np.zeros(n_buckets * n_types), prices])
    a_eq = np.hstack([np.kron(np.eye(n_buckets), np.ones(n_types)), np.zeros((n_buckets, n_types))])
    a_ub = np.zeros((n_types, n_buckets * n_types + n_types))
    for t in range(n_types):
        a_ub[t, t : n_buckets * n_types : n_types] = load[:, t]
        a_ub[t, n_buckets * n_types + t] = -1.0
    bounds = list(zip(np.zeros(ok.size), ok.ravel().astype(float), strict=True)) + [(0, None)] * n_types
    result = linprog(
        cost, A_ub=a_ub, b_ub=np.zeros(n_types), A_eq=a_eq, b_eq=np.ones(n_buckets), bounds=bounds, method="highs"
    )
    assert result.status == 0
    return result.fun


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("only", [None, *([hw] for hw in SINGLE)], ids=lambda o: "mixed" if o is None else o[0])
def test_plan_is_the_optimum_by_brute_force(book, arena, rate, only):
    rates = arena * rate
    result = plan(rates, book, only=only)
    types = list(result.allocation)
    assert types == (only or list(SINGLE))
    assert result.optimal and result.solve_seconds < 1.0
    assert_plan_feasible(book, rates, result)
    cheaper, checked = cheaper_feasible_fleets(
        book, rates, types, book.prices, result.cost_per_hour, result.slice_factor
    )
    assert cheaper == [], f"cheaper feasible fleets exist: {cheaper}"
    assert checked["maximal"] > 0 or result.cost_per_hour == min(book.prices[hw] for hw in types)
    lower = lp_lower_bound(book, rates, types)
    assert lower - 1e-6 <= result.lower_bound <= result.cost_per_hour + 1e-6
    assert lower <= result.cost_per_hour + 1e-9
    if only:  # one type: the optimum is the rounded-up load
        hw = only[0]
        demand = rates > 0
        gpus = np.ceil((rates[demand] / book.capacity(hw)[demand]).sum() - 1e-9)
        assert result.allocation == {hw: gpus}


def test_slicing_matters_where_a_bucket_must_be_split():
    """One bucket of 2.5 req/s; X serves 1/s for $1/h, Y 2/s for $1.9/h. X+Y ($2.9) fits only if the
    bucket is split 1:3 or finer; whole (N=1) or halves (N=2) need 3 x X ($3)."""
    book = ProfileBook(
        model=None,
        slo_tpot_ms=100,
        slo_ttft_ms=None,
        input_edges=[10],
        output_edges=[10],
        tables={"X": np.array([[1.0]]), "Y": np.array([[2.0]])},
        sources={"X": "measured", "Y": "measured"},
        prices={"X": 1.0, "Y": 1.9},
        price_set="test",
    )
    rates = np.array([[2.5]])
    for n_slices, cost, fleet in [(1, 3.0, {"X": 3, "Y": 0}), (2, 3.0, {"X": 3, "Y": 0}), (4, 2.9, {"X": 1, "Y": 1})]:
        result = plan(rates, book, slice_factor=n_slices)
        assert (result.cost_per_hour, result.allocation) == (pytest.approx(cost), fleet)
        assert_plan_feasible(book, rates, result)
        cheaper, checked = cheaper_feasible_fleets(book, rates, ["X", "Y"], book.prices, cost, n_slices)
        assert cheaper == []
        # at N = 1 and 2 the LP admits the cheaper X+Y and only the slice-level MILP rules it out
        assert checked["lp_feasible"] == (1 if n_slices < 4 else 0)


@pytest.mark.parametrize("rate", RATES)
def test_more_slices_never_cost_more(book, arena, rate):
    costs = [plan(arena * rate, book, slice_factor=n).cost_per_hour for n in (1, 2, 4, 8, 16)]
    assert all(b <= a + 1e-9 for a, b in pairwise(costs)), costs


def test_headroom_keeps_load_below_the_fleet(book, arena):
    plain = plan(arena * 16, book)
    spare = plan(arena * 16, book, headroom=0.2)
    assert spare.cost_per_hour >= plain.cost_per_hour
    assert_plan_feasible(book, arena * 16, spare)
    for hw, n in spare.allocation.items():
        assert spare.load[hw] <= 0.8 * n + 1e-7


def test_mixed_fleet_is_cheaper_than_any_single_type_on_arena(book, arena, capsys):
    lines = [f"{'req/s':>6} " + " ".join(f"{hw + '-only':>15}" for hw in SINGLE) + f" {'mixed':>9}  fleet"]
    for rate in RATES:
        single = {hw: plan(arena * rate, book, only=[hw]).cost_per_hour for hw in SINGLE}
        mixed = plan(arena * rate, book)
        assert mixed.cost_per_hour <= min(single.values()) + 1e-9
        fleet = ", ".join(f"{n} {hw}" for hw, n in mixed.allocation.items() if n)
        saving = 1 - mixed.cost_per_hour / min(single.values())
        lines.append(
            f"{rate:>6} "
            + " ".join(f"{single[hw]:>15.2f}" for hw in SINGLE)
            + f" {mixed.cost_per_hour:>9.2f}  {fleet} (saves {saving:.0%} vs the best single type;"
            f" {mixed.solve_seconds * 1000:.0f} ms)"
        )
    with capsys.disabled():
        print("\nArena mix, Mélange prices, $/h:\n" + "\n".join(lines))


def test_prices_and_only_choose_the_candidates(book, arena):
    cheap_h100 = plan(arena * 8, book, prices=book.prices | {"H100": 0.5})
    assert set(cheap_h100.allocation) == set(SINGLE)
    assert cheap_h100.allocation["H100"] > 0 and cheap_h100.allocation["L4"] == 0
    unpriced = plan(arena * 8, book, prices={"A10G": 1.01, "L4": 0.7})
    assert list(unpriced.allocation) == ["L4", "A10G"]
    assert list(plan(arena * 8, book, only=["H100-SXM", "A10G"]).allocation) == ["H100", "A10G"]


def test_zero_rate_needs_no_gpus(book):
    result = plan(np.zeros((6, 6)), book)
    assert result.cost_per_hour == 0 and not any(result.allocation.values())


def test_unservable_buckets_are_an_error_or_dropped(book):
    rates = np.zeros(book.shape)
    rates[0, 0], rates[6, 2] = 10.0, 0.5  # neither L4 nor A10G was profiled past 2000 input tokens
    with pytest.raises(PlanError, match=r"in 2001-4000 x out 101-250 \(0.5 req/s\)"):
        plan(rates, book, only=["L4", "A10G"])
    result = plan(rates, book, only=["L4", "A10G"], drop_unservable=True)
    assert result.unserved_rate == 0.5 and result.assignment["L4"][0, 0] + result.assignment["A10G"][0, 0] > 0
    long_input = np.zeros(book.shape)
    long_input[7, 0] = 1.0
    with pytest.raises(PlanError, match="no candidate type"):
        plan(long_input, book, only=["L4", "A10G"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"only": ["B200"]}, "unknown hardware"),
        ({"slice_factor": 0}, "slice factor"),
        ({"headroom": 1.0}, "headroom"),
        ({"prices": {}}, "no candidate"),
        ({"prices": {"B200": 5.0}}, "without a profile"),
    ],
)
def test_bad_arguments_are_clear_errors(book, arena, kwargs, message):
    with pytest.raises(PlanError, match=message):
        plan(arena, book, **kwargs)


@pytest.mark.parametrize("rates", [np.ones((11, 6)), -np.ones((2, 2)), np.full((1, 1), np.nan)])
def test_bad_rates_are_clear_errors(book, rates):
    with pytest.raises(PlanError):
        plan(rates, book)
