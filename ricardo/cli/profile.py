"""`ricardo profile`: measure a backend's capacity table the way Mélange's profiler did, against any OpenAI-compatible
server, and write a profile file that `ricardo plan --profile`, the gateway's router and the simulator load.

Method (Mélange, melange/profiling in tyler-griggs/melange-release; DESIGN.md: a cell holds its bucket's upper edge):
for each (input, output) bucket, identical requests of the bucket's upper-edge sizes (`max_tokens` = output with
`ignore_eos`, so the backend generates exactly that many tokens; the emulator also reads `x-emulator-output-tokens`)
arrive as a Poisson stream at a rate that doubles while the mean of (request latency / output tokens) stays within
`--slo-tpot-ms` (and the mean time to first token within `--slo-ttft-ms`, if set), then is narrowed between the
last rate within and the first beyond, to `--precision`. The cell is the highest rate found within; 0 if even
`--start-rate` / 8 misses (the backend cannot serve that size in time). A trial's arrivals span `--horizon` SLO
latencies of one such request (output x SLO; at least `--trial-s`, and `--min-requests` requests), and its means
leave out the first third of its requests, which meet a filling queue, not the steady state (the virtual-time sweep
of emulator/calibrate.py judges the same way); a trial that leaves requests unanswered or failing is beyond. Every
trial meets the same Poisson pattern (of `--seed`) scaled to its rate, and fresh prompts (no prefix cache helps).
`--horizon 10 --min-requests 500 --trial-s 0` gives the trials of calibrate.py's sweep (its `Measurement`).

Prompts have exact token counts with `--tokenizer` (the model's tokenizer.json, HF model directory or name, or its
GGUF file; the extra `ricardo[tokenizer]`), else they are synthetic text of about the length in Llama-3 tokens
(`loadgen/prompts.py`). Either way a probe per input size reads what the backend counts (`usage.prompt_tokens`); the
run prints it and the file keeps it (`profile_run.prompts`, and each trial's mean in `cells`).

`--speed X` is for an emulator run at `--speed X`: its latencies are multiplied and its rates divided by X, so the
file is in the emulated hardware's own time. The file is rewritten after every bucket with what is measured
so far (`cells`, `complete: false`), and a run with the same `--out` resumes from it; `--budget-s` stops a run
before a trial that would not end within it (the bucket in progress is measured again on resuming).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ricardo.cli.profile_prompts import Prompts
from ricardo.emulator.virtual import poisson_arrivals
from ricardo.errors import InvalidInput, RicardoError
from ricardo.protocol.runtime import run_event_loop

DEFAULT_EDGES = "25,100,250,500,1000,2000"
WARMUP = 1 / 3  # share of a trial's requests left out of its means (as emulator/calibrate.py does)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure a backend's capacity per request size (Mélange's method) and write a profile file",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--url", required=True, help="the backend (or a gateway), e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="the model name the backend serves")
    p.add_argument("--hardware", required=True, help="the label of the table in the file, e.g. A10G, CPU-c7i")
    p.add_argument("--out", required=True, help="the profile file to write (resumed if it holds a partial run)")
    p.add_argument("--inputs", default=DEFAULT_EDGES, help="input bucket upper edges, tokens (default %(default)s)")
    p.add_argument("--outputs", default=DEFAULT_EDGES, help="output bucket upper edges, tokens (default %(default)s)")
    p.add_argument("--slo-tpot-ms", type=float, default=120.0, help="mean latency per output token (default 120)")
    p.add_argument("--slo-ttft-ms", type=float, default=None, help="mean time to first token (default: not judged)")
    p.add_argument("--budget-s", type=float, default=3600.0, help="stop after this long; resume later (default 3600)")
    p.add_argument("--trial-s", type=float, default=15.0, help="arrivals per trial, wall seconds at least (default 15)")
    p.add_argument(
        "--horizon", type=float, default=5.0, help="a trial spans this many SLO latencies at least (default 5)"
    )
    p.add_argument("--min-requests", type=int, default=12, help="requests per trial at least (default 12)")
    p.add_argument("--start-rate", type=float, default=0.25, help="first rate tried, req/s (default 0.25)")
    p.add_argument("--precision", type=float, default=0.15, help="narrow the rate to this ratio (default 0.15)")
    p.add_argument("--speed", type=float, default=1.0, help="the backend runs this many times real time (emulator)")
    p.add_argument("--price-per-hour", type=float, default=None, help="$/h of one replica, as price set `profile`")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default $OPENAI_API_KEY)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="the model's tokenizer, for prompts of exact token counts: tokenizer.json, a HF model directory or name, "
        "or a .gguf file (needs `pip install 'ricardo[tokenizer]'`; default: approximate synthetic prompts)",
    )
    p.add_argument("--seed", type=int, default=0, help="of the arrival pattern and the prompts' text (default 0)")
    p.set_defaults(func=_main)


class Interrupted(Exception):
    """A signal stopped a trial: its requests say nothing of the rate."""


@dataclass
class Trial:
    rate: float  # req/s in the backend's own time
    requests: int
    answered: int
    tpot_ms: float | None  # mean request latency / output tokens, backend time
    ttft_ms: float | None
    prompt_tokens: float | None  # mean usage.prompt_tokens
    within: bool


@dataclass
class Settings:
    url: str
    model: str
    slo_tpot_ms: float
    slo_ttft_ms: float | None
    trial_s: float
    horizon: float
    min_requests: int
    speed: float
    api_key: str | None
    seed: int


def _main(args: argparse.Namespace) -> int:
    try:
        inputs, outputs = _edges(args.inputs, "--inputs"), _edges(args.outputs, "--outputs")
        positive = (args.speed, args.start_rate, args.slo_tpot_ms, 1 if args.slo_ttft_ms is None else args.slo_ttft_ms)
        if not all(v > 0 for v in positive) or not args.trial_s >= 0 or not 0 < args.precision < 1:  # NaN fails too
            raise InvalidInput(
                "--speed, --start-rate, --slo-tpot-ms, --slo-ttft-ms must be > 0, --trial-s >= 0 and --precision "
                "within (0, 1)"
            )
        out = Path(args.out)
        cells, searching = _resume(out, args, inputs, outputs)
        settings = Settings(
            args.url.rstrip("/"),
            args.model,
            args.slo_tpot_ms,
            args.slo_ttft_ms,
            args.trial_s,
            args.horizon,
            args.min_requests,
            args.speed,
            args.api_key,
            args.seed,
        )
        run = Run(out, args, inputs, outputs, Prompts(args.tokenizer, args.seed), cells, searching)
        complete = run_event_loop(_profile(settings, run))
    except (RicardoError, OSError) as exc:
        print(f"ricardo profile: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {len(cells)} of {len(inputs) * len(outputs)} buckets{'' if complete else ' (partial: resume)'}")
    return 0 if complete else 3


def _edges(text: str, flag: str) -> list[int]:
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInput(f"{flag}: comma-separated token counts, got {text!r}") from None
    if not edges or any(e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise InvalidInput(f"{flag}: increasing positive token counts, got {text!r}")
    return edges


def _auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}


def _key(i: int, o: int) -> str:
    return f"{i}x{o}"


def _resume(
    out: Path, args: argparse.Namespace, inputs: list[int], outputs: list[int]
) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """The cells an earlier run with the same settings measured, and the trials of the bucket it was searching."""
    if not out.exists():
        return {}, {}
    try:
        old = json.loads(out.read_text())
    except ValueError:
        raise InvalidInput(f"{out}: exists and is not JSON; give another --out") from None
    run = old.get("profile_run", {}) if isinstance(old, dict) else None
    if not isinstance(run, dict) or not all(isinstance(run.get(k, {}), dict) for k in ("cells", "searching")):
        raise InvalidInput(f"{out}: exists and is not a profile file; give another --out")
    same = (run.get("model"), run.get("hardware"), old.get("slo_tpot_ms"), old.get("slo_ttft_ms"), run.get("speed"))
    if same != (args.model, args.hardware, args.slo_tpot_ms, args.slo_ttft_ms, args.speed):
        raise InvalidInput(f"{out}: holds a run with other settings {same}; give another --out")
    wanted = {_key(i, o) for i in inputs for o in outputs}
    cells = {k: v for k, v in run.get("cells", {}).items() if k in wanted}
    return cells, {k: v for k, v in run.get("searching", {}).items() if k in wanted and k not in cells}


async def _profile(settings: Settings, run: Run) -> bool:
    from tqdm import tqdm

    args, inputs, outputs, prompts = run.args, run.inputs, run.outputs, run.prompts
    cells, searching = run.cells, run.searching
    deadline = time.monotonic() + args.budget_s
    buckets = [(i, o) for i in inputs for o in outputs]
    for i in sorted({i for i, o in buckets if _key(i, o) not in cells}):
        await prompts.check(settings.url, settings.model, _auth(settings), i)
    if prompts.counted:
        print(f"prompts: {prompts.description()['summary']}", file=sys.stderr)
    bar = tqdm(total=len(buckets), initial=sum(_key(i, o) in cells for i, o in buckets), unit="bucket")
    try:
        for i, o in buckets:
            if _key(i, o) in cells:
                continue
            bar.set_description(f"in {i} out {o}")
            key = _key(i, o)

            def keep(trials: list[Trial], key: str = key) -> None:  # a run cut short resumes from its last trial
                searching[key] = [asdict(t) for t in trials]
                run.save()

            try:
                found = await _search(settings, args, i, o, deadline, bar, prompts, searching.get(key, []), keep)
            except Interrupted:  # SIGINT/SIGTERM: keep what is measured, as running out of budget does
                break
            if found is None:  # out of budget
                break
            cells[key] = {**found, "prompts": prompts.description()["method"]}  # a resumed run may differ
            searching.pop(key, None)
            run.save()
            bar.update(1)
    finally:
        bar.close()
    run.save()
    return len(cells) == len(buckets)


async def _search(
    settings: Settings,
    args: argparse.Namespace,
    i: int,
    o: int,
    deadline: float,
    bar: Any,
    prompts: Prompts,
    earlier: list[dict],
    keep: Callable[[list[Trial]], None],
) -> dict | None:
    """The highest rate within the SLO for requests of (i, o): doubling, then bisecting in log space. The `earlier`
    trials of a run cut short stand for the ones this search would run first, while their rates agree."""
    best: Trial | None = None
    beyond: Trial | None = None
    rate = args.start_rate
    done: list[Trial] = []
    replayed = [Trial(**t) for t in earlier]
    while True:
        if replayed and math.isclose(replayed[0].rate, rate, rel_tol=1e-9):
            trial = replayed.pop(0)
        else:
            replayed.clear()  # run with another --start-rate or --precision: measure anew from here
            if time.monotonic() + trial_wall_s(settings, o, rate) > deadline:  # it would not end within --budget-s
                return None
            bar.set_postfix(rate=f"{rate:.3g}", best=f"{best.rate:.3g}" if best else "-")
            trial = await run_trial(settings, i, o, rate, prompts)
            keep([*done, trial])
        done.append(trial)
        if trial.within:
            best = trial
        else:
            beyond = trial
        if best is not None and beyond is not None:
            if beyond.rate / best.rate <= 1 + args.precision:
                break
            rate = math.sqrt(best.rate * beyond.rate)
        elif best is not None:
            rate *= 2
        else:  # nothing within yet: slower, down to start / 8
            if rate <= args.start_rate / 8:
                break
            rate /= 2
    return {
        "max_rps": round(best.rate, 4) if best else 0.0,
        "trials": len(done),
        "within": asdict(best) if best else None,
        "beyond": asdict(beyond) if beyond else None,
    }


def trial_size(settings: Settings, output_tokens: int, rate: float) -> int:
    """Requests in a trial: arrivals over `horizon` SLO latencies of one request (at least --trial-s), so the
    queue can settle, and at least --min-requests."""
    seconds = max(settings.trial_s, settings.horizon * output_tokens * settings.slo_tpot_ms / 1000 / settings.speed)
    return max(settings.min_requests, math.ceil(rate * settings.speed * seconds))


def trial_wall_s(settings: Settings, output_tokens: int, rate: float) -> float:
    """How long a trial takes at least: its arrivals, then one answer at the SLO."""
    arrivals = trial_size(settings, output_tokens, rate) / (rate * settings.speed)
    return arrivals + output_tokens * settings.slo_tpot_ms / 1000 / settings.speed


def arrival_times(settings: Settings, rate: float, count: int) -> list[float]:
    """Wall-clock send times of a trial: the Poisson pattern of `--seed` scaled to the rate, the same for every trial
    and bucket (common random numbers, as emulator/calibrate.py's sweep draws them). With a fresh draw per rate, a
    trial's luck (a burst that fills the queue) moved the mean as much as the rate did, and the verdicts of a search
    near the capacity contradicted each other."""
    return [float(t) for t in poisson_arrivals(rate * settings.speed, count, settings.seed)]


async def run_trial(settings: Settings, input_tokens: int, output_tokens: int, rate: float, prompts: Prompts) -> Trial:
    """One Poisson stream of identical requests at `rate` (backend time), judged by the SLO."""
    from ricardo.loadgen.replay import ReplayConfig, replay
    from ricardo.loadgen.traces import TraceRequest

    count = trial_size(settings, output_tokens, rate)
    arrivals = arrival_times(settings, rate, count)
    requests = [
        TraceRequest(a, input_tokens, output_tokens, prompts.text(input_tokens, f"{output_tokens}:{rate}:{index}"))
        for index, a in enumerate(arrivals)
    ]
    config = ReplayConfig(
        base_url=settings.url,
        model=settings.model,
        endpoint="completions",
        length_mode="max_tokens",
        length_header=True,
        api_key=settings.api_key,
        timeout_s=max(60.0, settings.trial_s * 4),
        drain_timeout_s=max(10.0, settings.trial_s),
        seed=settings.seed,
        progress=False,
    )
    result = await replay(requests, config)
    if result.interrupted:
        raise Interrupted
    answered = [r for r in result.records if r.outcome == "ok" and r.latency_per_token_ms is not None]
    ok = [r for r in answered if r.index >= count * WARMUP]  # the queue of the steady state, not its filling
    tpots = [r.latency_per_token_ms for r in ok if r.latency_per_token_ms is not None]
    tpot = statistics.fmean(tpots) * settings.speed if tpots else None
    ttfts = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    ttft = statistics.fmean(ttfts) * settings.speed if ttfts else None
    counted = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    within = (
        len(answered) == count
        and tpot is not None
        and tpot <= settings.slo_tpot_ms
        and (settings.slo_ttft_ms is None or (ttft is not None and ttft <= settings.slo_ttft_ms))
    )
    prompt = statistics.fmean(counted) if counted else None
    return Trial(rate, count, len(answered), _round(tpot), _round(ttft), _round(prompt), within)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class Run:
    """What one run has measured so far (`cells`, and the trials of the bucket it is `searching`), and the file that
    keeps it (`out`, the profile itself: a run with the same --out resumes from it)."""

    out: Path
    args: argparse.Namespace
    inputs: list[int]
    outputs: list[int]
    prompts: Prompts
    cells: dict[str, dict]
    searching: dict[str, list[dict]]

    def save(self) -> None:
        out, args, inputs, outputs = self.out, self.args, self.inputs, self.outputs
        cells, searching, prompts = self.cells, self.searching, self.prompts
        complete = len(cells) == len(inputs) * len(outputs)
        rows = [[cells.get(_key(i, o), {}).get("max_rps", 0.0) for o in outputs] for i in inputs]
        note = (
            f"measured by `ricardo profile` against {args.url} (model {args.model}) on "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}: Poisson arrivals of identical upper-edge requests, "
            f"mean latency per output token <= {args.slo_tpot_ms:g} ms"
            + (f", mean TTFT <= {args.slo_ttft_ms:g} ms" if args.slo_ttft_ms else "")
            + (f"; backend at --speed {args.speed:g}, times scaled back" if args.speed != 1 else "")
            + ("" if complete else "; PARTIAL: unmeasured cells read 0")
        )
        document: dict[str, Any] = {
            "what": f"capacity of one {args.hardware} replica serving {args.model}, req/s per (input, output) bucket",
            "model": args.model,
            "slo_tpot_ms": args.slo_tpot_ms,
            "input_bucket_upper_edges": inputs,
            "output_bucket_upper_edges": outputs,
            "gpus": {args.hardware: {"max_rps": rows, "source": "measured", "note": note}},
            "profile_run": {
                "model": args.model,
                "hardware": args.hardware,
                "url": args.url,
                "speed": args.speed,
                "complete": complete,
                "prompts": prompts.description(),
                "cells": cells,
                "searching": searching,  # the trials of a bucket not finished yet
            },
        }
        if args.slo_ttft_ms is not None:
            document["slo_ttft_ms"] = args.slo_ttft_ms
        if args.price_per_hour is not None:
            document["price_per_hour_usd"] = {"profile": {args.hardware: args.price_per_hour}}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=1) + "\n")
        tmp.replace(out)  # a run cut short never leaves half a file
