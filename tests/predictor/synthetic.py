"""Synthetic chat traffic whose answer length depends on a word the shipped model has never seen."""

from __future__ import annotations

import random

KEYWORD = "zebracorn"
WORDS = (
    "please write tell explain summarise a the about my our for with and short note invoice shipment garden "
    "recipe budget travel engine poem contract lesson weather report letter"
).split()


def requests(n: int, seed: int, model: str = "synthetic") -> list[tuple[dict, int]]:
    """(chat body, output tokens): prompts with the keyword get answers ten times longer."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
        special = rng.random() < 0.5
        if special:
            words.insert(rng.randrange(len(words)), KEYWORD)
        length = rng.randint(30, 60) * (10 if special else 1)
        out.append(({"model": model, "messages": [{"role": "user", "content": " ".join(words)}]}, length))
    return out
