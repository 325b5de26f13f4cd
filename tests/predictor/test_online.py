"""Cold start that adapts (`ricardo/predictor/online.py`): the text model blended with each model's running
statistics, and the lengths-only mode. `pytest -s` prints the figures asserted on.

The text scenarios stream the shipped reservoir's prompts (1,000 GSM8K and 974 ShareGPT training questions, which
the shipped text model was fitted on, so it is at its best on their true lengths) under a model name it has
never seen, in a seeded random order, each request predicted and then observed (`evaluate.prequential`, whose
running median is numpy's median of the outcomes observed so far, computed apart from the predictor).
"""

from __future__ import annotations

import inspect
import math
import random
import time
from dataclasses import fields, replace

import numpy as np
import pytest
from ricardo.predictor import online
from ricardo.predictor.evaluate import prequential
from ricardo.predictor.features import RequestFeatures, features_from_body, features_from_lengths
from ricardo.predictor.model import DEFAULT_MODEL, FittedModel, OutputLengthPredictor, fit_model, load_reservoir
from ricardo.predictor.online import PRIOR_P50, PRIOR_P90, Prediction, RunningStats

GSM8K_ROWS = 1000  # the reservoir holds the GSM8K sample first, then the ShareGPT half (coldstart.build)
NEW_MODEL = "a-model-never-seen"


@pytest.fixture(scope="module")
def shipped() -> FittedModel:
    return FittedModel.from_bytes(DEFAULT_MODEL.read_bytes())


@pytest.fixture(scope="module")
def sources():
    samples = load_reservoir()
    assert len(samples) == GSM8K_ROWS + 974
    renamed = [(replace(features, model=NEW_MODEL), actual) for features, actual in samples]
    return {"gsm8k": renamed[:GSM8K_ROWS], "sharegpt": renamed[GSM8K_ROWS:]}


def shuffled(samples, seed: int = 0):
    order = list(samples)
    random.Random(seed).shuffle(order)
    return order


def longer(samples, how: str, seed: int = 0):
    """The same prompts answered by a far more verbose model: six times longer, or lognormal of median 300
    whatever the prompt (then the text says nothing and the running median is the best predictor there is)."""
    if how == "x6":
        return [(features, 6 * actual) for features, actual in samples]
    drawn = np.random.default_rng(seed).lognormal(math.log(300), 0.6, len(samples))
    return [(features, round(n)) for (features, _), n in zip(samples, drawn, strict=True)]


@pytest.mark.parametrize("source", ["gsm8k", "sharegpt"])
@pytest.mark.parametrize("how", ["x6", "lognormal"])
def test_a_new_model_with_long_answers_is_no_worse_than_its_running_median_after_50_outcomes(
    shipped, sources, source, how
):
    result = prequential(shipped, shuffled(longer(sources[source], how)), after=50)
    print(
        f"\n{source} {how}, outcomes 50-{50 + result['n']}: MAE blend {result['mae']:.1f}, running median "
        f"{result['mae_running_median']:.1f} (x{result['mae'] / result['mae_running_median']:.3f}), text model "
        f"{result['mae_text_model']:.1f}; p90 coverage blend {result['p90_coverage']:.3f}, text model "
        f"{result['p90_coverage_text_model']:.3f}"
    )
    # lognormal: equal to the running median up to the noise of the experts sharing the weight with it
    assert result["mae"] <= result["mae_running_median"] * (1.0 if how == "x6" else 1.01)
    assert result["mae"] < 0.7 * result["mae_text_model"]
    assert 0.85 <= result["p90_coverage"] <= 0.95


@pytest.mark.parametrize("source", ["gsm8k", "sharegpt"])
def test_where_the_text_model_is_good_the_blend_keeps_it(shipped, sources, source):
    samples = shuffled(sources[source], seed=1)
    for after in (50, 500):
        result = prequential(shipped, samples, after=after)
        print(
            f"\n{source}, outcomes {after}-{after + result['n']}: MAE blend {result['mae']:.2f}, text model "
            f"{result['mae_text_model']:.2f} (x{result['mae'] / result['mae_text_model']:.3f}), running median "
            f"{result['mae_running_median']:.2f}; p90 coverage blend {result['p90_coverage']:.3f}, text model "
            f"{result['p90_coverage_text_model']:.3f}"
        )
        assert result["mae"] <= 1.03 * result["mae_text_model"]
        assert result["mae"] < result["mae_running_median"]


def bucketed_traffic(n: int, seed: int):
    """(input tokens, output tokens): three input-length buckets with answers of different medians."""
    rng = random.Random(seed)
    buckets = {(64, 127): 40, (512, 1023): 400, (4096, 8191): 120}  # input range -> median output
    traffic = []
    for _ in range(n):
        (low, high), median = rng.choice(list(buckets.items()))
        traffic.append((rng.randint(low, high), max(1, round(rng.lognormvariate(math.log(median), 0.5)))))
    return buckets, traffic


def test_lengths_only_starts_from_the_prior_and_converges_to_each_bucket_s_quantiles(shipped):
    predictor = OutputLengthPredictor(shipped, reservoir=[])
    assert predictor.predict(features_from_lengths(700, "m")) == Prediction(PRIOR_P50, PRIOR_P90)
    assert predictor.predict(features_from_lengths(700, "m", max_tokens=30)) == Prediction(30, 30)
    buckets, traffic = bucketed_traffic(3000, seed=2)
    covered = []
    for i, (input_tokens, output_tokens) in enumerate(traffic):
        features = features_from_lengths(input_tokens, "m")
        prediction = predictor.predict(features)
        if i >= 1000:
            covered.append(output_tokens <= prediction.p90)
        predictor.observe(features, output_tokens)
    for (low, high), median in buckets.items():
        prediction = predictor.predict(features_from_lengths((low + high) // 2, "m"))
        recent = [output for input_tokens, output in traffic if low <= input_tokens <= high][-online.BUCKET_WINDOW :]
        p90 = median * math.exp(0.5 * 1.2816)
        print(
            f"\ninputs {low}-{high}: p50 {prediction.p50} (median of the bucket's last {len(recent)} outcomes "
            f"{np.median(recent):.0f}, of the distribution {median}), p90 {prediction.p90} (distribution {p90:.0f})"
        )
        assert abs(prediction.p50 - np.median(recent)) <= 0.02 * median + 1
        assert abs(prediction.p50 - median) < 0.15 * median
        assert abs(prediction.p90 - p90) < 0.2 * p90
    print(f"p90 coverage over outcomes 1000-3000: {np.mean(covered):.3f}")
    assert 0.87 <= np.mean(covered) <= 0.93
    # a model the predictor has seen nothing of still gets the prior, capped by max_tokens
    assert predictor.predict(features_from_lengths(700, "other", max_tokens=100)) == Prediction(PRIOR_P50, 100)
    assert predictor.accuracy()["n_observed"] == 3000


def test_lengths_only_never_reads_the_true_length_before_it_is_observed(shipped):
    assert list(inspect.signature(features_from_lengths).parameters) == ["input_tokens", "model", "max_tokens"]
    assert not any("output" in field.name for field in fields(RequestFeatures))
    _, traffic = bucketed_traffic(300, seed=3)
    twins = [OutputLengthPredictor(shipped, reservoir=[]) for _ in range(2)]
    for twin in twins:
        for input_tokens, output_tokens in traffic:
            features = features_from_lengths(input_tokens, "m")
            twin.predict(features)
            twin.observe(features, output_tokens)
    pending = [features_from_lengths(800, "m") for _ in twins]
    issued = [twin.predict(features) for twin, features in zip(twins, pending, strict=True)]
    assert issued[0] == issued[1] == twins[0].predict(features_from_lengths(800, "m"))  # predicting changes nothing
    for twin, features, outcome in zip(twins, pending, (1, 20_000), strict=True):
        twin.observe(features, outcome)
    after = [twin.predict(features_from_lengths(800, "m")) for twin in twins]
    assert after[0].p90 < after[1].p90  # the outcome counts once observed, and not before
    # requests without text are not buffered for the text model's refit
    assert twins[0].training_set() == []


def test_the_prior_is_the_shipped_training_reservoir_s_quantiles():
    outputs = np.array([actual for _, actual in load_reservoir()])
    assert (np.median(outputs), round(float(np.percentile(outputs, 90)))) == (PRIOR_P50, PRIOR_P90)


def test_memory_is_bounded_however_many_models_and_outcomes():
    stats = RunningStats()
    rng = random.Random(4)
    for i in range(20 * online.MAX_MODELS):
        stats.observe(f"model-{i}", rng.randint(1, 4000), None, (math.log(50), math.log(120)), False, None, 80)
    assert len(stats) == online.MAX_MODELS
    assert stats.predict("model-0", 100, None, None) == Prediction(PRIOR_P50, PRIOR_P90)  # dropped first
    assert stats.predict(f"model-{20 * online.MAX_MODELS - 1}", 100, None, None).p50 != PRIOR_P50

    one = RunningStats()
    for _ in range(20_000):
        input_tokens = rng.randint(0, 1 << 40)
        one.observe("m", input_tokens >> rng.randint(0, 40), None, (math.log(50), math.log(90)), False, None, 100)
    bound = 2 * online.WINDOW + online.MAX_BUCKETS * online.BUCKET_WINDOW
    print(f"\none model, 20,000 outcomes: {one.stored()} numbers held (bound {bound})")
    assert one.stored() <= bound
    assert stats.stored() <= online.MAX_MODELS * bound


def test_a_new_text_model_forgets_the_old_one_s_bias_and_keeps_the_outcomes(shipped, sources):
    predictor = OutputLengthPredictor(shipped, reservoir=[])
    samples = shuffled(longer(sources["sharegpt"], "x6"), seed=5)
    for features, actual in samples[:200]:
        features = replace(features)
        predictor.predict(features)
        predictor.observe(features, actual)
    in_flight = replace(samples[200][0])
    predictor.predict(in_flight)  # predicted by the old text model, finished after the swap
    before = predictor.accuracy()["models"][NEW_MODEL]
    predictor.use(FittedModel.from_bytes(DEFAULT_MODEL.read_bytes()))  # a model that never saw this one's outcomes
    predictor.observe(in_flight, samples[200][1])
    after = predictor.accuracy()["models"][NEW_MODEL]
    assert before["bias"] > 3 and after["bias"] is None  # no residual of the old model on the new one
    assert after["outcomes"] == 201 and after["median"] == pytest.approx(before["median"], rel=0.1)
    assert after["mae"]["text"] == pytest.approx(before["mae"]["text"], rel=0.1)  # its record is the old one's
    errors, medians = [], []
    for i, (features, actual) in enumerate(samples[201:400]):
        features = replace(features)
        prediction = predictor.predict(features)
        errors.append(abs(actual - prediction.p50))
        medians.append(abs(actual - np.median([a for _, a in samples[: 201 + i]])))
        predictor.observe(features, actual)
    print(
        f"\nthe 200 predictions after a swap to a model that never saw this one: MAE {np.mean(errors):.1f}, "
        f"running median {np.mean(medians):.1f}"
    )
    assert np.mean(errors) <= np.mean(medians)

    # a refit that has learnt this model brings its out-of-fold record on it, and the blend trusts it at once
    others = [(replace(features, model=""), actual) for features, actual in sources["gsm8k"][:200]]
    refitted = fit_model([(replace(features), actual) for features, actual in samples[:400]] + others, version=2)
    record, n = refitted.info["model_mae"][NEW_MODEL]
    assert n == 400
    predictor.use(refitted)
    assert predictor.accuracy()["models"][NEW_MODEL]["mae"]["text"] == pytest.approx(record, abs=0.01)


def test_the_blend_adds_a_few_microseconds_to_a_prediction(shipped, sources):
    stats = RunningStats()
    base = (math.log(60), math.log(150))
    for features, actual in longer(sources["sharegpt"], "x6")[:500]:
        stats.observe(NEW_MODEL, features.input_tokens, None, base, False, None, actual)
    timings = []
    for features, _ in sources["sharegpt"][:2000]:
        started = time.perf_counter_ns()
        stats.predict(NEW_MODEL, features.input_tokens, None, base)
        timings.append(time.perf_counter_ns() - started)
    p50 = np.percentile(timings, 50) / 1e3
    print(f"\nthe blend's share of a prediction: p50 {p50:.1f} µs, p99 {np.percentile(timings, 99) / 1e3:.1f} µs")
    assert p50 < 20  # ~3 µs here; a bound that only a gross regression (or a very busy machine) crosses


def test_gateway_bodies_and_lengths_share_one_model_s_statistics(shipped):
    predictor = OutputLengthPredictor(shipped, reservoir=[])
    for _ in range(60):
        features = features_from_lengths(200, "shared")
        predictor.predict(features)
        predictor.observe(features, 900)
    body = features_from_body({"model": "shared", "messages": [{"role": "user", "content": "hi there"}]}, 12)
    alone = shipped.predict(body)
    assert alone.p50 < 300 < predictor.predict(body).p50  # the text request gets the outcomes' level too
