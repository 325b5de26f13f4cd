"""Damping the scaling hints on the up-and-down ramp: the shipped per-pool damper against three that damp the fleet as a
whole, on the same windows and the same planner (bench/scaling/replay_ramp.py's replay and figures).

Run: .venv/bin/python bench/scaling/dampers.py [--trace PATH] [--window-s 30] [--hold-s 60] [--interval-s 5]
The parameters are the ramp test's (tests/gateway/test_scaling.py, chosen before its first run). Mechanisms, each
"up at once, down after the hold":
- per pool: each pool's highest target of the hold (the Kubernetes HPA's scale-down window; `scaling.Damper`);
- whole fleet: the planner's fleet of highest $/h of the hold, kept whole;
- rate held: the current window's size mix planned at the highest rate of the hold;
- demand held: each bucket of the book at its highest rate of the hold (its sizes from that window), planned once.
Figures as replay_ramp.py's: the desired $/h's correlation with the trailing load and lag behind the centred load,
direction changes (of the desired $/h, and per pool), and the shortest time from a pool's rise to its next fall.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from ricardo.gateway.scaling import NO_TRAFFIC, PoolSpec, ScalingAdvisor, Traffic, merge_summaries, plan_replicas
from ricardo.loadgen.traces import read_trace
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay_ramp as ramp  # the bench beside this one

Fleet = dict[str, int]


def windows(requests, book, window_s: float, interval_s: float) -> list[Traffic]:
    """Each tick's window of traffic, as the advisor sees it."""
    advisor = ScalingAdvisor(window_s=window_s, start=0.0)
    ticks = np.arange(interval_s, requests[-1].arrival_s + interval_s, interval_s)
    seen, next_request = [], 0
    for now in ticks:
        while next_request < len(requests) and requests[next_request].arrival_s <= now:
            r = requests[next_request]
            advisor.observe(r.arrival_s, book.model, r.input_tokens, r.output_tokens)
            next_request += 1
        summaries = list(advisor.summaries(float(now)).values())
        seen.append(merge_summaries(summaries) if summaries else NO_TRAFFIC)  # a gap in the trace: no traffic
    return seen


def held(series: list, hold_samples: int) -> list[list]:
    """For each tick, the items of the ticks in its hold (itself and the `hold_samples - 1` before it)."""
    return [series[max(0, k - hold_samples + 1) : k + 1] for k in range(len(series))]


def per_pool_highest(raws: list[Fleet], hold_samples: int) -> list[Fleet]:
    """Each pool's highest target of the hold on its own (the Kubernetes HPA's scale-down window; shipped until
    the planner-aware damper)."""
    return [{p: max(f[p] for f in recent) for p in recent[-1]} for recent in held(raws, hold_samples)]


def whole_fleet(raws: list[Fleet], prices: dict[str, float], hold_samples: int) -> list[Fleet]:
    return [max(recent, key=lambda f: sum(prices[p] * n for p, n in f.items())) for recent in held(raws, hold_samples)]


def rate_held(traffics: list[Traffic], hold_samples: int) -> list[Traffic]:
    result = []
    for traffic, recent in zip(traffics, held(traffics, hold_samples), strict=True):
        peak = max(t.rate for t in recent)
        scale = peak / traffic.rate if traffic.rate else 0.0
        result.append(replace(traffic, rate=peak, weights=traffic.weights * scale))
    return result


def demand_held(traffics: list[Traffic], book, hold_samples: int) -> list[Traffic]:
    result = []
    for recent in held(traffics, hold_samples):
        grids = [
            book.histogram(t.inputs, t.outputs, t.weights) * t.rate if t.sample_size else np.zeros(book.shape)
            for t in recent
        ]
        busiest = np.argmax(np.stack(grids), axis=0)
        parts = []
        for k, t in enumerate(recent):
            if t.sample_size:
                cells = book.buckets(t.inputs, t.outputs)
                keep = busiest[cells[0], cells[1]] == k
                parts.append((t.inputs[keep], t.outputs[keep], t.weights[keep]))
        if not parts:
            result.append(NO_TRAFFIC)
            continue
        inputs, outputs, weights = (np.concatenate(column) for column in zip(*parts, strict=True))
        result.append(Traffic(float(weights.sum()), 0, inputs, outputs, weights))
    return result


def planned(traffics: list[Traffic], book, pools: list[PoolSpec], slo: SLO) -> list[Fleet]:
    return [
        {
            p: r["unified"]
            for p, r in plan_replicas(t if t.sample_size else NO_TRAFFIC, book, pools, slo).replicas.items()
        }
        for t in traffics
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(ramp.TRACE))
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=5.0)
    args = parser.parse_args()
    book = load_default_book(price_set="melange", include_estimated=True)  # the gateway's book
    requests = read_trace(args.trace)
    run = ramp.replay(
        requests,
        book,
        window_s=args.window_s,
        hold_s=args.hold_s,
        interval_s=args.interval_s,
        headroom=0.0,
        compare=False,
    )
    prices = {hw: book.price(hw) for hw in ramp.HARDWARE}
    pools = [PoolSpec(hw, hw, prices[hw], model=book.model) for hw in ramp.HARDWARE]
    hold_samples = round(args.hold_s / args.interval_s)
    raws = [{hw: h.raw[hw]["unified"] for hw in ramp.HARDWARE} for h in run.hints]
    traffics = windows(requests, book, args.window_s, args.interval_s)
    fleets = {
        "kept, replanned (shipped)": [{hw: h.desired[hw]["unified"] for hw in ramp.HARDWARE} for h in run.hints],
        "per pool highest": per_pool_highest(raws, hold_samples),
        "whole fleet": whole_fleet(raws, prices, hold_samples),
        "rate held": planned(rate_held(traffics, hold_samples), book, pools, ramp.DEFAULT_SLO),
        "demand held": planned(demand_held(traffics, book, hold_samples), book, pools, ramp.DEFAULT_SLO),
        "undamped": raws,
    }
    print(f"{len(requests)} requests, window {args.window_s:g} s, hold {args.hold_s:g} s, every {args.interval_s:g} s")
    print(f"{'':26} {'mean $/h':>9} {'corr':>6} {'lag s':>6} {'changes':>8} {'rise->fall s':>13}  changes per pool")
    for name, series in fleets.items():
        desired = [
            replace(
                h,
                desired={p: {"unified": n} for p, n in f.items()},
                cost_per_hour=sum(prices[p] * n for p, n in f.items()),
            )
            for h, f in zip(run.hints, series, strict=True)
        ]
        f = ramp.figures(replace(run, hints=desired))
        print(
            f"{name:26} {f['mean_cost_per_hour_desired']:9.2f} {f['corr_cost_vs_trailing_load']:6.3f} "
            f"{f['lag_vs_centred_load_s']:6.0f} "
            f"{f['direction_changes_desired_cost']:4d}/{f['direction_changes_load']:<3d} "
            f"{f['shortest_rise_to_fall_s'] or 0:13.0f}  {f['direction_changes_desired_per_pool']}"
        )


if __name__ == "__main__":
    main()
