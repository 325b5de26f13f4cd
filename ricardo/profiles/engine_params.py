"""Step-cost parameters of one hardware type serving one model: what an engine iteration costs.

A serving engine (vLLM, SGLang, llama.cpp) runs in iterations. An iteration either prefills a batch
of prompts (compute-bound: FLOPs per prompt token) or decodes one token for every running sequence
(bandwidth-bound: the weights and every sequence's KV cache are read once per step). Host overheads
(scheduling, sampling, detokenisation) add a fixed cost per step and per sequence. These few numbers
are enough to reproduce how a GPU's capacity changes with request size; `emulator.engine` turns them
into time, `emulator.calibrate` fits the efficiencies and overheads to measured profiles.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelSpec(BaseModel):
    """The served model, as far as cost is concerned."""

    model_config = ConfigDict(frozen=True)

    name: str
    params_billion: float = Field(gt=0)
    weight_bytes: float = Field(gt=0)
    kv_bytes_per_token: float = Field(gt=0)
    max_context: int = Field(gt=0)


# Llama-2-7B, fp16: 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes = 512 KiB of KV per token.
LLAMA2_7B = ModelSpec(
    name="llama2-7b",
    params_billion=6.74,
    weight_bytes=13.5e9,
    kv_bytes_per_token=2 * 32 * 32 * 128 * 2,
    max_context=16384,
)


class EngineParams(BaseModel):
    """Everything the engine model needs to time one hardware type on one model."""

    model_config = ConfigDict(frozen=True)

    hardware: str
    model: ModelSpec = LLAMA2_7B
    peak_tflops: float = Field(gt=0, description="dense fp16/bf16 tensor peak, TFLOP/s")
    mem_bw_gbs: float = Field(gt=0, description="peak memory bandwidth, GB/s")
    mem_gb: float = Field(gt=0)
    flops_efficiency: float = Field(gt=0, le=1, description="share of peak FLOP/s reached by prefill")
    bw_efficiency: float = Field(gt=0, le=1, description="share of peak bandwidth reached by decode")
    step_overhead_s: float = Field(ge=0, description="host cost of one iteration")
    seq_overhead_s: float = Field(ge=0, description="host cost per sequence in an iteration")
    mem_utilization: float = Field(default=0.9, gt=0, le=1, description="share of memory the engine may use")
    max_num_seqs: int = Field(default=256, gt=0)
    max_batched_tokens: int = Field(default=4096, gt=0)
    source: str = Field(default="estimated", description="'fitted' to a measured profile, or 'estimated' from specs")

    @property
    def kv_capacity_tokens(self) -> int:
        free = self.mem_gb * 1e9 * self.mem_utilization - self.model.weight_bytes
        return max(0, int(free / self.model.kv_bytes_per_token))

    @property
    def seconds_per_prefill_token(self) -> float:
        return 2 * self.model.params_billion * 1e9 / (self.peak_tflops * 1e12 * self.flops_efficiency)

    @property
    def seconds_per_byte(self) -> float:
        return 1.0 / (self.mem_bw_gbs * 1e9 * self.bw_efficiency)

    def prefill_seconds(self, tokens: int, seqs: int) -> float:
        """One prefill iteration over `tokens` prompt tokens of `seqs` sequences."""
        compute = tokens * self.seconds_per_prefill_token
        weights = self.model.weight_bytes * self.seconds_per_byte
        return self.step_overhead_s + max(compute, weights) + seqs * self.seq_overhead_s

    def decode_seconds(self, seqs: int, context_tokens: int) -> float:
        """One decode iteration: one token for each of `seqs` sequences holding `context_tokens` of KV."""
        return self.decode_fixed_seconds(seqs) + context_tokens * self.decode_seconds_per_context_token

    def decode_fixed_seconds(self, seqs: int) -> float:
        """The part of a decode iteration that does not grow with context (linear in `seqs`)."""
        weights = self.model.weight_bytes * self.seconds_per_byte
        return self.step_overhead_s + weights + seqs * (self.seq_overhead_s + self.seconds_per_prefill_token)

    @property
    def decode_seconds_per_context_token(self) -> float:
        return self.model.kv_bytes_per_token * self.seconds_per_byte
