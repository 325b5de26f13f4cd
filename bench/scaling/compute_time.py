"""What one scaling tick costs the gateway: the window summary (on the event loop) and the hints (sizing + solve,
off the loop), with the event loop's lag while the hints are computed in a thread, as the scaling loop does.

Run: .venv/bin/python bench/scaling/compute_time.py [--trace azure-conv] [--rate 300] [--replicas 2] [--repeat 5]
A window of 30 s at --rate req/s (sizes from the trace, in order) on each of --replicas replicas, merged as the
lease holder merges them (each shares at most 1,000 sizes; the planner charges at most 2,000); five pool types
(L4, A10G, A100-80GB, H100, L40S) at the price set's (AWS by default), the gateway's book and default SLO (120 ms TPOT).
The loop's lag is the overshoot of a 1 ms sleep, measured the same way with no tick running (the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from ricardo.gateway.scaling import PoolSpec, ScalingAdvisor
from ricardo.loadgen.traces import read_trace
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book

HARDWARE = ("L4", "A10G", "A100-80GB", "H100", "L40S")
WINDOW_S = 30.0
SLO_DEFAULT = SLO(2000.0, 120.0)


async def lag_while(work, seconds: float | None = None) -> tuple[float, np.ndarray]:
    """(wall seconds of `work` run in a thread, or `seconds` of nothing; the loop's lags in that time, s)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    if work is None:
        await asyncio.sleep(seconds or 0.0)
    else:
        await asyncio.to_thread(work)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    return elapsed, np.array(lags)


async def main_async(args: argparse.Namespace) -> None:
    book = load_default_book(price_set=args.price_set, include_estimated=True)
    requests = read_trace(args.trace)
    per_window = round(args.rate * WINDOW_S)
    advisors = [ScalingAdvisor(window_s=WINDOW_S, start=0.0) for _ in range(args.replicas)]
    for k in range(per_window * args.replicas):  # round-robin over the replicas, in arrival order
        r = requests[k % len(requests)]
        t = k / (args.rate * args.replicas)
        advisors[k % args.replicas].observe(t, book.model, r.input_tokens, r.output_tokens)
    now = WINDOW_S
    leader, others = advisors[0], advisors[1:]
    pools = [PoolSpec(hw, hw, book.price(hw), model=book.model) for hw in HARDWARE]

    summary_ms, compute_s, lags = [], [], []
    hints = None
    for _ in range(args.repeat):
        started = time.perf_counter()
        own = leader.summaries(now)
        summary_ms.append((time.perf_counter() - started) * 1e3)
        extra = [a.summaries(now) for a in others]

        def work(own=own, extra=extra) -> None:
            nonlocal hints
            hints = leader.compute(now, pools, SLO_DEFAULT, {book.model: book}, own=own, extra_summaries=extra)

        elapsed, tick_lags = await lag_while(work)
        compute_s.append(elapsed)
        lags.append(tick_lags)
    _, idle_lags = await lag_while(None, float(np.mean(compute_s)))
    assert hints is not None
    planned = hints.planner[book.model]
    busy = np.concatenate(lags)
    print(
        f"{args.replicas} replica(s) x {per_window} requests in {WINDOW_S:g} s ({args.trace} sizes), "
        f"{len(HARDWARE)} pool types, {args.price_set} prices, SLO TPOT {SLO_DEFAULT.tpot_ms:g} ms"
    )
    print(f"  sizes planned                  {planned['sample_size']} (of {hints.inputs['requests']} requests)")
    print(f"  fleet                          {planned['allocation']}  ${planned['cost_per_hour']:.2f}/h")
    print(f"  summary on the loop, ms        median {np.median(summary_ms):.1f}, max {max(summary_ms):.1f}")
    print(f"  hints in a thread, ms          median {np.median(compute_s) * 1e3:.0f}, max {max(compute_s) * 1e3:.0f}")
    print(f"    of which sizing + solve, ms  {planned['plan_seconds'] * 1e3:.0f} (last tick)")
    print(f"    of which solve, ms           {planned['solve_seconds'] * 1e3:.0f} (last tick)")
    print(
        f"  loop lag during, ms            p50 {np.median(busy) * 1e3:.2f}, p99 {np.quantile(busy, 0.99) * 1e3:.2f}, "
        f"max {busy.max() * 1e3:.2f}"
    )
    print(
        f"  loop lag idle, ms              p50 {np.median(idle_lags) * 1e3:.2f}, "
        f"p99 {np.quantile(idle_lags, 0.99) * 1e3:.2f}, max {idle_lags.max() * 1e3:.2f}"
    )
    print(f"  p99 lag ratio during / idle    {np.quantile(busy, 0.99) / np.quantile(idle_lags, 0.99):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="azure-conv")
    parser.add_argument("--rate", type=float, default=300.0, help="req/s per replica")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--price-set", default="aws", help="one with a price for each of the five types")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
