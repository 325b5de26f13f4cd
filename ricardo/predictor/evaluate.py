"""`ricardo predictor eval`: train a fresh model on one file, score it and the peers' baselines on another.

Scores, on the test rows:
- `mae`: mean |actual - p50| in tokens; `baselines`: the same for each baseline of `baselines.py`;
  `gain_vs_best_baseline`: 1 - mae / the best of them; `gain_vs_best_running_baseline`: the same against the best
  of the three that learn the output length online as peer gateways do (global running mean, Mélange's bucket
  mean, AIBrix's bucket histogram), the comparison the predictor's acceptance target is stated in;
- `p90_coverage`: share of test rows with actual <= p90; `mean_p90`: how wide that p90 is;
- wall time per request, one request at a time in this process, garbage collection on (as in the gateway), in µs:
  - `predict_us_p50` / `predict_us_p99`: the output prediction: extract the features from the body, predict p50/p90;
  - `predict_fastest_of_5_us_p99`: the p99 over requests of each one's fastest of 5 predictions, i.e. the
    prediction's own cost with the machine's noise (other processes, other tenants of the host) mostly left out;
  - `count_input_tokens_us_p50` / `_p99`: counting the input tokens (exact with `--encoding`; the whole prompt is
    tokenised, so this grows with the prompt, unlike the prediction, which reads at most ~500 characters);
  - `count_and_predict_us_p50` / `_p99`: both, i.e. all the request-shape work on the gateway's request path;
  - `count_and_predict_cpu_us_p99`: the same in this thread's CPU time, which leaves out the time other processes
    held the CPU (on a shared 2-core machine the difference can be large);
- `cold_start` (`prequential`): the test rows in file order through one predictor that starts from the fitted model
  and learns from each outcome, as the gateway does (`online.py`), scored from the 50th outcome on: the blend's MAE
  and p90 coverage, the text model's alone, the running median's; `cold_start_lengths_only`: the same with each
  request known by its input tokens, model and max_tokens only (`features_from_lengths`), as in a trace without text.
With `output_scale` every test row's output length is multiplied by it first: a served model more verbose than the
training data (the text model and the baselines, fitted on the training rows, do not know it; the blend learns it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ricardo.predictor.baselines import baselines
from ricardo.predictor.datasets import body_of, read_rows
from ricardo.predictor.features import features_from_body, features_from_lengths
from ricardo.predictor.model import (
    FOLDS,
    FittedModel,
    OutputLengthPredictor,
    Prediction,
    Sample,
    fit_model,
    request_groups,
)
from ricardo.predictor.tokens import InputTokenCounter

WARMUP_REQUESTS = 50
TIMING_PASSES = 5
COLD_START_OUTCOMES = 50
RUNNING_BASELINES = ("global_mean", "melange_bucket_mean", "aibrix_bucket_histogram")


def samples_from_rows(rows: list[dict[str, Any]], counter: InputTokenCounter, desc: str = "features") -> list[Sample]:
    samples = []
    for row in tqdm(rows, desc=desc, unit="req", leave=False):
        body = body_of(row)
        samples.append((features_from_body(body, counter.count_body(body)), int(row["output_tokens"])))
    return samples


def read_samples(path: str | Path) -> tuple[list[Sample], np.ndarray]:
    """An evaluation file's samples (inputs counted exactly with llama3) and their actual output tokens."""
    samples = samples_from_rows(read_rows(path), InputTokenCounter("llama3"))
    return samples, np.array([actual for _, actual in samples], dtype=float)


def cross_validation_folds(samples: list[Sample], repeats: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index arrays of a grouped FOLDS-fold split, `repeats` times with other shuffles: a
    request repeated in the file stays in one fold, as the held-out split keeps a prompt on one side."""
    from sklearn.model_selection import GroupKFold

    groups = request_groups([features for features, _ in samples])
    return [
        split
        for seed in range(repeats)
        for split in GroupKFold(FOLDS, shuffle=True, random_state=seed).split(groups, groups=groups)
    ]


def evaluate(
    train_rows: list[dict[str, Any]],
    test_rows: list[dict[str, Any]],
    encoding: str | None = "llama3",
    seed: int = 0,
    output_scale: float = 1.0,
) -> dict[str, Any]:
    counter = InputTokenCounter(encoding)
    train = samples_from_rows(train_rows, counter, "train features")
    started = time.perf_counter()
    model = fit_model(train)
    predictor = OutputLengthPredictor(model, reservoir=[])
    fit_seconds = time.perf_counter() - started
    if output_scale != 1.0:  # a served model more (or less) verbose than the one that answered the training rows
        test_rows = [{**row, "output_tokens": _scaled(row, output_scale)} for row in test_rows]

    peers = baselines(seed)
    for features, output_tokens in train:
        for baseline in peers.values():
            baseline.observe(features.input_tokens, output_tokens)

    for row in train_rows[:WARMUP_REQUESTS]:  # first calls load the tokenizer and fill caches
        body = body_of(row)
        predictor.predict(features_from_body(body, counter.count_body(body)))
    bodies = [body_of(row) for row in test_rows]
    actual = np.array([int(row["output_tokens"]) for row in test_rows], dtype=float)
    p50, p90, inputs, count_ns, predict_ns, cpu_ns = (np.empty(len(bodies)) for _ in range(6))
    for i, body in enumerate(tqdm(bodies, desc="predict", unit="req", leave=False)):
        input_tokens, prediction, count_ns[i], predict_ns[i], cpu_ns[i] = _timed_shape(counter, predictor, body)
        p50[i], p90[i], inputs[i] = prediction.p50, prediction.p90, input_tokens

    # the same steps again: a request's fastest of TIMING_PASSES runs is its cost without the other tenants'
    # interference, which on a shared machine can double a single run's time (counting first, as above, leaves the
    # caches as the gateway's request path leaves them)
    fastest_ns = predict_ns.copy()
    for _ in range(TIMING_PASSES - 1):
        for i, body in enumerate(bodies):
            fastest_ns[i] = min(fastest_ns[i], _timed_shape(counter, predictor, body)[3])

    scores = {name: _mae(actual, np.array([b.predict(int(n)) for n in inputs])) for name, b in peers.items()}
    # the test rows in file order, from their model's first outcome, through one predictor that learns as it goes
    cold = [
        (features_from_body(body, int(n)), int(outcome))
        for body, n, outcome in zip(bodies, inputs, actual, strict=True)
    ]
    best = min(scores, key=scores.__getitem__)
    best_running = min(RUNNING_BASELINES, key=scores.__getitem__)
    mae = _mae(actual, p50)
    return {
        "n_train": len(train),
        "n_test": len(bodies),
        "encoding": encoding,
        "mae": mae,
        "baselines": scores,
        "best_baseline": best,
        "gain_vs_best_baseline": 1.0 - mae / scores[best] if scores[best] else None,
        "best_running_baseline": best_running,
        "gain_vs_best_running_baseline": 1.0 - mae / scores[best_running] if scores[best_running] else None,
        "p90_coverage": float(np.mean(actual <= p90)),
        "mean_p90": float(np.mean(p90)),
        **_percentiles_us("predict_us", predict_ns),
        f"predict_fastest_of_{TIMING_PASSES}_us_p99": float(np.percentile(fastest_ns, 99) / 1e3),
        **_percentiles_us("count_input_tokens_us", count_ns),
        **_percentiles_us("count_and_predict_us", count_ns + predict_ns),
        "count_and_predict_cpu_us_p99": float(np.percentile(cpu_ns, 99) / 1e3),
        "fit_seconds": fit_seconds,
        "model_vocabulary": predictor.info["vocabulary"],
        "output_scale": output_scale,
        "cold_start": prequential(model, cold),
        "cold_start_lengths_only": prequential(model, cold, lengths_only=True),
    }


def _scaled(row: dict[str, Any], scale: float) -> int:
    """The row's output length times `scale`, at most its max_tokens (where an answer stops)."""
    scaled = max(1, round(scale * int(row["output_tokens"])))
    cap = row.get("max_tokens")
    return min(scaled, cap) if isinstance(cap, int) and cap > 0 else scaled


def _timed_shape(
    counter: InputTokenCounter, predictor: OutputLengthPredictor, body: dict[str, Any]
) -> tuple[int, Prediction, int, int, int]:
    """What the gateway does for a request's shape, timed: (input tokens, prediction, count ns, predict ns,
    thread CPU ns of both)."""
    started_cpu_ns = time.thread_time_ns()
    started_ns = time.perf_counter_ns()
    input_tokens = counter.count_body(body)
    counted_ns = time.perf_counter_ns()
    prediction = predictor.predict(features_from_body(body, input_tokens))
    ended_ns = time.perf_counter_ns()
    return (
        input_tokens,
        prediction,
        counted_ns - started_ns,
        ended_ns - counted_ns,
        time.thread_time_ns() - started_cpu_ns,
    )


def _percentiles_us(name: str, nanoseconds: np.ndarray) -> dict[str, float]:
    return {f"{name}_p{q}": float(np.percentile(nanoseconds, q) / 1e3) for q in (50, 99)}


def _mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(actual - predicted)))


def prequential(
    model: FittedModel, samples: Sequence[Sample], after: int = COLD_START_OUTCOMES, lengths_only: bool = False
) -> dict[str, Any]:
    """A new model's first outcomes, in order, through one predictor as the gateway sees them: each request is
    predicted, then its outcome observed. Scored from the `after`-th outcome on (the ones before it are the cold
    start): the blend (`OutputLengthPredictor.predict`), the text model alone (never observing) and the running
    median of the outcomes observed so far (a peer baseline, computed here on its own). `lengths_only`: each
    request is known by its input tokens, model and max_tokens only (`features_from_lengths`)."""
    blended, text_only = OutputLengthPredictor(model, reservoir=[]), OutputLengthPredictor(model, reservoir=[])
    seen: list[int] = []
    rows = []
    for features, actual in samples:
        if lengths_only:
            features = features_from_lengths(features.input_tokens, features.model, features.max_tokens)
        else:
            features = replace(features, prediction=None, base=None)  # a fresh request, whatever ran before
        prediction = blended.predict(features)
        text = text_only.predict(replace(features)) if not lengths_only else prediction
        median = float(np.median(seen)) if seen else float("nan")
        rows.append((actual, prediction.p50, prediction.p90, text.p50, text.p90, median))
        blended.observe(features, actual)
        seen.append(actual)
    scored = np.array(rows[after:], dtype=float).reshape(-1, 6)
    outcomes = scored[:, 0]
    result: dict[str, Any] = {
        "after": after,
        "n": len(scored),
        "mae": _mae(outcomes, scored[:, 1]),
        "mae_running_median": _mae(outcomes, scored[:, 5]),
        "p90_coverage": float(np.mean(outcomes <= scored[:, 2])),
        "mean_p90": float(np.mean(scored[:, 2])),
    }
    if not lengths_only:
        result["mae_text_model"] = _mae(outcomes, scored[:, 3])
        result["p90_coverage_text_model"] = float(np.mean(outcomes <= scored[:, 4]))
    return result
