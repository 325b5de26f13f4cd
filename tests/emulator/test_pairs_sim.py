"""Disaggregated pairs in virtual time: prefill worker, KV transfer over the link, decode worker."""

from __future__ import annotations

import pytest
from ricardo.emulator.cluster import TraceRequest, fleet_cost, pair_key, simulate, split_fleet
from ricardo.emulator.engine import Engine, Sequence
from ricardo.emulator.fleet import book_for_slo
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog
from ricardo.profiles.roles import transfer_seconds

SLO_120 = SLO(10_000.0, 120.0)
BOOK = book_for_slo(120, price_set="neocloud", full_catalog=True)
ENGINES = engine_catalog()
PAIR = {pair_key("L40S", "MI300X", "prefill"): 1, pair_key("L40S", "MI300X", "decode"): 1}


def test_one_request_alone_waits_for_prefill_then_transfer_then_decodes():
    """TTFT = the prefill alone + the KV transfer; then (out - 1) decode steps of one sequence."""
    request = TraceRequest(0.0, 2000, 50)
    for link in (100.0, 10.0):
        result = simulate([request], PAIR, ENGINES, BOOK, BOOK.prices, "cost-aware", SLO_120, link_gbps=link)
        timing = result.requests[0].timing
        prefill = ENGINES["L40S"].prefill_seconds(2000, 1)
        transfer = transfer_seconds(2000, 512 * 1024, link)
        assert timing.ttft == pytest.approx(prefill + transfer, rel=1e-6)
        decode = ENGINES["MI300X"]
        steps = sum(decode.decode_seconds(1, 2000 + k) for k in range(1, 50))
        assert timing.latency == pytest.approx(prefill + transfer + steps, rel=1e-6)
        assert result.per_pool == {"L40S>MI300X": 1}


def test_the_decode_worker_counts_transferred_blocks_in_its_kv_cache():
    """Prefilled sequences take no compute at admission but hold their prompt's KV: a decode engine admits only
    as many as its cache holds, and the rest wait (no prefill step time is spent on them)."""
    params = ENGINES["A10G"]
    engine = Engine(params)
    prompt = params.kv_capacity_tokens // 3 + 10  # two fit, three do not
    seqs = [Sequence(prompt, 10, prefilled=True) for _ in range(4)]
    for seq in seqs:
        engine.submit(seq)
    step = engine.step()
    assert step is not None and step.kind == "prefill" and step.seconds == 0.0
    assert len(engine.running) == 2 and len(engine.waiting) == 2
    assert engine.context_tokens == 2 * (prompt + 1)


def test_pair_fleets_are_priced_by_role_and_reported_as_pairs():
    fleet = {"H100": 1, pair_key("L40S", "MI300X", "prefill"): 2, pair_key("L40S", "MI300X", "decode"): 3}
    prices = BOOK.prices
    assert fleet_cost(fleet, prices) == pytest.approx(prices["H100"] + 2 * prices["L40S"] + 3 * prices["MI300X"])
    assert split_fleet(fleet) == (
        {"H100": 1},
        [{"prefill": "L40S", "decode": "MI300X", "prefill_replicas": 2, "decode_replicas": 3}],
    )


def test_the_router_sends_prompt_heavy_requests_to_a_cheaper_pair_and_releases_its_load():
    """Beside a unified MI300X, prompt-heavy requests go to the L40S>MI300X pair while it keeps its slack; when
    the trace ends every ledger is back to zero load."""
    requests = [TraceRequest(0.5 * k, 2000, 20) for k in range(40)]
    fleet = {"MI300X": 1, **PAIR}
    result = simulate(requests, fleet, ENGINES, BOOK, BOOK.prices, "cost-aware", SLO_120)
    summary = result.summary()
    assert summary["per_pool_requests"]["L40S>MI300X"] > 20
    assert summary["pairs"] == [{"prefill": "L40S", "decode": "MI300X", "prefill_replicas": 1, "decode_replicas": 1}]
    assert summary["cost_per_hour"] == pytest.approx(fleet_cost(fleet, BOOK.prices))
    assert summary["slo_attainment"] == 1.0
    for request in result.requests:
        assert request.pool is not None
        assert request.pool.ledger.in_flight == 0 and request.pool.ledger.in_flight_load == 0
        assert request.pool.ledger.decode_load == 0
