"""Other ways to predict the output length, scored against the shipped model by cross-validation on a TRAINING file.

    python bench/predictor/alternatives.py /tmp/splits/sharegpt_train.jsonl [--repeats 2]

Why it exists: on ShareGPT the shipped ridge misses its target (MAE 25% below the best peer baseline), and this is
the record of what else was tried, on the same grouped folds (`evaluate.cross_validation_folds`), reading only
the training file. Every alternative starts from the shipped model's own encoding of a request (`model.Design`):

- `shipped`: `model.fit_model`, predicted exactly as the gateway does;
- `binned_calibration`: the ridge, with its p50 / p90 offsets taken per octile of the out-of-fold score (Mondrian
  conformal) instead of once for all requests: a fix if the residuals' spread depended on the prediction;
- `stacked_gbm`: gradient-boosted trees with the absolute (quantile 0.5) loss over the ridge's out-of-fold score and
  the dense features: a fix if the dense features mattered in non-linear ways;
- `median_regression`: a linear median regression (scikit-learn `QuantileRegressor`, HiGHS, L1 penalty) instead
  of the ridge on log output: a fix if the conditional mean of the log were a poor stand-in for its median;
- `neighbours`: the ridge plus the similarity-weighted out-of-fold residuals of the 20 most similar training
  prompts (cosine of the term vectors): a fix if requests from one conversation shared an unmodelled length;
- `with_char_ngrams`: the ridge over the design plus a character 2-5-gram tf-idf of the text window: a fix if
  BPE tokens missed spelling-level cues (typos, casing and punctuation of text written by a person).
It prints one JSON line per approach: the mean MAE of p50 over the held-out folds and the p90 coverage where the
approach has a p90, with the running global mean and global median as references.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ricardo.predictor import model
from ricardo.predictor.evaluate import cross_validation_folds, read_samples
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import QuantileRegressor
from tqdm import tqdm

BINS = 8
NEIGHBOURS, NEIGHBOUR_SHRINK, NEIGHBOUR_WEIGHT = 20, 0.5, 0.3
MEDIAN_REGRESSION_ALPHA = 1e-3


class Fold:
    """One training fold encoded as the shipped model encodes it, with the ridge's in- and out-of-fold scores."""

    def __init__(self, train: list[model.Sample], held_out: list[model.Sample]):
        self.train_requests = [features for features, _ in train]
        self.held_out_requests = [features for features, _ in held_out]
        self.design, self.train_rows = model.Design.fit(self.train_requests)
        self.held_out_rows = self.design.rows(self.held_out_requests)
        self.target = model.log_target(train)
        self.coef = model.ridge_coef(self.train_rows, self.target)
        self.out_of_fold = model.out_of_fold(self.train_rows, self.target, model.request_groups(self.train_requests))
        self.residuals = self.target - self.out_of_fold
        self.score = self.held_out_rows @ self.coef


def binned_calibration(fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    edges = np.quantile(fold.out_of_fold, np.linspace(0, 1, BINS + 1)[1:-1])
    train_bin, held_out_bin = np.searchsorted(edges, fold.out_of_fold), np.searchsorted(edges, fold.score)
    everyone = model.conformal_offsets(fold.residuals)  # for an octile that ties left empty
    offsets = np.array(
        [
            model.conformal_offsets(fold.residuals[train_bin == b]) if np.any(train_bin == b) else everyone
            for b in range(BINS)
        ]
    )
    return fold.score + offsets[held_out_bin, 0], fold.score + offsets[held_out_bin, 1]


def stacked_gbm(fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    def inputs(score: np.ndarray, requests: list) -> np.ndarray:
        return np.column_stack([score, [features.dense() for features in requests]])

    x_train, x_held_out = inputs(fold.out_of_fold, fold.train_requests), inputs(fold.score, fold.held_out_requests)
    p50, p90 = (
        HistGradientBoostingRegressor(
            loss="quantile",
            quantile=q,
            max_iter=100,
            learning_rate=0.05,
            max_depth=3,
            min_samples_leaf=20,
            random_state=0,
        )
        .fit(x_train, fold.target)
        .predict(x_held_out)
        for q in (0.5, 0.9)
    )
    return p50, np.maximum(p50, p90)


def median_regression(fold: Fold) -> tuple[np.ndarray, None]:
    fitted = QuantileRegressor(quantile=0.5, alpha=MEDIAN_REGRESSION_ALPHA, fit_intercept=False, solver="highs")
    return fold.held_out_rows @ fitted.fit(fold.train_rows, fold.target).coef_, None


def neighbours(fold: Fold) -> tuple[np.ndarray, None]:
    terms = slice(0, int(fold.design.split[0]))
    similarity = (fold.held_out_rows[:, terms] @ fold.train_rows[:, terms].T).toarray()
    nearest = np.argsort(-similarity, axis=1)[:, :NEIGHBOURS]
    weight = np.take_along_axis(similarity, nearest, 1)
    correction = (weight * fold.residuals[nearest]).sum(1) / (weight.sum(1) + NEIGHBOUR_SHRINK)
    return fold.score + NEIGHBOUR_WEIGHT * correction, None


def with_char_ngrams(fold: Fold) -> tuple[np.ndarray, None]:
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    train = sparse.hstack([fold.train_rows, vectorizer.fit_transform([f.text for f in fold.train_requests])], "csr")
    held_out = sparse.hstack(
        [fold.held_out_rows, vectorizer.transform([f.text for f in fold.held_out_requests])], "csr"
    )
    return held_out @ model.ridge_coef(train, fold.target), None


APPROACHES: dict[str, Callable[[Fold], tuple[np.ndarray, np.ndarray | None]]] = {
    "binned_calibration": binned_calibration,
    "stacked_gbm": stacked_gbm,
    "median_regression": median_regression,
    "neighbours": neighbours,
    "with_char_ngrams": with_char_ngrams,
}


def tokens(log_output: np.ndarray, requests: list) -> np.ndarray:
    """Predicted tokens, capped by each request's max_tokens as the shipped model's are."""
    predicted = np.maximum(1, np.round(np.expm1(np.minimum(log_output, model.MAX_LOG_OUTPUT))))
    caps = np.array([np.inf if features.max_tokens is None else features.max_tokens for features in requests])
    return np.minimum(predicted, caps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    samples, actual = read_samples(args.train)

    errors: dict[str, list[float]] = {}
    covered: dict[str, list[float]] = {}

    def record(name: str, held_out: np.ndarray, p50: np.ndarray, p90: np.ndarray | None) -> None:
        errors.setdefault(name, []).append(float(np.mean(np.abs(actual[held_out] - p50))))
        if p90 is not None:
            covered.setdefault(name, []).append(float(np.mean(actual[held_out] <= p90)))

    for train, held_out in tqdm(cross_validation_folds(samples, args.repeats), desc="folds", leave=False):
        record("global_mean", held_out, np.full(len(held_out), actual[train].mean()), None)
        record("global_median", held_out, np.full(len(held_out), np.median(actual[train])), None)
        shipped = model.fit_model([samples[i] for i in train])
        predictions = [shipped.predict(samples[i][0]) for i in held_out]
        record("shipped", held_out, np.array([p.p50 for p in predictions]), np.array([p.p90 for p in predictions]))
        fold = Fold([samples[i] for i in train], [samples[i] for i in held_out])
        for name, approach in APPROACHES.items():
            p50, p90 = approach(fold)
            record(
                name,
                held_out,
                tokens(p50, fold.held_out_requests),
                None if p90 is None else tokens(p90, fold.held_out_requests),
            )

    for name, values in errors.items():
        line = {"approach": name, "mae": round(float(np.mean(values)), 2)}
        if name in covered:
            line["p90_coverage"] = round(float(np.mean(covered[name])), 3)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
