"""Input token counts: exact with a configured tokenizer, otherwise an estimate corrected online.

Exact mode (`InputTokenCounter("llama3" | "cl100k_base" | "o200k_base" | any quicktok encoding)`) counts the
text with quicktok and adds the tokens of the chat template around it:

- llama3 (Meta's Llama 3 template): `<|begin_of_text|>` once; per message
  `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` (4 tokens + the role); then the
  generation prompt `<|start_header_id|>assistant<|end_header_id|>\\n\\n` (4 tokens).
- cl100k_base / o200k_base / others (OpenAI's published rule for chat models): 3 tokens per message + the role,
  and 3 tokens priming the reply.
- A message's `name` costs its tokens + 1; an assistant's `tool_calls` cost the tokens of each function name and
  arguments. Non-text content parts (images, audio) are ignored.
- A plain completion prompt costs its tokens plus the beginning-of-text token where the template has one.

Estimate mode (`InputTokenCounter(None)`) assumes 4 UTF-8 bytes per token and the OpenAI template rule, then
multiplies by a correction ratio learnt per model from the `prompt_tokens` that backends report
(`observe(estimated, actual)`): a running mean of log(actual / estimated) over the first 20 reports, then an
exponentially weighted one (weight 0.05). Each report's log error is clipped to +-log 2, so once warmed up one
absurd report moves the ratio by at most 3.5%; the ratio stays within [1/4, 4].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import quicktok

BYTES_PER_TOKEN = 4.0
# learning rate of the correction ratio once warmed up; the first observations use 1/n (a plain mean)
RATIO_ALPHA = 0.05
MAX_LOG_STEP = math.log(2.0)  # one observation's error counts as at most 2x either way
RATIO_BOUNDS = (0.25, 4.0)


@dataclass(frozen=True)
class ChatTemplate:
    begin: int  # tokens once per prompt (beginning of text)
    per_message: int  # tokens around each message, role excluded
    reply: int  # tokens that open the assistant's reply


LLAMA3_TEMPLATE = ChatTemplate(begin=1, per_message=4, reply=4)
OPENAI_TEMPLATE = ChatTemplate(begin=0, per_message=3, reply=3)
TEMPLATES = {"llama3": LLAMA3_TEMPLATE}


class InputTokenCounter:
    """Counts the prompt tokens a backend will report for a request."""

    def __init__(self, encoding: str | None = None):
        self.encoding = encoding
        self.tokenizer = quicktok.get_encoding(encoding) if encoding else None
        self.template = TEMPLATES.get(encoding or "", OPENAI_TEMPLATE)
        self._log_ratio: dict[str | None, float] = {}
        self._observations: dict[str | None, int] = {}

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def count_messages(self, messages: list[dict[str, Any]], model: str | None = None) -> int:
        template = self.template
        total: float = template.begin + template.reply
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += template.per_message + self._raw(str(message.get("role", "")))
            total += self._raw(message_text(message.get("content")))
            if message.get("name"):
                total += 1 + self._raw(str(message["name"]))
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                total += self._raw(str(function.get("name", ""))) + self._raw(str(function.get("arguments", "")))
        return self._corrected(total, model)

    def count_prompt(self, text: str, model: str | None = None) -> int:
        return self._corrected(self.template.begin + self._raw(text), model)

    def count_body(self, body: dict[str, Any], model: str | None = None) -> int:
        """Prompt tokens of an OpenAI chat (`messages`) or completions (`prompt`: a string or strings) body."""
        if isinstance(body.get("messages"), list):
            return self.count_messages(body["messages"], model)
        return self.count_prompt("\n".join(prompt_texts(body)), model)

    def observe(self, estimated: int, actual: int, model: str | None = None) -> None:
        """Learn from a backend's `prompt_tokens`; `estimated` is what this counter returned for that request.

        Exact counts are not corrected (a mismatch means the backend's template differs, not our estimate).
        """
        if self.exact or estimated <= 0 or actual <= 0:
            return
        n = self._observations.get(model, 0) + 1
        self._observations[model] = n
        step = max(-MAX_LOG_STEP, min(MAX_LOG_STEP, math.log(actual / estimated)))
        low, high = (math.log(bound) for bound in RATIO_BOUNDS)
        log_ratio = self._log_ratio.get(model, 0.0) + max(RATIO_ALPHA, 1.0 / n) * step
        self._log_ratio[model] = max(low, min(high, log_ratio))

    def ratio(self, model: str | None = None) -> float:
        """The current correction applied to estimates for `model` (1.0 in exact mode or before any report)."""
        return math.exp(self._log_ratio.get(model, 0.0))

    def _raw(self, text: str) -> float:
        if not text:
            return 0
        if self.tokenizer is not None:
            count: int = self.tokenizer.count(encodable(text))
            return count
        # an ASCII text is its own UTF-8 (isascii is a flag read): no copy of a long prompt to measure it
        size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        return size / BYTES_PER_TOKEN

    def _corrected(self, raw: float, model: str | None) -> int:
        if self.exact:
            return int(raw)
        return max(1, round(raw * self.ratio(model)))


def prompt_texts(body: dict[str, Any]) -> list[str]:
    """The texts of a chat body's messages, or of a completions body's prompt (a string or strings; token ids and
    other non-text parts are left out)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return [message_text(m.get("content")) for m in messages if isinstance(m, dict)]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    return [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else []


def message_text(content: object) -> str:
    """The text of a chat message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def encodable(text: str) -> str:
    """`text`, its lone surrogates (valid in JSON, not in UTF-8: the tokenizer refuses them) replaced by "?"."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
