"""Cold start that adapts: per-model running statistics of outcomes, blended with the text model.

The text model (`model.py`) knows the prompts it was trained on. Facing a served model whose answers are several
times longer than those, it is wrong by a constant factor until a refit has enough of that model's outcomes
(500 outcomes and 5 minutes in the gateway). Meanwhile each model name gets its own `ModelStats`, learnt from its
outcomes only (the true length of a request is read when it has finished, never before):

- `outputs`: the model's last WINDOW output lengths, kept sorted (its running quantiles);
- `buckets`: the same per log2 bucket of input tokens (BUCKET_WINDOW each);
- `residuals`: log1p(actual) - the text model's log p50 (its running bias on this model), last WINDOW of them.

Experts, each a p50 (tokens) and a log p90, capped by `max_tokens`:

| expert | p50 | p90 |
|---|---|---|
| `text` | the text model's conformal p50 | its conformal p90 |
| `corrected` | text p50 x exp(median residual) | text p50 x exp(90th percentile of the residuals) |
| `prior` (instead of the two above for a request known by its lengths only) | PRIOR_P50 | PRIOR_P90 |
| `model` | median of `outputs` | 90th percentile of `outputs` |
| `bucket` | median of the request's input bucket, or `model`'s below MIN_BUCKET outcomes in it | its 90th percentile |

The blend is a prequential contest: every outcome scores each expert's p50 by its absolute error in tokens, from
the state *before* the outcome is learnt; scores are sums decayed with a memory of MEMORY outcomes. An expert's
weight is exp(-n (mae - best) / best): n its decayed count of scored outcomes, best the lowest decayed MAE among
the experts that answer the request. The exponent is the gap to the best in units of the best's error, times the
evidence: a gap of 10% costs an expert a factor e after 10 outcomes and e^5 after 50, so a bad expert fades
within tens of outcomes and near-equal experts share. An expert without a scored outcome (at a model's first
outcomes) waits for one; the corrected expert, born of the text model, starts from the text model's record.
There is no learning rate to choose: multiplying the exponent by 0.5, 2 or 4 moved no scenario's MAE by more than
0.3% (the training halves of GSM8K and ShareGPT with true, x6, x0.3 and lognormal lengths; the held-out halves are
what bench/predictor/coldstart.py reports).
p50 = sum(w p50) / sum(w), in tokens: absolute error is convex, so the blend's error on an outcome is at most the
weighted mean of the experts' errors on it. p90 = exp(sum(w log p90) / sum(w) + delta): each expert's p90 is an
empirical (or conformal) 90th percentile, and delta keeps the blend's running coverage at 90% (adaptive conformal
inference, Gibbs & Candès 2021: delta += ACI_STEP (miss - 0.1) on each outcome, from the WARMUP-th outcome on:
before it the experts' quantiles are a few samples' worth, and the misses of the text model on a new model would
leave delta too high for hundreds of outcomes).

Lengths only (`features_from_lengths`, a trace without text): the `prior` expert stands for the text model, so a
model without outcomes gets the constant PRIOR; `model` and `bucket` take over as outcomes arrive.

A new text model (a refit, or one adopted from another replica; `reset_base`): the residuals go (they measured the
old model's bias) and with them the corrected expert's record. The text expert starts from the new model's own
record on this model's outcomes, its out-of-fold MAE from the fit (`model.held_out_mae`: a refit that has learnt
this model is trusted at once, one that has not is not), or keeps the old model's record if the new one saw no
outcome of this model. The coverage correction starts again from 0. The outputs and buckets stay: they describe
the traffic, not the model, and keep protecting the first predictions of the new text model where it is wrong.
(`bench/predictor/coldstart.py SPLITS --refit`: a refit after 500 outcomes; the ShareGPT and GSM8K test halves with
true, x6 and lognormal answers; 2 seeds. Over the next 50 predictions, keeping the old model's residuals and
records was 1.3-1.8x worse on x6 answers and at most 5% better elsewhere; starting the new text expert from
scratch instead of its out-of-fold record was 0-3% worse, never better.)

Costs: `predict` reads a few sorted-list positions and computes one exp per expert (~3 µs here); `observe` scores
the experts and inserts into three sorted windows (bisect: a memmove of at most WINDOW pointers). Memory is bounded:
at most MAX_MODELS model names (the least recently observed is dropped), each at most 2 WINDOW + MAX_BUCKETS
BUCKET_WINDOW numbers. Outcomes that other replicas observed reach the refit (`add_outcomes`), not these statistics:
each replica learns its running statistics from its own outcomes.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

WINDOW = 1024  # outcomes a model's running quantiles and the text model's bias are read from
BUCKET_WINDOW = 256  # outcomes per input-length bucket
MIN_BUCKET = 16  # below this many outcomes a bucket answers with the model-wide quantiles
MAX_BUCKETS = 25  # log2 buckets of input tokens; every input of 2^24 tokens or more shares the last
MEMORY = 128  # outcomes: the decay of the experts' scores is 1 - 1 / MEMORY per scored outcome
MAX_MODELS = 64  # model names tracked at once
MISS = 0.1  # the p90's target miss rate
ACI_STEP = 0.05  # log-space step of the coverage correction (a miss raises it 0.045, a hit lowers it 0.005)
DELTA_LIMIT = 2.0  # the coverage correction moves p90 by at most a factor e^2 either way
WARMUP = 20  # outcomes of a model before the coverage correction starts
MAX_LOG_OUTPUT = math.log1p(1 << 20)  # no request, however odd, is predicted past a million tokens
# Median and 90th percentile of the output lengths in the shipped training reservoir (data/cold_start_samples,
# 1,000 GSM8K and 974 ShareGPT requests; tests/predictor/test_online.py checks them against it): the prediction
# for a request known by its lengths only, of a model without outcomes yet.
PRIOR_P50 = 70
PRIOR_P90 = 162

TEXT, CORRECTED, PRIOR, MODEL, BUCKET = range(5)
EXPERTS = ("text", "corrected", "prior", "model", "bucket")
_DECAY = 1.0 - 1.0 / MEMORY
_PRIOR_LOG90 = math.log1p(PRIOR_P90)


@dataclass(frozen=True, slots=True)
class Prediction:
    p50: int
    p90: int


class SortedWindow:
    """The last `size` values added, also kept sorted: O(1) quantiles, a bisect and a memmove per add."""

    __slots__ = ("_order", "_sorted")

    def __init__(self, size: int):
        self._order: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, value: float) -> None:
        if len(self._order) == self._order.maxlen:
            del self._sorted[bisect_left(self._sorted, self._order[0])]
        self._order.append(value)
        insort(self._sorted, value)

    def median(self) -> float:
        ordered, n = self._sorted, len(self._sorted)
        return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2

    def p90(self) -> float:
        """The ceil(0.9 (n + 1))-th smallest (the split-conformal rank), or the largest when n < 9."""
        ordered = self._sorted
        return ordered[min(len(ordered), math.ceil((1 - MISS) * (len(ordered) + 1))) - 1]

    def clear(self) -> None:
        self._order.clear()
        self._sorted.clear()


class ModelStats:
    """One model name's running statistics, experts' scores and coverage correction. What a prediction reads
    (quantiles, weights) is worked out when an outcome is learnt, so that `predict` only combines numbers."""

    __slots__ = (
        "bucket_answers",
        "buckets",
        "correction",
        "count",
        "delta",
        "lengths_weights",
        "loss",
        "model_answer",
        "outcomes",
        "outputs",
        "residuals",
        "text_weights",
    )

    def __init__(self) -> None:
        self.outputs = SortedWindow(WINDOW)
        self.buckets: dict[int, SortedWindow] = {}
        self.residuals = SortedWindow(WINDOW)
        self.loss = [0.0] * len(EXPERTS)  # decayed sums of |actual - p50|
        self.count = [0.0] * len(EXPERTS)  # decayed counts of scored outcomes
        self.delta = 0.0
        self.outcomes = 0
        # read by `experts`: (median tokens, log1p p90) of the model and of each bucket with MIN_BUCKET outcomes,
        # (median, p90) of the residuals; the weights of the experts, in `experts`' order, summing to 1
        self.model_answer: tuple[float, float] | None = None
        self.bucket_answers: dict[int, tuple[float, float]] = {}
        self.correction: tuple[float, float] | None = None
        self.text_weights: list[float] = [1.0]
        self.lengths_weights: list[float] = [1.0]

    def experts(
        self, input_tokens: int, cap: float, base: tuple[float, float] | None, lengths_only: bool
    ) -> list[tuple[int, float, float]]:
        """(expert, p50 tokens capped, log p90) of each expert that answers this request. `base`: the text model's
        (log p50, log p90) for the request; None for a request known by its lengths only (the prior answers), or
        when it is unknown (a request predicted by a text model since replaced: neither text expert answers)."""
        if lengths_only:
            answers = [(PRIOR, min(PRIOR_P50, cap), _PRIOR_LOG90)]
        elif base is None:
            answers = []
        else:
            log50, log90 = base
            answers = [(TEXT, min(math.expm1(log50), cap), log90)]
            if self.correction is not None:
                bias, spread = self.correction
                answers.append((CORRECTED, min(math.expm1(log50 + bias), cap), log50 + spread))
        model = self.model_answer
        if model is not None:
            answers.append((MODEL, min(model[0], cap), model[1]))
            bucket = self.bucket_answers.get(_bucket(input_tokens), model)
            answers.append((BUCKET, min(bucket[0], cap), bucket[1]))
        return answers

    def score(self, answers: list[tuple[int, float, float]], actual: int) -> None:
        loss, count = self.loss, self.count
        for expert, p50, _ in answers:
            loss[expert] = _DECAY * loss[expert] + abs(actual - p50)
            count[expert] = _DECAY * count[expert] + 1.0

    def learn(self, input_tokens: int, actual: int, residual: float | None) -> None:
        self.outcomes += 1
        self.outputs.add(actual)
        self.model_answer = _answer(self.outputs)
        key = _bucket(input_tokens)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = SortedWindow(BUCKET_WINDOW)
        bucket.add(actual)
        if len(bucket) >= MIN_BUCKET:
            self.bucket_answers[key] = _answer(bucket)
        if residual is not None:
            if self.correction is None:  # born from the text model: it starts from its record, not from nothing,
                # so that the two are compared on the same outcomes (a record of a few lucky ones would outweigh
                # a long one otherwise)
                self.loss[CORRECTED], self.count[CORRECTED] = self.loss[TEXT], self.count[TEXT]
            self.residuals.add(residual)
            self.correction = (self.residuals.median(), self.residuals.p90())
        self._weigh()

    def reset_base(self, record: tuple[float, float] | None) -> None:
        """A new text model: the residuals measured the old one's bias, so they go, and with them the corrected
        expert's record. The text expert starts from `record`, the new model's (MAE, samples) on this model's
        outcomes, out of fold, from its fit (a refit that has learnt this model knows so from the start), or
        keeps the old model's record if the new one saw no outcome of this model. The coverage correction starts
        again from 0: it corrected a blend of other experts (the new model's p90 is calibrated out of fold)."""
        if record is not None:
            mae, samples = record
            self.count[TEXT] = min(float(samples), float(MEMORY))
            self.loss[TEXT] = mae * self.count[TEXT]
        self.loss[CORRECTED] = self.count[CORRECTED] = 0.0
        self.residuals.clear()
        self.correction = None
        self.delta = 0.0
        self._weigh()

    def _weigh(self) -> None:
        text = [TEXT, CORRECTED] if self.correction is not None else [TEXT]
        self.text_weights = self._weights([*text, MODEL, BUCKET])
        self.lengths_weights = self._weights([PRIOR, MODEL, BUCKET])

    def _weights(self, experts: list[int]) -> list[float]:
        """exp(-n (mae - best) / best) for each expert with a record (see the module doc), normalised; an expert
        without one waits for its first scored outcome (equal weights while none has a record)."""
        loss, count = self.loss, self.count
        errors = [loss[expert] / count[expert] if count[expert] else None for expert in experts]
        known = [error for error in errors if error is not None]
        if not known:
            return [1.0 / len(experts)] * len(experts)
        best = min(known)
        scale = max(1.0, best)  # in tokens: experts within a token of each other are equal
        weights = [
            0.0 if error is None else math.exp(-count[expert] * (error - best) / scale)
            for expert, error in zip(experts, errors, strict=True)
        ]
        total = sum(weights)
        return [weight / total for weight in weights]


class RunningStats:
    """Every model's `ModelStats`, at most `max_models` of them (least recently observed dropped first)."""

    def __init__(self, max_models: int = MAX_MODELS):
        self.max_models = max_models
        self._models: OrderedDict[str, ModelStats] = OrderedDict()

    def __len__(self) -> int:
        return len(self._models)

    def predict(
        self, model: str, input_tokens: int, max_tokens: int | None, base: tuple[float, float] | None
    ) -> Prediction:
        """p50/p90 for a request to `model`; `base` is the text model's (log p50, log p90) for it, None for a
        request known by its lengths only."""
        stats = self._models.get(model)
        if stats is None:  # no outcome of this model yet: the text model, or the prior
            log50, log90 = base if base is not None else (math.log1p(PRIOR_P50), _PRIOR_LOG90)
            return _capped(math.expm1(min(MAX_LOG_OUTPUT, log50)), log90, max_tokens)
        answers = stats.experts(input_tokens, math.inf if max_tokens is None else max_tokens, base, base is None)
        weights = stats.lengths_weights if base is None else stats.text_weights
        p50 = log90 = 0.0
        for weight, (_, answer50, answer90) in zip(weights, answers, strict=True):
            p50 += weight * answer50
            log90 += weight * answer90
        return _capped(p50, log90 + stats.delta, max_tokens)

    def observe(
        self,
        model: str,
        input_tokens: int,
        max_tokens: int | None,
        base: tuple[float, float] | None,
        lengths_only: bool,
        issued: Prediction | None,
        actual: int,
    ) -> None:
        """Score the experts on a finished request (before learning it), correct the coverage of `issued` (the
        p90 the router was given), then learn the outcome. `base` as for `ModelStats.experts`."""
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = ModelStats()
            if len(self._models) > self.max_models:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(model)
        actual = max(0, int(actual))
        cap = math.inf if max_tokens is None else max_tokens
        stats.score(stats.experts(input_tokens, cap, base, lengths_only), actual)
        if issued is not None and stats.outcomes >= WARMUP:
            step = ACI_STEP * ((actual > issued.p90) - MISS)
            stats.delta = min(DELTA_LIMIT, max(-DELTA_LIMIT, stats.delta + step))
        # an answer cut by max_tokens says only that the length was at least that: no measure of the text model's bias
        censored = max_tokens is not None and actual >= max_tokens
        residual = math.log1p(actual) - base[0] if base is not None and not lengths_only and not censored else None
        stats.learn(input_tokens, actual, residual)

    def reset_base(self, records: dict[str, list[float]]) -> None:
        """A new text model serves from now on; `records`: its out-of-fold {model: [MAE, samples]} (see
        `ModelStats.reset_base`)."""
        for model, stats in self._models.items():
            record = records.get(model)
            stats.reset_base(None if record is None else (float(record[0]), float(record[1])))

    def stored(self) -> int:
        """How many numbers the windows hold, all models together (bounded: see the module doc)."""
        return sum(
            len(stats.outputs) + len(stats.residuals) + sum(map(len, stats.buckets.values()))
            for stats in self._models.values()
        )

    def summary(self) -> dict[str, Any]:
        """Per model: outcomes, running median, the experts' decayed MAE, the coverage correction."""
        return {
            model: {
                "outcomes": stats.outcomes,
                "median": stats.outputs.median() if stats.outputs else None,
                "bias": math.exp(stats.residuals.median()) if stats.residuals else None,
                "mae": {
                    name: round(stats.loss[i] / stats.count[i], 2) for i, name in enumerate(EXPERTS) if stats.count[i]
                },
                "p90_correction": math.exp(stats.delta),
            }
            for model, stats in self._models.items()
        }


def _answer(window: SortedWindow) -> tuple[float, float]:
    return window.median(), math.log1p(window.p90())


def _bucket(input_tokens: int) -> int:
    return min(MAX_BUCKETS - 1, max(0, int(input_tokens)).bit_length())


def _capped(p50_tokens: float, log90: float, max_tokens: int | None) -> Prediction:
    p50 = max(1, round(min(p50_tokens, 1 << 20)))
    p90 = max(p50, round(math.expm1(min(MAX_LOG_OUTPUT, log90))))
    if max_tokens is not None:
        p50, p90 = min(p50, max_tokens), min(p90, max_tokens)
    return Prediction(p50, p90)
