"""Step-cost parameters of one hardware type serving one model: what an engine iteration costs.

A serving engine (vLLM, SGLang, llama.cpp) runs in iterations. An iteration either prefills a batch
of prompts (compute-bound: FLOPs per prompt token) or decodes one token for every running sequence
(bandwidth-bound: the weights and every sequence's KV cache are read once per step). Host overheads
(scheduling, sampling, detokenisation) add a fixed cost per step and per sequence. These few numbers
are enough to reproduce how a GPU's capacity changes with request size; `emulator.engine` turns them
into time, `emulator.calibrate` fits the efficiencies and overheads to measured profiles.

`load_engine_params(hardware)` and `engine_catalog()` read the fitted and estimated parameters
shipped in data/engine_params_llama2_7b.json.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ricardo.errors import NotFound

ENGINE_PARAMS_PATH = Path(__file__).resolve().parent / "data" / "engine_params_llama2_7b.json"
# other names the same hardware goes by (gpus.csv rows -> catalog names)
ALIASES = {"H100-SXM": "H100", "CPU-SPR-AMX (1 socket c7i)": "CPU"}


class ModelSpec(BaseModel):
    """The served model, as far as cost is concerned."""

    model_config = ConfigDict(frozen=True)

    name: str
    params_billion: float = Field(gt=0)
    weight_bytes: float = Field(gt=0)
    kv_bytes_per_token: float = Field(gt=0)
    max_context: int = Field(gt=0)
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)

    @property
    def attention_flops_per_token_pair(self) -> float:
        """Prefill attention FLOPs per (query, key) pair: QK^T and AV, 2 FLOPs per multiply-add, all layers."""
        return 4 * self.hidden_size * self.layers


# Llama-2-7B, fp16: 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes = 512 KiB of KV per token.
LLAMA2_7B = ModelSpec(
    name="llama2-7b",
    params_billion=6.74,
    weight_bytes=13.5e9,
    kv_bytes_per_token=2 * 32 * 32 * 128 * 2,
    max_context=16384,
    layers=32,
    hidden_size=4096,
)

# Llama-3.1-8B, bf16: GQA with 8 KV heads, so 2 x 32 layers x 8 heads x 128 dims x 2 bytes = 128 KiB of KV per token
# (a quarter of Llama-2-7B's); 8.03 B parameters, 128k context.
LLAMA31_8B = ModelSpec(
    name="llama3.1-8b",
    params_billion=8.03,
    weight_bytes=16.06e9,
    kv_bytes_per_token=2 * 32 * 8 * 128 * 2,
    max_context=131072,
    layers=32,
    hidden_size=4096,
)

# SmolLM2-135M, bf16 (the llama.cpp CPU pool's model): GQA with 3 KV heads of 64 dims over 30 layers,
# 2 x 30 x 3 x 64 x 2 bytes = 22.5 KiB of KV per token; 8k context.
SMOLLM2_135M = ModelSpec(
    name="smollm2-135m",
    params_billion=0.135,
    weight_bytes=0.27e9,
    kv_bytes_per_token=2 * 30 * 3 * 64 * 2,
    max_context=8192,
    layers=30,
    hidden_size=576,
)

# the models the engine model knows, by the name their shipped profiles go by (profiles/catalog.py)
MODELS = {spec.name: spec for spec in (LLAMA2_7B, LLAMA31_8B, SMOLLM2_135M)}


class EngineParams(BaseModel):
    """Everything the engine model needs to time one hardware type on one model."""

    model_config = ConfigDict(frozen=True)

    hardware: str
    model: ModelSpec = LLAMA2_7B
    peak_tflops: float = Field(gt=0, description="dense fp16/bf16 tensor peak, TFLOP/s")
    mem_bw_gbs: float = Field(gt=0, description="peak memory bandwidth, GB/s")
    mem_gb: float = Field(gt=0, description="device memory as the runtime reports it (after ECC), 1e9 bytes")
    flops_efficiency: float = Field(gt=0, le=1, description="share of peak FLOP/s reached by prefill")
    bw_efficiency: float = Field(gt=0, le=1, description="share of peak bandwidth reached by decode")
    step_overhead_s: float = Field(ge=0, description="host cost of one iteration")
    seq_overhead_s: float = Field(ge=0, description="host cost per sequence in an iteration")
    mem_utilization: float = Field(default=0.9, gt=0, le=1, description="share of memory the engine may use")
    reserved_gb: float = Field(
        default=1.0,
        ge=0,
        description=(
            "memory besides weights that the KV cache cannot use: CUDA context and the activations of "
            "vLLM's start-up profiling pass, 1e9 bytes"
        ),
    )
    max_num_seqs: int = Field(default=256, gt=0)
    max_batched_tokens: int = Field(default=4096, gt=0, description="prefill budget, padded tokens")
    max_paddings: int = Field(default=256, ge=0, description="padding a prefill batch may carry (vLLM 0.2.7)")
    source: str = Field(default="estimated", description="'fitted' to a measured profile, or 'estimated' from specs")

    @property
    def kv_capacity_tokens(self) -> int:
        free = self.mem_gb * 1e9 * self.mem_utilization - self.model.weight_bytes - self.reserved_gb * 1e9
        return max(0, int(free / self.model.kv_bytes_per_token))

    @property
    def seconds_per_prefill_token(self) -> float:
        return 2 * self.model.params_billion * 1e9 / self.flops_per_second

    @property
    def seconds_per_byte(self) -> float:
        return 1.0 / (self.mem_bw_gbs * 1e9 * self.bw_efficiency)

    def prefill_seconds(self, tokens: int, seqs: int, longest: int | None = None) -> float:
        """One prefill iteration over `tokens` (padded) prompt tokens of `seqs` sequences.

        Attention adds FLOPs quadratic in each prompt's length (causal: half the query-key pairs);
        `longest` is the padded prompt length, `tokens / seqs` when not given.
        """
        length = tokens / seqs if longest is None else longest
        attention = seqs * length * length / 2 * self.model.attention_flops_per_token_pair
        compute = tokens * self.seconds_per_prefill_token + attention / self.flops_per_second
        weights = self.model.weight_bytes * self.seconds_per_byte
        return self.step_overhead_s + max(compute, weights) + seqs * self.seq_overhead_s

    @property
    def flops_per_second(self) -> float:
        return self.peak_tflops * 1e12 * self.flops_efficiency

    def decode_seconds(self, seqs: int, context_tokens: int) -> float:
        """One decode iteration: one token for each of `seqs` sequences holding `context_tokens` of KV."""
        return self.decode_fixed_seconds(seqs) + context_tokens * self.decode_seconds_per_context_token

    def alone_seconds_per_token(self, prompt_tokens: int, output_tokens: int) -> float:
        """Latency per output token of one request alone on an idle replica (the SLO's measure): its prefill
        (which yields the first token), then a decode iteration per further token over a growing context.
        The floor under any load: a request above the SLO here misses it on this hardware whatever the router."""
        output_tokens = max(1, output_tokens)
        decodes = output_tokens - 1
        context = decodes * prompt_tokens + decodes * (decodes + 1) / 2
        seconds = (
            self.prefill_seconds(prompt_tokens, 1)
            + decodes * self.decode_fixed_seconds(1)
            + context * self.decode_seconds_per_context_token
        )
        return seconds / output_tokens

    def decode_fixed_seconds(self, seqs: int) -> float:
        """The part of a decode iteration that does not grow with context.

        The weight matrices are read once for the whole batch and multiplied by one token per
        sequence: bandwidth-bound until the batch is large enough to be compute-bound (roofline).
        """
        weights = self.model.weight_bytes * self.seconds_per_byte
        compute = seqs * self.seconds_per_prefill_token
        return self.step_overhead_s + max(weights, compute) + seqs * self.seq_overhead_s

    @property
    def decode_seconds_per_context_token(self) -> float:
        return self.model.kv_bytes_per_token * self.seconds_per_byte


@functools.cache
def _catalog() -> dict[str, EngineParams]:
    with open(ENGINE_PARAMS_PATH) as f:
        entries = json.load(f)["hardware"]
    return {name: EngineParams.model_validate(entry["params"]) for name, entry in entries.items()}


def engine_catalog(model: str = LLAMA2_7B.name) -> dict[str, EngineParams]:
    """Every hardware type with engine parameters, fitted or estimated, by name. For another model than Llama-2-7B
    (the one they were fitted on): the same efficiencies and host overheads, with that model's weights, FLOPs and
    KV cache (an estimate: the engine and the hardware are the same, only the sizes change)."""
    if model == LLAMA2_7B.name:
        return dict(_catalog())
    try:
        spec = MODELS[model]
    except KeyError:
        raise NotFound(f"no engine model of {model!r}; known: {', '.join(MODELS)}") from None
    return {name: params.model_copy(update={"model": spec}) for name, params in _catalog().items()}


def load_engine_params(hardware: str, model: str = LLAMA2_7B.name) -> EngineParams:
    """The type's parameters serving `model` (a model the engine model does not know: as Llama-2-7B)."""
    catalog = engine_catalog(model) if model in MODELS else _catalog()
    name = ALIASES.get(hardware, hardware)
    if name not in catalog:
        raise NotFound(f"no engine parameters for {hardware!r}; known: {', '.join(sorted(catalog))}")
    return catalog[name]
