"""The two roles of a disaggregated prefill/decode pair, as vLLM's NixlConnector plays them over HTTP.

Every emulated backend can play either role (vLLM's `kv_both`); the request says which:

- `kv_transfer_params: {"do_remote_decode": true}` (a prefill request, sent with `max_tokens: 1`): prefill, answer
  the one token, and return `kv_transfer_params` naming where the KV cache waits: `do_remote_prefill: true`,
  `remote_engine_id`, `remote_request_id`, `remote_block_ids` (the prompt's full blocks of `BLOCK_TOKENS`),
  `remote_host`, `remote_port`, `tp_size`.
- `kv_transfer_params: {"do_remote_prefill": true, ...}` (a decode request carrying those): pull the KV cache,
  which takes the prompt's KV bytes over the pair's link (Llama-2-7B: 512 KiB a token, so 2,000 tokens are about
  1 GiB, 84 ms at 100 Gb/s), then decode without a prefill pass; the transferred blocks count against the
  decode side's KV cache from its admission on (while the transfer runs they are not held: vLLM holds them, so
  a decode side near its KV limit looks slightly roomier here).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ricardo.protocol.openai import OpenAIError

BLOCK_TOKENS = 16  # vLLM's default block size
DEFAULT_LINK_GBPS = 100.0


def transfer_seconds(prompt_tokens: int, kv_bytes_per_token: float, link_gbps: float) -> float:
    """How long the prompt's KV cache takes to cross a link of `link_gbps` gigabits per second."""
    return prompt_tokens * kv_bytes_per_token * 8 / (link_gbps * 1e9)


def role_of(body: dict[str, Any]) -> str:
    """`prefill`, `decode` or `unified`: what the request's `kv_transfer_params` ask of this backend."""
    params = body.get("kv_transfer_params")
    if params is None:
        return "unified"
    if not isinstance(params, dict):
        raise OpenAIError(400, "kv_transfer_params must be an object", param="kv_transfer_params")
    if params.get("do_remote_decode"):
        return "prefill"
    if params.get("do_remote_prefill"):
        if not isinstance(params.get("remote_block_ids"), list) or not params.get("remote_engine_id"):
            raise OpenAIError(
                400,
                "a remote prefill needs remote_engine_id and remote_block_ids (from the prefill side's answer)",
                param="kv_transfer_params",
            )
        return "decode"
    return "unified"


@dataclass
class KVProducer:
    """The prefill side's half: one engine id, and block ids handed out in order."""

    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_block: int = 0

    def params(self, request_id: str, prompt_tokens: int, host: str, port: int) -> dict[str, Any]:
        """What the decode side needs to pull the prompt's KV cache (NixlConnector's `request_finished`): the full
        blocks only; a last partial block is recomputed on the decode side."""
        full = prompt_tokens // BLOCK_TOKENS
        first, self.next_block = self.next_block, self.next_block + full
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": list(range(first, first + full)),
            "remote_engine_id": self.engine_id,
            "remote_request_id": request_id,
            "remote_host": host,
            "remote_port": port,
            "tp_size": 1,
        }
