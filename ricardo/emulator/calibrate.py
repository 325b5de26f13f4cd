"""Fit the engine model to the measured Mélange profile; estimate profiles of hardware nobody measured.

A GPU's capacity for one request size is the Poisson arrival rate up to which the mean of
(request latency / output tokens) stays within the SLO, the way Mélange's profiler measured it
(melange/profiling/gpu-benchmark.py in tyler-griggs/melange-release): identical requests whose input
and output lengths are the bucket's upper edge (benchmark-launcher.sh loops over input_len and
output_len in 25 100 250 500 1000 2000 and sends exactly those sizes, `ignore_eos`), arriving as a
Poisson stream. We time the engine model on the same stream in virtual time. The request count of
the published runs is not known (the launcher's template says 10), so we measure the steady state
instead: the run lasts `horizon` SLO latencies of the in-flight population and the first `warmup`
share of requests is discarded.

`python -m ricardo.emulator.calibrate` fits flops/bandwidth efficiency and the host overheads of each
measured GPU by least squares on log(model capacity / profile capacity), derives the unmeasured
types from their datasheet figures, and writes engine_params_llama2_7b.json,
estimated_llama2_7b.json and bench/calibration/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq, least_squares
from tqdm import tqdm

from ricardo.emulator.virtual import run_fixed_size
from ricardo.profiles.engine_params import EngineParams

DATA = Path(__file__).resolve().parents[1] / "profiles" / "data"
REPORT = Path(__file__).resolve().parents[2] / "bench" / "calibration" / "README.md"
PROFILE_PATH = DATA / "melange_llama2_7b.json"
GPUS_PATH = DATA / "gpus.csv"

# the profile's names for the measured GPUs -> their rows in gpus.csv
MEASURED = {"L4": "L4", "A10G": "A10G", "A100-80GB": "A100-80GB", "H100": "H100-SXM"}


@dataclass(frozen=True)
class Measurement:
    """How one (rate, request size) trial is run and judged: in steady state (see the module's doc)."""

    slo_s: float = 0.120
    horizon: float = 10.0  # the run spans this many SLO latencies of arrivals
    warmup: float = 1 / 3  # share of the requests discarded as warm-up
    min_count: int = 500
    max_count: int = 20_000
    seed: int = 0
    # None: judge the mean latency per output token (the profiler's rule); q: judge its q-quantile, e.g. 0.99:
    # the rate up to which 99% of the requests meet the SLO
    quantile: float | None = None

    def count(self, rate: float, output_tokens: int) -> int:
        # Little: at the SLO, rate * slo * output requests are in flight; cover `horizon` turnovers of them
        wanted = self.horizon * rate * self.slo_s * output_tokens
        return int(min(self.max_count, max(self.min_count, math.ceil(wanted))))


def slo_margin(params: EngineParams, rate: float, prompt_tokens: int, output_tokens: int, m: Measurement) -> float:
    """log(mean (or `m.quantile` of) latency per output token / SLO) at `rate`: negative when the SLO holds."""
    count = m.count(rate, output_tokens)
    timings = run_fixed_size(params, rate, prompt_tokens, output_tokens, count=count, seed=m.seed)
    latencies = [t.latency_per_token for t in timings[int(count * m.warmup) :]]
    judged = float(np.mean(latencies) if m.quantile is None else np.quantile(latencies, m.quantile))
    return math.log(judged / m.slo_s)


LOWEST_RATE, HIGHEST_RATE = 1e-4, 1e4
MAX_STEP = 0.1  # in log(rate): fine enough not to step over the SLO failing and holding again


def max_rate(
    params: EngineParams,
    prompt_tokens: int,
    output_tokens: int,
    m: Measurement,
    guess: float | None = None,
    near: bool = False,
    rtol: float = 2e-3,
) -> float:
    """The rate at which the mean latency per output token first breaks the SLO, sweeping rates upwards
    as a profiler does (0 if one request alone breaks it).

    The SLO margin is not monotone in the rate: short requests starve decoding of a vLLM 0.2.7
    engine once arrivals prefill at almost every iteration, and the margin can recover at higher
    rates when the batch is full and admissions pause. So the search starts below the capacity (at
    `guess` when it is `near`, the capacity of similar parameters; a quarter of it otherwise; 0.01
    req/s without one), walks down until the SLO holds, then up in small steps until it breaks, and
    refines the crossing with Brent's method. The same seed at every rate scales one arrival
    sequence, so the margin is smooth between events.
    """
    if prompt_tokens + output_tokens > min(params.kv_capacity_tokens, params.model.max_context):
        return 0.0  # the engine cannot hold one such request
    seen: dict[float, float] = {}

    def margin(x: float) -> float:
        if x not in seen:
            seen[x] = slo_margin(params, math.exp(x), prompt_tokens, output_tokens, m)
        return seen[x]

    lo, hi = math.log(LOWEST_RATE), math.log(HIGHEST_RATE)
    start = (guess if near else guess / 4) if guess else 0.01
    x = min(max(math.log(start), lo), hi)
    while margin(x) >= 0:
        if x == lo:
            return 0.0
        x = max(x - MAX_STEP, lo)
    step = MAX_STEP / 2
    while margin(x1 := min(x + step, hi)) < 0:
        if x1 == hi:
            return HIGHEST_RATE
        x, step = x1, MAX_STEP
    return math.exp(brentq(margin, x, x1, xtol=rtol))


# -- tables of capacities ------------------------------------------------------------------------
def _max_rate_task(task: tuple) -> float:
    return max_rate(*task)


def _margin_task(task: tuple) -> float:
    return slo_margin(*task)


class Evaluator:
    """Capacity tables of many parameter sets, spread over worker processes."""

    def __init__(self, measurement: Measurement, processes: int | None = None):
        self.measurement = measurement
        self.pool = multiprocessing.Pool(processes) if processes != 1 else None

    def close(self) -> None:
        if self.pool:
            self.pool.close()
            self.pool.join()

    def _map(self, func, tasks: list[tuple]) -> list[float]:
        return self.pool.map(func, tasks, chunksize=1) if self.pool else list(map(func, tasks))

    def table(
        self, params: EngineParams, sizes: list[tuple[int, int]], guess: np.ndarray | None = None, near: bool = False
    ) -> np.ndarray:
        """Max sustainable rate per request size; `guess` starts the searches (see `max_rate`)."""
        tasks = [
            (params, i, o, self.measurement, None if guess is None else float(guess[k]), near)
            for k, (i, o) in enumerate(sizes)
        ]
        return np.array(self._map(_max_rate_task, tasks))

    def log_rate_gradients(
        self,
        params: EngineParams,
        variants: list[EngineParams],
        sizes: list[tuple[int, int]],
        rates: np.ndarray,
        log_step: float = 0.05,
    ) -> np.ndarray:
        """d log(max rate) / d(variant), one column per variant, from SLO margins at fixed rates.

        At the max rate the margin is zero, so by the implicit function theorem the rate moves by
        -(margin change due to the variant) / (margin's slope in log rate): p + 3 simulations per
        size instead of p fresh searches.
        """
        m = self.measurement
        live = [k for k, r in enumerate(rates) if 0 < r < HIGHEST_RATE]
        tasks = []
        for k in live:
            i, o = sizes[k]
            r = float(rates[k])
            tasks += [
                (params, r * math.exp(log_step), i, o, m),
                (params, r * math.exp(-log_step), i, o, m),
                (params, r, i, o, m),
            ] + [(v, r, i, o, m) for v in variants]
        margins = np.array(self._map(_margin_task, tasks)).reshape(len(live), 3 + len(variants))
        slope = np.maximum((margins[:, 0] - margins[:, 1]) / (2 * log_step), 1e-3)  # margin rises with rate
        gradients = np.zeros((len(rates), len(variants)))
        gradients[live] = -(margins[:, 3:] - margins[:, 2:3]) / slope[:, None]
        return gradients


# -- fitting -------------------------------------------------------------------------------------
# fitted field: (start, lower bound, upper bound); searched in log space
FITTED = {
    "flops_efficiency": (0.5, 0.1, 1.0),
    "bw_efficiency": (0.7, 0.2, 1.0),
    "step_overhead_s": (5e-3, 1e-4, 0.1),
    "seq_overhead_s": (2e-4, 1e-6, 1e-2),
}


@dataclass
class Fit:
    params: EngineParams
    model: np.ndarray  # model capacity per fitted bucket
    tables: int
    seconds: float


def fit(
    base: EngineParams,
    sizes: list[tuple[int, int]],
    target: np.ndarray,
    evaluator: Evaluator,
    fields: dict[str, tuple[float, float, float]] = FITTED,
    log_step: float = 0.05,
    max_iterations: int = 15,
    desc: str = "",
) -> Fit:
    """Least squares on log(model / target) over `sizes`, the fields searched in log space."""
    names = list(fields)
    x0 = np.log([fields[n][0] for n in names])
    lower, upper = np.log([fields[n][1] for n in names]), np.log([fields[n][2] for n in names])
    tables: dict[tuple, np.ndarray] = {}
    last: list[np.ndarray | None] = [None]  # rate searches start from the last table, the first from the profile
    bar = tqdm(desc=f"fitting {desc or base.hardware}", unit="table", leave=False)
    started = time.perf_counter()

    def params_at(x: np.ndarray) -> EngineParams:
        return base.model_copy(update={n: float(math.exp(v)) for n, v in zip(names, x, strict=True)})

    def table(x: np.ndarray) -> np.ndarray:
        if tuple(x) not in tables:
            near = last[0] is not None
            tables[tuple(x)] = last[0] = evaluator.table(params_at(x), sizes, last[0] if near else target, near)
            bar.update()
        return tables[tuple(x)]

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(table(x), 1e-9) / target)

    def jacobian(x: np.ndarray) -> np.ndarray:
        steps = np.where(x + log_step <= upper, log_step, -log_step)
        variants = [params_at(x + np.eye(len(x))[k] * steps[k]) for k in range(len(x))]
        gradients = evaluator.log_rate_gradients(params_at(x), variants, sizes, table(x))
        bar.update()
        return gradients / steps

    result = least_squares(
        residuals,
        np.clip(x0, lower, upper),
        jac=jacobian,
        bounds=(lower, upper),
        max_nfev=max_iterations,
        ftol=1e-3,
        xtol=1e-3,
    )
    bar.close()
    return Fit(params_at(result.x), table(result.x), len(tables), time.perf_counter() - started)


# -- hardware facts --------------------------------------------------------------------------------
GDDR_ECC = {"A10G", "L4", "L40S"}  # GDDR6 boards with ECC on give up 1/16 of their memory to it
GIB = 2**30 / 1e9


def spec_rows(path: Path = GPUS_PATH) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["gpu"]: row for row in csv.DictReader(f)}


def spec_params(hardware: str, row: dict, **fields) -> EngineParams:
    """An EngineParams carrying a gpus.csv row's datasheet figures (memory as the runtime reports it)."""
    mem_gb = float(row["mem_gb"]) * GIB * (15 / 16 if row["gpu"] in GDDR_ECC else 1.0)
    return EngineParams(
        hardware=hardware,
        peak_tflops=float(row["bf16_dense_tflops"]),
        mem_bw_gbs=float(row["mem_bw_gbs"]),
        mem_gb=round(mem_gb, 2),
        **fields,
    )


def load_profile(path: Path = PROFILE_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def profile_buckets(profile: dict, hardware: str, rows: int = 6) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The request sizes the profiler sent for the first `rows` input buckets, and their measured capacity."""
    inputs, outputs = profile["input_bucket_upper_edges"], profile["output_bucket_upper_edges"]
    measured = profile["gpus"][hardware]["max_rps"]
    sizes, rates = [], []
    for i, row in enumerate(measured[:rows]):
        for j, rate in enumerate(row):
            sizes.append((inputs[i], outputs[j]))
            rates.append(rate)
    return sizes, np.array(rates)


# -- unmeasured hardware ---------------------------------------------------------------------------
# catalog name -> (gpus.csv row, the measured type lending its four fitted constants, why). The donor is
# the nearest measured architecture; its efficiencies and host overheads were fitted together (they
# trade off against each other), so all four travel together. The 2023+ datacenter parts (Hopper,
# Blackwell, MI300X, Gaudi 3) all borrow the H100's, so they differ only by their datasheets.
ESTIMATED = {
    "L40S": ("L40S", "L4", "Ada, like the L4"),
    "A100-40GB": ("A100-40GB", "A100-80GB", "the same GA100 chip"),
    "H100-PCIe": ("H100-PCIe", "H100", "Hopper, like the H100 SXM"),
    "H200": ("H200", "H100", "the H100's chip with larger, faster HBM3e"),
    "B200": ("B200", "H100", "no Blackwell measured: the newest measured datacenter GPU"),
    "MI300X": ("MI300X", "H100", "no AMD part measured: the newest measured datacenter GPU"),
    "Gaudi3": ("Gaudi3", "H100", "no Intel accelerator measured: the newest measured datacenter GPU"),
}
CPU_ROW = "CPU-SPR-AMX (1 socket c7i)"
# A llama.cpp-like server on one Sapphire Rapids socket: nothing measured, every number an assumption.
CPU_ASSUMED = dict(
    flops_efficiency=0.05,  # ~5 of the 98 theoretical AMX TFLOP/s in prefill: ~360 prompt tokens/s
    bw_efficiency=0.5,  # half the 307 GB/s of DDR5 in decode: ~11 tokens/s for fp16 weights at batch 1
    step_overhead_s=2e-3,
    seq_overhead_s=2e-4,
    max_num_seqs=4,  # llama.cpp server's parallel slots
    max_batched_tokens=2048,  # llama.cpp's default logical batch
)


def estimated_params(fitted: dict[str, EngineParams], rows: dict[str, dict]) -> dict[str, tuple[EngineParams, str]]:
    """Parameters of the unmeasured types from their datasheets and the fitted constants (with the rule used)."""
    estimates = {}
    for name, (row, donor, why) in ESTIMATED.items():
        constants = {f: getattr(fitted[donor], f) for f in FITTED}
        rule = f"datasheet figures of gpus.csv row {row!r}; {', '.join(FITTED)} of the fitted {donor} ({why})"
        estimates[name] = spec_params(name, rows[row], **constants, source="estimated"), rule
    rule = (
        f"datasheet figures of gpus.csv row {CPU_ROW!r}; assumed llama.cpp-like constants, nothing measured: "
        + ", ".join(f"{k}={v}" for k, v in CPU_ASSUMED.items())
    )
    estimates["CPU"] = spec_params("CPU", rows[CPU_ROW], **CPU_ASSUMED, source="estimated"), rule
    return estimates


# -- reports ---------------------------------------------------------------------------------------
def grid(profile: dict) -> list[tuple[int, int]]:
    return [(i, o) for i in profile["input_bucket_upper_edges"] for o in profile["output_bucket_upper_edges"]]


def as_rows(values: np.ndarray, columns: int, digits: int = 4) -> list[list[float]]:
    return [[float(f"{v:.{digits}g}") for v in row] for row in np.asarray(values).reshape(-1, columns)]


def error_summary(model: np.ndarray, measured: np.ndarray) -> dict:
    ratio = model / measured
    log_error = np.abs(np.log(np.maximum(ratio, 1e-9)))
    return {
        "mean_abs_log_error": round(float(log_error.mean()), 4),
        "share_within_20pct": round(float(np.mean(np.abs(ratio - 1) <= 0.2)), 3),
        "max_abs_relative_error": round(float(np.abs(ratio - 1).max()), 3),
    }


def ragged(profile_rows: list[list[float]], table: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The model's cells where the profile has a measurement (the last A100/H100 row is short)."""
    cells = [(i, j) for i, row in enumerate(profile_rows) for j in range(len(row))]
    return np.array([table[i, j] for i, j in cells]), np.array([profile_rows[i][j] for i, j in cells]), cells


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def ratio_table(profile: dict, table: np.ndarray, measured_rows: list[list[float]]) -> str:
    outputs = profile["output_bucket_upper_edges"]
    body = []
    for i, row in enumerate(measured_rows):
        cells = [f"{table[i, j] / v:.2f}" if v > 0 else "–" for j, v in enumerate(row)]
        body.append([f"**{profile['input_bucket_upper_edges'][i]}**"] + cells + ["–"] * (len(outputs) - len(row)))
    return markdown_table(["input \\ output"] + [str(o) for o in outputs], body)


PARAM_COLUMNS = [
    "peak_tflops",
    "mem_bw_gbs",
    "mem_gb",
    "flops_efficiency",
    "bw_efficiency",
    "step_overhead_s",
    "seq_overhead_s",
    "max_num_seqs",
    "kv_capacity_tokens",
]


def params_row(name: str, p: EngineParams) -> list[str]:
    return [name] + [f"{getattr(p, c):.4g}" for c in PARAM_COLUMNS]


def readme(profile: dict, m: Measurement, fitted: dict, estimates: dict, tables: dict, seconds: dict) -> str:
    rows = profile["gpus"]
    parts = [
        "# Engine-model calibration against the Mélange Llama-2-7B profile",
        "",
        f"Generated by `{COMMAND}` (ricardo/emulator/calibrate.py); do not edit by hand.",
        "",
        "**What is compared.** For every (input, output) bucket the profiler sent identical requests whose sizes",
        "are the bucket's upper edges (tyler-griggs/melange-release, melange/profiling/benchmark-launcher.sh and",
        "gpu-benchmark.py), as a Poisson stream, and recorded the highest rate at which mean(latency / output",
        f"tokens) stayed within {profile['slo_tpot_ms']} ms. The engine model is driven the same way in virtual",
        f"time: each trial spans {m.horizon:g} SLO latencies of the in-flight population (at least {m.min_count},",
        f"at most {m.max_count} requests), the first {m.warmup:.0%} are discarded as warm-up, seed {m.seed}. The max",
        "rate is where the SLO first breaks sweeping rates upwards (steps of 10 %, then Brent's method): with",
        "vLLM 0.2.7's prefill-first scheduling the margin is not monotone for short requests.",
        "",
        "**Fit.** For each measured GPU, flops_efficiency, bw_efficiency, step_overhead_s and seq_overhead_s are",
        "fitted by least squares (scipy `least_squares`, trust-region reflective, bounded, in log space) on",
        "log(model / profile) over input rows 25–2000 × output columns 25–2000 (36 buckets). The Jacobian comes",
        "from the SLO margin at fixed rates (implicit function theorem). max_num_seqs 256, max_batched_tokens",
        "4096 (= max(max_model_len 4096, 2048) as vLLM 0.2.7 sets it), max_paddings 256, gpu memory utilisation",
        "0.9, 1 GB reserved besides the weights for the CUDA context and vLLM's profiling pass.",
        "",
        "Cells below: model capacity / profile capacity (1.00 = exact).",
        "",
    ]
    for name, (_, fit_result) in fitted.items():
        full = tables[name]
        model, measured, _ = ragged(rows[name]["max_rps"][:6], full)
        summary = error_summary(model, measured)
        parts += [
            f"## {name} (fitted, {seconds[name]:.0f} s, {fit_result.tables} tables)",
            "",
            ratio_table(profile, full, rows[name]["max_rps"][:6]),
            "",
            f"Within 20 %: **{summary['share_within_20pct']:.0%}** of 36 buckets; mean |log error| "
            f"**{summary['mean_abs_log_error']:.3f}**; worst relative error {summary['max_abs_relative_error']:.0%}.",
            "",
        ]
        if len(rows[name]["max_rps"]) > 6:
            model, measured, _ = ragged(rows[name]["max_rps"][6:], full[6:])
            long = error_summary(model, measured)
            parts += [
                "Long-input rows (not fitted; their input edges are a guess, see the profile's notes):",
                "",
                ratio_table(
                    {**profile, "input_bucket_upper_edges": profile["input_bucket_upper_edges"][6:]},
                    full[6:],
                    rows[name]["max_rps"][6:],
                ),
                "",
                f"Long rows: within 20 % {long['share_within_20pct']:.0%}, mean |log error| "
                f"{long['mean_abs_log_error']:.3f}.",
                "",
            ]
    header = ["hardware", *PARAM_COLUMNS]
    parts += [
        "## Parameters",
        "",
        "Fitted:",
        "",
        markdown_table(header, [params_row(n, p) for n, (p, _) in fitted.items()]),
        "",
        "Estimated (not measured; see the `rule` of each entry in engine_params_llama2_7b.json):",
        "",
        markdown_table(header, [params_row(n, p) for n, (p, _) in estimates.items()]),
        "",
        f"Total runtime {sum(seconds.values()):.0f} s on this machine.",
        "",
    ]
    return "\n".join(parts)


COMMAND = "python -m ricardo.emulator.calibrate"
GUESS_FROM = {**{name: donor for name, (_, donor, _) in ESTIMATED.items()}, "CPU": "L4"}


def calibrate(profile: dict, rows: dict[str, dict], evaluator: Evaluator, max_iterations: int):
    """Fit the measured types, derive the others, and compute every type's full capacity table."""
    full_grid = grid(profile)
    columns = len(profile["output_bucket_upper_edges"])
    fitted, tables, seconds = {}, {}, {}
    for name, row in MEASURED.items():
        started = time.perf_counter()
        sizes, target = profile_buckets(profile, name)
        base = spec_params(name, rows[row], **{f: v[0] for f, v in FITTED.items()}, source="fitted")
        result = fit(base, sizes, target, evaluator, max_iterations=max_iterations, desc=name)
        guess = np.concatenate([result.model, np.repeat(result.model[-columns:], len(full_grid) // columns - 6)])
        tables[name] = evaluator.table(result.params, full_grid, guess, near=True).reshape(-1, columns)
        fitted[name] = (result.params, result)
        seconds[name] = time.perf_counter() - started
        print(f"{name}: fitted in {seconds[name]:.0f} s", flush=True)
    estimates = estimated_params({n: p for n, (p, _) in fitted.items()}, rows)
    started = time.perf_counter()
    for name, (params, _) in tqdm(estimates.items(), desc="estimated types", unit="type"):
        like = fitted[GUESS_FROM[name]][0]  # searches start from a similar table, scaled by bandwidth
        guess = tables[like.hardware].ravel() * params.mem_bw_gbs / like.mem_bw_gbs
        tables[name] = evaluator.table(params, full_grid, guess).reshape(-1, columns)
    seconds["estimated"] = time.perf_counter() - started
    return fitted, estimates, tables, seconds


def params_document(profile: dict, m: Measurement, fitted: dict, estimates: dict, tables: dict) -> dict:
    columns = len(profile["output_bucket_upper_edges"])
    doc = {
        "what": "Engine-model parameters of Llama-2-7B (fp16, vLLM 0.2.7-style scheduling) per hardware type. "
        "'fitted': flops/bandwidth efficiencies and host overheads fitted so the engine model's max "
        "sustainable rate per (input, output) bucket matches melange_llama2_7b.json (input rows 25-2000); "
        "'estimated': datasheet figures from gpus.csv with constants borrowed by the stated rule. "
        f"Produced by `{COMMAND}`; see bench/calibration/README.md.",
        "model": "llama2-7b",
        "slo_tpot_ms": profile["slo_tpot_ms"],
        "measurement": asdict(m),
        "request_sizes": "bucket upper edges, as melange/profiling/benchmark-launcher.sh sends them",
        "hardware": {},
    }
    for name, (params, _) in fitted.items():
        measured_rows = profile["gpus"][name]["max_rps"]
        model, measured, _ = ragged(measured_rows[:6], tables[name])
        summary = {
            "buckets": "input 25..2000 x output 25..2000 (36)",
            **error_summary(model, measured),
            "relative_error": as_rows(model / measured - 1, columns, 3),
        }
        if len(measured_rows) > 6:
            model, measured, cells = ragged(measured_rows[6:], tables[name][6:])
            summary["long_input_rows_not_fitted"] = {
                **error_summary(model, measured),
                "relative_error": [
                    [round(float(model[k] / measured[k] - 1), 3) for k, (i, _) in enumerate(cells) if i == r]
                    for r in range(len(measured_rows) - 6)
                ],
            }
        doc["hardware"][name] = {"params": params.model_dump(), "spec_row": MEASURED[name], "fit": summary}
    for name, (params, rule) in estimates.items():
        doc["hardware"][name] = {"params": params.model_dump(), "rule": rule}
    return doc


def estimated_document(profile: dict, m: Measurement, fitted: dict, estimates: dict, tables: dict) -> dict:
    columns = len(profile["output_bucket_upper_edges"])
    return {
        "what": "Single-GPU capacity of Llama-2-7B per request-size bucket computed by ricardo's engine model, NOT "
        "measured: max_rps[i][j] = the Poisson rate of identical requests (input = upper edge of input "
        "bucket i, output = upper edge of output bucket j) up to which the model's steady-state mean "
        f"latency per output token stays within {profile['slo_tpot_ms']} ms (sweeping rates upwards, as a "
        "profiler does). Engine parameters from "
        "engine_params_llama2_7b.json (datasheets of gpus.csv + constants fitted on the measured GPUs). "
        "0 = one such request does not fit the KV cache or the 16k context, or the SLO fails even alone. "
        "model_predicted_for_measured holds the same computation for the measured GPUs, for comparison "
        f"with melange_llama2_7b.json. Produced by `{COMMAND}`.",
        "slo_tpot_ms": profile["slo_tpot_ms"],
        "input_bucket_upper_edges": profile["input_bucket_upper_edges"],
        "input_edges_note": "rows 6-9 (4000..16000) use the guessed edges of melange_llama2_7b.json",
        "output_bucket_upper_edges": profile["output_bucket_upper_edges"],
        "measurement": asdict(m),
        "gpus": {n: {"max_rps": as_rows(tables[n], columns), "source": "estimated"} for n in estimates},
        "model_predicted_for_measured": {
            n: {"max_rps": as_rows(tables[n], columns), "source": "model"} for n in fitted
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DATA / "engine_params_llama2_7b.json",
        help="fitted and estimated engine parameters (default: %(default)s)",
    )
    parser.add_argument(
        "--estimated-out",
        type=Path,
        default=DATA / "estimated_llama2_7b.json",
        help="capacity tables computed by the engine model (default: %(default)s)",
    )
    parser.add_argument("--readme", type=Path, default=REPORT, help="the report (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--max-iterations", type=int, default=12, help="least-squares iterations per GPU")
    args = parser.parse_args(argv)

    profile, rows, m = load_profile(), spec_rows(), Measurement()
    evaluator = Evaluator(m, args.processes)
    try:
        fitted, estimates, tables, seconds = calibrate(profile, rows, evaluator, args.max_iterations)
    finally:
        evaluator.close()
    args.out.write_text(json.dumps(params_document(profile, m, fitted, estimates, tables), indent=1) + "\n")
    args.estimated_out.write_text(
        json.dumps(estimated_document(profile, m, fitted, estimates, tables), indent=1) + "\n"
    )
    args.readme.parent.mkdir(parents=True, exist_ok=True)
    args.readme.write_text(readme(profile, m, fitted, estimates, tables, seconds))
    print(f"wrote {args.out}, {args.estimated_out}, {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
