"""Capacity tables at a TPOT SLO nobody measured, computed by the calibrated engine model.

The measured Mélange tables hold for one SLO (120 ms of latency per output token). A 40 ms SLO needs
other tables: how many requests per second of each size one replica sustains when every token must
come three times faster. Nothing was measured there, so this runs the engine model, whose step costs
were fitted to the 120 ms tables (`calibrate.py`), the same way the profiler drove the GPUs: a
Poisson stream of identical requests at the bucket's upper edges, the highest rate whose steady-state
mean latency per output token stays within the SLO. Every table it writes says `source: estimated`.

    python -m ricardo.emulator.slo_tables --slo-tpot-ms 40

writes ricardo/profiles/data/modelled_llama2_7b_tpot40.json for every hardware type of the engine
catalogue (measured and estimated alike), on the measured profile's bucket grid.

    python -m ricardo.emulator.slo_tables --model llama3.1-8b --slo-tpot-ms 120

does the same for another model the engine model knows (`engine_params.MODELS`): the step costs fitted on
Llama-2-7B with that model's weights, FLOPs and KV cache per token. Nothing of that model was measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ricardo.emulator.calibrate import DATA, Evaluator, Measurement, as_rows, grid, load_profile
from ricardo.profiles.catalog import modelled_profile_path
from ricardo.profiles.engine_params import LLAMA2_7B, MODELS, engine_catalog

COMMAND = "python -m ricardo.emulator.slo_tables"


def slo_document(
    slo_tpot_ms: float,
    processes: int | None = None,
    quantile: float | None = None,
    model: str = LLAMA2_7B.name,
    hardware: list[str] | None = None,
) -> dict:
    """Every catalogue type's capacity table of `model` at `slo_tpot_ms`, as a profile file (JSON-ready dict);
    judged on the mean latency per output token, or on its `quantile`."""
    profile = load_profile()
    sizes = grid(profile)
    columns = len(profile["output_bucket_upper_edges"])
    m = Measurement(slo_s=slo_tpot_ms / 1000, quantile=quantile)
    judged = "mean" if quantile is None else f"{quantile:.0%} quantile of the"
    flag = "" if quantile is None else f" --quantile {quantile:g}"
    catalog = {name: p for name, p in engine_catalog(model).items() if not hardware or name in hardware}
    other = "" if model == LLAMA2_7B.name else f" --model {model}"
    spec = MODELS[model]
    evaluator = Evaluator(m, processes)
    tables, seconds = {}, {}
    try:
        for name, params in tqdm(catalog.items(), desc=f"tables at {slo_tpot_ms:g} ms", unit="type"):
            started = time.perf_counter()
            tables[name] = evaluator.table(params, sizes).reshape(-1, columns)
            seconds[name] = round(time.perf_counter() - started, 1)
    finally:
        evaluator.close()
    return {
        "what": f"Single-replica capacity of {model} per request-size bucket at a {slo_tpot_ms:g} ms TPOT SLO "
        "(request latency / output tokens), computed by ricardo's engine model, NOT measured. "
        "max_rps[i][j] = the Poisson rate of identical requests (input = upper edge of input bucket i, "
        f"output = upper edge of output bucket j) up to which the model's steady-state {judged} latency per "
        "output token stays within the SLO. Engine parameters: engine_params_llama2_7b.json (fitted to "
        "the measured 120 ms tables for L4/A10G/A100-80GB/H100, datasheet estimates for the others)"
        + (
            ""
            if not other
            else f", with {model}'s sizes ({spec.params_billion:g} B parameters, "
            f"{spec.kv_bytes_per_token / 1024:g} KiB of KV per token, {spec.max_context} tokens of context)"
        )
        + ". "
        "0 = the SLO fails even for one such request alone, or it does not fit the KV cache. "
        f"Produced by `{COMMAND}{other} --slo-tpot-ms {slo_tpot_ms:g}{flag}"
        + (f" --hardware {' '.join(catalog)}`." if hardware else "`."),
        "model": model,
        "context_tokens": spec.max_context,
        "slo_tpot_ms": slo_tpot_ms,
        "input_bucket_upper_edges": profile["input_bucket_upper_edges"],
        "output_bucket_upper_edges": profile["output_bucket_upper_edges"],
        "price_per_hour_usd": profile["price_per_hour_usd"],
        "measurement": asdict(m),
        "seconds": seconds,
        "gpus": {
            name: {
                "max_rps": as_rows(tables[name], columns),
                "source": "estimated",
                "note": f"engine model ({catalog[name].source} parameters)",
            }
            for name in catalog
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--slo-tpot-ms", type=float, required=True)
    parser.add_argument("--model", default=LLAMA2_7B.name, choices=sorted(MODELS), help="default: %(default)s")
    parser.add_argument("--hardware", nargs="+", help="only these types of the catalogue (default: all)")
    parser.add_argument(
        "--quantile",
        type=float,
        help="judge this quantile of the latency per token instead of its mean (0.99: the rate at which 99%% of "
        "the requests meet the SLO; the economics benchmark's tighter reference)",
    )
    parser.add_argument("--out", type=Path, help="default: the shipped file for this SLO in " + str(DATA))
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args(argv)
    if not args.slo_tpot_ms > 0:
        parser.error("--slo-tpot-ms must be positive")
    if args.quantile is not None and not 0 < args.quantile < 1:
        parser.error("--quantile must be in (0, 1)")
    out = args.out or modelled_profile_path(args.model, args.slo_tpot_ms, args.quantile)
    doc = slo_document(args.slo_tpot_ms, args.processes, args.quantile, args.model, args.hardware)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    served = {n: int(np.count_nonzero(np.array(t["max_rps"]))) for n, t in doc["gpus"].items()}
    print(f"wrote {out}; buckets each type can serve: {served}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
