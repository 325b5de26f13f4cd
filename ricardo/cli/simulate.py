"""`ricardo simulate`: replay a trace on a virtual fleet of emulated engines behind a real policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ricardo.profiles.catalog import ProfileBook

from ricardo.defaults import default_slo_ms
from ricardo.errors import InvalidInput, RicardoError


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a trace on a virtual-time fleet behind a routing policy",
        description="Replay a trace in virtual time on a fleet of emulated engines (the same engine model as "
        "`ricardo emulate`), routed by the same decision code as the gateway, and report SLO "
        "attainment and cost. The router is told each request's predicted output length, by the "
        "gateway's own predictor learning online as requests finish (from the prompt where the trace "
        "has text, else from what a gateway knows without it: input tokens and model); --oracle tells "
        "it the true length instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--trace", required=True, help="azure-conv | azure-code | FILE (any trace the load generator reads)")
    p.add_argument(
        "--policy", default="cost-aware", help="cost-aware | melange | round-robin | least-outstanding | cheapest-price"
    )
    p.add_argument(
        "--fleet",
        default="auto",
        help="auto (the planner's fleet for the trace's mix and rate) | cheapest (search the cheapest planner fleet "
        "at which the policy keeps --target of the judged requests within the SLO: what will this traffic cost?) | "
        "FILE (JSON {type: count}) | TYPE=N,TYPE=N (a pair's role: PREFILL>DECODE:prefill=N,PREFILL>DECODE:decode=M)",
    )
    p.add_argument("--target", type=float, default=0.99, help="with --fleet cheapest: share of requests within SLO")
    p.add_argument("--types", help="comma-separated hardware types to plan over (default: every priced type)")
    p.add_argument(
        "--slo-tpot-ms",
        type=float,
        default=default_slo_ms()[1],
        help="TPOT SLO (default: the gateway's). The simulator judges it as the profiles measure it, by latency per "
        "token (request latency / output tokens, Mélange's 'TPOT'), at least the TPOT whenever the TTFT is",
    )
    p.add_argument(
        "--slo-ttft-ms",
        type=float,
        default=default_slo_ms()[0],
        help="TTFT SLO given to the policy (default: the gateway's; requests are judged by latency per token only)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="compress the trace's arrivals by this factor")
    p.add_argument("--rate", type=float, help="arrival rate (req/s) for a trace without timestamps (Poisson)")
    p.add_argument("--start", type=float, default=0.0, help="trace seconds to skip")
    p.add_argument("--duration", type=float, help="seconds of (sped-up) trace to replay (default: all)")
    p.add_argument("--max-requests", type=int, help="replay at most this many requests")
    p.add_argument("--price-set", default="melange", help="melange | aws | gcp | neocloud")
    p.add_argument(
        "--catalog",
        choices=("measured", "full"),
        default="measured",
        help="hardware to plan over: the measured types, or measured + estimated",
    )
    p.add_argument("--headroom", type=float, default=0.0, help="planner over-provisioning for --fleet auto")
    p.add_argument(
        "--planner",
        choices=("ricardo", "exact", "melange"),
        default="ricardo",
        help="planner of --fleet auto: ricardo (each request at its own size, each type sized for the "
        "utilization the cost-aware policy runs it at), exact (own sizes at the profile's operating "
        "point), melange (bucket upper edges at the operating point)",
    )
    p.add_argument(
        "--disaggregated",
        action="store_true",
        help="let the planner choose disaggregated prefill/decode pairs too (role capacities from the engine model); "
        "with --fleet cheapest, the search runs with and without pairs and keeps the cheaper. The JSON gains "
        '"pairs": [{prefill, decode, prefill_replicas, decode_replicas}] beside "fleet" (unified replicas)',
    )
    p.add_argument("--link-gbps", type=float, default=100.0, help="the pairs' KV link, Gb/s")
    p.add_argument(
        "--oracle", action="store_true", help="tell the router each answer's true length instead of a prediction"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except (RicardoError, OSError) as exc:  # bad input (a trace, a fleet, a rate), or an unreadable file
        print(f"ricardo simulate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(_cheapest_text(result) if args.fleet == "cheapest" else _text(result))
    return 0


def load_requests(args: argparse.Namespace):
    from ricardo.emulator.cluster import TraceRequest
    from ricardo.loadgen.traces import read_trace, select, untimed, with_poisson_arrivals

    requests = read_trace(args.trace)
    if untimed(requests):
        if not args.rate:
            raise InvalidInput(f"{args.trace} has no arrival times: give --rate")
        requests = with_poisson_arrivals(requests, args.rate, seed=args.seed)
    elif args.rate:
        raise InvalidInput("--rate is for traces without timestamps; use --speed to scale a timed trace")
    window = select(
        requests, start_s=args.start, duration_s=args.duration, speed=args.speed, max_requests=args.max_requests
    )
    if not window:
        raise InvalidInput("the selected window of the trace is empty")
    return [TraceRequest(r.arrival_s, r.input_tokens, r.output_tokens, r.prompt) for r in window]


def run(args: argparse.Namespace) -> dict:
    if not 0 < args.link_gbps < float("inf"):  # the KV cache's transfer time divides by it
        raise InvalidInput(f"--link-gbps must be a positive number, got {args.link_gbps:g}")
    if args.fleet == "cheapest":
        return cheapest(args)
    return run_fleet(args)


def _types(args: argparse.Namespace, book: ProfileBook) -> list[str]:
    priced = [hw for hw in book.hardware_names() if hw in book.prices]
    if not args.types:
        return priced
    wanted = [book.canonical(name.strip()) for name in args.types.split(",") if name.strip()]
    if not wanted:
        raise InvalidInput(f"--types names no hardware type: {args.types!r}")
    unpriced = [hw for hw in wanted if hw not in book.prices]
    if unpriced:
        raise InvalidInput(f"no price for {', '.join(unpriced)} in price set {args.price_set!r}")
    return wanted


def _sizes(args: argparse.Namespace) -> str:
    return "oracle" if args.oracle else "predicted"


def cheapest(args: argparse.Namespace) -> dict:
    """The cheapest planner fleet at which the policy keeps `--target` of the judged requests within the SLO."""
    from tqdm import tqdm

    from ricardo.emulator.cluster import split_fleet
    from ricardo.emulator.fleet import FleetSearch, Trial, alone_within_slo, book_for_slo, servable
    from ricardo.emulator.sizes import sizes_named
    from ricardo.policies.types import SLO
    from ricardo.profiles.engine_params import engine_catalog

    if not 0 < args.target <= 1:
        raise InvalidInput(f"--target must be in (0, 1], got {args.target:g}")
    requests = load_requests(args)
    book = book_for_slo(args.slo_tpot_ms, price_set=args.price_set, full_catalog=args.catalog == "full")
    types = _types(args, book)
    slo = SLO(args.slo_ttft_ms, args.slo_tpot_ms)
    engines = engine_catalog()
    # judged: the requests some candidate type can serve within the SLO at all (the same for every approach)
    judged = servable(requests, book, types) & alone_within_slo(requests, [engines[hw] for hw in types], slo)
    search = FleetSearch(
        requests, book, engines, slo, judged, args.target, seed=args.seed, sizes=_sizes(args), link_gbps=args.link_gbps
    )
    with tqdm(desc="fleets simulated", unit="fleet", file=sys.stderr, disable=None) as bar:

        def progress(trial: Trial) -> None:
            bar.set_postfix_str(f"x{trial.scale:.3g} ${trial.cost_per_hour:.2f}/h {trial.attainment:.1%}")
            bar.update()

        if args.policy == "cost-aware":  # ricardo's own search: the planner's mix, Mélange's, each type alone, trimmed
            found = search.cheapest_verified(
                args.policy, types, planner=args.planner, on_trial=progress, disaggregated=args.disaggregated
            )
        else:
            found = search.cheapest(args.policy, types, planner=args.planner, on_trial=progress)
            if args.disaggregated:  # with pairs allowed too; the cheaper of the two
                paired = search.cheapest(args.policy, types, planner=args.planner, on_trial=progress, pairs=True)
                found.without_pairs, found.trials = found.best, found.trials + paired.trials
                if paired.best is not None and (
                    found.best is None or paired.best.cost_per_hour < found.best.cost_per_hour
                ):
                    found.best = paired.best
    best = found.best
    unified, pairs = split_fleet(best.fleet) if best else (None, None)
    extra = {}
    if args.disaggregated:
        plain = found.without_pairs
        extra = {
            "without_pairs": {
                "fleet": plain.fleet if plain else None,
                "cost_per_hour": plain.cost_per_hour if plain else None,
                "usd_per_million_tokens": plain.summary["usd_per_million_tokens"] if plain else None,
                "slo_attainment": plain.attainment if plain else None,
            }
        }
    return {
        "trace": args.trace,
        "policy": args.policy,
        "planner": args.planner,
        "price_set": args.price_set,
        "types": types,
        "target": args.target,
        "slo_tpot_ms": args.slo_tpot_ms,
        "fleet": unified,
        "pairs": pairs,
        "cost_per_hour": best.cost_per_hour if best else None,
        "usd_per_million_tokens": best.summary["usd_per_million_tokens"] if best else None,
        "slo_attainment": best.attainment if best else None,  # over the judged requests
        "sizes": sizes_named(_sizes(args)).name,
        "requests": len(requests),
        "judged": int(judged.sum()),
        "refused": len(requests) - int(judged.sum()),
        "trials": len(found.trials),
        "scale": best.scale if best else None,
        "per_pool_requests": best.summary["per_pool_requests"] if best else None,
        "link_gbps": args.link_gbps,
        **extra,
    }


def run_fleet(args: argparse.Namespace) -> dict:
    from ricardo.emulator.cluster import key_hardware, simulate
    from ricardo.emulator.fleet import book_for_slo, plan_fleet
    from ricardo.emulator.sizes import sizes_named
    from ricardo.policies.types import SLO
    from ricardo.profiles.engine_params import engine_catalog

    if args.types and args.fleet != "auto":
        raise InvalidInput("--types chooses what --fleet auto or cheapest plans over; this --fleet names its types")
    requests = load_requests(args)
    book = book_for_slo(args.slo_tpot_ms, price_set=args.price_set, full_catalog=args.catalog == "full")
    if args.fleet == "auto":
        fleet = plan_fleet(
            requests,
            book,
            SLO(args.slo_ttft_ms, args.slo_tpot_ms),
            headroom=args.headroom,
            planner=args.planner,
            disaggregated=args.disaggregated,
            only=_types(args, book),
            link_gbps=args.link_gbps,
        )
    else:
        fleet = _read_fleet(args.fleet, book)
    unknown = [hw for hw in map(key_hardware, fleet) if not book.has(hw)]
    if unknown:
        raise InvalidInput(f"no profile for {', '.join(unknown)}; known: {', '.join(book.hardware_names())}")
    result = simulate(
        requests,
        fleet,
        engine_catalog(),
        book,
        book.prices,
        args.policy,
        SLO(args.slo_ttft_ms, args.slo_tpot_ms),
        seed=args.seed,
        sizes=sizes_named(_sizes(args)),
        link_gbps=args.link_gbps,
    )
    return {"trace": args.trace, "policy": args.policy, "price_set": args.price_set, **result.summary()}


def _read_fleet(spec: str, book) -> dict[str, int]:
    if Path(spec).is_file():
        try:
            raw = json.loads(Path(spec).read_text())
        except ValueError as exc:
            raise InvalidInput(f"--fleet {spec}: not JSON: {exc}") from None
    else:
        raw = {}
        for part in spec.split(","):
            name, _, count = part.partition("=")
            raw[name.strip()] = count
    from ricardo.emulator.cluster import pair_key, parse_key

    def canonical(name: str) -> str:  # a type, or a pair's role "PREFILL>DECODE:prefill|decode"
        parsed = parse_key(name.strip())
        if parsed is None:
            return book.canonical(name.strip())
        return pair_key(book.canonical(parsed[0]), book.canonical(parsed[1]), parsed[2])

    def whole(count: object) -> int:  # a count of replicas: 2, 2.0 or "2"; not 1.7, true or null
        if isinstance(count, bool) or (isinstance(count, float) and not count.is_integer()):
            raise ValueError(count)
        return int(count)  # type: ignore[call-overload]  # a TypeError for what int() does not take

    try:
        if not isinstance(raw, dict):
            raise TypeError(raw)
        fleet = {canonical(name): whole(count) for name, count in raw.items()}
    except (TypeError, ValueError):
        raise InvalidInput(f"--fleet: expected TYPE=N,... or a JSON file of {{type: count}}, got {spec!r}") from None
    if any(n < 0 for n in fleet.values()) or not any(fleet.values()):
        raise InvalidInput("--fleet needs non-negative counts and at least one GPU")
    return fleet


def _pairs_text(pairs: list[dict] | None) -> list[str]:
    return [
        f"{p['prefill_replicas']} x {p['prefill']} prefill + {p['decode_replicas']} x {p['decode']} decode"
        for p in pairs or []
    ]


def _figure(value: float | None, spec: str) -> str:
    """`value` formatted, or "-" where there is none (no request served)."""
    return "-" if value is None else format(value, spec)


def _text(result: dict) -> str:
    fleet = ", ".join([f"{n} x {hw}" for hw, n in result["fleet"].items() if n] + _pairs_text(result.get("pairs")))
    lines = [
        f"{result['trace']} with {result['policy']}: {result['requests']} requests over "
        f"{result['duration_s']:.0f} s on {fleet}",
        f"  SLO attainment (latency per token <= {result['slo_tpot_ms']:g} ms): "
        f"{_figure(result['slo_attainment'], '.2%')}"
        f"  refused (beyond the model's context): {result['refused_context']}, unserved: {result['unserved']}",
        f"  cost: ${result['cost_per_hour']:.2f}/h, ${_figure(result['usd_per_million_tokens'], '.3f')} per 1M tokens",
        "  latency per token ms p50/p90/p99: "
        + "/".join(_figure(result["latency_per_token_ms"][q], ".0f") for q in ("p50", "p90", "p99")),
        "  TTFT ms p50/p90/p99: " + "/".join(_figure(result["ttft_ms"][q], ".0f") for q in ("p50", "p90", "p99")),
        "  requests per pool: " + ", ".join(f"{k}: {v}" for k, v in result["per_pool_requests"].items()),
    ]
    return "\n".join(lines)


def _cheapest_text(result: dict) -> str:
    head = f"{result['trace']} with {result['policy']} (planner {result['planner']}), target {result['target']:.1%}"
    if result["fleet"] is None:
        return f"{head}: no fleet up to the search's limit passes ({result['trials']} fleets simulated)"
    fleet = ", ".join([f"{n} x {hw}" for hw, n in result["fleet"].items() if n] + _pairs_text(result.get("pairs")))
    return "\n".join(
        [
            f"{head}: cheapest fleet {fleet}",
            f"  ${result['cost_per_hour']:.2f}/h, ${result['usd_per_million_tokens']:.3f} per 1M tokens, "
            f"{result['slo_attainment']:.2%} of {result['judged']} judged requests within SLO",
            f"  refused (no type serves them in time, or beyond the context): {result['refused']}; "
            f"{result['trials']} fleets simulated",
        ]
    )
