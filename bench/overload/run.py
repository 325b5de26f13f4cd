"""Overload: a small emulated fleet offered twice what it serves within SLO, through the real gateway, with
admission control off and on, in the same run.

    .venv/bin/python bench/overload/run.py [--load 2.0] [--duration 60] [--speed 2] [--bounds 1.0,0.8]

The fleet: `--replicas` emulated `--hardware` backends (`ricardo emulate`, `--speed` times real time). The
work: request sizes of the Azure conversation trace (those the hardware's profile serves), Poisson arrivals,
streamed by the load generator (`ricardo.loadgen.replay`, open loop). Its capacity within SLO is the profile's:
replicas x speed / the mean replica-seconds per request (`ProfileBook.rate_at`, the rate at which the *mean*
latency per token equals the SLO), and the offered rate is `--load` times that. Every setting replays the same
requests at the same times against the same emulators: admission off (queue everything), then on at each
utilization bound (`admission.max_utilization`).

The SLO is the gateway's (120 ms per output token, latency / output tokens as in the profiles; TTFT 2 s),
measured in wall-clock time divided by the speed. Reported per setting: the share shed (429), the SLO attainment
of the admitted requests and of all offered ones (shed ones count as misses), goodput (requests within SLO per
second, emulated time), latency per token and TTFT percentiles, and the median TTFT of the first and last third
of the run (a queue growing without bound shows as the last third waiting far longer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from ricardo.cli.demo import ricardo_command, wait_ready
from ricardo.loadgen.replay import ReplayConfig, RequestRecord
from ricardo.loadgen.replay import run as replay
from ricardo.loadgen.traces import TraceRequest, read_trace, with_poisson_arrivals
from ricardo.profiles.catalog import load_default_book

SLO_TTFT_MS = 2000.0
SLO_TPOT_MS = 120.0
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def workload(hardware: str, rate: float, duration_s: float, seed: int) -> list[TraceRequest]:
    book = load_default_book(include_estimated=True)
    sizes = [r for r in read_trace("azure-conv") if book.rate_at(hardware, r.input_tokens, r.output_tokens) > 0]
    arrivals = with_poisson_arrivals(sizes, rate, seed)
    return [r for r in arrivals if r.arrival_s < duration_s]


def capacity_rps(hardware: str, replicas: int, speed: float) -> float:
    """Requests/s (wall clock) the fleet serves at the profile's operating point, for the trace's size mix."""
    book = load_default_book(include_estimated=True)
    seconds = [
        1.0 / rate
        for r in read_trace("azure-conv")
        if (rate := book.rate_at(hardware, r.input_tokens, r.output_tokens)) > 0
    ]
    return replicas * speed / float(np.mean(seconds))


def run_setting(name: str, admission: dict, base: dict, requests: list[TraceRequest], out: Path, speed: float) -> dict:
    port = free_port()
    config_path = out / f"gateway-{name}.yaml"
    config_path.write_text(yaml.safe_dump({**base, "port": port, "admission": admission}))
    with open(out / f"gateway-{name}.log", "w") as log:
        gateway = subprocess.Popen(
            ricardo_command("serve", "--config", str(config_path)), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", gateway, "the gateway")
        result = replay(
            requests,
            ReplayConfig(base_url=f"http://127.0.0.1:{port}", progress=False, timeout_s=600, drain_timeout_s=30),
        )
    finally:
        stop(gateway)
    return summarize(name, result.records, requests, speed)


def summarize(name: str, records: list[RequestRecord], requests: list[TraceRequest], speed: float) -> dict:
    ttft_slo, lpt_slo = SLO_TTFT_MS / speed, SLO_TPOT_MS / speed
    offered = len(requests)
    shed = [r for r in records if r.status == 429]
    admitted = [r for r in records if r.status != 429]
    ok = [r for r in admitted if r.outcome == "ok" and r.latency_per_token_ms is not None and r.ttft_ms is not None]

    def met(r: RequestRecord) -> bool:
        assert r.latency_per_token_ms is not None and r.ttft_ms is not None
        return r.latency_per_token_ms <= lpt_slo and r.ttft_ms <= ttft_slo

    within = sum(met(r) for r in ok)
    span_s = max(r.arrival_s for r in requests) * speed  # emulated seconds of arrivals
    thirds = np.array_split(np.array(sorted(ok, key=lambda r: r.scheduled_s), dtype=object), 3)

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * speed, 1) if values else None

    return {
        "setting": name,
        "offered": offered,
        "shed_share": len(shed) / offered,
        "failed": len(admitted) - len(ok),
        "admitted_attainment": within / len(admitted) if admitted else None,
        "offered_attainment": within / offered,
        "goodput_rps_emulated": within / span_s,
        "latency_per_token_ms": {q: pct([r.latency_per_token_ms for r in ok], q) for q in (50, 90, 99)},
        "ttft_ms": {q: pct([r.ttft_ms for r in ok], q) for q in (50, 90, 99)},
        "ttft_p50_first_last_third_ms": [pct([r.ttft_ms for r in third], 50) for third in (thirds[0], thirds[-1])],
    }


def table(rows: list[dict]) -> str:
    head = (
        "| setting | shed (429) | admitted within SLO | offered within SLO | goodput req/s | "
        "latency/token p50 / p90 ms | TTFT p50 / p90 ms | TTFT p50 first → last third ms |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lpt, ttft, trend = r["latency_per_token_ms"], r["ttft_ms"], r["ttft_p50_first_last_third_ms"]
        admitted = "–" if r["admitted_attainment"] is None else f"{r['admitted_attainment']:.1%}"
        lines.append(
            f"| {r['setting']} | {r['shed_share']:.1%} | {admitted} | {r['offered_attainment']:.1%} | "
            f"{r['goodput_rps_emulated']:.2f} | {lpt[50]} / {lpt[90]} | {ttft[50]} / {ttft[90]} | "
            f"{trend[0]} → {trend[1]} |"
        )
    return "\n".join(lines)


def start_emulators(work: Path, config: dict, speed: float) -> subprocess.Popen:
    """`ricardo emulate` for every backend of a gateway config, written into `work`, its log beside it."""
    (work / "emulators.yaml").write_text(yaml.safe_dump(config))
    with open(work / "emulator.log", "w") as log:
        return subprocess.Popen(
            ricardo_command("emulate", "--config", str(work / "emulators.yaml"), "--speed", str(speed)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hardware", default="A10G")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--speed", type=float, default=2.0, help="emulated hardware this many times real time")
    parser.add_argument("--load", type=float, default=2.0, help="offered rate, as a multiple of the capacity")
    parser.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds of arrivals per setting")
    parser.add_argument("--bounds", default="1.0", help="admission.max_utilization values to run, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()

    capacity = capacity_rps(args.hardware, args.replicas, args.speed)
    rate = args.load * capacity
    requests = workload(args.hardware, rate, args.duration, args.seed)
    print(
        f"{args.replicas} x {args.hardware} at {args.speed:g}x real time: capacity {capacity:.2f} req/s "
        f"(wall clock) for the azure-conv mix; offering {rate:.2f} req/s ({args.load:g}x), "
        f"{len(requests)} requests over {args.duration:g} s per setting",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="ricardo-overload-"))
    ports = [free_port() for _ in range(args.replicas)]
    base = {
        "host": "127.0.0.1",
        "models": ["llama2-7b"],
        # the TTFT SLO in the gateway's clock (wall), which admission compares queueing delays to; the TPOT SLO
        # stays the profiles' (routing counts load in shares of capacity, which do not depend on the speed)
        "slo": {"ttft_ms": SLO_TTFT_MS / args.speed, "tpot_ms": SLO_TPOT_MS},
        "pools": [
            {
                "name": args.hardware.lower(),
                "hardware": args.hardware,
                "backends": [f"http://127.0.0.1:{p}" for p in ports],
            }
        ],
    }
    emulator = start_emulators(work, base, args.speed)
    rows = []
    try:
        for port in ports:
            wait_ready(f"http://127.0.0.1:{port}/v1/models", emulator, "the emulators")
        settings = [("admission off", {"enabled": False})] + [
            (f"admission on, bound {b}", {"enabled": True, "max_utilization": float(b)}) for b in args.bounds.split(",")
        ]
        for name, admission in settings:
            row = run_setting(name, admission, base, requests, work, args.speed)
            rows.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(2)  # the emulators let go of what the stopped gateway closed
    finally:
        stop(emulator)
    print()
    print(table(rows))
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "capacity_rps": capacity, "rate_rps": rate, "rows": rows}, indent=1)
    )
    print(f"\nlogs in {work}; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
