"""`ricardo plan`: the cheapest GPU fleet for a request-size mix and a rate (the Mélange ILP)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ricardo.errors import InvalidInput, RicardoError

if TYPE_CHECKING:  # imported where used: `ricardo --help` stays quick
    import numpy as np

    from ricardo.profiles.catalog import ProfileBook


class WorkloadError(InvalidInput):
    """The workload cannot be read."""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plan",
        help="cheapest GPU fleet for a request-size mix and rate (Mélange ILP)",
        description="Solve the Mélange ILP: split each request-size bucket's rate into slices, give every "
        "slice to one GPU type, and find the integer GPU counts of least $/h whose profiled "
        "capacity covers the load within the profile's SLO. Also prints each single-type fleet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--profile",
        action="append",
        type=Path,
        metavar="FILE",
        help="profile file (Mélange or ricardo format, JSON/YAML); repeat to merge, first wins "
        "(default: the shipped Llama-2-7B profile)",
    )
    p.add_argument(
        "--include-estimated",
        action="store_true",
        help="with the shipped profile: add the estimated tables of hardware that was not measured",
    )
    p.add_argument(
        "--workload",
        required=True,
        help="a mix named in the profile (e.g. arena) | a bundled trace (azure-conv, azure-code) | FILE: "
        'JSON fraction histogram ([[...]] or {"fraction": [[...]]}), or a trace the load '
        "generator reads: Azure CSV, input,output CSV without header, ShareGPT stats CSV, "
        "AIBrix/ricardo JSONL",
    )
    p.add_argument("--rate", type=float, help="total requests/s (default for a timestamped trace: its mean rate)")
    p.add_argument("--slice-factor", type=int, default=8, help="slices per bucket, each served by one GPU type")
    p.add_argument("--only", help="comma-separated GPU types to choose from, e.g. A10G or L4,A100-80GB")
    p.add_argument("--price-set", default="melange", help="melange | aws | gcp | neocloud | a set named in the profile")
    p.add_argument(
        "--price", action="append", default=[], metavar="TYPE=USD", help="override one type's $/h (repeatable)"
    )
    p.add_argument("--headroom", type=float, default=0.0, help="keep each type's load <= (1 - F) of its GPUs")
    p.add_argument(
        "--drop-unservable",
        action="store_true",
        help="leave out requests whose size no candidate type can serve (reported as unserved_rate)",
    )
    p.add_argument(
        "--planner",
        choices=("ricardo", "exact", "melange"),
        help="how a request is charged (policies/sizing.py): ricardo = its own size, interpolated between the "
        "profile's sizes, at the utilization the cost-aware router runs each type at (what the gateway's "
        "scaling hints and the fleet search use); exact = its own size at the profile's operating point; "
        "melange = its bucket's upper edge (Mélange's rule). Default: ricardo with a trace, melange with a "
        "histogram (which has no sizes)",
    )
    p.add_argument(
        "--disaggregated",
        action="store_true",
        help="also consider disaggregated prefill/decode pairs of the candidate types (role capacities from the "
        'engine model, source: estimated); the JSON gains "pairs": [{prefill, decode, prefill_replicas, '
        "decode_replicas}]. Needs a trace as --workload",
    )
    p.add_argument("--link-gbps", type=float, default=100.0, help="with --disaggregated: the pairs' KV link, Gb/s")
    p.add_argument("--time-limit", type=float, default=10.0, help="solver seconds before returning the best found")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except (RicardoError, OSError) as exc:  # bad input (a workload, a profile, a price), or an unreadable file
        print(f"ricardo plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(_text(result))
    return 0


def run(args: argparse.Namespace) -> dict:
    from ricardo.policies.planner import PlanError, plan
    from ricardo.policies.sizing import pair_seconds, planner_seconds
    from ricardo.policies.types import SLO
    from ricardo.profiles.catalog import default_profile_paths, load_book, with_shipped_engines

    if args.rate is not None and not 0 <= args.rate < math.inf:  # NaN too
        raise InvalidInput(f"--rate must be >= 0 and finite, got {args.rate:g}")
    if args.profile and args.include_estimated:
        raise InvalidInput(
            "--include-estimated adds to the shipped profile; with --profile, list the estimated "
            "file as another --profile"
        )
    paths = args.profile or default_profile_paths(include_estimated=args.include_estimated)
    book = load_book(*paths, price_set=args.price_set)
    prices = book.prices | _overrides(args.price, book)
    fractions, trace_rate, described, sizes = read_workload(args.workload, book)
    planner = args.planner or ("melange" if sizes is None else "ricardo")
    if planner != "melange" and sizes is None:
        raise InvalidInput(f"--planner {planner} needs a trace as --workload (a histogram has no request sizes)")
    rate = args.rate if args.rate is not None else trace_rate
    if rate is None:
        raise InvalidInput(f"--rate is needed: workload {args.workload!r} has no arrival times")
    only = [t.strip() for t in args.only.split(",") if t.strip()] if args.only else None
    rates = fractions * rate
    options = dict(slice_factor=args.slice_factor, headroom=args.headroom, time_limit_s=args.time_limit)
    slo = SLO(book.slo_ttft_ms or 10_000.0, book.slo_tpot_ms)
    if sizes is not None:
        options["request_seconds"] = planner_seconds(book, *sizes, slo, planner)
    candidates = []
    if args.disaggregated:
        if sizes is None or planner == "melange":
            raise InvalidInput("--disaggregated needs a trace as --workload and the ricardo or exact planner")
        if not args.link_gbps > 0:  # NaN too
            raise InvalidInput(f"--link-gbps must be > 0, got {args.link_gbps:g}")
        book = with_shipped_engines(book)  # the role model reads the types' step costs
        types = only or [hw for hw in book.hardware_names() if hw in prices]
        candidates = pair_seconds(
            book, *sizes, slo, [book.canonical(hw) for hw in types], planner, link_gbps=args.link_gbps, prices=prices
        )
    mixed = plan(rates, book, prices, only=only, drop_unservable=args.drop_unservable, pairs=candidates, **options)
    served = rates.copy()
    if mixed.unserved_rate:
        covered = list(mixed.assignment.values()) + [pair["assignment"] for pair in mixed.pairs]
        served[sum(covered) == 0] = 0.0
    single: dict[str, dict[str, float] | None] = {}
    for hw in mixed.allocation:
        try:
            alone = plan(served, book, prices, only=[hw], **options)
            single[hw] = {"count": alone.allocation[hw], "cost_per_hour": round(alone.cost_per_hour, 6)}
        except PlanError:
            single[hw] = None  # cannot serve every bucket the mixed fleet serves
    out = mixed.to_dict()
    out["assignment"] = {hw: a for hw, a in out["assignment"].items() if mixed.allocation[hw]}
    return {
        "allocation": out.pop("allocation"),
        "cost_per_hour": out.pop("cost_per_hour"),
        **out,
        "single_type": single,
        "rate": rate,
        "workload": described,
        "price_set": args.price_set,
        "prices": {hw: prices[hw] for hw in mixed.allocation},
        "slo_tpot_ms": book.slo_tpot_ms,
        "planner": planner,
        "sizes": "bucket upper edges" if planner == "melange" else "exact (interpolated)",
        "profiles": [str(p) for p in paths],
    }


def _overrides(specs: list[str], book: ProfileBook) -> dict[str, float]:
    prices = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            usd = float(value)
        except ValueError:
            usd = -1.0
        if not 0 <= usd < math.inf:  # NaN fails too
            raise InvalidInput(f"--price expects TYPE=USD with USD >= 0, got {spec!r}")
        prices[book.canonical(name.strip())] = usd
    return prices


def read_workload(
    spec: str, book: ProfileBook
) -> tuple[np.ndarray, float | None, str, tuple[list[int], list[int]] | None]:
    """(fractions on the book's grid, the trace's mean rate or None, a description, a trace's (input, output)
    lengths or None)."""
    if spec in book.workload_names():
        return book.workload(spec), None, f"profile mix {spec!r}", None
    path = Path(spec)
    if not path.is_file():
        from ricardo.loadgen.traces import NAMED_TRACES

        if spec in NAMED_TRACES:
            return _from_requests(spec, book)
        known = ", ".join([*book.workload_names(), *NAMED_TRACES])
        raise WorkloadError(f"workload {spec!r} is neither a file nor a known name ({known})")
    if path.suffix.lower() == ".json":
        return _histogram(path, book), None, f"histogram {path}", None
    return _from_requests(spec, book)


def _from_requests(spec: str, book: ProfileBook) -> tuple[np.ndarray, float | None, str, tuple[list[int], list[int]]]:
    from ricardo.loadgen.traces import TraceError, read_trace, untimed

    try:
        requests = read_trace(spec)
    except TraceError as exc:
        raise WorkloadError(str(exc)) from None
    span = requests[-1].arrival_s - requests[0].arrival_s
    rate = (len(requests) - 1) / span if span > 0 and not untimed(requests) else None
    sizes = [r.input_tokens for r in requests], [r.output_tokens for r in requests]
    return book.histogram(*sizes), rate, f"{len(requests)} requests from {spec}", sizes


def _histogram(path: Path, book: ProfileBook) -> np.ndarray:
    import numpy as np

    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise WorkloadError(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("fraction")
    try:
        rows = [[float(x) for x in row] for row in data]
    except (TypeError, ValueError):
        rows = []
    if not rows:
        raise WorkloadError(f'{path}: expected a 2-D list of fractions or {{"fraction": [[...]]}}')
    n_in, n_out = book.shape
    if len(rows) > n_in or any(len(r) > n_out for r in rows):
        raise WorkloadError(f"{path}: the histogram must fit the profile's {n_in} x {n_out} buckets")
    fractions = np.zeros(book.shape)
    for i, row in enumerate(rows):
        fractions[i, : len(row)] = row
    total = fractions.sum()
    if (fractions < 0).any() or not np.isfinite(total) or total <= 0:
        raise WorkloadError(f"{path}: fractions must be >= 0 with a positive sum")
    return fractions / total


def _text(result: dict) -> str:
    fleet = ", ".join(f"{n} x {hw}" for hw, n in result["allocation"].items() if n) or "nothing"
    lines = [
        f"{result['workload']} at {result['rate']:.4g} req/s, {result['price_set']} prices, "
        f"TPOT SLO {result['slo_tpot_ms']:g} ms",
        f"mixed fleet: {fleet}: ${result['cost_per_hour']:.2f}/h"
        f" ({'optimal' if result['optimal'] else 'best found, not proven optimal'};"
        f" solved in {result['solve_seconds'] * 1000:.0f} ms)",
    ]
    if result["unserved_rate"]:
        lines.append(f"left out: {result['unserved_rate']:.4g} req/s no candidate type can serve")
    for pair in result.get("pairs", []):
        lines.append(
            f"  pair: {pair['prefill_replicas']} x {pair['prefill']} prefill + "
            f"{pair['decode_replicas']} x {pair['decode']} decode"
        )
    for hw, alone in result["single_type"].items():
        text = (
            "cannot serve every size" if alone is None else f"{alone['count']} x {hw}: ${alone['cost_per_hour']:.2f}/h"
        )
        lines.append(f"  {hw}-only: {text}")
    return "\n".join(lines)
