"""The gateway's decision alone, timed per request: shaping, ranking and charging the chosen pool.

    .venv/bin/python bench/overhead/decision.py [--decisions 20000] [--pools 8] [--pairs] [--rounds 4]
        [--baseline DIR] [--profile] [--json out.json]

What it times is what the gateway's handler does between reading a body and sending it upstream (proxy.py):
- `shape`: `Shaper.shape` on a parsed chat body, with the shipped output-length predictor (as `GatewayState` builds
  it); the bodies are ShareGPT prompts (`../shared/data`, AIBrix's replay) as one user turn after a system message,
  some with `max_tokens`, else synthetic prompts of the Azure conversation trace's lengths (`ricardo.loadgen`);
- `rank`: the pools' `PoolView`s from their `PoolLedger`s (rebuilt after every change, as the gateway's are) and the
  policy over them, on the default book with the estimated types (so `--pools 8` gives 8 hardware types; `--pairs`
  swaps two of them for disaggregated pairs);
- `charge`: `PoolLedger.dispatch` on the first choice (`trip.start`); a request in flight finishes for every one
  dispatched past `IN_FLIGHT` per replica, so the pools carry load.
`total` is the three together. Peers rank the same views in the same loop (`--peers`), for ratios: the
`least-outstanding` and `melange` baselines. `--baseline DIR` times the code of another source tree (`git archive
<commit> ricardo | tar -x -C DIR`) in a child process, round by round with this one, for before/after figures from
one run. `--profile` prints cProfile's top costs of the decision (this tree's, cost-aware).

Timings are `time.perf_counter_ns` around each step, after a warm-up; `total CPU` is the thread's CPU time for the
three (`time.thread_time_ns`), which leaves out the time the thread waited for a core: on a shared machine the wall
clock's tail is mostly that wait. Compare figures from one run only.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import json
import os
import pstats
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO.parent / "shared" / "data" / "prompts" / "sharegpt_aibrix" / "8min_up_and_down.jsonl"
MODEL = "llama2-7b"
SYSTEM = "You are a helpful assistant. Answer accurately and concisely."
PRICE_SET = "aws"  # prices 8 of the default book's types (melange's, 4)
IN_FLIGHT = 6  # requests in flight per replica the loop keeps
STEPS = ("shape", "rank", "charge", "total", "total CPU")


def prompts(n: int, seed: int) -> list[str]:
    """`n` prompt texts: ShareGPT's where the shared data is beside the repo, else synthetic of Azure conv's lengths."""
    rng = random.Random(seed)
    if PROMPTS.is_file():
        texts = []
        for line in PROMPTS.read_text().splitlines():
            texts += [r["prompt"] for r in json.loads(line)["requests"] if r.get("prompt")]
        return [rng.choice(texts) for _ in range(n)]
    from ricardo.loadgen.prompts import synthetic_prompt

    return [synthetic_prompt(int(rng.lognormvariate(6.5, 1.0)) + 8, k, seed) for k in range(n)]


def bodies(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed + 1)
    out = []
    for text in prompts(n, seed):
        doc: dict[str, Any] = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}]}
        doc["messages"].append({"role": "user", "content": text})
        if rng.random() < 0.5:
            doc["max_tokens"] = rng.choice([64, 256, 1024, 4096])
        if rng.random() < 0.3:
            doc["stream"] = True
        out.append(json.dumps(doc).encode())
    return out


def fleet(book: Any, n_pools: int, pairs: bool, rng: random.Random) -> list[tuple[Any, int, int]]:
    """(ledger, replicas, decode replicas) of `n_pools` pools, one hardware type each (those with step costs and a
    price first); with `pairs`, the last two are prefill/decode pairs of the first types."""
    from ricardo.policies.ledger import PoolLedger
    from ricardo.policies.types import PairSpec

    names = sorted(book.hardware_names(), key=lambda hw: (hw not in book.prices, book.role(hw) is None, hw))
    if len(names) < n_pools:
        raise SystemExit(f"the book has {len(names)} hardware types, fewer than --pools {n_pools}")

    def price(hw: str) -> float:
        return book.prices.get(hw, 2.0)  # past the price set's types: any price, the ranking costs the same

    pools = []
    for k, hw in enumerate(names[:n_pools]):
        replicas = rng.randint(2, 4)
        if pairs and k >= n_pools - 2:
            prefill, decode = names[k - n_pools + 2], names[k - n_pools + 3]
            spec = PairSpec(prefill, decode, price(prefill), price(decode), 100.0)
            ledger = PoolLedger(f"{prefill}>{decode}", prefill, price(prefill) + price(decode), (MODEL,), spec)
            pools.append((ledger, replicas, replicas))
        else:
            pools.append((PoolLedger(hw.lower(), hw, price(hw), (MODEL,)), replicas, 0))
    return pools


class Decision:
    """The gateway's decision on one tree's code: its shaper, book, pools and the policies to time."""

    def __init__(self, n_pools: int, pairs: bool, policies: list[str], seed: int):
        from ricardo.defaults import default_slo_ms
        from ricardo.gateway.shaping import Shaper
        from ricardo.policies.ledger import PoolLedger
        from ricardo.policies.routing import get_policy
        from ricardo.policies.types import SLO
        from ricardo.profiles.catalog import load_default_book
        from ricardo.protocol.openai import parse_request

        self.parse = parse_request
        self.shaper = Shaper(SLO(*default_slo_ms()))
        self.book = load_default_book(price_set=PRICE_SET, include_estimated=True)
        self.policies = {name: get_policy(name) for name in policies}
        self.rng = random.Random(seed)
        self.pools = fleet(self.book, n_pools, pairs, self.rng)
        self.by_name = {ledger.name: ledger for ledger, _, _ in self.pools}
        self.in_flight: list[tuple[Any, Any]] = []
        self.limit = IN_FLIGHT * sum(replicas for _, replicas, _ in self.pools)
        # the choice reaches `dispatch` where the ledger takes it (it carries the shares ranking computed); a
        # baseline tree's ledger may not
        self.pass_choice = "choice" in inspect.signature(PoolLedger.dispatch).parameters
        self.index = 0

    def parsed(self, raw: bytes) -> tuple[dict[str, Any], Any]:
        return self.parse("chat", raw)

    def decide(self, body: dict[str, Any], request: Any, policy: str, clock: int) -> tuple[int, int, int, int]:
        """One decision; (shape, rank, charge) nanoseconds, and the thread's CPU time for the three."""
        cpu = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        shaped = self.shaper.shape("chat", body, request, {})
        shape = shaped[0] if isinstance(shaped, tuple) and len(shaped) == 2 else shaped.shape  # a --baseline tree's
        t1 = time.perf_counter_ns()
        views = [ledger.view(replicas, decode) for ledger, replicas, decode in self.pools]
        choices = self.policies[policy](shape, views, self.book, draw=self.rng.random(), index=self.index)
        t2 = time.perf_counter_ns()
        ledger = self.by_name[choices[0].pool]
        if self.pass_choice:
            ticket = ledger.dispatch(shape, self.book, clock, choices[0])
        else:
            ticket = ledger.dispatch(shape, self.book, clock)
        t3 = time.perf_counter_ns()
        cpu = time.thread_time_ns() - cpu
        self.index += 1
        self.in_flight.append((ledger, ticket))
        if len(self.in_flight) > self.limit:  # the oldest finishes: load stays about IN_FLIGHT per replica
            done, old = self.in_flight.pop(self.rng.randrange(len(self.in_flight) // 2))
            done.finish(old, clock + 1.0, 100)
        return t1 - t0, t2 - t1, t3 - t2, cpu


def run(args: argparse.Namespace) -> dict[str, dict[str, list[int]]]:
    """Raw timings {policy: {step: [ns, ...]}} of this process's tree."""
    policies = ["cost-aware", *args.peers]
    decision = Decision(args.pools, args.pairs, policies, args.seed)
    raws = bodies(max(args.decisions, 1), args.seed)
    out: dict[str, dict[str, list[int]]] = {p: {step: [] for step in STEPS} for p in policies}
    warm = min(args.warmup, len(raws))
    for k in range(warm):  # warm-up: caches, and the pools' load
        decision.decide(*decision.parsed(raws[k]), "cost-aware", k)
    gc.collect()
    for k in range(args.decisions):
        for p, policy in enumerate(policies):  # interleaved, so a neighbour's load falls on every policy alike
            # each policy's decision on a body of its own (one shaped just before would be warm in the caches),
            # parsed just before, as the gateway's handler does (untimed)
            body, request = decision.parsed(raws[(k + p * len(raws) // len(policies)) % len(raws)])
            shape, rank, charge, cpu = decision.decide(body, request, policy, warm + k)
            times = out[policy]
            times["shape"].append(shape)
            times["rank"].append(rank)
            times["charge"].append(charge)
            times["total"].append(shape + rank + charge)
            times["total CPU"].append(cpu)
    return out


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def summary(times: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    return {
        step: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "p99.9": percentile(v, 0.999)}
        for step, v in times.items()
    }


def child(args: argparse.Namespace, tree: Path, decisions: int, seed: int) -> dict[str, dict[str, list[int]]]:
    """This bench run on another tree's code, in a process of its own."""
    argv = [sys.executable, __file__, "--raw", "--decisions", str(decisions), "--seed", str(seed)]
    argv += ["--pools", str(args.pools), "--warmup", str(args.warmup), "--peers", ",".join(args.peers)]
    argv += ["--pairs"] if args.pairs else []
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tree, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run on {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, dict[str, list[int]]] = json.loads(done.stdout)
    return result


def profile(args: argparse.Namespace) -> None:
    decision = Decision(args.pools, args.pairs, ["cost-aware"], args.seed)
    raws = bodies(args.decisions, args.seed)
    for k in range(min(args.warmup, len(raws))):
        decision.decide(*decision.parsed(raws[k]), "cost-aware", k)
    profiler = cProfile.Profile()
    for k, raw in enumerate(raws):
        body, request = decision.parsed(raw)
        profiler.enable()
        decision.decide(body, request, "cost-aware", args.warmup + k)
        profiler.disable()
    print(f"\ncProfile of {len(raws)} cost-aware decisions (tottime: the function's own time)")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(18)


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| code | policy | step | p50 µs | p99 µs | p99.9 µs |", "|---|---|---|---|---|---|"]
    for (tree, policy), steps in ((key.split(" ", 1), steps) for key, steps in results.items()):
        for step, figures in steps.items():
            lines.append(
                f"| {tree} | {policy} | {step} | {figures['p50']:.1f} | {figures['p99']:.1f} | {figures['p99.9']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000, help="timed decisions per policy and tree")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--pools", type=int, default=8)
    parser.add_argument("--pairs", action="store_true", help="two of the pools are prefill/decode pairs")
    parser.add_argument("--peers", default="least-outstanding,melange", help="policies timed beside cost-aware")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating this tree and --baseline")
    parser.add_argument("--baseline", type=Path, help="another source tree, timed in the same run")
    parser.add_argument("--profile", action="store_true", help="cProfile's top costs of the decision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # a child: raw timings on stdout
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    if args.raw:
        json.dump(run(args), sys.stdout)
        return
    trees = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    merged: dict[str, dict[str, dict[str, list[int]]]] = {name: {} for name in trees}
    per_round = max(1, args.decisions // args.rounds)
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
        for name, tree in order:  # the same bodies in every round and tree: seeds differ by round only
            for policy, steps in child(args, tree, per_round, args.seed + r).items():
                for step, values in steps.items():
                    merged[name].setdefault(policy, {}).setdefault(step, []).extend(values)
    results = {f"{name} {policy}": summary(steps) for name, runs in merged.items() for policy, steps in runs.items()}
    pools = f"{args.pools} pools" + (", 2 of them pairs" if args.pairs else "")
    count = per_round * args.rounds
    print(f"decision micro-benchmark: {count} decisions per policy and tree, {pools}, {args.rounds} rounds")
    print(table(results))
    ratios = {}
    this = results["this cost-aware"]["total"]
    for key, steps in results.items():
        if key != "this cost-aware":
            ratios[f"this cost-aware / {key}"] = {q: this[q] / steps["total"][q] for q in ("p50", "p99")}
    for key, ratio in ratios.items():
        print(f"{key}, total: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=1))
    if args.profile:
        args.decisions = min(args.decisions, 5000)
        profile(args)


if __name__ == "__main__":
    main()
