"""The prompts of a `ricardo profile` run, and the backend's word on their length.

With `--tokenizer` (the model's own: loadgen/tokenizer.py), every prompt encodes to exactly the tokens wanted, less
what the backend adds to a prompt (a BOS token, ...), which one probe request measures. Without it, prompts are
synthetic text of about the length in Llama-3 tokens (loadgen/prompts.py), as before. Either way, a probe per input
size (`max_tokens` 1) reads the backend's `usage.prompt_tokens` for a prompt, and the run says what it counted.
"""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp

from ricardo.errors import Unavailable
from ricardo.loadgen.prompts import synthetic_prompt
from ricardo.loadgen.tokenizer import ModelTokenizer, exact_prompt, load_tokenizer


class Prompts:
    def __init__(self, tokenizer_spec: str | None, seed: int):
        self.tokenizer: ModelTokenizer | None = load_tokenizer(tokenizer_spec) if tokenizer_spec else None
        self.seed = seed
        # in every prompt's key, with its size: no two prompts of a run, or of a resumed run, share a prefix that a
        # backend's prefix cache (vLLM's is on by default) could serve instead of a prefill
        self.run = secrets.token_hex(4)
        self.added: int | None = None  # tokens the backend adds to a prompt; measured by the first probe
        self.counted: dict[int, int] = {}  # input tokens wanted -> what the backend counted for such a prompt

    def text(self, input_tokens: int, key: str) -> str:
        key = f"{self.run}:{input_tokens}:{key}"
        if self.tokenizer is None:
            return synthetic_prompt(input_tokens, key, self.seed)
        return exact_prompt(self.tokenizer, max(1, input_tokens - (self.added or 0)), key, self.seed)

    async def check(self, url: str, model: str, headers: dict[str, str], input_tokens: int) -> int:
        """The backend's count for a prompt of `input_tokens` (with a tokenizer, after learning what it adds)."""
        counted = await _prompt_tokens(url, model, headers, self.text(input_tokens, "probe"))
        if self.tokenizer is not None and self.added is None:
            self.added = counted - len(self.tokenizer.encode(self.text(input_tokens, "probe")))
            counted = await _prompt_tokens(url, model, headers, self.text(input_tokens, "probe"))
        self.counted[input_tokens] = counted
        return counted

    def description(self) -> dict[str, Any]:
        counted = ", ".join(f"{c} for {n}" for n, c in sorted(self.counted.items()))
        if self.tokenizer is None:
            method = "synthetic text of about the length in Llama-3 tokens (no --tokenizer: exact for Llama-3 only)"
        else:
            method = f"exact token counts from the tokenizer {self.tokenizer.source}; the backend adds {self.added}"
        exact = all(n == c for n, c in self.counted.items()) if self.counted else None  # nothing probed
        return {
            "method": method,
            "backend_counted": {str(n): c for n, c in sorted(self.counted.items())},
            "exact": exact,
            "summary": f"{method}; the backend counted {counted}",
        }


async def _prompt_tokens(url: str, model: str, headers: dict[str, str], prompt: str) -> int:
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "stream": False}
    timeout = aiohttp.ClientTimeout(total=600)  # one prefill, on a slow CPU backend perhaps a long one
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url + "/v1/completions", json=body, headers=headers) as resp,
        ):
            answer = await resp.json(content_type=None)
            return int(answer["usage"]["prompt_tokens"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        raise Unavailable(
            f"{url}: a probe for the prompt's length got no usage ({type(exc).__name__}: {exc})"
        ) from None
