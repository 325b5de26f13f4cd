"""Synthetic prompt text of a requested token length.

Traces such as Azure 2023 carry only lengths, yet a server (or a gateway that counts tokens) must
receive text of the right size. The text is built from `data/words.txt`: common English words that
are each ONE token, with or without a leading space, in the cl100k_base and llama3 tokenizers, plus
"." and "," which are one token too. Pre-tokenisers of those BPE families split at every " word" and
at punctuation, so `n` items make `n` tokens (tests/loadgen/test_prompts.py checks it). Other
tokenizers (SentencePiece Llama-2, ...) will differ by a few %; chat templates add their own tokens.

A fixed pool of items is shuffled once; a prompt is a slice of that pool starting at an offset
derived from (seed, key), so prompts are deterministic per request, differ between requests, and
cost one string slice (microseconds) to make.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np

WORDS_FILE = Path(__file__).with_name("data") / "words.txt"
POOL_ITEMS = 1 << 15  # long enough that most prompts never wrap around


class _Pool:
    """The pool text doubled (so a slice may wrap) and the character offset of each item."""

    def __init__(self, seed: int = 0) -> None:
        words = np.array(WORDS_FILE.read_text().split())
        rng = np.random.default_rng(seed)
        items = [" " + w for w in rng.choice(words, POOL_ITEMS)]
        # sentence punctuation every 5..17 words so the text is not one endless run of words
        position = 0
        while True:
            position += int(rng.integers(5, 18))
            if position >= POOL_ITEMS:
                break
            items[position] = "." if rng.random() < 0.7 else ","
        self.text = "".join(items) * 2
        lengths = np.fromiter((len(item) for item in items), dtype=np.int64, count=POOL_ITEMS)
        self.offsets = np.concatenate(([0], np.cumsum(lengths)))  # offsets[i] = start of item i
        self.pool_chars = int(self.offsets[-1])


@functools.cache
def _pool() -> _Pool:
    return _Pool()


def prepare() -> None:
    """Build the text pool now (~50 ms) rather than on the first call."""
    _pool()


def synthetic_prompt(n_tokens: int, key: int | str, seed: int = 0) -> str:
    """Text of about `n_tokens` tokens; the same (n_tokens, key, seed) always gives the same text."""
    if n_tokens <= 0:
        return ""
    pool = _pool()
    start = random.Random(f"{seed}:{key}").randrange(POOL_ITEMS)
    whole_pools, rest = divmod(n_tokens, POOL_ITEMS)
    begin = int(pool.offsets[start])
    end = (
        int(pool.offsets[start + rest])
        if start + rest <= POOL_ITEMS
        else pool.pool_chars + int(pool.offsets[start + rest - POOL_ITEMS])
    )
    text = pool.text[begin:end]
    if whole_pools:
        # a rotation of the pool is pool.text[begin:begin + pool_chars]
        text = pool.text[begin : begin + pool.pool_chars] * whole_pools + text
    return text.lstrip(" ")
