"""Tokens per dollar on real traces: the cheapest fleet at which each approach keeps 99% of requests within SLO.

    .venv/bin/python bench/economics/run.py [--quick] [--jobs 2] [--out bench/economics]

For every trace, request rate and TPOT SLO (40 and 120 ms), in the virtual-time simulator (the emulator's
engine model, the real policy code):
- bound: the planner's ILP fleet for the trace's exact size mix at its mean rate (perfect knowledge, no
  bursts, every GPU at the profile's operating point): its $/h, not simulated;
- each hardware type alone; Mélange (its ILP fleet, bucket upper edges, with its weighted-random router);
  ricardo (its planner: exact sizes, each type sized for the utilization the cost-aware policy runs it at;
  with the cost-aware policy): the cheapest fleet, found by `FleetSearch` scaling the planner's demand, at
  which the simulator keeps >= 99% of the judged requests within the SLO, with its $/h and $ per 1M tokens
  (prompt + output). Requests no hardware serves in time even alone are not judged, for any approach.
The router is told each request's true output length (an oracle predictor), for every approach alike: this
measures routing and fleet sizing, not prediction.

Two runs: the four measured GPU types at the Mélange paper's prices, and the full catalogue (measured plus
estimated types) at neocloud prices. At 40 ms the tables of every type come from the engine model
(`python -m ricardo.emulator.slo_tables`), since nothing was measured at that SLO.

Writes results.json, README.md (the tables) and economics.png into --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

from ricardo.emulator.cluster import TraceRequest
from ricardo.emulator.fleet import FleetSearch, alone_within_slo, book_for_slo, mean_rate, servable
from ricardo.loadgen.traces import read_trace, select, untimed, with_poisson_arrivals
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / ".." / "shared" / "data" / "traces" / "lengths"
TRACES = {  # name -> (source, how its rate is set, the rates or speed-ups)
    "azure-conv": ("azure-conv", "speed", (1, 4, 16)),
    "azure-code": ("azure-code", "speed", (1, 4, 16)),
    "lmsys": (str(SHARED / "lmsys_chat_1m_lengths.csv"), "rate", (2, 8, 32)),
    "sharegpt": (str(SHARED / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"), "rate", (2, 8, 32)),
}
QUICK = {"azure-conv": (4,), "azure-code": (4,), "lmsys": (8,), "sharegpt": (8,)}
SLOS_MS = (40, 120)
CATALOGS = {"measured": "melange", "full": "neocloud"}  # catalogue -> price set
SLO_TTFT_MS = 10_000.0  # the Mélange SLO is on latency per output token only; TTFT gets a loose bound
TARGET = 0.99
SINGLE_TYPE_SPAN = 2.0


def trace_requests(name: str, knob: float, max_requests: int, seed: int = 0) -> list[TraceRequest]:
    source, kind, _ = TRACES[name]
    requests = read_trace(source)
    if kind == "rate":
        if not untimed(requests):
            raise ValueError(f"{name} has timestamps; give it a speed, not a rate")
        requests = with_poisson_arrivals(requests, knob, seed=seed)
        window = select(requests, max_requests=max_requests)
    else:
        window = select(requests, speed=knob, max_requests=max_requests)
    return [TraceRequest(r.arrival_s, r.input_tokens, r.output_tokens) for r in window]


def run_case(case: tuple) -> dict:
    """One (catalogue, trace, rate, SLO): the bound and every approach's cheapest fleet."""
    catalog, trace, knob, slo_ms, max_requests = case
    started = time.perf_counter()
    book = book_for_slo(slo_ms, price_set=CATALOGS[catalog], full_catalog=catalog == "full")
    types = [hw for hw in book.hardware_names() if hw in book.prices]
    requests = trace_requests(trace, knob, max_requests)
    slo = SLO(SLO_TTFT_MS, slo_ms)
    engines = engine_catalog()
    judged = servable(requests, book, types) & alone_within_slo(requests, [engines[hw] for hw in types], slo)

    def judged_by(hw: str):  # a type alone that cannot serve 1% of the judged requests cannot meet the target
        return servable(requests, book, [hw])[judged]

    search = FleetSearch(requests, book, engines, slo, judged, TARGET)
    bound = search.plan(1.0, types)
    melange_ilp = search.plan(1.0, types, planner="melange")
    tokens = sum(r.input_tokens + r.output_tokens for r in requests)
    hours = (requests[-1].arrival - requests[0].arrival) / 3600

    def outcome(found) -> dict | None:
        if found.best is None:
            return None
        best = found.best
        return {
            "fleet": best.fleet,
            "cost_per_hour": best.cost_per_hour,
            "scale": round(best.scale, 4),
            "usd_per_million_tokens": best.cost_per_hour * hours / tokens * 1e6,
            "attainment": best.attainment,
            "simulations": len(found.trials),
            "per_pool_requests": best.summary.get("per_pool_requests", {}),
        }

    # a type alone is searched if it can serve the target share of the judged requests, and its planner
    # fleet costs at most SINGLE_TYPE_SPAN x the cheapest such (not searched: "–" in the tables)
    alone = {hw: search.plan(1.0, [hw]).cost_per_hour for hw in types if judged_by(hw).mean() >= TARGET}
    cheapest_alone = min(alone.values(), default=0.0)
    approaches = {
        f"{hw} only": outcome(search.cheapest("cost-aware", [hw]))
        if hw in alone and alone[hw] <= SINGLE_TYPE_SPAN * cheapest_alone
        else None
        for hw in types
    }
    approaches["melange"] = outcome(search.cheapest("melange", types, planner="melange"))
    approaches["ricardo"] = outcome(search.cheapest("cost-aware", types, planner="ricardo"))
    return {
        "catalog": catalog,
        "price_set": CATALOGS[catalog],
        "trace": trace,
        "knob": TRACES[trace][1],
        "knob_value": knob,
        "rate": mean_rate(requests),
        "slo_tpot_ms": slo_ms,
        "requests": len(requests),
        "judged_share": float(judged.mean()),
        "hours": hours,
        "bound": {
            "fleet": {hw: n for hw, n in bound.allocation.items() if n},
            "cost_per_hour": bound.cost_per_hour,
            "usd_per_million_tokens": bound.cost_per_hour * hours / tokens * 1e6,
        },
        "melange_ilp": {
            "fleet": {hw: n for hw, n in melange_ilp.allocation.items() if n},
            "cost_per_hour": melange_ilp.cost_per_hour,
        },
        "approaches": approaches,
        "seconds": time.perf_counter() - started,
    }


def cases(quick: bool, max_requests: int, catalogs: list[str], traces: list[str]) -> list[tuple]:
    return [
        (catalog, trace, knob, slo, max_requests)
        for catalog in catalogs
        for trace in traces
        for knob in (QUICK[trace] if quick else TRACES[trace][2])
        for slo in SLOS_MS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one rate per trace")
    parser.add_argument("--max-requests", type=int, default=6000, help="requests simulated per trial")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--catalog", action="append", choices=list(CATALOGS), help="default: both")
    parser.add_argument("--trace", action="append", choices=list(TRACES), help="default: all")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if not SHARED.is_dir() and any(TRACES[t][1] == "rate" for t in (args.trace or TRACES)):
        print(f"bench/economics: the lengths traces are read from {SHARED}, which is missing", file=sys.stderr)
        return 2
    todo = cases(args.quick, args.max_requests, args.catalog or list(CATALOGS), args.trace or list(TRACES))
    results = []
    with multiprocessing.Pool(args.jobs) as workers:
        for result in tqdm(workers.imap_unordered(run_case, todo), total=len(todo), desc="cases", unit="case"):
            results.append(result)
    results.sort(
        key=lambda r: (
            list(CATALOGS).index(r["catalog"]),
            list(TRACES).index(r["trace"]),
            r["knob_value"],
            r["slo_tpot_ms"],
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    from report import plot, tables  # beside this script

    text = tables(results)
    print(text)
    (args.out / "README.md").write_text(text + "\n")
    plot(results, args.out / "economics.png")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
