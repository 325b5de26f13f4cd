"""Admission control: refuse a request at once (HTTP 429) when no pool can serve it in time, rather than queue it.

A pure function of the request's shape, the policy's ranked choices and the pool views they were ranked on, so
that the gateway and the virtual-time simulator can apply the same rule.

A request is refused when every pool that could serve it is *full* for it: the request is predicted to miss
its SLO there (`Choice.slack` < 0, the policy's estimate; a policy that gives no slack leaves the queue alone to
decide), and the pool's utilization (its in-flight load over its replicas; 1.0 is the profile's operating
point, where the mean latency per token equals the SLO) is at or past the bound. Both must hold: a predicted
miss on an idle pool (a long prompt on slow hardware) is still served as well as it can be, and a busy pool
where the request fits is still used. The bound rises with the request's priority: `max_utilization` x
`priority_factor` ** priority, so that at priority 1 a request waits in queues that shed priority 0, and at
priority -1 it is shed first.
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
    """The utilization past which a pool is full for a request of this priority."""
    return limits.max_utilization * limits.priority_factor**priority


def admit(
    shape: RequestShape, choices: Sequence[Choice], pools: Mapping[str, PoolView], limits: AdmissionLimits
) -> Admission:
    """Admit, or refuse with the reason, a request the policy ranked `choices` for (see the module's docstring).
    No choice at all is not this function's refusal: the caller has no pool to send it to (503)."""
    if not choices:
        return Admission(True, "no pool ranked")
    bound = utilization_bound(limits, shape.priority)
    for choice in choices:
        pool = pools[choice.pool]
        if choice.slack is not None and choice.slack >= 0:
            return Admission(True, f"{pool.name}: predicted slack {choice.slack:+.2f}")
        if pool.utilization < bound:
            return Admission(True, f"{pool.name}: utilization {pool.utilization:.2f} < {bound:.2f}")
    worst = min(pools[c.pool].utilization for c in choices)
    return Admission(
        False,
        f"every pool serving {shape.model} is past its capacity for this request "
        f"(utilization {worst:.2f} or more, bound {bound:.2f} at priority {shape.priority})",
    )
