"""Same fleet, three routers: does cost-aware ever serve fewer requests in time than the simple policies?

    .venv/bin/python bench/economics/same_fleet.py [--jobs 2] [--windows 3] [--out bench/economics]

For every trace of the corpus (corpus.py), at its three rates and both TPOT SLOs (40, 120 ms): Mélange's own
fleet for that traffic (its ILP at bucket upper edges, the trace's mix at its mean rate, the measured GPU types at
the Mélange paper's prices), and on it, in the virtual-time simulator, the share of judged requests within the SLO
under `cost-aware`, `melange` (weighted random by capacity) and `least-outstanding`. Every router is told each
request's predicted output length by the gateway's own predictor, learning online (the headline); cost-aware is
also run with the true lengths (the oracle column). Judged: the requests some type of the fleet can serve in time
even alone; those beyond the model's context are refused for every router alike.

One window of a trace is chaotic under overload (one decision changes the loads every later one sees), so each
cell is the mean over `--windows` windows (other stretches of a timed trace, other Poisson seeds of a lengths-only
one). The target: cost-aware at most 0.5 points below either peer in every case.

How far apart two runs of the same router can land: `melange` draws its pool at random, so it is also run with
`--seeds` other random seeds on the same windows and fleets; the *Mélange seed range* column is the lowest and
highest of its means over the windows, one per seed (seed 0 is the headline column). A gap smaller than that range
is a gap the same router shows against itself. (cost-aware and least-outstanding draw nothing: one run each.)

Writes same_fleet.json and same_fleet.md into --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from pathlib import Path

from corpus import CATALOGS, TRACES, available, catalog_book, trace_requests
from ricardo.emulator.fleet import FleetSearch, alone_within_slo, servable
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
SLOS_MS = (120, 40)
PEERS = ("melange", "least-outstanding")
TOLERANCE = 0.005


def run_case(case: tuple[str, float, int, int, int, int, float, str]) -> dict:
    """One (trace, knob, SLO, window): Mélange's fleet and every router's attainment on it (under `overload`
    times the load the fleet was planned for), over the measured types or the full catalogue."""
    trace, knob, slo_ms, window, max_requests, seeds, overload, catalog = case
    book, types = catalog_book(catalog, slo_ms)
    slo = SLO(10_000.0, slo_ms)
    engines = engine_catalog()

    def search(requests: list, sizes: str = "predicted") -> FleetSearch:
        judged = servable(requests, book, types) & alone_within_slo(requests, [engines[hw] for hw in types], slo)
        return FleetSearch(requests, book, engines, slo, judged, sizes=sizes)

    requests = trace_requests(trace, knob, max_requests, window)
    predicted = search(requests)
    fleet = {hw: n for hw, n in predicted.plan(1.0, types, planner="melange").allocation.items() if n}
    if overload != 1.0:
        requests = trace_requests(trace, knob * overload, max_requests, window)
        predicted = search(requests)
    judged = predicted.judged
    oracle = search(requests, sizes="oracle")
    attainment = {policy: predicted.evaluate(fleet, policy)[0] for policy in ("cost-aware", *PEERS)}
    attainment["cost-aware (oracle)"] = oracle.evaluate(fleet, "cost-aware")[0]
    melange_seeds = [attainment["melange"]]
    for seed in range(1, seeds + 1):
        predicted.seed = seed
        melange_seeds.append(predicted.evaluate(fleet, "melange")[0])
    return {
        "trace": trace,
        "knob": knob,
        "slo_tpot_ms": slo_ms,
        "window": window,
        "fleet": fleet,
        "judged": int(judged.sum()),
        "requests": len(requests),
        "attainment": attainment,
        "melange_seeds": melange_seeds,
    }


def summarise(results: list[dict]) -> list[dict]:
    """Mean attainment over the windows of each (trace, knob, SLO)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["trace"], r["knob"], r["slo_tpot_ms"]), []).append(r)
    rows = []
    for (trace, knob, slo), runs in groups.items():
        mean = {p: statistics.fmean(r["attainment"][p] for r in runs) for p in runs[0]["attainment"]}
        gap = mean["cost-aware"] - max(mean[p] for p in PEERS)
        by_seed = [statistics.fmean(seeds) for seeds in zip(*(r["melange_seeds"] for r in runs), strict=True)]
        rows.append(
            {
                "trace": trace,
                "knob": knob,
                "slo_tpot_ms": slo,
                "windows": len(runs),
                "fleet": min(runs, key=lambda r: r["window"])["fleet"],  # the first window's (each has its own)
                "attainment": mean,
                "gap": gap,
                "melange_seed_range": [min(by_seed), max(by_seed)],
                "spread": max(max(r["attainment"].values()) - min(r["attainment"].values()) for r in runs),
            }
        )
    order = list(TRACES)
    rows.sort(key=lambda r: (order.index(r["trace"]), -r["slo_tpot_ms"], r["knob"]))
    return rows


def table(rows: list[dict]) -> str:
    kind = {name: ("x" if TRACES[name][1] == "speed" else " req/s") for name in TRACES}
    lines = [
        "| trace | load | TPOT SLO | Mélange's fleet | cost-aware | melange | least-outstanding | cost-aware "
        "(oracle sizes) | cost-aware − best peer | Mélange seed range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["attainment"]
        fleet = " + ".join(f"{n} {hw}" for hw, n in r["fleet"].items())
        flag = " ✗" if r["gap"] < -TOLERANCE else ""
        low, high = r["melange_seed_range"]
        lines.append(
            f"| {r['trace']} | {r['knob']:g}{kind[r['trace']]} | {r['slo_tpot_ms']} ms | {fleet} | "
            f"{a['cost-aware']:.1%} | {a['melange']:.1%} | {a['least-outstanding']:.1%} | "
            f"{a['cost-aware (oracle)']:.1%} | {r['gap'] * 100:+.1f} pt{flag} | "
            f"{low:.1%}-{high:.1%} ({(high - low) * 100:.1f} pt) |"
        )
    below = [r for r in rows if r["gap"] < -TOLERANCE]
    gaps = [r["gap"] * 100 for r in rows]
    lines += [
        "",
        f"{len(rows)} cases; cost-aware more than {TOLERANCE:.1%} below the better peer in {len(below)}; "
        f"gap to the better peer: median {statistics.median(gaps):+.1f} pt, worst {min(gaps):+.1f} pt, "
        f"best {max(gaps):+.1f} pt.",
    ]
    ranges = [(high - low) * 100 for low, high in (r["melange_seed_range"] for r in rows)]
    if max(ranges) > 0:
        widest = max(rows, key=lambda r: r["melange_seed_range"][1] - r["melange_seed_range"][0])
        lines += [
            "",
            f"Mélange against itself (its means over the windows, one per random seed): a range over "
            f"{TOLERANCE:.1%} in {sum(x > TOLERANCE * 100 for x in ranges)} of {len(rows)} cases, widest "
            f"{max(ranges):.1f} pt ({widest['trace']} {widest['knob']:g}{kind[widest['trace']]} at "
            f"{widest['slo_tpot_ms']} ms); flagged cases behind by no more than Mélange's own range there: "
            f"{sum(-r['gap'] * 100 <= x for r, x in zip(rows, ranges, strict=True) if r['gap'] < -TOLERANCE)} "
            f"of {sum(r['gap'] < -TOLERANCE for r in rows)}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--max-requests", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=2, help="other random seeds melange is run with (default 2)")
    parser.add_argument("--trace", action="append", choices=list(TRACES), help="default: every trace available")
    parser.add_argument(
        "--overload",
        type=float,
        default=1.0,
        help="run each fleet under this many times the load it was planned for (default 1: as planned); "
        "written to same_fleet_overload<F>.md/json",
    )
    parser.add_argument("--slo", type=int, action="append", choices=SLOS_MS, help="TPOT SLO, ms; default: both")
    parser.add_argument(
        "--catalog",
        default="measured",
        choices=list(CATALOGS),
        help="the four measured types at Mélange's prices (default), or the full catalogue at neocloud prices, as "
        "run.py's; the full one is written to same_fleet_full*.md/json",
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    traces, missing = available(args.trace or list(TRACES))
    if missing:
        print(f"same_fleet: skipping {', '.join(missing)} (no ../shared/data here)", file=sys.stderr)
    todo = [
        (trace, knob, slo, window, args.max_requests, args.seeds, args.overload, args.catalog)
        for trace in traces
        for knob in TRACES[trace][2]
        for slo in args.slo or SLOS_MS
        for window in range(args.windows)
    ]
    with multiprocessing.Pool(args.jobs) as workers:
        results = list(tqdm(workers.imap_unordered(run_case, todo), total=len(todo), desc="cases", unit="case"))
    rows = summarise(results)
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name, load = "same_fleet" + ("_full" if args.catalog == "full" else ""), ""
    if args.catalog == "full":
        load = ", the full catalogue at neocloud prices (`--catalog full`)"
    if args.overload != 1.0:
        name += f"_overload{args.overload:g}"
        load += f", each fleet under {args.overload:g}x the load it was planned for (`--overload {args.overload:g}`)"
    (args.out / f"{name}.json").write_text(json.dumps({"runs": results, "rows": rows}, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(
        "# Same fleet, three routers\n\nGenerated by `.venv/bin/python bench/economics/same_fleet.py` "
        f"(mean over {args.windows} windows of {args.max_requests} requests, Mélange also with {args.seeds} other "
        f"random seeds{load}; method in its docstring).\n\n" + text + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
