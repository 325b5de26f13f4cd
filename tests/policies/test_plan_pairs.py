"""The planner with disaggregated pairs: separate prefill and decode counts, never dearer than without pairs."""

import numpy as np
import pytest
from ricardo.policies.planner import PairSeconds, plan
from ricardo.policies.sizing import desired_replicas, pair_seconds, plan_sizes
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book

SLO_120 = SLO(10_000, 120)


@pytest.fixture(scope="module")
def book():
    return load_default_book(price_set="neocloud", include_estimated=True)


def sample(seed=0, count=800):
    rng = np.random.default_rng(seed)
    inputs = np.clip(rng.lognormal(np.log(1500), 0.8, count), 10, 7000).astype(int)
    outputs = np.clip(rng.lognormal(np.log(60), 1.0, count), 1, 1500).astype(int)
    return inputs, outputs


def test_pairs_are_sized_per_role_and_each_role_covers_its_load(book):
    """One bucket, one pair that costs nothing unified could match: the ILP buys ceil(load) of each role."""
    rates = np.zeros(book.shape)
    rates[5, 1] = 10.0  # req/s of prompts up to 2000 tokens with answers up to 100
    prefill = np.full(book.shape, 0.15)  # replica-seconds per request: 1.5 prefill replicas' worth
    decode = np.full(book.shape, 0.05)  # 0.5 decode replicas' worth
    cheap = PairSeconds("L40S", "MI300X", prefill, decode)
    alone = plan(rates, book, only=["H100"], time_limit_s=10)
    result = plan(rates, book, only=["H100"], pairs=[cheap], time_limit_s=10)
    pair_cost = 2 * book.price("L40S") + book.price("MI300X")
    assert alone.cost_per_hour > pair_cost
    assert result.allocation == {"H100": 0}
    assert [(p["prefill"], p["decode"], p["prefill_replicas"], p["decode_replicas"]) for p in result.pairs] == [
        ("L40S", "MI300X", 2, 1)
    ]
    assert result.cost_per_hour == pytest.approx(pair_cost)
    assert result.desired_replicas() == {"H100": {"unified": 0}, "L40S>MI300X": {"prefill": 2, "decode": 1}}
    assert result.to_dict()["pairs"][0]["load"] == pytest.approx([1.5, 0.5])


def test_a_pair_that_cannot_serve_a_bucket_leaves_it_to_the_types(book):
    rates = np.zeros(book.shape)
    rates[5, 1] = 1.0
    never = PairSeconds("L40S", "MI300X", np.full(book.shape, 0.01), np.full(book.shape, np.inf))
    result = plan(rates, book, only=["MI300X"], pairs=[never], time_limit_s=10)
    assert result.pairs == () and result.allocation["MI300X"] >= 1


@pytest.mark.parametrize("seed", [0])
@pytest.mark.parametrize("slo_ms", [120])
def test_allowing_pairs_is_never_dearer(book, seed, slo_ms):
    inputs, outputs = sample(seed)
    slo = SLO(10_000, slo_ms)
    types = [hw for hw in book.hardware_names() if hw in book.prices]
    for rate in (0.5, 4.0, 20.0):
        without = plan_sizes(book, inputs, outputs, rate, slo, only=types, time_limit_s=10)
        with_pairs = plan_sizes(book, inputs, outputs, rate, slo, only=types, time_limit_s=10, disaggregated=True)
        assert without.optimal and with_pairs.optimal
        assert with_pairs.cost_per_hour <= without.cost_per_hour + 1e-9


def test_pair_candidates_are_the_ones_that_save(book):
    inputs, outputs = sample()
    types = [hw for hw in book.hardware_names() if hw in book.prices]
    candidates = pair_seconds(book, inputs, outputs, SLO_120, types, max_pairs=3)
    assert 1 <= len(candidates) <= 3
    # the L40S's cheap FLOPs and the MI300X's cheap bandwidth and large KV cache: the model's best pair here
    assert ("L40S", "MI300X") in [(c.prefill, c.decode) for c in candidates]
    assert pair_seconds(book, inputs, outputs, SLO_120, types, "melange") == []


def test_a_gateways_configured_pairs_are_the_only_candidates_and_map_to_its_pools(book):
    """The scaling loop plans its own pools: unified types in `only`, its pair pools given with their links."""
    inputs, outputs = sample()
    prices = {hw: book.price(hw) for hw in ("H100", "A10G", "L40S", "MI300X")}
    result = plan_sizes(
        book,
        inputs,
        outputs,
        30.0,
        SLO_120,
        "exact",
        prices=prices,
        only=["H100", "A10G"],
        pairs={("L40S", "MI300X"): 100.0},
        time_limit_s=10,
    )
    assert set(result.allocation) == {"H100", "A10G"}
    assert all((p["prefill"], p["decode"]) == ("L40S", "MI300X") for p in result.pairs)
    assert result.pairs, "at 30 req/s of prompt-heavy chat the configured pair pays"
    pools = {"big": "H100", "small": "A10G", "split": ("L40S", "MI300X"), "split-2": ("L40S", "MI300X")}
    wanted = desired_replicas(result, pools)
    pair = result.pairs[0]
    assert wanted["split"] == {"prefill": pair["prefill_replicas"], "decode": pair["decode_replicas"]}
    assert wanted["split-2"] == {"prefill": 0, "decode": 0}
    assert wanted["big"] == {"unified": result.allocation["H100"]}
    assert wanted["small"] == {"unified": result.allocation["A10G"]}
