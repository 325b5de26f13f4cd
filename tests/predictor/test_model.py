import asyncio
import gc
import inspect
import itertools
import math
import operator
import random
import time

import numpy as np
import pytest
from ricardo.predictor.features import (
    DENSE_NAMES,
    HEAD_CHARS,
    TAIL_CHARS,
    RequestFeatures,
    _tokenizer,
    encodable,
    features_from_body,
)
from ricardo.predictor.model import (
    DEFAULT_MODEL,
    DEFAULT_RESERVOIR,
    OutputLengthPredictor,
    TermIndex,
    fit,
    fit_model,
    load_reservoir,
    refit_executor,
    stop_executor,
    vocabulary_columns,
)
from ricardo.predictor.tokens import InputTokenCounter

from .synthetic import requests

COUNTER = InputTokenCounter("llama3")


def featurise(body: dict):
    return features_from_body(body, COUNTER.count_body(body))


@pytest.fixture(scope="module")
def reservoir():
    return load_reservoir()


def small_reservoir(reservoir, n=400):
    return random.Random(0).sample(reservoir, n)


def mae(predictor: OutputLengthPredictor, traffic) -> float:
    return float(np.mean([abs(predictor.predict(featurise(body)).p50 - actual) for body, actual in traffic]))


def test_the_online_loop_learns_what_the_cold_start_model_does_not_know(reservoir):
    predictor = OutputLengthPredictor.load(DEFAULT_MODEL, reservoir=small_reservoir(reservoir))
    held_out = requests(200, seed=1)
    stream = iter(requests(800, seed=2))
    errors = [mae(predictor, held_out)]
    for batch in (40, 160, 600):  # refits after 40, 200 and 800 outcomes
        for _ in range(batch):
            body, actual = next(stream)
            features = featurise(body)
            predictor.predict(features)
            predictor.observe(features, actual)
        predictor.refit()
        errors.append(mae(predictor, held_out))
    print(f"\nheld-out MAE after 0, 40, 200, 800 outcomes: {', '.join(f'{e:.1f}' for e in errors)} tokens")
    assert all(later < 0.95 * earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.4 * errors[0], errors
    accuracy = predictor.accuracy()
    assert accuracy["n_observed"] == accuracy["n"] == 800
    assert accuracy["model_version"] == 4 and accuracy["model_samples"] == 800 + 400
    assert 0 <= accuracy["p90_coverage"] <= 1 and accuracy["mae_p50"] > 0


def test_predictions_are_capped_by_max_tokens_and_p90_is_at_least_p50():
    predictor = OutputLengthPredictor.load_default()
    for body, _ in requests(100, seed=3):
        uncapped = predictor.predict(featurise(body))
        assert 1 <= uncapped.p50 <= uncapped.p90
        capped = predictor.predict(featurise({**body, "max_tokens": 7}))
        assert capped.p50 <= capped.p90 <= 7
        both = predictor.predict(featurise({**body, "max_tokens": 500, "max_completion_tokens": 3}))
        assert both.p90 <= 3


def test_features_see_the_body_only():
    assert list(inspect.signature(features_from_body).parameters) == ["body", "input_tokens"]
    body, _ = requests(1, seed=4)[0]
    plain, extra = featurise(body), featurise({**body, "x-ricardo-output-tokens": 900, "headers": {"a": "b"}})
    predictor = OutputLengthPredictor.load_default()
    assert predictor.predict(plain) == predictor.predict(extra)


def test_chat_and_completions_bodies_and_content_parts():
    chat = features_from_body(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Name two "},
                        {"type": "image_url", "image_url": {}},
                        {"type": "text", "text": "rivers?"},
                    ],
                },
            ],
            "temperature": 0.2,
            "stop": ["\n"],
            "response_format": {"type": "json_object"},
            "tools": [{}],
        },
        20,
    )
    assert chat.text == "Be brief.\nName two rivers?" and chat.messages == 2 and chat.has_system and chat.is_chat
    assert (chat.temperature, chat.has_stop, chat.json_mode, chat.has_tools) == (0.2, True, True, True)
    completion = features_from_body({"model": "m", "prompt": ["Once upon", "a time"], "max_tokens": 9}, 5)
    assert completion.text == "Once upon\na time" and completion.max_tokens == 9 and not completion.is_chat
    huge = features_from_body({"prompt": "word " * 100_000}, 100_000)
    assert len(huge.text) == HEAD_CHARS + 1 + TAIL_CHARS and huge.chars == 500_000
    assert len(chat.dense()) == len(completion.dense()) == len(DENSE_NAMES)


def test_bytes_round_trip_and_save_load(tmp_path):
    predictor = OutputLengthPredictor.load_default()
    assert predictor.info["samples"] > 8000 and predictor.info["version"] == 1
    copy = OutputLengthPredictor.from_bytes(predictor.to_bytes())
    predictor.save(tmp_path / "model.npz")
    loaded = OutputLengthPredictor.load(tmp_path / "model.npz")
    for body, _ in requests(50, seed=5):
        expected = predictor.predict(featurise(body))
        assert copy.predict(featurise(body)) == expected == loaded.predict(featurise(body))
    stale = fit_model(requests_as_samples(20))
    stale.info["feature_version"] = 0
    with pytest.raises(ValueError, match="incompatible"):
        OutputLengthPredictor.from_bytes(stale.to_bytes())


def requests_as_samples(n: int, seed: int = 6):
    return [(featurise(body), actual) for body, actual in requests(n, seed)]


def test_fit_is_a_pure_function_of_its_samples():
    samples = requests_as_samples(60)
    first, second = OutputLengthPredictor.from_bytes(fit(samples)), OutputLengthPredictor.from_bytes(fit(samples))
    for features, _ in samples[:10]:
        assert first.predict(features) == second.predict(features)
    with pytest.raises(ValueError):
        fit(samples[:1])


def test_shipped_artefacts_are_small_and_documented():
    data = DEFAULT_MODEL.parent
    assert DEFAULT_MODEL.stat().st_size + DEFAULT_RESERVOIR.stat().st_size < 5_000_000
    provenance = (data / "PROVENANCE.md").read_text()
    for path in data.iterdir():
        if path.name != "PROVENANCE.md":
            assert f"`{path.name}`" in provenance


async def _max_gap_while(predictor: OutputLengthPredictor, refit) -> tuple[float, int, float]:
    """The longest the event loop's thread was held up between two predictions while `refit` ran, as this
    process's CPU time (all its threads, not the worker process's): the loop's own work and any GIL-holding work
    of the helper threads, which is what a refit could cost the gateway's loop. Not wall time: on this shared
    2-core machine the OS alone kept the loop off the CPU for 0.3-0.4 s at once under load (also while it waited
    for the GIL held by a thread the OS had descheduled), with or without a refit. The test's own heap is frozen
    out of the garbage collector: a full collection of it took 85 ms, refit or not."""
    features = [featurise(body) for body, _ in requests(100, seed=7)]
    gaps: list[float] = []
    done = False

    async def predicting() -> None:
        last = time.process_time()
        while not done:
            predictor.predict(features[len(gaps) % len(features)])
            await asyncio.sleep(0)
            now = time.process_time()
            gaps.append(now - last)
            last = now

    gc.collect()
    gc.freeze()
    try:
        task = asyncio.create_task(predicting())
        started = time.perf_counter()
        await refit()
        duration = time.perf_counter() - started
        done = True
        await task
    finally:
        gc.unfreeze()
    return max(gaps), len(gaps), duration


@pytest.fixture
def busy_predictor(reservoir):
    predictor = OutputLengthPredictor.load(DEFAULT_MODEL, reservoir=reservoir)
    for body, actual in requests(1000, seed=8):
        predictor.observe(featurise(body), actual)
    return predictor


async def test_a_refit_in_a_thread_lets_predictions_flow(busy_predictor):
    loop = asyncio.get_running_loop()
    max_gap, predictions, duration = await _max_gap_while(
        busy_predictor, lambda: loop.run_in_executor(None, busy_predictor.refit)
    )
    assert busy_predictor.info["version"] == 2
    assert predictions > 100 and max_gap < min(0.3, duration / 3)


async def test_a_refit_in_a_process_lets_predictions_flow(busy_predictor):
    pool = refit_executor(niceness=0)  # not niced here: with the machine busy a niced worker may wait for long
    try:
        pool.submit(int).result()
        max_gap, predictions, _ = await _max_gap_while(busy_predictor, lambda: busy_predictor.refit_async(pool))
    finally:
        stop_executor(pool)
    assert busy_predictor.info["version"] == 2
    assert predictions > 100 and max_gap < 0.1


def test_odd_bodies_get_bounded_predictions():
    predictor = OutputLengthPredictor.load_default()
    odd = [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}] * 40, "temperature": float("nan")},
        {"model": "m", "messages": [{"role": "tool"}, {"role": "user", "content": None}, "not a message"]},
        {"prompt": [1, 2, 3], "max_tokens": True, "top_p": 1e308},
        {"prompt": "x" * 100_000, "max_tokens": 10**12},
    ]
    for body in odd:
        prediction = predictor.predict(features_from_body(body, 10**9))
        assert 1 <= prediction.p50 <= prediction.p90 <= 2**20


def test_the_term_index_finds_what_a_search_of_the_whole_vocabulary_finds(reservoir):
    model = OutputLengthPredictor.load_default()._model
    index = TermIndex(model.vocab)
    odd = [features_from_body({"prompt": text}, 1) for text in ("", "a", "a b", "\u00e9\u00e9\u00e9 \U0001f600")]
    for features in odd + [features for features, _ in reservoir[::7]]:
        expected = vocabulary_columns(model.vocab, features.term_keys())
        assert np.array_equal(index.columns(features.tokens()), expected)
    assert np.array_equal(TermIndex(model.vocab[:0]).columns(odd[2].tokens()), [])


def test_a_malformed_features_record_is_refused():
    record = features_from_body({"prompt": "hello", "max_tokens": 5, "temperature": 0.5}, 3).to_record()
    assert RequestFeatures.from_record(list(record)).to_record() == record
    fields = {name: i for i, name in enumerate(RequestFeatures.__slots__)}
    for name, bad in (
        ("text", None),
        ("input_tokens", -1),
        ("temperature", float("nan")),
        ("max_tokens", 10**400),
        ("has_stop", "yes"),
    ):
        broken = list(record)
        broken[fields[name]] = bad
        with pytest.raises(ValueError, match=name):
            RequestFeatures.from_record(broken)
    with pytest.raises(ValueError):
        RequestFeatures.from_record(record[:-1])


def reference_log_prediction(model, features: RequestFeatures) -> float:
    """The text model's log prediction by the plain formula: the term keys built and searched in the whole vocabulary,
    the token ids made by np.array (what the serving path's shortcuts must reproduce to the bit)."""
    tokens = np.array(_tokenizer().encode_ordinary(encodable(features.text.lower())), dtype=np.int64)
    assert np.array_equal(features.tokens(), tokens) and features.tokens().dtype == tokens.dtype
    cols = vocabulary_columns(model.vocab, features.term_keys())
    norm_squared = (model.idf * model.idf)[cols].sum()
    weighted = (model.idf * model.term_coef).astype(np.float32)[cols].sum()
    text = weighted / math.sqrt(norm_squared) if norm_squared > 0 else 0.0
    values = features.dense()
    if model.info.get("dense_range") is not None:  # each feature held to its range in training
        values = np.clip(values, *model.info["dense_range"]).tolist()
    dense = sum(map(operator.mul, values, (model.dense_coef / model.dense_scale).tolist()))
    base = float(model.constants[0] - model.dense_mean @ (model.dense_coef / model.dense_scale))
    weights = dict(zip(model.model_keys.tolist(), model.model_coef.tolist(), strict=True))
    return base + float(text) + dense + weights.get(features.model_key(), 0.0)


def test_served_predictions_are_the_plain_formulas_to_the_bit(reservoir):
    model = OutputLengthPredictor.load_default()._model
    odd = [features_from_body({"prompt": text}, 1) for text in ("", "a", "a b", "\u00e9\u00e9\u00e9 \U0001f600 \ud800")]
    for features in odd + [features for features, _ in reservoir]:
        assert model.log_prediction(features) == reference_log_prediction(model, features)
