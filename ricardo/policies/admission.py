"""Admission control: refuse a request at once (HTTP 429) when no pool can serve it in time, rather than queue it.

A pure function of the request's shape, the policy's ranked choices and the pool views they were ranked on, so
that the gateway and the virtual-time simulator can apply the same rule.

A request is refused when every pool that could serve it is *full* for it, by either of two signals, each a
predicted SLO miss together with a queue past a bound:

- the model's: the request is predicted to miss its SLO there (`Choice.slack` < 0, the policy's estimate; where a
  policy gives no slack, a baseline, the utilization alone decides) and the pool's utilization (its in-flight load
  over its replicas; 1.0 is the profile's operating point, where the mean latency per token equals the SLO)
  is at or past `max_utilization`;
- the evidence's: the pool's queueing delay (measured by the caller: in the gateway, the median wait for the
  first token of the streams that started in the last seconds and of those still waiting) is at or past the
  request's TTFT SLO, with more requests in flight than replicas: most requests there start late, and so would
  a newcomer. This catches what the model cannot see: a backend bound by its KV cache, sizes the predictor got
  wrong.

A predicted miss on an idle pool (a long prompt on slow hardware) is still served as well as it can be, and a
busy pool where the request fits is still used. The bounds rise with the request's priority, by
`priority_factor` ** priority: at priority 1 a request waits in queues that shed priority 0, at -1 it is shed
first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ricardo.policies.types import Choice, PoolView, RequestShape


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_utilization: float = 1.0
    priority_factor: float = 1.5


@dataclass(frozen=True, slots=True)
class Admission:
    admit: bool
    reason: str


def utilization_bound(limits: AdmissionLimits, priority: int) -> float:
    """The utilization past which a pool predicted to miss is full for a request of this priority."""
    return limits.max_utilization * limits.priority_factor**priority


def admit(
    shape: RequestShape,
    choices: Sequence[Choice],
    pools: Mapping[str, PoolView],
    limits: AdmissionLimits,
    queue_delay_ms: Mapping[str, float | None] | None = None,
) -> Admission:
    """Admit, or refuse with the reason, a request the policy ranked `choices` for (see the module's docstring).
    `queue_delay_ms`: per pool, how long requests wait there for their first token now (None: unknown).
    No choice at all is not this function's refusal: the caller has no pool to send it to (503)."""
    if not choices:
        return Admission(True, "no pool ranked")
    scale = limits.priority_factor**shape.priority
    bound = utilization_bound(limits, shape.priority)
    wait_bound = shape.slo.ttft_ms * scale
    reasons = []
    for choice in choices:
        pool = pools[choice.pool]
        model_full = (choice.slack is None or choice.slack < 0) and pool.utilization >= bound
        delay = (queue_delay_ms or {}).get(pool.name)
        queue_full = delay is not None and delay >= wait_bound and pool.in_flight > pool.replicas
        if not (model_full or queue_full):
            return Admission(True, f"{pool.name} can take it")
        reasons.append(
            f"{pool.name}: queueing {delay:.0f} ms >= {wait_bound:.0f}"
            if queue_full
            else f"{pool.name}: utilization {pool.utilization:.2f} >= {bound:.2f}, predicted miss"
        )
    why = "; ".join(reasons)
    return Admission(False, f"every pool serving {shape.model} is past its capacity (priority {shape.priority}: {why})")
