"""Live latency estimates of a pool, kept the same way by the gateway and the simulator.

A pool's TTFT and latency-per-token estimates are exponentially weighted means over its finished requests,
updated when a request finishes. Latency per token is the profiles' measure (Mélange's "TPOT"), request latency /
output tokens (queueing and prefill included), not the TPOT the gateway and loadgen report, (latency - TTFT) /
(output tokens - 1): the time between streamed tokens alone would look fine while requests wait for their first
token. The policies read them from `PoolView.ttft_ms` / `latency_per_token_ms`.
"""

from __future__ import annotations

EWMA_WEIGHT = 0.2  # weight of the newest request: the estimate follows a load change within ~10 requests


def ewma(estimate: float | None, sample: float | None, weight: float = EWMA_WEIGHT) -> float | None:
    """The estimate after one more sample (unchanged without one; the first sample is the estimate)."""
    if sample is None:
        return estimate
    return sample if estimate is None else estimate + weight * (sample - estimate)


def latency_per_token_ms(started_s: float, finished_s: float, output_tokens: int) -> float | None:
    """Request latency / output tokens, in milliseconds (None without output)."""
    return (finished_s - started_s) * 1000 / output_tokens if output_tokens > 0 else None
