"""The simulator's fleets: SLO tables at 40 ms, the cheapest-fleet search, and `ricardo simulate` as a process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ricardo.emulator.calibrate import Measurement, max_rate
from ricardo.emulator.cluster import TraceRequest
from ricardo.emulator.fleet import FleetSearch, alone_within_slo, book_for_slo, plan_fleet, servable
from ricardo.emulator.virtual import poisson_arrivals
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book, modelled_profile_path
from ricardo.profiles.engine_params import engine_catalog, load_engine_params
from ricardo.profiles.schema import read_profile_file

SLO_120, SLO_40 = SLO(10_000.0, 120.0), SLO(10_000.0, 40.0)


def poisson_trace(rate: float, count: int, seed: int = 0) -> list[TraceRequest]:
    rng = np.random.default_rng(seed)
    inputs = rng.integers(20, 1500, size=count)
    outputs = rng.integers(20, 400, size=count)
    return [
        TraceRequest(float(t), int(i), int(o))
        for t, i, o in zip(poisson_arrivals(rate, count, seed), inputs, outputs, strict=True)
    ]


def test_the_shipped_40_ms_tables_are_the_engine_models_and_tighter_than_at_120():
    profile = read_profile_file(modelled_profile_path("llama2-7b", 40))
    assert profile.slo_tpot_ms == 40 and set(profile.gpus) == set(engine_catalog())
    assert all(table.source == "estimated" for table in profile.gpus.values())
    at_40, at_120 = book_for_slo(40, full_catalog=True), load_default_book(include_estimated=True)
    for hw in at_40.hardware_names():
        assert (at_40.capacity(hw) <= at_120.capacity(hw) * 1.05 + 1e-9).all(), hw  # a tighter SLO never adds capacity
    assert not at_40.capacity("L4").any()  # its decode step alone is ~45 ms
    # one cell, recomputed as the generator computes it
    rate = max_rate(load_engine_params("A100-80GB"), 500, 250, Measurement(slo_s=0.040))
    assert at_40.max_rps("A100-80GB", 500, 250) == pytest.approx(rate, rel=0.01)


def test_an_slo_without_tables_is_refused_with_the_command_that_builds_them():
    with pytest.raises(ValueError, match="slo_tables --slo-tpot-ms 77"):
        book_for_slo(77)


def test_requests_too_slow_even_alone_are_recognised():
    engines = list(engine_catalog().values())
    requests = [TraceRequest(0.0, 25, 25), TraceRequest(0.0, 4000, 1), TraceRequest(0.0, 4000, 400)]
    assert alone_within_slo(requests, engines, SLO_40).tolist() == [True, False, True]
    assert alone_within_slo(requests, engines, SLO_120).tolist() == [True, True, True]
    book = book_for_slo(120)
    assert servable([TraceRequest(0.0, 3000, 50)], book, ["L4", "A10G"]).tolist() == [False]  # not profiled > 2000


def test_the_search_finds_a_fleet_that_passes_where_one_gpu_less_fails():
    book = book_for_slo(120)
    requests = poisson_trace(rate=6.0, count=1500)
    judged = servable(requests, book, book.hardware_names())
    search = FleetSearch(requests, book, engine_catalog(), SLO_120, judged, target=0.99)
    found = search.cheapest("cost-aware", ["A100-80GB"])
    assert found.best is not None and found.best.attainment >= 0.99
    n = found.best.fleet["A100-80GB"]
    if n > 1:
        fewer, _ = search.evaluate({"A100-80GB": n - 1}, "cost-aware")
        assert fewer < 0.99
    assert all(t.cost_per_hour >= found.best.cost_per_hour for t in found.trials if t.attainment >= 0.99)


def test_the_verified_search_is_never_dearer_than_its_candidates_and_every_answer_was_simulated():
    book = book_for_slo(120)
    requests = poisson_trace(rate=8.0, count=1200, seed=3)
    judged = servable(requests, book, book.hardware_names())
    search = FleetSearch(requests, book, engine_catalog(), SLO_120, judged, target=0.99)
    types = ["A10G", "A100-80GB", "H100"]
    found = search.cheapest_verified("cost-aware", types, singles=["A10G", "A100-80GB"])
    # the planner's mix, the capacity plan's mix (the hedge), two types alone
    assert set(found.by_types) == {tuple(types), (*types, "+melange"), ("A10G",), ("A100-80GB",)}
    assert found.best is not None and found.best.attainment >= 0.99
    assert all(found.best.cost_per_hour <= t.cost_per_hour for t in found.by_types.values() if t is not None)
    assert found.best in found.trials  # the answer is a fleet the simulator ran, not a plan
    # trimmed: no single replica less passes
    for hw in found.best.fleet:
        smaller = {h: m - (h == hw) for h, m in found.best.fleet.items() if m - (h == hw) > 0}
        if smaller:
            assert search.evaluate(smaller, "cost-aware")[0] < 0.99, (hw, smaller)


def test_more_candidates_never_make_the_verified_search_dearer():
    """Every candidate is trimmed, not only the cheapest before trimming: a hedge (or a type alone) added can only
    lower the answer."""
    book = book_for_slo(120)
    requests = poisson_trace(rate=8.0, count=1200, seed=3)
    judged = servable(requests, book, book.hardware_names())
    search = FleetSearch(requests, book, engine_catalog(), SLO_120, judged, target=0.99)
    types = ["A10G", "A100-80GB", "H100"]
    fewer = search.cheapest_verified("cost-aware", types, singles=["A10G"], hedges=())
    more = search.cheapest_verified("cost-aware", types, singles=["A10G", "A100-80GB"])
    assert fewer.best is not None and more.best is not None
    assert more.best.cost_per_hour <= fewer.best.cost_per_hour


def test_a_fleet_is_simulated_once_per_policy_seed_and_sizes():
    """`evaluate` remembers what it ran, as long as nothing that changes the run has changed: another random seed (as
    bench/economics/same_fleet.py sets for Mélange's draws) or oracle sizes are run again."""
    book = book_for_slo(120)
    requests = poisson_trace(rate=20.0, count=600, seed=5)
    search = FleetSearch(requests, book, engine_catalog(), SLO_120, servable(requests, book, book.hardware_names()))
    fleet = {"A10G": 1, "A100-80GB": 1}
    first = search.evaluate(fleet, "melange")
    assert search.evaluate(dict(reversed(fleet.items())), "melange") is first  # the same fleet, remembered
    search.seed = 1
    assert search.evaluate(fleet, "melange")[1] != first[1]  # Mélange's draws differ with the seed
    search.seed, search.sizes = 0, "oracle"
    assert search.evaluate(fleet, "melange") is not first


def test_planners_exact_sizes_below_upper_edges_and_ricardo_provisions_for_its_router():
    book = book_for_slo(120)
    requests = poisson_trace(rate=20.0, count=3000)

    def cost(planner: str) -> float:
        return sum(book.prices[h] * n for h, n in plan_fleet(requests, book, SLO_120, planner=planner).items())

    assert cost("exact") < cost("melange")  # every request is at most its bucket's upper edge
    assert cost("exact") < cost("ricardo")  # no type runs at the profile's operating point (mean TPOT = SLO)
    with pytest.raises(ValueError, match="unknown planner"):
        plan_fleet(requests, book, SLO_120, planner="magic")


def run_cli(*args: str) -> dict:
    # a guard against a hang, not a speed test: on this shared 2-core machine a simulation gets a fifth of a core
    # under load, and the test's own timeout (300 s) bounds the whole test
    done = subprocess.run(
        [sys.executable, "-m", "ricardo.cli", *args, "--json"], capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("slo_ms", [120, 40])
def test_simulate_command(slo_ms):
    out = run_cli("simulate", "--trace", "azure-conv", "--duration", "300", "--slo-tpot-ms", str(slo_ms))
    assert out["requests"] > 500 and 0 <= out["slo_attainment"] <= 1
    assert sum(out["per_pool_requests"].values()) + out["refused_context"] + out["unserved"] == out["requests"]
    assert out["cost_per_hour"] == pytest.approx(
        sum(book_for_slo(slo_ms).prices[h] * n for h, n in out["fleet"].items())
    )
    if slo_ms == 40:
        assert "L4" not in out["fleet"]  # no L4 meets 40 ms per token


def test_simulate_plans_the_auto_fleet_over_the_types_given():
    """--types was read by --fleet cheapest only: --fleet auto planned over every priced type regardless."""
    common = ("simulate", "--trace", "azure-conv", "--max-requests", "30", "--fleet", "auto")
    assert set(run_cli(*common)["fleet"]) != {"L4"}  # the 30 requests' own plan is not all L4
    assert set(run_cli(*common, "--types", "L4")["fleet"]) == {"L4"}


def test_simulate_reports_null_not_nan_when_no_request_was_served(tmp_path):
    """No A10G holds a 5,000-token prompt: with nothing served, the latency percentiles were NaN, which
    json.dumps writes as a bare `NaN` that no strict JSON reader takes (jq, JavaScript, json.loads(strict))."""
    trace = tmp_path / "long.jsonl"
    trace.write_text(
        "".join(json.dumps({"timestamp_s": t, "input_tokens": 5000, "output_tokens": 10}) + "\n" for t in (0, 1))
    )
    command = [sys.executable, "-m", "ricardo.cli", "simulate", "--trace", str(trace), "--fleet", "A10G=1"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    out = json.loads(done.stdout, parse_constant=refuse)
    assert out["unserved"] == 2 and out["per_pool_requests"] == {"A10G": 0}
    assert out["ttft_ms"] == {"p50": None, "p90": None, "p99": None}
    assert out["latency_per_token_ms"]["p50"] is None
    text = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "nan" not in text.stdout, text.stderr


def test_simulate_rejects_bad_input():
    done = subprocess.run(
        [sys.executable, "-m", "ricardo.cli", "simulate", "--trace", "azure-conv", "--slo-tpot-ms", "77"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "77 ms" in done.stderr


def test_simulate_finds_the_cheapest_fleet_for_a_target():
    # 600 requests: the search runs the simulator ~30 times (1,500 took 48 s of CPU for the first call alone)
    common = ("simulate", "--trace", "azure-conv", "--speed", "4", "--max-requests", "600", "--fleet", "cheapest")
    out = run_cli(*common, "--target", "0.99")
    assert out["fleet"] and out["slo_attainment"] >= 0.99 and out["judged"] + out["refused"] == out["requests"]
    assert out["trials"] >= 2 and out["cost_per_hour"] == pytest.approx(
        sum(book_for_slo(120).prices[h] * n for h, n in out["fleet"].items())
    )
    # restricted to one type, it costs at least as much; a looser target never costs more
    a100 = run_cli(*common, "--types", "A100-80GB")
    assert set(a100["fleet"]) == {"A100-80GB"} and a100["cost_per_hour"] >= out["cost_per_hour"]
    assert run_cli(*common, "--target", "0.9")["cost_per_hour"] <= out["cost_per_hour"]
    # a target no fleet meets: null, not an error
    tiny = run_cli(*common, "--types", "L4", "--target", "1.0", "--slo-tpot-ms", "40")
    assert tiny["fleet"] is None and tiny["cost_per_hour"] is None
