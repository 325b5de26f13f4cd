"""Role capacities: what a prefill-only and a decode-only worker of a hardware type do for one request.

The Mélange tables measure unified serving only (one engine prefills and decodes). A disaggregated pair splits
the work: a prefill worker computes the prompt's KV cache (compute-bound), the cache crosses a link to a decode
worker (`kv_bytes_per_token` x prompt tokens at the link's speed), and the decode worker generates the answer
(bandwidth-bound, batching many sequences per step). Nothing here was measured: every figure comes from the
engine model's step costs (`engine_params.py`, fitted to the Mélange tables where a type was measured, estimated
from the GPU facts of gpus.csv elsewhere), so role capacities are `source: estimated` whatever the type.

For one request of (input, output) tokens at a TPOT SLO `s` (request latency / output tokens):
- prefill replica-seconds: the prompt's share of a prefill batch as vLLM 0.2.7 packs it (as many prompts of this
  length as the token budget holds, padded), `EngineParams.prefill_seconds` / batch;
- transfer seconds: input x kv_bytes_per_token / link bytes per second (latency only; neither worker is billed);
- decode replica-seconds at the SLO: the decode step time `tau` the request can afford after its prefill and
  transfer, (s x output - prefill - transfer) / (output - 1); a step costs a fixed part (host overhead and the
  weights read once) plus, per sequence, its host overhead and its KV cache read. The worker runs the largest
  batch of such requests that tau, its KV cache (prompt + half the answer each on average, the transferred blocks
  included) and `max_num_seqs` allow, and its steps take what that batch costs (less than tau where the KV cache
  binds first: a worker that is out of memory is not out of time); the request uses (output - 1) steps / batch.
  No budget left (tau at or below the fixed part): the decode type cannot serve the request at this SLO.
  (Charging a KV-bound request its memory share for the whole SLO-paced lifetime instead put the A10G at twice its
  measured unified capacity's cost; see tests/profiles/test_roles.py for the check against the tables.)

Everything is plain float arithmetic on a few numbers per type (`RoleParams`), cheap enough per request.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ricardo.profiles.engine_params import EngineParams

SOURCE = "estimated"  # role capacities are derived from the engine model, never measured
DEFAULT_LINK_GBPS = 100.0  # a cross-type pair talks over the network (RDMA NIC), not NVLink


@dataclass(frozen=True, slots=True)
class RoleParams:
    """The engine parameters of one type reduced to the floats the role model reads."""

    hardware: str
    prefill_per_token: float  # seconds of compute per prompt token
    flops_per_second: float
    attention_flops_per_pair: float
    weights_seconds: float  # one read of the weights
    step_overhead: float
    seq_overhead: float
    per_context_token: float  # seconds to read one token's KV in a decode step
    kv_bytes_per_token: float
    kv_capacity_tokens: int
    max_num_seqs: int
    max_batched_tokens: int
    max_context: int
    source: str = SOURCE
    # `decode_fixed(1)`, the step of one sequence alone: once here, as `alone_seconds_per_token` reads it per request
    decode_step_alone: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode_step_alone", self.decode_fixed(1))

    def prefill_seconds(self, tokens: int, seqs: int, longest: int) -> float:
        """`EngineParams.prefill_seconds`, on floats."""
        attention = seqs * longest * longest / 2 * self.attention_flops_per_pair
        compute = tokens * self.prefill_per_token + attention / self.flops_per_second
        return self.step_overhead + max(compute, self.weights_seconds) + seqs * self.seq_overhead

    def prefill_alone(self, input_tokens: int) -> float:
        """A prompt alone on an idle prefill worker: its TTFT there."""
        return self.prefill_seconds(input_tokens, 1, input_tokens)

    def prefill_request_seconds(self, input_tokens: int) -> float:
        """Replica-seconds one prompt uses on a busy prefill worker (batched with prompts like it)."""
        length = max(1, input_tokens)
        batch = max(1, min(self.max_num_seqs, self.max_batched_tokens // length))
        return self.prefill_seconds(batch * length, batch, length) / batch

    def decode_fixed(self, seqs: int) -> float:
        compute = seqs * self.prefill_per_token
        return self.step_overhead + max(self.weights_seconds, compute) + seqs * self.seq_overhead

    def decode_alone(self, input_tokens: int, output_tokens: int) -> float:
        """Seconds of the decode iterations of one request alone on an idle decode worker (after its first token)."""
        decodes = max(1, output_tokens) - 1
        context = decodes * input_tokens + decodes * (decodes + 1) / 2
        return decodes * self.decode_fixed(1) + context * self.per_context_token

    def alone_seconds_per_token(self, input_tokens: int, output_tokens: int) -> float:
        """`EngineParams.alone_seconds_per_token` (one unified replica, prefill then decodes), on floats: the same
        figure, term for term, at a third of the cost of reading the pydantic model's properties."""
        output_tokens = max(1, output_tokens)
        decodes = output_tokens - 1
        context = decodes * input_tokens + decodes * (decodes + 1) / 2
        # `prefill_alone(input_tokens)` written out (one prompt: seqs 1, longest = tokens), in its order of operations
        attention = input_tokens * input_tokens / 2 * self.attention_flops_per_pair
        compute = input_tokens * self.prefill_per_token + attention / self.flops_per_second
        prefill = self.step_overhead + max(compute, self.weights_seconds) + self.seq_overhead
        seconds = prefill + decodes * self.decode_step_alone + context * self.per_context_token
        return seconds / output_tokens

    def decode_seconds(self, input_tokens: int, output_tokens: int, step_seconds: float) -> float:
        """Replica-seconds the request uses on a decode worker whose steps may take up to `step_seconds` (inf: the
        type cannot decode it that fast, or cannot hold it).

        The worker runs the largest batch B of requests like this one that the step budget, the KV cache and
        `max_num_seqs` allow; its steps then take fixed + B x per-sequence cost (no more than the budget, less when
        the KV cache binds first), and each request uses (output - 1) steps / B of the worker."""
        budget = step_seconds - self.step_overhead - self.weights_seconds
        if budget <= 0 or input_tokens + output_tokens > self.kv_capacity_tokens:
            return math.inf
        held = input_tokens + output_tokens / 2  # the KV it holds on average over its decode
        per_seq = self.seq_overhead + held * self.per_context_token
        batch = max(1.0, min(budget / per_seq, self.kv_capacity_tokens / held, float(self.max_num_seqs)))
        step = self.decode_fixed(1) + (batch - 1) * self.seq_overhead + batch * held * self.per_context_token
        return max(1, output_tokens - 1) * step / batch


@functools.cache
def role_params(params: EngineParams) -> RoleParams:
    return RoleParams(
        hardware=params.hardware,
        prefill_per_token=params.seconds_per_prefill_token,
        flops_per_second=params.flops_per_second,
        attention_flops_per_pair=params.model.attention_flops_per_token_pair,
        weights_seconds=params.model.weight_bytes * params.seconds_per_byte,
        step_overhead=params.step_overhead_s,
        seq_overhead=params.seq_overhead_s,
        per_context_token=params.decode_seconds_per_context_token,
        kv_bytes_per_token=params.model.kv_bytes_per_token,
        kv_capacity_tokens=params.kv_capacity_tokens,
        max_num_seqs=params.max_num_seqs,
        max_batched_tokens=params.max_batched_tokens,
        max_context=params.model.max_context,
    )


def transfer_seconds(input_tokens: int, kv_bytes_per_token: float, link_gbps: float) -> float:
    """Time the prompt's KV cache takes over a link of `link_gbps` gigabits per second."""
    return input_tokens * kv_bytes_per_token * 8 / (link_gbps * 1e9)


@dataclass(frozen=True, slots=True)
class PairCost:
    """One request of (input, output) tokens on a prefill/decode pair at a TPOT SLO."""

    prefill_seconds: float  # prefill replica-seconds (busy, batched)
    decode_seconds: float  # decode replica-seconds at the SLO (inf: the decode type cannot meet it)
    transfer_seconds: float
    alone_seconds_per_token: float  # the request alone on an idle pair: prefill + transfer + decodes, per token
    hold_seconds: float  # how long the request is in flight at the SLO (output x SLO)

    @property
    def servable(self) -> bool:
        return math.isfinite(self.decode_seconds)

    def usd(self, prefill_price_per_hour: float, decode_price_per_hour: float) -> float:
        return (prefill_price_per_hour * self.prefill_seconds + decode_price_per_hour * self.decode_seconds) / 3600


def pair_cost(
    prefill: RoleParams, decode: RoleParams, input_tokens: int, output_tokens: int, slo_tpot_s: float, link_gbps: float
) -> PairCost:
    """The role model's figures for one request on a pair (see the module doc)."""
    output_tokens = max(1, output_tokens)
    first = prefill.prefill_alone(input_tokens)
    transfer = transfer_seconds(input_tokens, prefill.kv_bytes_per_token, link_gbps)
    alone = (first + transfer + decode.decode_alone(input_tokens, output_tokens)) / output_tokens
    hold = slo_tpot_s * output_tokens
    if input_tokens + output_tokens > min(prefill.max_context, decode.max_context):
        return PairCost(prefill.prefill_request_seconds(input_tokens), math.inf, transfer, alone, hold)
    step = (hold - first - transfer) / max(1, output_tokens - 1)
    return PairCost(
        prefill.prefill_request_seconds(input_tokens),
        decode.decode_seconds(input_tokens, output_tokens, step),
        transfer,
        alone,
        hold,
    )


def unified_seconds(params: RoleParams, input_tokens: int, output_tokens: int, slo_tpot_s: float) -> float:
    """Replica-seconds of the request on one unified replica of the type, by the role model: its prefill and its
    decode on the same engine, no transfer (to check the role model against the measured unified tables)."""
    cost = pair_cost(params, params, input_tokens, output_tokens, slo_tpot_s, math.inf)
    return cost.prefill_seconds + cost.decode_seconds


def pair_cost_arrays(
    prefill: RoleParams,
    decode: RoleParams,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    slo_tpot_s: float,
    link_gbps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`pair_cost` of many sizes at once: (prefill seconds, decode seconds (inf: cannot), alone seconds per token),
    for the planner, which prices every candidate pair on every size of a sample."""
    inputs = np.asarray(input_tokens, dtype=float)
    outputs = np.maximum(1.0, np.asarray(output_tokens, dtype=float))
    p, d = prefill, decode

    def prefill_at(tokens: np.ndarray, seqs: np.ndarray, longest: np.ndarray) -> np.ndarray:
        attention = seqs * longest * longest / 2 * p.attention_flops_per_pair
        compute = tokens * p.prefill_per_token + attention / p.flops_per_second
        seconds: np.ndarray = p.step_overhead + np.maximum(compute, p.weights_seconds) + seqs * p.seq_overhead
        return seconds

    length = np.maximum(1.0, inputs)
    batch = np.maximum(1.0, np.minimum(p.max_num_seqs, np.floor(p.max_batched_tokens / length)))
    prefill_seconds = prefill_at(batch * length, batch, length) / batch
    first = prefill_at(inputs, np.ones_like(inputs), inputs)
    transfer = inputs * p.kv_bytes_per_token * 8 / (link_gbps * 1e9)
    decodes = outputs - 1
    context = decodes * inputs + decodes * (decodes + 1) / 2
    alone = (first + transfer + decodes * d.decode_fixed(1) + context * d.per_context_token) / outputs
    step = (slo_tpot_s * outputs - first - transfer) / np.maximum(1.0, decodes)
    budget = step - d.step_overhead - d.weights_seconds
    held = inputs + outputs / 2
    per_seq = d.seq_overhead + held * d.per_context_token
    with np.errstate(divide="ignore", invalid="ignore"):
        batch_d = np.maximum(1.0, np.minimum(np.minimum(budget / per_seq, d.kv_capacity_tokens / held), d.max_num_seqs))
        taken = d.decode_fixed(1) + (batch_d - 1) * d.seq_overhead + batch_d * held * d.per_context_token
        decode_seconds = np.maximum(1.0, decodes) * taken / batch_d
    too_big = (inputs + outputs > min(p.max_context, d.max_context)) | (inputs + outputs > d.kv_capacity_tokens)
    decode_seconds = np.where((budget <= 0) | too_big, np.inf, decode_seconds)
    return prefill_seconds, decode_seconds, alone
