"""The role model (prefill-only and decode-only workers) against the measured unified tables, and its parts."""

import math

import numpy as np
import pytest
from ricardo.profiles.catalog import load_default_book
from ricardo.profiles.engine_params import LLAMA2_7B, engine_catalog
from ricardo.profiles.roles import (
    SOURCE,
    pair_cost,
    pair_cost_arrays,
    role_params,
    transfer_seconds,
    unified_seconds,
)


def test_kv_bytes_per_token_of_llama2_7b_is_512_kib():
    assert LLAMA2_7B.kv_bytes_per_token == 512 * 1024


def test_transfer_of_a_2000_token_prefix_at_100_gbps_is_about_84_ms():
    # 2000 x 512 KiB = 1.05 GB = 8.4 Gb
    assert transfer_seconds(2000, 512 * 1024, 100.0) == pytest.approx(0.0839, rel=1e-3)


@pytest.mark.parametrize("hw", ["L4", "A10G", "A100-80GB", "H100"])
def test_role_model_combined_matches_the_measured_unified_table(hw):
    """A unified replica does the prefill and the decode of each request: the role model's prefill + decode
    replica-seconds on one type should predict the measured capacity. Tolerance: the median over measured cells
    within 15%, and 80% of cells within a factor 1.5 (cells with short answers are the worst: there the unified
    engine's prefill batches and step overheads differ most from a prefill-only worker's)."""
    book = load_default_book()
    params = role_params(engine_catalog()[hw])
    table = book.capacity(hw)
    ratios = [
        unified_seconds(params, a, b, book.slo_tpot_ms / 1000) * table[i, j]
        for i, a in enumerate(book.input_edges)
        for j, b in enumerate(book.output_edges)
        if table[i, j] > 0 and a + b <= params.kv_capacity_tokens
    ]
    ratios = np.array([r for r in ratios if math.isfinite(r)])
    assert len(ratios) >= 20
    assert 0.85 <= np.median(ratios) <= 1.15
    assert np.mean((ratios > 1 / 1.5) & (ratios < 1.5)) >= 0.8
    assert params.source == SOURCE == "estimated"


def test_a_pair_costs_each_role_at_its_price_and_a_small_kv_cache_makes_decode_dear():
    """H100 prefill, A10G decode, a 4000-token prompt: the prefill is the H100's (5x faster per token than the
    A10G's), but the A10G's 13.8k-token KV cache holds only three such requests at once, so its decode costs
    more per request than the H100's, even at a third of the price (neocloud: $2.69 vs $0.86 per hour)."""
    cat = engine_catalog()
    h100, a10g = role_params(cat["H100"]), role_params(cat["A10G"])
    cost = pair_cost(h100, a10g, 4000, 100, 0.12, 100.0)
    assert cost.servable
    assert cost.usd(2.69, 0.86) == pytest.approx((2.69 * cost.prefill_seconds + 0.86 * cost.decode_seconds) / 3600)
    assert a10g.prefill_request_seconds(4000) > 4 * cost.prefill_seconds
    same = pair_cost(h100, h100, 4000, 100, 0.12, 100.0)
    assert 0.86 * cost.decode_seconds > 2.69 * same.decode_seconds


def test_a_decode_type_too_slow_for_the_slo_cannot_serve():
    cat = engine_catalog()
    # an L4 reads Llama-2-7B's weights in ~52 ms: no decode step fits a 40 ms SLO
    cost = pair_cost(role_params(cat["H100"]), role_params(cat["L4"]), 500, 200, 0.040, 100.0)
    assert not cost.servable and cost.decode_seconds == math.inf


def test_transfer_time_counts_in_the_latency_alone():
    cat = engine_catalog()
    h100, a10g = role_params(cat["H100"]), role_params(cat["A10G"])
    fast = pair_cost(h100, a10g, 8000, 10, 0.12, 400.0)
    slow = pair_cost(h100, a10g, 8000, 10, 0.12, 10.0)
    assert slow.transfer_seconds == pytest.approx(40 * fast.transfer_seconds)
    assert slow.alone_seconds_per_token - fast.alone_seconds_per_token == pytest.approx(
        (slow.transfer_seconds - fast.transfer_seconds) / 10
    )
    assert slow.decode_seconds > fast.decode_seconds  # less of the SLO left for the decode steps


def test_the_vectorised_pair_cost_matches_the_scalar_one():
    cat = engine_catalog()
    sizes = [(1, 1), (25, 0), (500, 200), (2000, 20), (4000, 1), (8000, 300), (13000, 2000), (300, 5000)]
    for prefill, decode in (("L40S", "MI300X"), ("H100", "A10G"), ("A100-80GB", "L4")):
        p, d = role_params(cat[prefill]), role_params(cat[decode])
        for slo in (0.04, 0.12):
            pre, dec, alone = pair_cost_arrays(
                p, d, np.array([i for i, _ in sizes]), np.array([o for _, o in sizes]), slo, 100.0
            )
            for k, (i, o) in enumerate(sizes):
                cost = pair_cost(p, d, i, o, slo, 100.0)
                assert pre[k] == pytest.approx(cost.prefill_seconds)
                assert alone[k] == pytest.approx(cost.alone_seconds_per_token)
                assert dec[k] == pytest.approx(cost.decode_seconds) or dec[k] == cost.decode_seconds == math.inf


def test_the_floats_give_the_engine_models_latency_alone_exactly():
    """`ProfileBook.alone_seconds_per_token` reads the role model's floats instead of the engine parameters: the
    same figure to the bit, for every type, short and long prompts and answers (routing must not change)."""
    sizes = [(1, 1), (8, 1), (100, 2), (448, 59), (2000, 16), (4000, 1500), (30000, 3)]
    for name, params in engine_catalog().items():
        floats = role_params(params)
        for prompt, output in sizes:
            assert floats.alone_seconds_per_token(prompt, output) == params.alone_seconds_per_token(prompt, output), (
                name,
                prompt,
                output,
            )
