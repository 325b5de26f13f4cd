"""Cold start of a new model: the blend of the text model and running statistics (`ricardo/predictor/online.py`).

    python bench/predictor/coldstart.py SPLITS_DIR [--seeds 5] [--after 50] [--json]

SPLITS_DIR holds the files of `bench/predictor/make_splits.py`. For each scenario, the rows are streamed in a
random order (one per seed) through one predictor (the shipped text model) under a model name it has never seen,
each request predicted and then observed, and scored from the `--after`-th outcome on (`evaluate.prequential`):
the blend, the text model alone, and the running median of that model's outcomes so far.

Text scenarios (the held-out test halves, which the shipped model never saw):
- `gsm8k`, `sharegpt`: the true lengths (the text model is good here: the blend must not spoil it);
- `gsm8k x6`, `sharegpt x6`: every answer six times longer (a model far more verbose than the training data);
- `gsm8k lognormal`, `sharegpt lognormal`: lengths drawn from a lognormal of median 300 (sigma 0.6), whatever the
  prompt (the text says nothing: the running median is the best one can do).
Lengths-only scenarios (`--lengths DIR`, the shared traces folder; the first 2,000 requests of each trace in trace
order, then shuffled): the blend with `features_from_lengths` against the running median, the constant prior and
the peers' running estimates (`baselines.py`: global mean, Mélange's bucket mean, AIBrix's bucket histogram) fed
the same outcomes in the same order.

`--refit`: instead, what a new text model does to the blend. For each text scenario and seed, the text model is
refitted after 500 outcomes (on them and the shipped reservoir, as the gateway's refit is) and swapped in; the next
50 and the 250 after them are scored for three ways to handle the swap: `shipped` (`ModelStats.reset_base`),
`from scratch` (every expert's record cleared as well) and `no reset` (the old model's residuals and records kept).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from ricardo.loadgen.traces import read_trace
from ricardo.predictor.baselines import baselines
from ricardo.predictor.datasets import SHARED_DATA
from ricardo.predictor.evaluate import prequential, read_samples
from ricardo.predictor.features import features_from_lengths
from ricardo.predictor.model import DEFAULT_MODEL, FittedModel, OutputLengthPredictor, Sample, fit_model, load_reservoir
from ricardo.predictor.online import EXPERTS, PRIOR_P50, ModelStats

NEW_MODEL = "a-model-never-seen"
LOGNORMAL_MEDIAN, LOGNORMAL_SIGMA = 300, 0.6
TRACE_ROWS = 2000
TRACES = {
    "azure-conv": "traces/azure2023/AzureLLMInferenceTrace_conv.csv",
    "azure-code": "traces/azure2023/AzureLLMInferenceTrace_code.csv",
    "lmsys": "traces/lengths/lmsys_chat_1m_lengths.csv",
    "sharegpt-lengths": "traces/lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "servegen-language": "traces/servegen/servegen_language_m-large.jsonl",
    "servegen-reason": "traces/servegen/servegen_reason_deepseek-r1.jsonl",
}


def text_scenarios(splits: Path) -> dict[str, list[Sample]]:
    scenarios = {}
    for name in ("gsm8k", "sharegpt"):
        samples, _ = read_samples(splits / f"{name}_test.jsonl")
        renamed = [(replace(features, model=NEW_MODEL), actual) for features, actual in samples]
        rng = np.random.default_rng(0)
        scenarios[name] = renamed
        scenarios[f"{name} x6"] = [(features, 6 * actual) for features, actual in renamed]
        drawn = rng.lognormal(np.log(LOGNORMAL_MEDIAN), LOGNORMAL_SIGMA, len(renamed))
        scenarios[f"{name} lognormal"] = [(features, round(n)) for (features, _), n in zip(renamed, drawn, strict=True)]
    return scenarios


def lengths_scenarios(data: Path) -> dict[str, list[Sample]]:
    scenarios = {}
    for name, path in TRACES.items():
        if (data / path).is_file():
            trace = read_trace(str(data / path))[:TRACE_ROWS]
            scenarios[name] = [(features_from_lengths(r.input_tokens, NEW_MODEL), r.output_tokens) for r in trace]
    return scenarios


PEERS = ("global_mean", "melange_bucket_mean", "aibrix_bucket_histogram")


def run(model: FittedModel, samples: list[Sample], seeds: int, after: int, lengths_only: bool) -> dict[str, Any]:
    runs = []
    for seed in range(seeds):
        order = list(samples)
        random.Random(seed).shuffle(order)
        result = prequential(model, order, after, lengths_only)
        if lengths_only:  # the peers' running estimates from input lengths, fed the same outcomes in the same order
            for name in PEERS:
                peer = baselines(seed)[name]
                errors = []
                for i, (features, actual) in enumerate(order):
                    if i >= after:
                        errors.append(abs(actual - peer.predict(features.input_tokens)))
                    peer.observe(features.input_tokens, actual)
                result[f"mae_{name}"] = float(np.mean(errors))
            result["mae_prior"] = float(np.mean([abs(actual - PRIOR_P50) for _, actual in order[after:]]))
        runs.append(result)
    mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0] if key not in ("after", "n")}
    return {"n": runs[0]["n"], "seeds": seeds, **mean}


REFIT_AFTER = 500


def _from_scratch(stats: ModelStats, record: tuple[float, float] | None) -> None:
    stats.residuals.clear()
    stats.correction, stats.delta = None, 0.0
    stats.loss, stats.count = [0.0] * len(EXPERTS), [0.0] * len(EXPERTS)
    stats._weigh()


def _no_reset(stats: ModelStats, record: tuple[float, float] | None) -> None:
    pass


def refit_ablation(model: FittedModel, samples: list[Sample], seeds: int) -> dict[str, list[float]]:
    """{way: [MAE of the 50 predictions after the swap, of the 250 after those, p90 coverage]}, mean over seeds."""
    reservoir = load_reservoir()
    ways = {"shipped": ModelStats.reset_base, "from scratch": _from_scratch, "no reset": _no_reset}
    scores: dict[str, list[list[float]]] = {way: [] for way in ways}
    shipped = ModelStats.reset_base
    try:
        for seed in range(seeds):
            order = [(replace(features, prediction=None, base=None), actual) for features, actual in samples]
            random.Random(seed).shuffle(order)
            refitted = fit_model(order[:REFIT_AFTER] + reservoir, version=2)
            for way, reset in ways.items():
                ModelStats.reset_base = reset  # type: ignore[method-assign]
                predictor = OutputLengthPredictor(model, reservoir=[])
                errors, covered = [], []
                for i, (features, actual) in enumerate(order[: REFIT_AFTER + 300]):
                    features = replace(features)
                    if i == REFIT_AFTER:
                        predictor.use(refitted)
                    prediction = predictor.predict(features)
                    if i >= REFIT_AFTER:
                        errors.append(abs(actual - prediction.p50))
                        covered.append(actual <= prediction.p90)
                    predictor.observe(features, actual)
                scores[way].append([float(np.mean(errors[:50])), float(np.mean(errors[50:])), float(np.mean(covered))])
    finally:
        ModelStats.reset_base = shipped  # type: ignore[method-assign]
    return {way: np.mean(runs, axis=0).round(3).tolist() for way, runs in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("splits", type=Path)
    parser.add_argument("--lengths", type=Path, default=SHARED_DATA, help="the shared data folder (traces)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--after", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--refit", action="store_true", help="the swap ablation instead (see above)")
    args = parser.parse_args()
    model = FittedModel.from_bytes(DEFAULT_MODEL.read_bytes())
    results: dict[str, Any] = {}
    if args.refit:
        for name, samples in text_scenarios(args.splits).items():
            results[name] = refit_ablation(model, samples, args.seeds)
            if not args.json:
                print(
                    f"{name:<20} " + "  ".join(f"{way} {figures}" for way, figures in results[name].items()), flush=True
                )
        if args.json:
            print(json.dumps(results))
        return
    for name, samples in text_scenarios(args.splits).items():
        results[name] = run(model, samples, args.seeds, args.after, lengths_only=False)
        _print(args, name, results[name])
    for name, samples in lengths_scenarios(args.lengths).items():
        results[name] = run(model, samples, args.seeds, args.after, lengths_only=True)
        _print(args, name, results[name])
    if args.json:
        print(json.dumps(results))


def _print(args: argparse.Namespace, name: str, result: dict[str, Any]) -> None:
    if args.json:
        return
    figures = "  ".join(
        f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in result.items()
    )
    print(f"{name:<20} {figures}", flush=True)


if __name__ == "__main__":
    main()
