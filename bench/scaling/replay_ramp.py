"""Scaling hints on an up-and-down ramp: a trace replayed in virtual time through the ScalingAdvisor.

Run: .venv/bin/python bench/scaling/replay_ramp.py [out.png] [--trace PATH] [--window-s 30] [--hold-s 60]
     [--interval-s 5] [--headroom 0] [--slo-tpot-ms 120] [--slo-ttft-ms 2000] [--price-set melange]
Every request is observed at its arrival time; every --interval-s the advisor computes hints for four
pools (L4, A10G, A100-80GB, H100 at the price set's prices) at the SLO (the gateway's default), and an
ideal autoscaler follows them (current replicas = last desired). Prints how the desired fleet's $/h follows
the load (correlation, lag, direction changes), the compute times, and writes a plot (default
bench/scaling/ramp.png). For comparison on the same windows, it also plans each tick undamped under the other
sizing rules of policies/sizing.py: "exact" (each request its own size at the profile's operating point) and
"melange" (bucket upper edges; with --headroom 0.1 the hints' rule before they used sizing.py).

The load reference is the trace's arrival rate smoothed over the window: trailing (what an observer
knows at t) for the correlation, centred (the load itself, without the trailing average's delay of
window/2) for the lag. Direction changes: the hints' every reversal; the load's once it has moved more
than 5 % of its range from its last extreme (a deadband against arrival noise).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ricardo.gateway.scaling import Hints, PoolSpec, ScalingAdvisor, merge_summaries
from ricardo.loadgen.traces import read_trace
from ricardo.policies.sizing import plan_sizes
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook, load_default_book

HERE = Path(__file__).resolve().parent
TRACE = HERE.parents[1] / ".." / "shared" / "data" / "prompts" / "sharegpt_aibrix" / "8min_up_and_down.jsonl"
HARDWARE = ("L4", "A10G", "A100-80GB", "H100")
DEFAULT_SLO = SLO(2000.0, 120.0)  # the gateway's default (config `slo`)
OTHER_RULES = {"exact": 0.0, "melange": 0.0, "melange+10%": 0.1}  # rule (headroom): planned undamped for comparison
LOAD_DEADBAND = 0.05  # of the load's range


@dataclass(frozen=True)
class Replay:
    arrivals: np.ndarray  # s, sorted
    ticks: np.ndarray  # s, when hints were computed
    hints: list[Hints]
    compute_seconds: np.ndarray  # wall time of each `compute`
    other_costs: dict[str, np.ndarray]  # rule -> undamped $/h of each tick's window under that rule
    window_s: float
    hold_s: float
    interval_s: float

    def desired(self, pool: str) -> np.ndarray:
        return np.array([sum(h.desired[pool].values()) for h in self.hints])

    def raw(self, pool: str) -> np.ndarray:
        return np.array([sum(h.raw[pool].values()) for h in self.hints])

    @property
    def cost(self) -> np.ndarray:
        return np.array([h.cost_per_hour for h in self.hints])

    @property
    def raw_cost(self) -> np.ndarray:
        prices = self.hints[0].inputs["pools"]
        return sum(prices[pool]["price_per_hour"] * self.raw(pool) for pool in prices)


def replay(
    requests,
    book: ProfileBook,
    *,
    window_s: float,
    hold_s: float,
    interval_s: float,
    headroom: float,
    slo: SLO = DEFAULT_SLO,
    compare: bool = True,
) -> Replay:
    advisor = ScalingAdvisor(window_s=window_s, scale_down_hold_s=hold_s, headroom=headroom, start=0.0)
    arrivals = np.array([r.arrival_s for r in requests])
    ticks = np.arange(interval_s, arrivals[-1] + interval_s, interval_s)
    current = dict.fromkeys(HARDWARE, 0)
    hints, seconds, next_request = [], [], 0
    others: dict[str, list[float]] = {rule: [] for rule in OTHER_RULES} if compare else {}
    for now in ticks:
        while next_request < len(requests) and requests[next_request].arrival_s <= now:
            r = requests[next_request]
            advisor.observe(r.arrival_s, book.model, r.input_tokens, r.output_tokens)
            next_request += 1
        pools = [PoolSpec(hw, hw, book.price(hw), current[hw], model=book.model) for hw in HARDWARE]
        started = time.perf_counter()
        summaries = advisor.summaries(float(now))
        hint = advisor.compute(float(now), pools, slo, {book.model: book}, own=summaries)
        seconds.append(time.perf_counter() - started)
        hints.append(hint)
        current = {pool: sum(roles.values()) for pool, roles in hint.desired.items()}
        if compare:
            traffic = merge_summaries(list(summaries.values()))
            for rule, rule_headroom in OTHER_RULES.items():
                fleet = plan_sizes(
                    book,
                    traffic.inputs,
                    traffic.outputs,
                    traffic.rate,
                    slo,
                    rule.split("+")[0],
                    weights=traffic.weights,
                    only=HARDWARE,
                    headroom=rule_headroom,
                )
                others[rule].append(fleet.cost_per_hour)
    return Replay(
        arrivals,
        ticks,
        hints,
        np.array(seconds),
        {rule: np.array(costs) for rule, costs in others.items()},
        window_s,
        hold_s,
        interval_s,
    )


def arrival_rate(arrivals: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Arrivals per second in (start, end], each interval clipped to the trace's span."""
    starts, ends = np.maximum(starts, 0.0), np.minimum(ends, arrivals[-1])
    counts = np.searchsorted(arrivals, ends, side="right") - np.searchsorted(arrivals, starts, side="right")
    return counts / np.maximum(ends - starts, 1e-9)


def direction_changes(series: np.ndarray, deadband: float = 0.0) -> int:
    """Reversals of a series, one counted once it has moved more than `deadband` back from its last extreme."""
    changes, direction, extreme = 0, 0, series[0]
    for x in series[1:]:
        if direction * (x - extreme) > 0 or (direction == 0 and abs(x - extreme) > deadband):
            direction, extreme = (direction or int(np.sign(x - extreme))), x
        elif direction and direction * (extreme - x) > deadband:
            changes, direction, extreme = changes + 1, -direction, x
    return changes


def best_lag(signal: np.ndarray, reference: np.ndarray, max_shift: int) -> tuple[int, float]:
    """(shift s in samples, correlation) maximising corr(signal[k + s], reference[k]): s > 0 = signal lags."""
    n = len(signal)
    scored = []
    for s in range(-max_shift, max_shift + 1):
        a, b = (signal[s:], reference[: n - s]) if s >= 0 else (signal[: n + s], reference[-s:])
        scored.append((float(np.corrcoef(a, b)[0, 1]), s))
    corr, shift = max(scored)
    return shift, corr


def figures(run: Replay) -> dict:
    t, w = run.ticks, run.window_s
    trailing = arrival_rate(run.arrivals, t - w, t)
    centred = arrival_rate(run.arrivals, t - w / 2, t + w / 2)
    cost = run.cost
    max_shift = round((run.window_s + run.hold_s) / run.interval_s)
    hold_samples = round(run.hold_s / run.interval_s)
    lag_centred, corr_centred = best_lag(cost, centred, max_shift)
    lag_trailing, _ = best_lag(cost, trailing, max_shift)
    deadband = LOAD_DEADBAND * float(np.ptp(trailing))
    planned = [next(iter(h.planner.values())) for h in run.hints]  # the one model's
    solve = np.array([p["solve_seconds"] for p in planned])
    return {
        "requests": len(run.arrivals),
        "duration_s": float(run.arrivals[-1]),
        "computes": len(t),
        "peak_load_rps": float(trailing.max()),
        "peak_cost_per_hour": float(cost.max()),
        "mean_cost_per_hour_desired": float(cost.mean()),
        "mean_cost_per_hour_undamped": float(run.raw_cost.mean()),
        "mean_cost_per_hour_undamped_held": float(held_max(run.raw_cost, hold_samples).mean()),
        "corr_cost_vs_trailing_load": float(np.corrcoef(cost, trailing)[0, 1]),
        "corr_undamped_cost_vs_trailing_load": float(np.corrcoef(run.raw_cost, trailing)[0, 1]),
        "lag_vs_centred_load_s": lag_centred * run.interval_s,
        "corr_at_that_lag": corr_centred,
        "lag_vs_trailing_load_s": lag_trailing * run.interval_s,
        "peak_time_lag_s": float(t[np.argmax(cost)] - t[np.argmax(centred)]),
        "direction_changes_load": direction_changes(trailing, deadband),
        "direction_changes_load_no_deadband": direction_changes(trailing),
        "direction_changes_desired_cost": direction_changes(cost),
        "direction_changes_raw_cost": direction_changes(run.raw_cost),
        "direction_changes_desired_per_pool": {hw: direction_changes(run.desired(hw)) for hw in HARDWARE},
        "direction_changes_raw_per_pool": {hw: direction_changes(run.raw(hw)) for hw in HARDWARE},
        "shortest_rise_to_fall_s": shortest_rise_to_fall(run),
        **{f"mean_cost_per_hour_undamped_{rule}": float(costs.mean()) for rule, costs in run.other_costs.items()},
        **{
            f"corr_undamped_cost_vs_trailing_load_{rule}": float(np.corrcoef(costs, trailing)[0, 1])
            for rule, costs in run.other_costs.items()
        },
        "sample_size_median": float(np.median([p["sample_size"] for p in planned])),
        "sample_size_max": max(p["sample_size"] for p in planned),
        "compute_ms_median": float(np.median(run.compute_seconds) * 1e3),
        "compute_ms_max": float(run.compute_seconds.max() * 1e3),
        "solve_ms_median": float(np.median(solve) * 1e3),
        "solve_ms_max": float(solve.max() * 1e3),
        "all_optimal": all(p["optimal"] for p in planned),
    }


def held_max(series: np.ndarray, samples: int) -> np.ndarray:
    """The max of each sample and the `samples - 1` before it: what holding the whole fleet would cost."""
    return np.array([series[max(0, k - samples + 1) : k + 1].max() for k in range(len(series))])


def shortest_rise_to_fall(run: Replay) -> float | None:
    """Over all pools, the shortest time from a rise of desired replicas to the next fall (None: no fall)."""
    gaps = []
    for hw in HARDWARE:
        steps = np.diff(run.desired(hw))
        last_rise = None
        for k, step in enumerate(steps, start=1):
            if step > 0:
                last_rise = run.ticks[k]
            elif step < 0 and last_rise is not None:
                gaps.append(float(run.ticks[k] - last_rise))
                last_rise = None
    return min(gaps) if gaps else None


def plot(run: Replay, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = run.ticks
    bins = np.arange(0.0, run.arrivals[-1] + run.interval_s, run.interval_s)
    binned, _ = np.histogram(run.arrivals, bins=bins)
    fig, (load_ax, fleet_ax, cost_ax) = plt.subplots(3, 1, sharex=True, figsize=(9, 8), constrained_layout=True)
    load_ax.step(
        bins[1:], binned / run.interval_s, where="pre", color="0.75", lw=1, label=f"arrivals per {run.interval_s:g} s"
    )
    load_ax.plot(
        t,
        arrival_rate(run.arrivals, t - run.window_s, t),
        color="k",
        lw=2,
        label=f"{run.window_s:g} s window (what the advisor sees)",
    )
    load_ax.set_ylabel("load (req/s)")
    load_ax.legend(loc="upper right", fontsize=8)
    load_ax.set_title(
        "Scaling hints on ShareGPT, 8-minute up-and-down ramp "
        f"(hold {run.hold_s:g} s, planner {run.hints[0].inputs['planner']}, "
        f"headroom {run.hints[0].inputs['headroom']:g})",
        fontsize=10,
    )

    fleet_ax.stackplot(t, [run.desired(hw) for hw in HARDWARE], labels=HARDWARE, step="post", alpha=0.85)
    fleet_ax.step(
        t, sum(run.raw(hw) for hw in HARDWARE), where="post", color="k", ls="--", lw=1, label="undamped total"
    )
    fleet_ax.set_ylabel("desired replicas")
    fleet_ax.set_ylim(0, 1.3 * max(sum(run.desired(hw) for hw in HARDWARE)))
    fleet_ax.legend(loc="upper right", fontsize=8, ncol=5)

    cost_ax.step(t, run.cost, where="post", color="tab:red", lw=2, label="desired fleet")
    cost_ax.step(t, run.raw_cost, where="post", color="tab:red", ls="--", lw=1, alpha=0.6, label="undamped")
    cost_ax.set_ylabel("$/h")
    cost_ax.set_xlabel("time (s)")
    cost_ax.legend(loc="upper right", fontsize=8)
    for ax in (load_ax, fleet_ax, cost_ax):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, t[-1])
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE / "ramp.png")
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--headroom", type=float, default=0.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=DEFAULT_SLO.tpot_ms)
    parser.add_argument("--slo-ttft-ms", type=float, default=DEFAULT_SLO.ttft_ms)
    parser.add_argument("--price-set", default="melange")
    args = parser.parse_args()

    slo = SLO(args.slo_ttft_ms, args.slo_tpot_ms)
    # the gateway's book: measured tables, estimated ones beside them (the planner's slack target looks at every type)
    book = load_default_book(price_set=args.price_set, include_estimated=True, slo_tpot_ms=args.slo_tpot_ms)
    run = replay(
        read_trace(args.trace),
        book,
        window_s=args.window_s,
        hold_s=args.hold_s,
        interval_s=args.interval_s,
        headroom=args.headroom,
        slo=slo,
    )
    print(
        f"window {args.window_s:g} s, hold {args.hold_s:g} s, every {args.interval_s:g} s, planner ricardo, "
        f"headroom {args.headroom:g}, SLO TTFT {slo.ttft_ms:g} ms TPOT {slo.tpot_ms:g} ms, "
        f"{args.price_set} prices {book.prices}"
    )
    for name, value in figures(run).items():
        print(f"  {name:36} {value:.3f}" if isinstance(value, float) else f"  {name:36} {value}")
    plot(run, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
