"""What the emulated model reads and writes: prompt token counts and the words it "generates"."""

from __future__ import annotations

from typing import Any

import quicktok

from ricardo.predictor.tokens import encodable
from ricardo.protocol.openai import message_text

# Llama-2 chat wraps each message in [INST] ... [/INST] markers: a few tokens of template per message.
TEMPLATE_TOKENS_PER_MESSAGE = 4
BOS_TOKENS = 1

_WORDS = (
    "the of and to in is that it for as with was on be by this are from at or an have not which but "
    "all they one can more their has will other time so about when some what there into only many then "
    "also these new first any work may two like use such over most well very even way where after"
).split()


def token_text(index: int) -> str:
    """The text of the `index`-th generated token: one common word, one token in Llama tokenizers."""
    return " " + _WORDS[(index * 7 + 3) % len(_WORDS)]


class TokenCounter:
    """Counts prompt tokens as the backend's tokenizer would (exact BPE via quicktok)."""

    def __init__(self, encoding: str = "llama3"):
        self.tokenizer = quicktok.get_encoding(encoding)

    def count(self, text: str) -> int:
        return BOS_TOKENS + self.tokenizer.count(encodable(text))

    def count_chat(self, messages: list[tuple[str, str | list[dict[str, Any]] | None]]) -> int:
        total = BOS_TOKENS
        for _role, content in messages:
            total += TEMPLATE_TOKENS_PER_MESSAGE + self.tokenizer.count(encodable(message_text(content)))
        return total
