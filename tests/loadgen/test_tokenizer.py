"""Prompts of exact token counts with a model's tokenizer (loadgen/tokenizer.py). Needs the optional `tokenizers`
package (`pip install 'ricardo[tokenizer]'`); skipped without it."""

from __future__ import annotations

import pytest
from ricardo.errors import InvalidInput
from ricardo.loadgen.prompts import synthetic_prompt
from ricardo.loadgen.tokenizer import exact_prompt, load_tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="the optional extra ricardo[tokenizer] is not installed")


@pytest.fixture(scope="module")
def small_vocabulary(tmp_path_factory):
    """A byte-level BPE of 400 tokens trained here on the synthetic text: most words take several tokens, so a cut
    often falls inside a word, where decoding and encoding again need not give the same tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([synthetic_prompt(2000, key) for key in range(20)], trainer)
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    return load_tokenizer(str(directory))  # a HF model directory: its tokenizer.json


def test_a_small_vocabulary_splits_words(small_vocabulary):
    text = synthetic_prompt(200, "x")
    assert len(small_vocabulary.encode(text)) > 1.5 * 200  # not one token a word, as in Llama-3


@pytest.mark.parametrize("n_tokens", [1, 2, 17, 100, 513, 2000])
def test_prompts_encode_to_exactly_the_count_asked(small_vocabulary, n_tokens):
    for key in range(10):
        prompt = exact_prompt(small_vocabulary, n_tokens, f"k{key}")
        assert len(small_vocabulary.encode(prompt)) == n_tokens, (n_tokens, key, prompt[-40:])


def test_prompts_differ_by_key_and_repeat_by_key(small_vocabulary):
    assert exact_prompt(small_vocabulary, 50, 1) == exact_prompt(small_vocabulary, 50, 1)
    assert exact_prompt(small_vocabulary, 50, 1) != exact_prompt(small_vocabulary, 50, 2)


def test_what_is_not_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(InvalidInput):
        load_tokenizer(str(tmp_path / "missing.gguf"))
    with pytest.raises(InvalidInput):
        load_tokenizer(str(tmp_path))  # a directory without tokenizer.json


def test_no_two_prompts_of_a_profile_run_share_a_prefix_a_cache_could_serve():
    from ricardo.cli.profile_prompts import Prompts

    run, other_run = Prompts(None, seed=0), Prompts(None, seed=0)
    short, long = run.text(250, "100:1.0:0"), run.text(1000, "100:1.0:0")
    prefix = short[: len(short) // 2]
    assert not long.startswith(prefix), "a smaller input size is not the start of a larger one"
    assert run.text(250, "25:1.0:0")[: len(prefix)] != prefix, "nor another bucket's prompt at the same rate"
    assert other_run.text(250, "100:1.0:0")[: len(prefix)] != prefix, "nor a resumed run's"
