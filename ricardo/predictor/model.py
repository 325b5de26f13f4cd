"""Output-length prediction: p50 and p90 of a request's output tokens, learnt online from outcomes.

The model is a ridge regression of log(1 + output tokens) on
  - the idf-weighted presence of the prompt's term keys, l2-normalised (see `features.py`),
  - a one-hot of the model name (so each served model gets its own level),
  - the standardised dense features (input length, digits, lines, sampling parameters ...).
It is calibrated split-conformally on out-of-fold residuals r = log1p(actual) - prediction (5 folds; identical
requests stay in one fold, or repeats of a prompt would make the residuals look smaller than they are):
  p50 = expm1(prediction + median(r)),  p90 = expm1(prediction + q),  q = the ceil(0.9 (n + 1))-th smallest r,
so p90 covers ~90% of requests drawn like the training data; both are capped by `max_tokens`.

Serving never calls scikit-learn (Ridge.predict on one sparse row costs ~110 µs here, plus ~20 µs to build the
row): the fitted vocabulary, idf and coefficients are numpy arrays; a prediction is a BPE encoding of at most
500 characters, a lookup of its terms (`TermIndex`), two gathered sums and a 30-term dot product in plain Python.

Online loop: `observe()` buffers (features, actual) in a bounded deque and scores the prediction that was made.
`refit()` trains on a snapshot of the buffer plus a bounded reservoir of cold-start samples (so a quiet or skewed
period does not erase what the shipped model knew) and swaps the fitted model in one assignment; `predict()`
reads that attribute once, so a concurrent swap is safe.

Where to run a refit (bench/predictor/refit_stall.py, 6,974 samples, this 2-core machine shared with other work):
- `await loop.run_in_executor(None, predictor.refit)`: the fit holds the GIL for long stretches (scipy sparse
  products, sorts, Python loops); predictions on the loop stall up to 50-110 ms, p99 gap 2-6 ms, for the whole
  refit (5-7 s).
- `await predictor.refit_async(refit_executor())` (one niced, single-threaded worker process): the fit runs in
  another process (`fit_packed`, built on the pure `fit(samples) -> bytes`); this process only packs the samples
  and loads the result, in a helper thread. Largest gap 10-25 ms, during the ~40 ms of packing (on this machine any
  busy thread costs the loop ~5-10 ms); p99 gap 0.3-0.5 ms, the same as with no refit at all. The niced worker
  yields the CPU: 2-3.5 s per refit, 25-35 s when the loop and other processes keep both cores busy.
The gateway schedules refits, shares outcomes and models between replicas and saves the model: gateway/learning.py.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import math
import multiprocessing
import operator
import os
import pickle
import time
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ricardo.predictor.features import (
    BIGRAM_BASE,
    EDGE_TOKENS,
    FEATURE_VERSION,
    HEAD_BASE,
    TAIL_BASE,
    VOCAB,
    RequestFeatures,
    features_from_body,
)
from ricardo.predictor.online import MAX_LOG_OUTPUT, MAX_MODELS, RunningStats
from ricardo.predictor.online import Prediction as Prediction  # re-exported: callers have always found it here

FORMAT = "ricardo-output-length/1"
DATA = Path(__file__).resolve().parent / "data"
DEFAULT_MODEL = DATA / "cold_start_model.npz"
DEFAULT_RESERVOIR = DATA / "cold_start_samples.jsonl.gz"

_sum = np.add.reduce

RIDGE_ALPHA = 1.0
FOLDS = 5
MIN_DF = 2  # a term seen in fewer training requests is noise (2 beat 3 and 5 in cross-validation)
COVERAGE = 0.9
INTERCEPT_COLUMN = 10.0  # its coefficient's penalty is 1/100 of a unit column's
BUFFER_SIZE = 5000  # most recent outcomes kept for retraining
ACCURACY_WINDOW = 1000  # most recent outcomes scored by accuracy()
PACK_CHUNK = 256  # samples pickled per GIL-holding call

Sample = tuple[RequestFeatures, int]
SparseRows = Any  # a scipy.sparse CSR matrix (scipy ships no type information)


class FittedModel:
    """Immutable fitted arrays and the numpy prediction path."""

    ARRAYS = (
        "vocab",
        "idf",
        "term_coef",
        "model_keys",
        "model_coef",
        "dense_mean",
        "dense_scale",
        "dense_coef",
        "constants",
    )

    def __init__(
        self,
        vocab: np.ndarray,
        idf: np.ndarray,
        term_coef: np.ndarray,
        model_keys: np.ndarray,
        model_coef: np.ndarray,
        dense_mean: np.ndarray,
        dense_scale: np.ndarray,
        dense_coef: np.ndarray,
        constants: np.ndarray,
        info: dict[str, Any],
    ):
        self.vocab = vocab  # sorted term keys (int64)
        self.idf = idf
        self.term_coef = term_coef
        self.model_keys = model_keys  # crc32 of each model name seen in training
        self.model_coef = model_coef
        self.dense_mean = dense_mean
        self.dense_scale = dense_scale
        self.dense_coef = dense_coef
        self.constants = constants  # intercept, p50 offset, p90 offset (log space)
        self.info = info  # format, feature_version, samples, trained_at, version, vocabulary, dense_range
        # serving form: standardisation folded into the weights, plain Python numbers for the short dense part
        self._terms = TermIndex(vocab)
        # a request's two term sums, of idf^2 and of idf x coefficient over its columns, as one gather and one
        # reduction along the rows (each row summed as the 1-d sum of its values, bit for bit: 1.1 µs fewer). Both
        # rows float32, as `Design` makes the idf: a float64 row would turn the other's sum into a float64 one
        self._term_tables = np.stack([idf * idf, idf * term_coef]).astype(np.float32)
        dense_weight = dense_coef / dense_scale
        self._dense_weight: list[float] = dense_weight.tolist()
        self._base = float(constants[0] - dense_mean @ dense_weight)
        self._model_weight: dict[int, float] = dict(zip(model_keys.tolist(), model_coef.tolist(), strict=True))
        self.offset_p50, self.offset_p90 = float(constants[1]), float(constants[2])
        # a model saved before it kept its training range (none): its features unclipped, as it was served then
        self._dense_range: tuple[list[float], list[float]] | None = None
        if info.get("dense_range") is not None:
            low, high = info["dense_range"]
            self._dense_range = [float(x) for x in low], [float(x) for x in high]

    def log_prediction(self, features: RequestFeatures) -> float:
        cols = self._terms.columns(features.tokens())
        # `take` and `add.reduce`: the same float32 sums as `[cols].sum()`, without the fancy index's setup and the
        # Python wrapper of ndarray.sum (1/6 of their cost); read as Python floats (the float32 values exactly) by
        # `tolist`: unpacking the array costs 0.6 µs, its numpy scalars' comparison and square root as much again.
        # The quotient stays a float32 one, as it always was
        norm_squared, weighted = _sum(self._term_tables.take(cols, axis=1), axis=1).tolist()
        text = np.float32(weighted) / math.sqrt(norm_squared) if norm_squared > 0 else 0.0
        values = features.dense()
        if self._dense_range is not None:
            # a linear model extrapolates without bound: past the longest prompt it was trained on, `input_tokens_k`
            # (a negative weight) took a summary of a 3,600-token report to a one-token answer. Each feature is held
            # to its range in training, where the fit says something
            low, high = self._dense_range
            values = list(map(min, map(max, values, low), high))
        dense: float = sum(map(operator.mul, values, self._dense_weight))
        return self._base + float(text) + dense + self._model_weight.get(features.model_key(), 0.0)

    def log_quantiles(self, features: RequestFeatures) -> tuple[float, float]:
        """log1p of the conformal p50 and p90, uncapped."""
        center = self.log_prediction(features)
        return center + self.offset_p50, center + self.offset_p90

    def predict(self, features: RequestFeatures) -> Prediction:
        """The text model's own p50/p90 (`OutputLengthPredictor.predict` blends them with running statistics)."""
        log50, log90 = self.log_quantiles(features)
        p50 = max(1, round(math.expm1(min(MAX_LOG_OUTPUT, log50))))
        p90 = max(p50, round(math.expm1(min(MAX_LOG_OUTPUT, log90))))
        if features.max_tokens is not None:
            p50, p90 = min(p50, features.max_tokens), min(p90, features.max_tokens)
        return Prediction(p50, p90)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez_compressed(
            out,
            info=np.frombuffer(json.dumps(self.info).encode(), np.uint8),
            **{name: getattr(self, name) for name in self.ARRAYS},
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> FittedModel:
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            info = json.loads(arrays["info"].tobytes())
            if info.get("format") != FORMAT or info.get("feature_version") != FEATURE_VERSION:
                raise ValueError(
                    f"incompatible output-length model: {info.get('format')}, "
                    f"features v{info.get('feature_version')} (expected {FORMAT}, v{FEATURE_VERSION})"
                )
            return cls(**{name: arrays[name] for name in cls.ARRAYS}, info=info)


_MISSING = np.array([-1], dtype=np.int32)  # the column of a key not in the vocabulary, in `TermIndex`


class TermIndex:
    """The columns of a request's term keys, found without building the keys (the same as
    `vocabulary_columns(vocab, features.term_keys())`, in 2/3 of the time: 17 instead of 25 µs here).

    Unigram, first-token and last-token keys are token ids within their range, so a table of 3 x VOCAB columns
    answers them with one gather; only the bigrams need a binary search, into the bigram keys alone.
    """

    def __init__(self, vocab: np.ndarray):
        columns = np.arange(len(vocab), dtype=np.int32)
        self.table = np.full(3 * VOCAB, -1, dtype=np.int32)
        for offset, low in enumerate((0, HEAD_BASE, TAIL_BASE)):  # unigrams, first tokens, last tokens
            inside = (vocab >= low) & (vocab < low + VOCAB)
            self.table[offset * VOCAB + vocab[inside] - low] = columns[inside]
        self.unigrams, self.first, self.last = (
            self.table[:VOCAB],
            self.table[VOCAB : 2 * VOCAB],
            self.table[2 * VOCAB :],
        )
        bigram = (vocab >= BIGRAM_BASE) & (vocab < HEAD_BASE)
        # after the bigram keys, one past any pair of token ids: a search never lands beyond the end
        self.bigrams = np.append(vocab[bigram] - BIGRAM_BASE, VOCAB * VOCAB)
        self.bigram_columns = np.append(columns[bigram], np.int32(-1))

    def columns(self, tokens: np.ndarray) -> np.ndarray:
        # Each numpy call costs ~0.3-1 µs on arrays this short whatever it does, and 1-2 µs in the gateway, where
        # the request's other work (parsing, ranking) leaves numpy's code out of the caches: what counts is how few.
        # Hence `take` rather than an index array (no fancy-indexing setup), array methods rather than numpy's
        # functions (no dispatch wrapper), each table gathered into the one concatenation, and the deduplication
        # of `_sorted_unique` with a -1 in front: the keys not in the vocabulary are -1s too, which all equal the
        # one before them once sorted, so that the mask that drops duplicates drops them with the -1 in front.
        pairs = tokens[:-1] * VOCAB
        pairs += tokens[1:]
        pairs.sort()
        positions = self.bigrams.searchsorted(pairs)
        found = np.concatenate(
            (
                _MISSING,
                self.unigrams.take(tokens),
                self.first.take(tokens[:EDGE_TOKENS]),
                self.last.take(tokens[-EDGE_TOKENS:]),
                self.bigram_columns.take(positions[self.bigrams.take(positions) == pairs]),
            )
        )
        found.sort()
        rest = found[1:]
        unique: np.ndarray = rest[rest != found[:-1]]
        return unique


def vocabulary_columns(vocab: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The columns of the keys found in the sorted `vocab`, each once (presence beat counts in cross-validation)."""
    if not len(vocab):
        return np.empty(0, np.int64)
    keys = np.sort(keys)  # sorted needles: a cache-friendly search and sorted columns, deduplicated below
    positions = np.searchsorted(vocab, keys)
    np.minimum(positions, len(vocab) - 1, out=positions)
    return _sorted_unique(positions[vocab[positions] == keys])


def _sorted_unique(found: np.ndarray) -> np.ndarray:
    """np.unique without its overhead, which dominates on short arrays."""
    found.sort()
    first = np.empty(len(found), dtype=bool)
    first[:1] = True
    np.not_equal(found[1:], found[:-1], out=first[1:])
    return found[first]


class Design:
    """How training encodes requests as rows of a sparse matrix, fitted on the training requests (`Design.fit`):
    the idf-weighted, l2-normalised presence of their term keys (those in at least MIN_DF requests), a one-hot of
    the model name, the standardised dense features and an explicit intercept column. `rows` encodes any requests
    the same way (unseen terms and models are left out), so alternative models can be scored on held-out rows.
    """

    def __init__(self, requests: Sequence[RequestFeatures], keys: Sequence[np.ndarray], dense: np.ndarray):
        n = len(requests)
        seen, df = np.unique(np.concatenate([np.unique(k) for k in keys]), return_counts=True)
        kept = df >= MIN_DF
        self.vocab = seen[kept]
        self.idf = (np.log((1 + n) / (1 + df[kept])) + 1.0).astype(np.float32)  # scikit-learn's smooth idf
        names = np.array([features.model_key() for features in requests if features.model], dtype=np.int64)
        self.model_keys = np.unique(names)
        self.dense_mean, self.dense_scale = dense.mean(axis=0), dense.std(axis=0)
        self.dense_low, self.dense_high = dense.min(axis=0), dense.max(axis=0)
        self.dense_scale[self.dense_scale < 1e-9] = 1.0  # constant columns (a std of 1e-17 is rounding, not spread)
        # where each part's coefficients start and end: terms, models, dense, then the intercept
        self.split = np.cumsum([len(self.vocab), len(self.model_keys), dense.shape[1]])

    @classmethod
    def fit(cls, requests: Sequence[RequestFeatures]) -> tuple[Design, SparseRows]:
        """The design fitted on `requests`, and their rows (each request's keys and dense features made once)."""
        keys, dense = _keys_and_dense(requests)
        design = cls(requests, keys, dense)
        return design, design._rows(requests, keys, dense)

    def rows(self, requests: Sequence[RequestFeatures]) -> SparseRows:
        return self._rows(requests, *_keys_and_dense(requests))

    def _rows(self, requests: Sequence[RequestFeatures], keys: Sequence[np.ndarray], dense: np.ndarray) -> SparseRows:
        from scipy import sparse

        cols = [vocabulary_columns(self.vocab, k) for k in keys]
        values = [self.idf[c] / max(1e-12, float(np.linalg.norm(self.idf[c]))) for c in cols]
        terms = sparse.csr_matrix(
            (np.concatenate(values), np.concatenate(cols), np.cumsum([0] + [len(c) for c in cols])),
            shape=(len(requests), len(self.vocab)),
        )
        names = np.array([features.model_key() if features.model else -1 for features in requests])
        models = sparse.csr_matrix((names[:, None] == self.model_keys[None, :]).astype(float))
        # each feature held to its range in training, as the fitted model serves it (`FittedModel.log_prediction`):
        # a no-op on the training rows, and held-out rows are scored as they would be served
        standardised = (np.clip(dense, self.dense_low, self.dense_high) - self.dense_mean) / self.dense_scale
        # an explicit, barely penalised intercept column: scikit-learn's own intercept handling for sparse input
        # (a centring operator) makes its conjugate-gradient solver ~3x slower
        intercept = np.full((len(requests), 1), INTERCEPT_COLUMN)
        return sparse.hstack([terms, models, sparse.csr_matrix(standardised), intercept], format="csr")


def _keys_and_dense(requests: Sequence[RequestFeatures]) -> tuple[list[np.ndarray], np.ndarray]:
    return [features.term_keys() for features in requests], np.array([features.dense() for features in requests])


def log_target(samples: Sequence[Sample]) -> np.ndarray:
    target: np.ndarray = np.log1p(np.array([max(0, int(actual)) for _, actual in samples], dtype=float))
    return target


def request_groups(requests: Sequence[RequestFeatures]) -> np.ndarray:
    """Identical requests share a group, so that cross-validation keeps them in one fold."""
    return np.array(
        [zlib.crc32(features.text.encode("utf-8", "surrogatepass")) ^ features.input_tokens for features in requests]
    )


def ridge_coef(design: SparseRows, target: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import Ridge

    coef: np.ndarray = Ridge(alpha=RIDGE_ALPHA, fit_intercept=False, solver="sparse_cg").fit(design, target).coef_
    return coef


def out_of_fold(design: SparseRows, target: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's prediction by a ridge fitted on the FOLDS - 1 folds that do not hold its group."""
    from sklearn.model_selection import GroupKFold

    n_folds = min(FOLDS, len(np.unique(groups)))
    if n_folds < 2:  # every sample is the same request: in-sample is all there is
        in_sample: np.ndarray = design @ ridge_coef(design, target)
        return in_sample
    predicted = np.empty(len(target))
    for train, held_out in GroupKFold(n_folds).split(design, groups=groups):
        predicted[held_out] = design[held_out] @ ridge_coef(design[train], target[train])
    return predicted


def conformal_offsets(residuals: np.ndarray) -> tuple[float, float]:
    """The p50 and p90 offsets of out-of-fold residuals: their median and their ceil(0.9 (n + 1))-th smallest."""
    ordered = np.sort(residuals)
    rank = min(len(ordered), math.ceil(COVERAGE * (len(ordered) + 1))) - 1
    return float(np.median(ordered)), float(ordered[rank])


def fit_model(samples: Sequence[Sample], version: int = 1) -> FittedModel:
    """Fit the model on (features, actual output tokens) pairs; needs at least two samples."""
    n = len(samples)
    if n < 2:
        raise ValueError("fitting an output-length model needs at least 2 samples")
    requests = [features for features, _ in samples]
    encoder, design = Design.fit(requests)
    target = log_target(samples)

    coef = ridge_coef(design, target)
    held_out = out_of_fold(design, target, request_groups(requests))
    offset_p50, offset_p90 = conformal_offsets(target - held_out)

    split = encoder.split
    info = {
        "format": FORMAT,
        "feature_version": FEATURE_VERSION,
        "samples": n,
        "version": version,
        "trained_at": time.time(),
        "vocabulary": len(encoder.vocab),
        "model_mae": held_out_mae(samples, held_out + offset_p50),
        # each dense feature's range in training: serving clips to it (`FittedModel.log_prediction`)
        "dense_range": [encoder.dense_low.tolist(), encoder.dense_high.tolist()],
    }
    constants = np.array([coef[-1] * INTERCEPT_COLUMN, offset_p50, offset_p90])
    return FittedModel(
        encoder.vocab,
        encoder.idf,
        coef[: split[0]].astype(np.float32),
        encoder.model_keys,
        coef[split[0] : split[1]],
        encoder.dense_mean,
        encoder.dense_scale,
        coef[split[1] : split[2]],
        constants,
        info,
    )


def held_out_mae(samples: Sequence[Sample], log_p50: np.ndarray) -> dict[str, list[float]]:
    """{model name: [MAE in tokens of the out-of-fold p50, samples]} for the MAX_MODELS names with most samples:
    the new model's record on each served model's outcomes, which the blend starts it from (`online.py`)."""
    p50 = np.maximum(1, np.round(np.expm1(np.minimum(log_p50, MAX_LOG_OUTPUT))))
    caps = np.array([features.max_tokens or np.inf for features, _ in samples], dtype=float)
    errors = np.abs(np.array([actual for _, actual in samples], dtype=float) - np.minimum(p50, caps))
    by_model: dict[str, list[float]] = {}
    for (features, _), error in zip(samples, errors.tolist(), strict=True):
        by_model.setdefault(features.model, []).append(error)
    largest = sorted(by_model.items(), key=lambda item: -len(item[1]))[:MAX_MODELS]
    return {name: [round(sum(errors) / len(errors), 3), len(errors)] for name, errors in largest}


def fit(samples: Sequence[Sample], version: int = 1) -> bytes:
    """`fit_model` as bytes: a pure function to run in a worker process (`ProcessPoolExecutor`)."""
    return fit_model(samples, version).to_bytes()


def pack(samples: Sequence[Sample]) -> list[bytes]:
    """Samples pickled in small chunks, for `fit_packed` in another process.

    Handing the samples themselves to a ProcessPoolExecutor pickles them all in one call that holds the GIL
    (~20-40 ms for 7,000 samples); run `pack` in a thread instead: the event loop gets the GIL between chunks,
    and a list of bytes crosses the process boundary as a memory copy.
    """
    return [
        pickle.dumps(list(samples[i : i + PACK_CHUNK]), protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(samples), PACK_CHUNK)
    ]


def fit_packed(chunks: Sequence[bytes], version: int = 1) -> bytes:
    """`fit` on the output of `pack` (both sides must run the same ricardo version)."""
    return fit([sample for chunk in chunks for sample in pickle.loads(chunk)], version)


class OutputLengthPredictor:
    """Predicts output length, scores itself on outcomes and retrains on them.

    A prediction blends the text model with the running statistics of the request's model name (`online.py`);
    a request known by its lengths only (`features_from_lengths`) is predicted from those statistics alone.
    """

    def __init__(
        self,
        model: FittedModel,
        reservoir: Sequence[Sample] | None = None,
        buffer_size: int = BUFFER_SIZE,
        window: int = ACCURACY_WINDOW,
        max_models: int = MAX_MODELS,
    ):
        self._model = model
        self._generation = 0  # counts the text models served: a request's text prediction is stamped with it
        self._running = RunningStats(max_models)
        self._reservoir = reservoir  # None: the shipped cold-start samples, read at the first refit
        self._buffer: deque[Sample] = deque(maxlen=buffer_size)
        self._recent: deque[tuple[int, bool]] = deque(maxlen=window)  # (|actual - p50|, actual <= p90)
        self.observed = 0

    @classmethod
    def load_default(cls) -> OutputLengthPredictor:
        """The shipped cold-start model (trained on GSM8K and ShareGPT; see data/PROVENANCE.md)."""
        return cls.load(DEFAULT_MODEL)

    @classmethod
    def from_bytes(cls, blob: bytes, reservoir: Sequence[Sample] | None = None) -> OutputLengthPredictor:
        return cls(FittedModel.from_bytes(blob), reservoir)

    @classmethod
    def load(cls, path: str | Path, reservoir: Sequence[Sample] | None = None) -> OutputLengthPredictor:
        return cls.from_bytes(Path(path).read_bytes(), reservoir)

    def to_bytes(self) -> bytes:
        return self._model.to_bytes()

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    def load_bytes(self, blob: bytes) -> None:
        """Swap in a model fitted elsewhere (a worker process, another replica)."""
        self.use(FittedModel.from_bytes(blob))

    def use(self, model: FittedModel) -> None:
        """Serve `model` from now on (a prediction under way keeps the model it started with). The running
        statistics forget the old text model's bias and scores and keep the outcomes (see `online.py`)."""
        self._generation += 1
        self._model = model
        self._running.reset_base(model.info.get("model_mae") or {})

    @property
    def info(self) -> dict[str, Any]:
        """The serving model's format, feature version, training samples, version and training time."""
        return dict(self._model.info)

    def predict(self, features: RequestFeatures) -> Prediction:
        """p50/p90 of the request's output tokens, from what the gateway knows before it is served."""
        base = None
        if not features.lengths_only:
            base = self._model.log_quantiles(features)
            features.base = (self._generation, *base)
        prediction = self._running.predict(features.model, features.input_tokens, features.max_tokens, base)
        features.prediction = prediction
        return prediction

    def observe(self, features: RequestFeatures, actual_output_tokens: int) -> None:
        """Learn a finished request's output length: score the prediction made for it, update the running
        statistics of its model and buffer it for the next refit."""
        prediction = features.prediction or self.predict(features)
        stamped = features.base
        base = stamped[1:] if stamped is not None and stamped[0] == self._generation else None
        self._running.observe(
            features.model,
            features.input_tokens,
            features.max_tokens,
            base,
            features.lengths_only,
            prediction,
            actual_output_tokens,
        )
        if not features.lengths_only:  # the text model has nothing to learn from a request without text
            self._buffer.append((features, actual_output_tokens))
        self._recent.append((abs(actual_output_tokens - prediction.p50), actual_output_tokens <= prediction.p90))
        self.observed += 1

    def add_outcomes(self, samples: Sequence[Sample]) -> None:
        """Buffer outcomes that another replica observed (and scored) for the next refit."""
        self._buffer.extend(samples)

    def accuracy(self) -> dict[str, Any]:
        recent = self._recent.copy()
        n = len(recent)
        return {
            "window": recent.maxlen,
            "n": n,
            "n_observed": self.observed,
            "mae_p50": sum(error for error, _ in recent) / n if n else None,
            "p90_coverage": sum(covered for _, covered in recent) / n if n else None,
            "model_version": self._model.info.get("version"),
            "model_samples": self._model.info.get("samples"),
            "models": self._running.summary(),
        }

    def training_set(self) -> list[Sample]:
        """A snapshot of the buffered outcomes plus the cold-start reservoir: what the next refit learns from."""
        if self._reservoir is None:
            self._reservoir = load_reservoir()
        return list(self._buffer.copy()) + list(self._reservoir)

    def refit(self) -> None:
        """Retrain on `training_set()` and swap the new model in (blocking: run it in an executor)."""
        self.use(fit_model(self.training_set(), self._next_version()))

    async def refit_async(self, executor: Executor) -> bytes:
        """Retrain in `executor`, a ProcessPoolExecutor (best `refit_executor()`, at a lower CPU priority), swap the
        result in and return it as bytes (`to_bytes` would compress it again, for ~0.1 s, on the event loop).

        Only the final swap runs on the event loop's thread; reading the reservoir, packing the samples and
        unpacking the new model run in the default thread pool in short GIL-holding steps
        (see bench/predictor/refit_stall.py).
        """
        loop = asyncio.get_running_loop()
        chunks = await loop.run_in_executor(None, lambda: pack(self.training_set()))
        blob = await loop.run_in_executor(executor, fit_packed, chunks, self._next_version())
        self.use(await loop.run_in_executor(None, FittedModel.from_bytes, blob))
        return blob

    def _next_version(self) -> int:
        return int(self._model.info.get("version", 0)) + 1


def refit_executor(niceness: int = 10) -> ProcessPoolExecutor:
    """One worker process for refits, at a lower CPU priority and on one thread.

    "spawn", not "fork": forking a process that runs an event loop and helper threads can copy a lock some thread
    holds. One thread: scikit-learn's OpenMP and OpenBLAS would otherwise start a thread per core and, on this
    2-core machine, spin against the gateway (a HistGradientBoosting fit took 14 s with 2 OpenMP threads, 0.2 s
    with one).
    """
    return ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_background_worker, initargs=(niceness,)
    )


def stop_executor(executor: ProcessPoolExecutor) -> None:
    """Stop the worker now, even in the middle of a refit (shutdown() alone would wait for it to finish)."""
    executor.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def _background_worker(niceness: int) -> None:
    from threadpoolctl import threadpool_limits

    os.nice(niceness)
    threadpool_limits(1)


def load_reservoir(path: Path = DEFAULT_RESERVOIR) -> list[Sample]:
    """Cold-start samples stored as {"body", "input_tokens", "output_tokens"} lines."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    return [(features_from_body(row["body"], row["input_tokens"]), row["output_tokens"]) for row in rows]
