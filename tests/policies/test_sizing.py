import numpy as np
import pytest
from ricardo.policies.sizing import plan_sizes, planner_seconds
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook, load_default_book

SLO_120 = SLO(2000.0, 120.0)


@pytest.fixture(scope="module")
def book() -> ProfileBook:
    return load_default_book(price_set="melange", include_estimated=True)


def sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.lognormal(6, 1.2, n).astype(int) + 1, rng.lognormal(5, 1.0, n).astype(int) + 1


def test_weighted_sizes_plan_as_the_sizes_repeated(book):
    inputs, outputs = sample(300)
    repeats = np.random.default_rng(1).integers(1, 5, len(inputs))
    weighted = plan_sizes(book, inputs, outputs, 20.0, SLO_120, weights=repeats, only=["A10G", "A100-80GB", "H100"])
    repeated = plan_sizes(
        book, np.repeat(inputs, repeats), np.repeat(outputs, repeats), 20.0, SLO_120, only=["A10G", "A100-80GB", "H100"]
    )
    assert weighted.allocation == repeated.allocation
    assert weighted.cost_per_hour == pytest.approx(repeated.cost_per_hour)
    seconds = planner_seconds(book, inputs, outputs, SLO_120, weights=repeats)
    again = planner_seconds(book, np.repeat(inputs, repeats), np.repeat(outputs, repeats), SLO_120)
    assert seconds is not None and again is not None
    for hw in seconds:
        np.testing.assert_allclose(seconds[hw], again[hw])


def test_prices_replace_the_books_and_no_traffic_plans_no_fleet(book):
    inputs, outputs = sample(200)
    cheap_h100 = plan_sizes(book, inputs, outputs, 20.0, SLO_120, prices={"A10G": 1.01, "H100": 0.5})
    assert set(cheap_h100.allocation) == {"A10G", "H100"}
    assert cheap_h100.allocation["A10G"] == 0 and cheap_h100.allocation["H100"] > 0
    assert cheap_h100.cost_per_hour == pytest.approx(0.5 * cheap_h100.allocation["H100"])
    empty = plan_sizes(book, [], [], 0.0, SLO_120, only=["A10G"])
    assert empty.allocation == {"A10G": 0} and empty.cost_per_hour == 0


def test_exact_sizes_cost_less_than_upper_edges_at_the_operating_point(book):
    """Requests just past a bucket's lower edge: charged their own size ("exact") they need fewer GPUs than
    charged the upper edge (Mélange's rule, what the hints used before)."""
    inputs, outputs = np.full(400, 110), np.full(400, 110)  # the (100, 250] buckets
    exact = plan_sizes(book, inputs, outputs, 30.0, SLO_120, "exact", only=["A10G"])
    edges = plan_sizes(book, inputs, outputs, 30.0, SLO_120, "melange", only=["A10G"])
    assert exact.cost_per_hour < edges.cost_per_hour
