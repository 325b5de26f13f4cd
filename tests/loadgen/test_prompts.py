import timeit

import pytest
import quicktok
from ricardo.loadgen.prompts import POOL_ITEMS, WORDS_FILE, synthetic_prompt

SIZES = [10, 11, 37, 100, 512, 1000, 3000, 8000]


@pytest.fixture(scope="module", params=["cl100k_base", "llama3"])
def encoding(request):
    return quicktok.get_encoding(request.param)


def test_every_word_is_one_token(encoding):
    for word in WORDS_FILE.read_text().split():
        assert encoding.count(word) == 1 and encoding.count(" " + word) == 1, word


@pytest.mark.parametrize("n_tokens", SIZES)
def test_token_count_matches_the_trace_length(encoding, n_tokens):
    for key in range(5):
        counted = encoding.count(synthetic_prompt(n_tokens, key))
        assert abs(counted - n_tokens) <= 0.02 * n_tokens, (n_tokens, key, counted)


def test_prompts_longer_than_the_pool_wrap_around(encoding):
    n_tokens = POOL_ITEMS * 2 + 123
    assert abs(encoding.count(synthetic_prompt(n_tokens, 7)) - n_tokens) <= 0.02 * n_tokens


def test_deterministic_per_key_and_seed_and_varied():
    assert synthetic_prompt(500, 3) == synthetic_prompt(500, 3)
    assert synthetic_prompt(500, 3) != synthetic_prompt(500, 4)
    assert synthetic_prompt(500, 3) != synthetic_prompt(500, 3, seed=1)
    words = synthetic_prompt(1000, 0).replace(".", " ").replace(",", " ").split()
    assert len(set(words)) > 250
    assert synthetic_prompt(0, 0) == ""


def test_an_8000_token_prompt_takes_well_under_a_millisecond():
    synthetic_prompt(1, 0)  # the pool is built once, on first use
    best = min(timeit.repeat(lambda: synthetic_prompt(8000, 12345), number=100, repeat=5)) / 100
    assert best < 0.5e-3
