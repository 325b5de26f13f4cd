"""The cheapest fleet with disaggregated pairs allowed: never dearer than without, and the CLI's JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ricardo.emulator.cluster import TraceRequest, fleet_cost, split_fleet
from ricardo.emulator.fleet import FleetSearch, alone_within_slo, book_for_slo, servable
from ricardo.emulator.virtual import poisson_arrivals
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog

SLO_120 = SLO(10_000.0, 120.0)
TYPES = ["L40S", "MI300X", "A100-80GB"]


def chat_sizes(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = np.clip(rng.lognormal(np.log(800), 0.8, count), 50, 6000).astype(int)
    outputs = np.clip(rng.lognormal(np.log(150), 0.8, count), 1, 1500).astype(int)
    return inputs, outputs


def trace(rate: float, count: int, seed: int = 0) -> list[TraceRequest]:
    inputs, outputs = chat_sizes(count, seed)
    return [
        TraceRequest(float(t), int(i), int(o))
        for t, i, o in zip(poisson_arrivals(rate, count, seed), inputs, outputs, strict=True)
    ]


def test_the_cheapest_fleet_with_pairs_allowed_is_never_dearer():
    book = book_for_slo(120, price_set="neocloud", full_catalog=True)
    engines = engine_catalog()
    requests = trace(8.0, 300)
    judged = servable(requests, book, TYPES) & alone_within_slo(requests, [engines[hw] for hw in TYPES], SLO_120)
    search = FleetSearch(requests, book, engines, SLO_120, judged, 0.95)
    found = search.cheapest_verified("cost-aware", TYPES, singles=[], disaggregated=True)
    assert found.best is not None and found.without_pairs is not None
    assert found.best.cost_per_hour <= found.without_pairs.cost_per_hour
    assert found.best.attainment >= 0.95
    assert found.best.cost_per_hour == pytest.approx(fleet_cost(found.best.fleet, book.prices))
    assert (*TYPES, "+pairs") in found.by_types  # the pairs search ran
    pairs_found = found.by_types[(*TYPES, "+pairs")]
    if pairs_found is not None and split_fleet(pairs_found.fleet)[1]:  # a fleet with pairs the simulator ran
        assert pairs_found.summary["pairs"] == split_fleet(pairs_found.fleet)[1]


def run_cli(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "ricardo.cli", *args, "--json"], capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_plan_disaggregated_lists_the_pairs(tmp_path):
    inputs, outputs = chat_sizes(400)
    workload = tmp_path / "chat.csv"
    workload.write_text("".join(f"{i},{o}\n" for i, o in zip(inputs, outputs, strict=True)))
    common = ("plan", "--workload", str(workload), "--rate", "10", "--include-estimated", "--price-set", "neocloud")
    plain = run_cli(*common, "--planner", "exact")
    out = run_cli(*common, "--planner", "exact", "--disaggregated")
    assert out["pairs"], out  # at the operating point, L40S prefill with MI300X decode pays here
    for pair in out["pairs"]:
        assert {"prefill", "decode", "prefill_replicas", "decode_replicas"} <= set(pair)
        assert pair["prefill_replicas"] >= 1 and pair["decode_replicas"] >= 1
    prices = out["prices"] | {p[role]: book_price(p[role]) for p in out["pairs"] for role in ("prefill", "decode")}
    total = sum(prices[hw] * n for hw, n in out["allocation"].items())
    total += sum(
        prices[p["prefill"]] * p["prefill_replicas"] + prices[p["decode"]] * p["decode_replicas"] for p in out["pairs"]
    )
    assert out["cost_per_hour"] == pytest.approx(total)
    assert out["cost_per_hour"] <= plain["cost_per_hour"]
    assert plain["pairs"] == []
    # a histogram has no sizes to price pairs with
    done = subprocess.run(
        [sys.executable, "-m", "ricardo.cli", "plan", "--workload", "arena", "--rate", "5", "--disaggregated"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--disaggregated needs a trace" in done.stderr


def book_price(hw: str) -> float:
    return book_for_slo(120, price_set="neocloud", full_catalog=True).price(hw)


def test_simulate_cheapest_disaggregated_reports_pairs_beside_the_fleet():
    out = run_cli(
        "simulate",
        "--trace",
        "azure-conv",
        "--speed",
        "4",
        "--max-requests",
        "300",
        "--fleet",
        "cheapest",
        "--disaggregated",
        "--catalog",
        "full",
        "--price-set",
        "neocloud",
        "--types",
        ",".join(TYPES),
    )
    assert isinstance(out["fleet"], dict) and isinstance(out["pairs"], list)
    prices = book_for_slo(120, price_set="neocloud", full_catalog=True).prices
    total = sum(prices[hw] * n for hw, n in out["fleet"].items())
    total += sum(
        prices[p["prefill"]] * p["prefill_replicas"] + prices[p["decode"]] * p["decode_replicas"] for p in out["pairs"]
    )
    assert out["cost_per_hour"] == pytest.approx(total)
    assert out["cost_per_hour"] <= out["without_pairs"]["cost_per_hour"]
    assert out["slo_attainment"] >= 0.99


def test_trimming_a_pair_role_to_nothing_drops_the_pair():
    from ricardo.emulator.fleet import _without_one

    fleet = {"MI300X": 1, "L40S>MI300X:prefill": 1, "L40S>MI300X:decode": 2}
    assert _without_one(fleet, "L40S>MI300X:decode") == {"MI300X": 1, "L40S>MI300X:prefill": 1, "L40S>MI300X:decode": 1}
    assert _without_one(fleet, "L40S>MI300X:prefill") == {"MI300X": 1}
    assert _without_one(fleet, "MI300X") == {"L40S>MI300X:prefill": 1, "L40S>MI300X:decode": 2}


def test_a_fleet_spec_names_pair_roles():
    from ricardo.cli.simulate import _read_fleet

    book = book_for_slo(120, price_set="neocloud", full_catalog=True)
    fleet = _read_fleet("MI300X=1,L40S>MI300X:prefill=2,L40S>MI300X:decode=1", book)
    assert fleet == {"MI300X": 1, "L40S>MI300X:prefill": 2, "L40S>MI300X:decode": 1}
    assert split_fleet(fleet)[1] == [
        {"prefill": "L40S", "decode": "MI300X", "prefill_replicas": 2, "decode_replicas": 1}
    ]


def test_the_auto_fleet_is_planned_for_the_link_the_simulation_runs(tmp_path):
    """`simulate --fleet auto --disaggregated --link-gbps X` planned the pairs for the default 100 Gb/s link and
    simulated them on X: a link too slow for any pair still got one."""
    lines = [
        {"timestamp_s": r.arrival, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens}
        for r in trace(30.0, 300)
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    common = ("simulate", "--trace", str(path), "--fleet", "auto", "--disaggregated", "--planner", "exact")
    common += ("--catalog", "full", "--price-set", "neocloud", "--types", ",".join(TYPES))
    assert run_cli(*common)["pairs"]  # pairs pay at the default 100 Gb/s
    assert run_cli(*common, "--link-gbps", "0.001")["pairs"] == []
