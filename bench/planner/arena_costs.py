"""Mélange-style result: cost of the cheapest mixed fleet vs single-GPU-type fleets on the Arena mix.

Run: .venv/bin/python bench/planner/arena_costs.py [--price-set melange] [--rates 1,4,16,32] [--slice-factor 8]
Prints $/h per fleet, the mixed fleet, its saving vs the best single type, and planner solve times
(median and max over --repeats solves of the mixed fleet).
"""

from __future__ import annotations

import argparse
import statistics

from ricardo.policies.planner import plan
from ricardo.profiles.catalog import load_default_book


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price-set", default="melange")
    parser.add_argument("--rates", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--slice-factor", type=int, default=8)
    parser.add_argument("--workload", default="arena")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    book = load_default_book(price_set=args.price_set)
    mix = book.workload(args.workload)
    types = [hw for hw in book.hardware_names() if hw in book.prices]
    print(
        f"{args.workload} mix, {args.price_set} prices {book.prices}, TPOT SLO {book.slo_tpot_ms:g} ms, "
        f"slice factor {args.slice_factor}; $/h (GPUs)"
    )
    print(
        f"{'req/s':>6} "
        + " ".join(f"{hw + '-only':>17}" for hw in types)
        + f" {'mixed':>8} {'saving':>7} {'solve ms':>13}  mixed fleet"
    )
    for rate in (float(r) for r in args.rates.split(",")):
        rates = mix * rate
        single = {hw: plan(rates, book, only=[hw], slice_factor=args.slice_factor) for hw in types}
        runs = [plan(rates, book, slice_factor=args.slice_factor) for _ in range(args.repeats)]
        mixed = runs[0]
        times = [r.solve_seconds * 1000 for r in runs]
        best = min(p.cost_per_hour for p in single.values())
        cells = " ".join(f"{p.cost_per_hour:>10.2f} ({p.allocation[hw]:>3})" for hw, p in single.items())
        fleet = ", ".join(f"{n} {hw}" for hw, n in mixed.allocation.items() if n)
        flag = "" if all(r.optimal for r in runs) else " (time limit hit: not proven optimal)"
        print(
            f"{rate:>6g} {cells} {mixed.cost_per_hour:>8.2f} {1 - mixed.cost_per_hour / best:>7.1%} "
            f"{statistics.median(times):>6.0f}/{max(times):>6.0f}  {fleet}{flag}"
        )


if __name__ == "__main__":
    main()
