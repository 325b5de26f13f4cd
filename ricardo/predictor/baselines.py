"""What peer gateways use for output length, as baselines for `ricardo predictor eval`.

Every baseline sees only the input token count. "Online" here means each one is fed the training rows one by one,
in file order, through `observe(input_tokens, output_tokens)` (the update a gateway would make when a request
finishes), and is then frozen while it predicts the test rows, exactly like the learnt model, which is fitted on
the training rows and frozen too.

- `global_mean`: the running mean of every output seen.
- `global_median`: the median of every output seen (not a peer's method: the best constant under absolute error,
  reported so that a gain over a mean is not mistaken for a gain from the text).
- `melange_bucket_mean` (Mélange): the running mean output per input-length bucket, buckets with upper edges
  25, 100, 250, 500, 1000, 2000, 4000, 8000, 12000, 16000 tokens (+ one above); an empty bucket answers the
  global running mean.
- `aibrix_bucket_histogram` (AIBrix `SimpleOutputPredictor`): a histogram of round(log2(output)) per
  round(log2(input)) bucket; a prediction is 2^b for b drawn at random with the histogram's weights (a seeded
  numpy generator). AIBrix answers 1 token for an empty bucket; here an empty bucket draws from the histogram of
  all buckets instead, which can only help this baseline. AIBrix's 10-second window rotation is left out: the
  whole training set is the window.
- `1.5x_input` (llm-d `TokenLoadScorer`): 1.5 x input tokens; nothing to learn.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np

MELANGE_INPUT_EDGES = (25, 100, 250, 500, 1000, 2000, 4000, 8000, 12000, 16000)


class GlobalMean:
    def __init__(self) -> None:
        self.n, self.mean = 0, 0.0

    def observe(self, input_tokens: int, output_tokens: int) -> None:
        self.n += 1
        self.mean += (output_tokens - self.mean) / self.n

    def predict(self, input_tokens: int) -> float:
        return self.mean


class GlobalMedian:
    def __init__(self) -> None:
        self.outputs: list[int] = []

    def observe(self, input_tokens: int, output_tokens: int) -> None:
        self.outputs.append(output_tokens)

    def predict(self, input_tokens: int) -> float:
        return float(np.median(self.outputs)) if self.outputs else 0.0


class MelangeBucketMean:
    def __init__(self) -> None:
        self.overall = GlobalMean()
        self.buckets: dict[int, GlobalMean] = defaultdict(GlobalMean)

    def observe(self, input_tokens: int, output_tokens: int) -> None:
        self.overall.observe(input_tokens, output_tokens)
        self.buckets[self._bucket(input_tokens)].observe(input_tokens, output_tokens)

    def predict(self, input_tokens: int) -> float:
        bucket = self.buckets.get(self._bucket(input_tokens))
        return bucket.mean if bucket else self.overall.mean

    @staticmethod
    def _bucket(input_tokens: int) -> int:
        return int(np.searchsorted(MELANGE_INPUT_EDGES, input_tokens))


class AIBrixBucketHistogram:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.overall: Counter[int] = Counter()
        self.buckets: dict[int, Counter[int]] = defaultdict(Counter)

    def observe(self, input_tokens: int, output_tokens: int) -> None:
        output_bucket = _log2_bucket(output_tokens)
        self.overall[output_bucket] += 1
        self.buckets[_log2_bucket(input_tokens)][output_bucket] += 1

    def predict(self, input_tokens: int) -> float:
        histogram = self.buckets.get(_log2_bucket(input_tokens)) or self.overall
        if not histogram:
            return 1.0
        values = np.fromiter(histogram.keys(), dtype=float)
        weights = np.fromiter(histogram.values(), dtype=float)
        return float(2.0 ** self.rng.choice(values, p=weights / weights.sum()))


class InputMultiple:
    def __init__(self, factor: float = 1.5) -> None:
        self.factor = factor

    def observe(self, input_tokens: int, output_tokens: int) -> None:
        pass

    def predict(self, input_tokens: int) -> float:
        return self.factor * input_tokens


def _log2_bucket(tokens: int) -> int:
    return round(math.log2(max(1, tokens)))


def baselines(seed: int = 0) -> dict[str, Any]:
    return {
        "global_mean": GlobalMean(),
        "global_median": GlobalMedian(),
        "melange_bucket_mean": MelangeBucketMean(),
        "aibrix_bucket_histogram": AIBrixBucketHistogram(seed),
        "1.5x_input": InputMultiple(1.5),
    }
