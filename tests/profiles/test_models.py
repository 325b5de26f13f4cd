"""Profile books of models nothing was measured for: the engine model with another model's sizes."""

import pytest
from ricardo.profiles.catalog import load_default_book, shipped_models
from ricardo.profiles.engine_params import LLAMA2_7B, LLAMA31_8B, engine_catalog, load_engine_params


def test_another_model_keeps_the_fitted_constants_and_takes_its_own_sizes():
    old, new = engine_catalog()["A100-80GB"], engine_catalog("llama3.1-8b")["A100-80GB"]
    assert new.model == LLAMA31_8B and old.model == LLAMA2_7B
    assert new.model.kv_bytes_per_token == 128 * 1024 == old.model.kv_bytes_per_token / 4
    assert (new.flops_efficiency, new.bw_efficiency, new.step_overhead_s) == (
        old.flops_efficiency,
        old.bw_efficiency,
        old.step_overhead_s,
    )
    # GQA: four times the tokens in the KV cache, less the larger weights
    assert 3.5 * old.kv_capacity_tokens < new.kv_capacity_tokens < 4 * old.kv_capacity_tokens
    assert load_engine_params("A100-80GB", "llama3.1-8b") == new
    assert load_engine_params("A100-80GB", "some-model") == old, "a model it does not know: as Llama-2-7B"


def test_the_llama31_8b_book_is_estimated_for_every_type_with_its_context():
    assert {"llama2-7b", "llama3.1-8b"} <= set(shipped_models())
    book = load_default_book("llama3.1-8b")
    assert book.model == "llama3.1-8b" and book.slo_tpot_ms == 120 and book.context_tokens == 131072
    assert {book.source(hw) for hw in book.hardware_names()} == {"estimated"}
    assert set(book.hardware_names()) == set(engine_catalog())
    assert book.price("A10G") == load_default_book().price("A10G")
    # a long prompt: the 7B's KV cache (4x the bytes per token) holds fewer of them, so the 8B serves more per second
    old = load_default_book()
    assert book.max_rps("A100-80GB", 2000, 500) > 1.5 * old.max_rps("A100-80GB", 2000, 500)


def test_an_unknown_model_has_no_book():
    with pytest.raises(ValueError, match="no shipped profile"):
        load_default_book("gpt-2")


def test_the_smollm2_book_prices_the_cpu_pool_and_stops_at_its_8k_context():
    book = load_default_book("smollm2-135m")
    assert book.model == "smollm2-135m" and book.context_tokens == 8192 and book.source("CPU") == "estimated"
    assert book.rate_at("CPU", 100, 100) > 0
    assert book.max_rps("H100", 8000, 500) == 0, "8000 + 500 tokens do not fit an 8k context"
    # a 135M model on the same GPU: far more requests per second than Llama-2-7B
    assert book.rate_at("A10G", 500, 200) > 5 * load_default_book().rate_at("A10G", 500, 200)
