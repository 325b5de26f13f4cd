"""What a request costs each hardware type in replica-seconds, as the planner charges it: one sizing rule for the
scaling hints, `ricardo plan` and the simulator's fleet search.

- "ricardo" (the default): the request's own size (`ProfileBook.request_seconds`, interpolated between the
  profile's sizes) divided by the utilization up to which the cost-aware router keeps the request's slack
  (`safe_utilization`): each type is provisioned for the load the router will really put on it.
- "exact": the request's own size at the profile's operating point (every GPU at mean latency = SLO): the bound.
- "melange": the bucket's upper edge at the operating point (Mélange's rule): `None`, the planner's default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ricardo.errors import InvalidInput
from ricardo.policies.planner import Plan, plan
from ricardo.policies.routing import SLACK_TARGET, safe_utilization
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook

PLANNERS = ("ricardo", "exact", "melange")
Sizes = Sequence[int] | np.ndarray  # tokens, one per request
Weights = Sequence[float] | np.ndarray  # how many requests each size stands for
# a type that cannot keep a request's slack target is charged 1 / this, so that one request too slow for it does
# not bar it from its whole bucket
MIN_SAFE_UTILIZATION = 0.1


def request_seconds(
    book: ProfileBook,
    inputs: Sizes,
    outputs: Sizes,
    slo: SLO | None = None,
    slack_target: float = SLACK_TARGET,
    weights: Weights | None = None,
) -> dict[str, np.ndarray]:
    """Per hardware type, the mean replica-seconds per request of each bucket (the planner's `request_seconds`),
    weighted by `weights` if given (how many requests each size stands for).

    With an `slo`, each request's seconds on a type are divided by the utilization up to which the type keeps
    the request's predicted slack at its target (`safe_utilization` of its latency alone there). The target is
    the policy's, or half the room the best type leaves, where no type leaves that much (at a tight SLO every
    type is run below its operating point, the slower ones more).
    """
    timed = [hw for hw in book.hardware_names() if book.alone_seconds_per_token(hw, 1, 1) is not None]
    factors: dict[str, np.ndarray] = {}
    if slo is not None and timed:
        # Python ints: the step-cost arithmetic below is several times slower on numpy scalars
        sizes = list(zip(np.asarray(inputs).tolist(), np.asarray(outputs).tolist(), strict=True))
        safe: dict[str, dict[tuple[int, int], float]] = {hw: {} for hw in timed}
        for size in set(sizes):
            alone = {}
            for hw in timed:
                seconds = book.alone_seconds_per_token(hw, *size)
                assert seconds is not None  # timed: the book has the type's step costs
                alone[hw] = seconds * 1000 / slo.tpot_ms
            target = min(slack_target, 0.5 * max(1.0 - a for a in alone.values()))
            for hw, a in alone.items():
                safe[hw][size] = max(MIN_SAFE_UTILIZATION, safe_utilization(a, target))
        factors = {hw: np.array([1.0 / safe[hw][size] for size in sizes]) for hw in timed}
    return {
        hw: book.bucket_request_seconds(hw, inputs, outputs, factors.get(hw), weights) for hw in book.hardware_names()
    }


def planner_seconds(
    book: ProfileBook,
    inputs: Sizes,
    outputs: Sizes,
    slo: SLO,
    planner: str = "ricardo",
    slack_target: float = SLACK_TARGET,
    weights: Weights | None = None,
) -> dict[str, np.ndarray] | None:
    """What `planner` charges each bucket's requests (the planner's `request_seconds`; None: bucket upper edges)."""
    if planner == "ricardo":
        return request_seconds(book, inputs, outputs, slo, slack_target, weights)
    if planner == "exact":
        return request_seconds(book, inputs, outputs, weights=weights)
    if planner == "melange":
        return None
    raise InvalidInput(f"unknown planner {planner!r}; known: {', '.join(PLANNERS)}")


def size_demand(
    book: ProfileBook,
    inputs: Sizes,
    outputs: Sizes,
    rate: float,
    weights: Weights | None = None,
) -> np.ndarray:
    """req/s per bucket of the book's grid: these requests' size mix (each size counted `weights` times if given)
    at `rate` requests per second."""
    demand: np.ndarray = book.histogram(inputs, outputs, weights) * rate
    return demand


def plan_sizes(
    book: ProfileBook,
    inputs: Sizes,
    outputs: Sizes,
    rate: float,
    slo: SLO,
    planner: str = "ricardo",
    *,
    weights: Weights | None = None,
    prices: Mapping[str, float] | None = None,
    only: Sequence[str] | None = None,
    headroom: float = 0.0,
    time_limit_s: float = 1.0,
) -> Plan:
    """The planner's cheapest fleet for requests of these sizes arriving at `rate` req/s (the size mix of the
    sample, the total rate given: a sample of a window's requests plans for the whole window). `weights` say how
    many requests each size stands for (a sample drawn unevenly, e.g. merged from several gateway replicas);
    `prices` ($/h per type) replace the book's. Sizes no candidate type can serve are left out
    (`Plan.unserved_rate`)."""
    if len(inputs) == 0 and rate == 0:  # no traffic: the empty fleet (there are no sizes to charge)
        return plan(np.zeros(book.shape), book, prices, only=only, headroom=headroom, time_limit_s=time_limit_s)
    return plan(
        size_demand(book, inputs, outputs, rate, weights),
        book,
        prices,
        only=only,
        headroom=headroom,
        drop_unservable=True,
        time_limit_s=time_limit_s,
        request_seconds=planner_seconds(book, inputs, outputs, slo, planner, weights=weights),
    )
