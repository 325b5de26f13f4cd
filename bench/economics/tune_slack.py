"""Choose the cost-aware policy's slack target on a trace the economics benchmark does not use.

    .venv/bin/python bench/economics/tune_slack.py [--speed 2] [--values 0.1,0.2,0.3]

`cost-aware` sends a request to the cheapest pool while its predicted SLO slack there is at least the target
(ricardo/policies/routing.py), and ricardo's planner sizes each type for the utilization that target allows.
Too small a target runs cheap pools into SLO misses, too large wastes them; the best value depends on how
bursty traffic is and how far the latency tail lies above the mean, which the profile does not say. So it is
chosen here, by the cheapest fleet that keeps 99% of requests within SLO, on the AIBrix
ShareGPT ramp (../shared/data/prompts/sharegpt_aibrix, real prompt and answer lengths, an 8-minute up-and-down
arrival ramp), at 40 and 120 ms, over the four measured types or the full catalogue (`--catalog full`, at the
neocloud prices as bench/economics/run.py): none of the benchmark's traces is looked at.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
from pathlib import Path

from corpus import CATALOGS, catalog_book
from ricardo.emulator.cluster import TraceRequest
from ricardo.emulator.fleet import FleetSearch, alone_within_slo, servable
from ricardo.loadgen.traces import read_trace, select
from ricardo.policies.routing import cost_aware
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog

RAMP = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "prompts"
    / "sharegpt_aibrix"
    / "8min_up_and_down.jsonl"
)


def cheapest(case: tuple[float, float, float, str, str]) -> tuple[float, float, float | None]:
    target, slo_ms, speed, planner, catalog = case
    book, types = catalog_book(catalog, slo_ms)
    requests = [
        TraceRequest(r.arrival_s, r.input_tokens, r.output_tokens) for r in select(read_trace(str(RAMP)), speed=speed)
    ]
    engines, slo = engine_catalog(), SLO(10_000.0, slo_ms)
    judged = servable(requests, book, types) & alone_within_slo(requests, [engines[hw] for hw in types], slo)
    search = FleetSearch(requests, book, engines, slo, judged, slack_target=target)
    found = search.cheapest(functools.partial(cost_aware, slack_target=target), types, planner=planner)
    return target, slo_ms, None if found.best is None else found.best.cost_per_hour


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--values", default="0.1,0.15,0.2,0.3,0.4")
    parser.add_argument("--planner", default="ricardo", choices=("ricardo", "exact"))
    parser.add_argument("--catalog", default="measured", choices=list(CATALOGS), help="as bench/economics/run.py's")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args()
    values = [float(v) for v in args.values.split(",")]
    cases = [(v, slo, args.speed, args.planner, args.catalog) for v in values for slo in (40.0, 120.0)]
    with multiprocessing.Pool(args.jobs) as workers:
        results = {(target, slo): cost for target, slo, cost in workers.map(cheapest, cases)}
    print(f"{args.catalog} catalogue, speed {args.speed:g}\n| slack target | 40 ms $/h | 120 ms $/h |\n|---|---|---|")
    for v in values:
        cells = [f"{results[(v, slo)]:.2f}" if results[(v, slo)] is not None else "none" for slo in (40.0, 120.0)]
        print(f"| {v:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
