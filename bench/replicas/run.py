"""Gateway replicas that do not share their in-flight counts, in front of one fleet: what the backends' own
/metrics (`external_load`, policies/external.py) change.

    .venv/bin/python bench/replicas/run.py [--gateways 3] [--load 1.2] [--duration 60] [--speed 2]
        [--baseline DIR] [--out results.json]

The fleet: two pools of one emulated A10G each, `cheap` at $1/h and `dear` at $2/h (`ricardo emulate`, `--speed`
times real time). The work: the Azure conversation trace's sizes, Poisson arrivals at `--load` times what *one*
replica serves within SLO (bench/overload's capacity), streamed by the load generator and dealt round-robin over
`--gateways` replicas of `ricardo serve` (cost-aware, no Redis: a replica's ledger counts only its own requests, as
with several replicas behind a load balancer). Each replica alone sees 1/N of the load on `cheap` and would keep
sending there; the backends' pages show all of it. Settings, each replaying the same requests at the same times:
- `1 gateway`: one replica takes everything (it sees all the load itself): the reference;
- `N gateways`: this tree's code;
- `N gateways, baseline`: the code of another tree (`--baseline DIR`, e.g. `git archive main ricardo | tar -x -C
  DIR`), for the same setting before the change.
Reported per setting: share of requests served by `cheap`, SLO attainment (120 ms per output token as latency /
output tokens, 2 s TTFT, in emulated time), latency per token p50 / p90, TTFT p90 and the mean actual $ per request.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from ricardo.cli.demo import ricardo_command, wait_ready
from ricardo.loadgen.replay import ReplayConfig, RequestRecord, replay
from ricardo.loadgen.traces import TraceRequest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("overload", HERE.parent / "overload" / "run.py")
assert _spec is not None and _spec.loader is not None
overload = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overload)

HARDWARE = "A10G"
PRICES = {"cheap": 1.0, "dear": 2.0}


def run_setting(
    name: str, gateways: int, base: dict, requests: list[TraceRequest], work: Path, baseline: str | None
) -> list[RequestRecord]:
    env = {**os.environ, "PYTHONPATH": baseline} if baseline else None
    ports = [overload.free_port() for _ in range(gateways)]
    processes = []
    try:
        for k, port in enumerate(ports):
            path = work / f"gateway-{name.replace(' ', '_')}-{k}.yaml"
            path.write_text(yaml.safe_dump({**base, "port": port}))
            with open(path.with_suffix(".log"), "w") as log:
                processes.append(
                    subprocess.Popen(
                        ricardo_command("serve", "--config", str(path)),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=baseline,  # `python -c` looks in its working directory first
                    )
                )
        for port, process in zip(ports, processes, strict=True):
            wait_ready(f"http://127.0.0.1:{port}/readyz", process, "a gateway")
        shares = [requests[k::gateways] for k in range(gateways)]

        async def all_replays() -> list:
            return await asyncio.gather(
                *(
                    replay(
                        share,
                        ReplayConfig(
                            base_url=f"http://127.0.0.1:{port}", progress=False, timeout_s=600, drain_timeout_s=30
                        ),
                    )
                    for share, port in zip(shares, ports, strict=True)
                )
            )

        results = asyncio.run(all_replays())
    finally:
        for process in processes:
            overload.stop(process)
    return [record for result in results for record in result.records]


def summary(name: str, records: list[RequestRecord], requests: list[TraceRequest], speed: float) -> dict:
    row = overload.summarize(name, records, requests, speed)
    served = [r for r in records if r.pool is not None and r.outcome == "ok"]
    costs = [r.cost_usd for r in served if r.cost_usd is not None]
    row["cheap_share"] = sum(r.pool == "cheap" for r in served) / len(served) if served else None
    row["mean_cost_usd"] = float(np.mean(costs)) if costs else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--speed", type=float, default=2.0, help="emulated hardware this many times real time")
    parser.add_argument("--load", type=float, default=1.2, help="offered rate, as a multiple of one replica's")
    parser.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds of arrivals per setting")
    parser.add_argument("--baseline", help="a source tree (holding ricardo/) to run the N-gateway setting with too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()

    rate = args.load * overload.capacity_rps(HARDWARE, 1, args.speed)
    requests = overload.workload(HARDWARE, rate, args.duration, args.seed)
    print(f"{len(requests)} requests over {args.duration:g} s at {rate:.2f} req/s ({args.load:g}x one replica)")
    work = Path(tempfile.mkdtemp(prefix="ricardo-replicas-"))
    backends = {name: overload.free_port() for name in PRICES}
    base = {
        "host": "127.0.0.1",
        "models": ["llama2-7b"],
        "slo": {"ttft_ms": overload.SLO_TTFT_MS / args.speed, "tpot_ms": overload.SLO_TPOT_MS},
        "admission": {"enabled": False},  # every request is served: where it went is what is measured
        "pools": [
            {"name": name, "hardware": HARDWARE, "price_per_hour": price, "backends": [f"http://127.0.0.1:{port}"]}
            for name, price in PRICES.items()
            for port in [backends[name]]
        ],
    }
    emulator = overload.start_emulators(work, base, args.speed)
    settings = [("1 gateway", 1, None), (f"{args.gateways} gateways", args.gateways, None)]
    if args.baseline:
        settings.append((f"{args.gateways} gateways, baseline", args.gateways, str(Path(args.baseline).resolve())))
    rows = []
    try:
        for port in backends.values():
            wait_ready(f"http://127.0.0.1:{port}/v1/models", emulator, "the emulators")
        for name, gateways, baseline in settings:
            row = summary(name, run_setting(name, gateways, base, requests, work, baseline), requests, args.speed)
            rows.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(5)  # the emulators finish what the stopped gateways left
    finally:
        overload.stop(emulator)
    print("\n| setting | on cheap | offered within SLO | latency/token p50 / p90 ms | TTFT p90 ms | $ / request |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lpt, cost = r["latency_per_token_ms"], r["mean_cost_usd"]
        print(
            f"| {r['setting']} | {r['cheap_share']:.1%} | {r['offered_attainment']:.1%} | {lpt[50]} / {lpt[90]} | "
            f"{r['ttft_ms'][90]} | {'–' if cost is None else f'{cost:.3g}'} |"
        )
    Path(args.out).write_text(json.dumps({"args": vars(args), "rate_rps": rate, "rows": rows}, indent=1))
    print(f"\nlogs in {work}; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
