"""Tokens per dollar on real and synthetic traces: the cheapest fleet at which each approach keeps 99% of requests
within SLO.

    .venv/bin/python bench/economics/run.py [--quick] [--jobs 2] [--catalog measured] [--trace NAME] [--out DIR]

For every trace of the corpus (corpus.py: the Azure, lmsys, ShareGPT and ServeGen traces and the synthetic stress
traces), three request rates and two TPOT SLOs (40 and 120 ms), in the virtual-time simulator (the emulator's engine
model behind the gateway's own decision code):
- each hardware type alone, Mélange (its ILP fleet at bucket upper edges, with its weighted-random router) and
  ricardo (its planner: each request at its own size, each type sized for the utilization the cost-aware router
  runs it at, hedged by Mélange's mix and each type alone: `FleetSearch.cheapest_verified`; the cost-aware
  router): the cheapest fleet, found by `FleetSearch` scaling the planner's demand, at
  which the simulator keeps >= 99% of the judged requests within the SLO, with its $/h and $ per 1M tokens (prompt
  + output). Requests no hardware serves in time even alone, or beyond the model's context, are not judged.
- Every router is told each request's PREDICTED output length, by the gateway's own predictor learning online as
  requests finish (these traces have no text: from the input tokens and the model, as a gateway could without
  the text). "ricardo (oracle)" is the same search with the true lengths: what prediction costs.
- References, not simulated: *bound*, ricardo's ILP for the exact size mix at the mean rate with every GPU at the
  profile's operating point (mean latency per token = SLO: 37-100% of requests miss there); *bound99*, the same
  ILP over each type's capacity at which 99% of requests meet the SLO (the engine model's tables,
  `slo_tables --quantile 0.99`): still no bursts and perfect packing, but judged on the target's own terms.

Two catalogues: the four measured GPU types at the Mélange paper's prices, and the full catalogue (measured plus
estimated types) at neocloud prices. At 40 ms the tables of every type come from the engine model.

Writes results.json, README.md (the tables) and economics.png into --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from corpus import CATALOGS, TRACES, available, catalog_book, trace_requests
from ricardo.emulator.fleet import FleetSearch, alone_within_slo, mean_rate, servable
from ricardo.policies.sizing import plan_sizes
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book
from ricardo.profiles.engine_params import engine_catalog
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
QUICK = {name: (knobs[1],) for name, (_, _, knobs) in TRACES.items()}
SLOS_MS = (40, 120)
SLO_TTFT_MS = 10_000.0  # the Mélange SLO is on latency per output token only; TTFT gets a loose bound
TARGET = 0.99
SINGLE_TYPE_SPAN = 2.0


def run_case(case: tuple) -> dict:
    """One (catalogue, trace, rate, SLO): the bound and every approach's cheapest fleet."""
    catalog, trace, knob, slo_ms, max_requests = case
    started = time.perf_counter()
    book, types = catalog_book(catalog, slo_ms)
    requests = trace_requests(trace, knob, max_requests)
    lengths = ([r.input_tokens for r in requests], [r.output_tokens for r in requests])
    slo = SLO(SLO_TTFT_MS, slo_ms)
    engines = engine_catalog()
    judged = servable(requests, book, types) & alone_within_slo(requests, [engines[hw] for hw in types], slo)

    def judged_by(hw: str):  # a type alone that cannot serve 1% of the judged requests cannot meet the target
        return servable(requests, book, [hw])[judged]

    search = FleetSearch(requests, book, engines, slo, judged, TARGET)
    oracle = FleetSearch(requests, book, engines, slo, judged, TARGET, sizes="oracle")
    bound = search.plan(1.0, types)
    reference = load_default_book(
        price_set=CATALOGS[catalog], include_estimated=catalog == "full", slo_tpot_ms=slo_ms, quantile=0.99
    )
    bound99 = plan_sizes(reference, *lengths, mean_rate(requests), slo, "exact", only=types, time_limit_s=10.0)
    melange_ilp = search.plan(1.0, types, planner="melange")
    tokens = sum(r.input_tokens + r.output_tokens for r in requests)
    hours = (requests[-1].arrival - requests[0].arrival) / 3600

    def outcome(found) -> dict | None:
        return outcome_of(found.best, len(found.trials))

    def outcome_of(best, simulations: int = 0) -> dict | None:
        if best is None:
            return None
        return {
            "fleet": best.fleet,
            "cost_per_hour": best.cost_per_hour,
            "scale": round(best.scale, 4),
            "usd_per_million_tokens": best.cost_per_hour * hours / tokens * 1e6,
            "attainment": best.attainment,
            "simulations": simulations,
            "per_pool_requests": best.summary.get("per_pool_requests", {}),
        }

    # a type alone is searched if it can serve the target share of the judged requests, and its planner
    # fleet costs at most SINGLE_TYPE_SPAN x the cheapest such (not searched: "–" in the tables); ricardo's search
    # runs those single-type candidates itself (FleetSearch.cheapest_verified), and they are its "X only" columns
    alone = {hw: search.plan(1.0, [hw]).cost_per_hour for hw in types if judged_by(hw).mean() >= TARGET}
    cheapest_alone = min(alone.values(), default=0.0)
    singles = [hw for hw in types if hw in alone and alone[hw] <= SINGLE_TYPE_SPAN * cheapest_alone]
    verified = search.cheapest_verified("cost-aware", types, planner="ricardo", singles=singles)
    approaches = {f"{hw} only": outcome_of(verified.by_types.get((hw,))) for hw in types}
    approaches["melange"] = outcome(search.cheapest("melange", types, planner="melange"))
    approaches["ricardo"] = outcome(verified)
    approaches["ricardo (planner alone)"] = outcome_of(verified.by_types[tuple(types)])
    # the hedge's own answer (Mélange's mix, cost-aware routing), untrimmed: how often it decides
    approaches["ricardo (Mélange's mix)"] = outcome_of(verified.by_types.get((*types, "+melange")))
    approaches["ricardo (oracle)"] = outcome(oracle.cheapest("cost-aware", types, planner="ricardo"))
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
        "bound99": {
            "fleet": {hw: n for hw, n in bound99.allocation.items() if n},
            "cost_per_hour": bound99.cost_per_hour,
            "usd_per_million_tokens": bound99.cost_per_hour * hours / tokens * 1e6,
            "unserved_rate": bound99.unserved_rate,
        },
        "sizes": "predicted (lengths only)",
        "melange_ilp": {
            "fleet": {hw: n for hw, n in melange_ilp.allocation.items() if n},
            "cost_per_hour": melange_ilp.cost_per_hour,
        },
        "approaches": approaches,
        "seconds": time.perf_counter() - started,
    }


def cases(
    quick: bool, max_requests: int, catalogs: list[str], traces: list[str], slos: Sequence[int] = SLOS_MS
) -> list[tuple]:
    return [
        (catalog, trace, knob, slo, max_requests)
        for catalog in catalogs
        for trace in traces
        for knob in (QUICK[trace] if quick else TRACES[trace][2])
        for slo in slos
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one rate per trace")
    parser.add_argument("--max-requests", type=int, default=6000, help="requests simulated per trial")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--catalog", action="append", choices=list(CATALOGS), help="default: both")
    parser.add_argument("--trace", action="append", choices=list(TRACES), help="default: all")
    parser.add_argument("--slo", type=int, action="append", choices=SLOS_MS, help="TPOT SLO, ms; default: both")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    traces, missing = available(args.trace or list(TRACES))
    if missing:
        print(f"bench/economics: skipping {', '.join(missing)} (no ../shared/data here)", file=sys.stderr)
    todo = cases(args.quick, args.max_requests, args.catalog or list(CATALOGS), traces, args.slo or SLOS_MS)
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
