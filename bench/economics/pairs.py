"""The with-pairs column: the cheapest fleet at >= 99% attainment with disaggregated prefill/decode pairs allowed,
beside the cheapest without them, on a prefill-heavy trace (azure-code), a decode-heavy one (the ServeGen
reasoning trace) and a chat mix (lmsys-chat-1m lengths), at 40 and 120 ms, full catalogue at neocloud prices.

    nice .venv/bin/python bench/economics/pairs.py [--max-requests 1500] [--jobs 2] [--out bench/economics]

For each case, ricardo's fleet search (`FleetSearch.cheapest_verified`, the cost-aware router, predicted sizes) runs
twice: over the unified types (the planner's mix and each cheap type alone, trimmed), and with the planner's pairs
allowed (the role model's capacities, `profiles/roles.py`, KV over a 100 Gb/s link); "with pairs" is the cheaper of
the two, so it is never dearer. "pairs search" is the second search's own answer, whether or not it won, with the
prefill:decode ratio it chose. Requests judged: those some unified type can serve within the SLO alone (the same
set for both columns). Every pair figure is the engine model's (`source: estimated`), not a measurement.

Writes pairs.json and prints the table (pairs.md holds it, with a paragraph written by hand from the results).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

from corpus import TRACES as CORPUS
from corpus import catalog_book, trace_requests
from ricardo.emulator.cluster import split_fleet
from ricardo.emulator.fleet import FleetSearch, Trial, alone_within_slo, servable
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog

HERE = Path(__file__).resolve().parent
TRACES = {"azure-code": "prefill-heavy", "servegen-reason": "decode-heavy", "lmsys": "chat mix"}
SLOS_MS = (40, 120)
TARGET = 0.99
SINGLE_TYPE_SPAN = 2.0  # as run.py: a type alone is searched if its planner fleet is within 2x the cheapest
QUICK_KNOBS = {name: CORPUS[name][2][1] for name in TRACES}  # run.py --quick's one rate: the middle one


def run_case(case: tuple) -> dict:
    trace, slo_ms, max_requests = case
    started = time.perf_counter()
    book, types = catalog_book("full", slo_ms)
    requests = trace_requests(trace, QUICK_KNOBS[trace], max_requests)
    slo = SLO(10_000.0, slo_ms)
    engines = engine_catalog()
    judged = servable(requests, book, types) & alone_within_slo(requests, [engines[hw] for hw in types], slo)
    search = FleetSearch(requests, book, engines, slo, judged, TARGET)
    alone = {
        hw: search.plan(1.0, [hw]).cost_per_hour
        for hw in types
        if servable(requests, book, [hw])[judged].mean() >= TARGET
    }
    cheapest_alone = min(alone.values(), default=0.0)
    singles = [hw for hw in types if hw in alone and alone[hw] <= SINGLE_TYPE_SPAN * cheapest_alone]
    found = search.cheapest_verified("cost-aware", types, planner="ricardo", singles=singles, disaggregated=True)
    tokens = sum(r.input_tokens + r.output_tokens for r in requests)
    hours = (requests[-1].arrival - requests[0].arrival) / 3600
    planned = search.plan(1.0, types, "ricardo", pairs=True)

    def outcome(trial: Trial | None) -> dict | None:
        if trial is None:
            return None
        unified, pairs = split_fleet(trial.fleet)
        served = trial.summary.get("per_pool_requests", {})
        on_pairs = sum(n for pool, n in served.items() if ">" in pool)
        return {
            "fleet": unified,
            "pairs": pairs,
            "cost_per_hour": trial.cost_per_hour,
            "usd_per_million_tokens": trial.cost_per_hour * hours / tokens * 1e6,
            "attainment": trial.attainment,
            "requests_on_pairs": on_pairs / max(1, sum(served.values())),
            "ttft_ms": trial.summary.get("ttft_ms"),
        }

    return {
        "trace": trace,
        "kind": TRACES[trace],
        "knob": QUICK_KNOBS[trace],
        "requests": len(requests),
        "mean_input": sum(r.input_tokens for r in requests) / len(requests),
        "mean_output": sum(r.output_tokens for r in requests) / len(requests),
        "slo_tpot_ms": slo_ms,
        "judged_share": float(judged.mean()),
        "without_pairs": outcome(found.without_pairs),
        "with_pairs": outcome(found.best),
        "pairs_search": outcome(found.by_types.get((*types, "+pairs"))),
        "planner_pairs_at_mean_rate": [{k: v for k, v in pair.items() if k != "assignment"} for pair in planned.pairs],
        "planner_cost_at_mean_rate": {
            "with_pairs": planned.cost_per_hour,
            "without": search.plan(1.0, types, "ricardo").cost_per_hour,
        },
        "simulations": len(found.trials),
        "seconds": time.perf_counter() - started,
    }


def _fleet_text(outcome: dict | None) -> str:
    if outcome is None:
        return "none passes"
    parts = [f"{n} {hw}" for hw, n in outcome["fleet"].items() if n]
    parts += [
        f"{p['prefill_replicas']} {p['prefill']} : {p['decode_replicas']} {p['decode']}" for p in outcome["pairs"]
    ]
    return " + ".join(parts)


def _money(outcome: dict | None) -> str:
    if outcome is None:
        return "–"
    return f"${outcome['cost_per_hour']:.2f} / ${outcome['usd_per_million_tokens']:.3f}"


def table(results: list[dict]) -> str:
    lines = [
        "| trace | SLO | without pairs: fleet | $/h / $ per 1M tok | with pairs: fleet | $/h / $ per 1M tok "
        "| pairs search (P : D) | its $/h | requests on pairs | planner at mean rate (P : D) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        search = r["pairs_search"]
        planned = "; ".join(
            f"{p['prefill_replicas']} {p['prefill']} : {p['decode_replicas']} {p['decode']}"
            for p in r["planner_pairs_at_mean_rate"]
        )
        lines.append(
            f"| {r['trace']} ({r['kind']}, {r['requests']} req, mean {r['mean_input']:.0f} in / "
            f"{r['mean_output']:.0f} out) | {r['slo_tpot_ms']} ms | {_fleet_text(r['without_pairs'])} | "
            f"{_money(r['without_pairs'])} | {_fleet_text(r['with_pairs'])} | {_money(r['with_pairs'])} | "
            f"{_fleet_text(search)} | {_money(search).split(' / ')[0]} | "
            f"{'–' if search is None else format(search['requests_on_pairs'], '.0%')} | {planned or 'none'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-requests", type=int, default=1500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--trace", action="append", choices=list(TRACES))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    todo = [(trace, slo, args.max_requests) for trace in (args.trace or list(TRACES)) for slo in SLOS_MS]
    with multiprocessing.Pool(args.jobs) as workers:
        results = list(workers.imap(run_case, todo))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairs.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
