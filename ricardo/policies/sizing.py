"""What a request costs each hardware type in replica-seconds, as the planner charges it: one sizing rule for the
scaling hints, `ricardo plan` and the simulator's fleet search.

- "ricardo" (the default): the request's own size (`ProfileBook.request_seconds`, interpolated between the
  profile's sizes) divided by the utilization up to which the cost-aware router keeps the request's slack
  (`safe_utilization`): each type is provisioned for the load the router will really put on it.
- "exact": the request's own size at the profile's operating point (every GPU at mean latency = SLO): the bound.
- "melange": the bucket's upper edge at the operating point (Mélange's rule): `None`, the planner's default.

Disaggregated pairs (`pair_seconds`) are charged each role's replica-seconds of the role model
(`profiles.roles.pair_cost`) at each request's own size, divided, by rule "ricardo", by the same safe utilization
of the pair's latency alone (prefill + transfer + decodes); `MAX_PAIRS` candidates at most are offered to the
ILP, those that would save most on the sample if each request went to the cheaper of the pair and the best type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ricardo.errors import InvalidInput
from ricardo.policies.planner import PairSeconds, Plan, plan
from ricardo.policies.routing import SLACK_TARGET, safe_utilization
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook
from ricardo.profiles.roles import DEFAULT_LINK_GBPS, pair_cost_arrays

PLANNERS = ("ricardo", "exact", "melange")
Sizes = Sequence[int] | np.ndarray  # tokens, one per request
Weights = Sequence[float] | np.ndarray  # how many requests each size stands for
# a type that cannot keep a request's slack target is charged 1 / this, so that one request too slow for it does
# not bar it from its whole bucket
MIN_SAFE_UTILIZATION = 0.1
# pair candidates offered to the ILP: every ordered pair of 10 types is 100 more units of bucket x unit variables,
# and all but a few never beat the best unified type on any bucket
MAX_PAIRS = 6


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
    disaggregated: bool = False,
    link_gbps: float = DEFAULT_LINK_GBPS,
    pairs: Mapping[tuple[str, str], float] | None = None,
    kept: Mapping[str, Mapping[str, int]] | None = None,
) -> Plan:
    """The planner's cheapest fleet for requests of these sizes arriving at `rate` req/s (the size mix of the
    sample, the total rate given: a sample of a window's requests plans for the whole window). `weights` say how
    many requests each size stands for (a sample drawn unevenly, e.g. merged from several gateway replicas);
    `prices` ($/h per type) replace the book's. Sizes no candidate type can serve are left out
    (`Plan.unserved_rate`). With `disaggregated`, pairs of the candidate types may be chosen too (`Plan.pairs`,
    `Plan.desired_replicas`: replicas per pool and role). `pairs` ({(prefill, decode): link Gb/s}) gives the
    candidate pairs instead (a gateway's configured pair pools; their types need a price, and need not be in
    `only`, which restricts the unified candidates). `kept`: replicas the fleet keeps (`planner.plan`)."""
    if len(inputs) == 0 and rate == 0:  # no traffic: the empty fleet (there are no sizes to charge)
        return plan(
            np.zeros(book.shape), book, prices, only=only, headroom=headroom, time_limit_s=time_limit_s, kept=kept
        )
    return plan(
        size_demand(book, inputs, outputs, rate, weights),
        book,
        prices,
        only=only,
        headroom=headroom,
        drop_unservable=True,
        time_limit_s=time_limit_s,
        request_seconds=planner_seconds(book, inputs, outputs, slo, planner, weights=weights),
        pairs=pair_seconds(
            book,
            inputs,
            outputs,
            slo,
            list(only) if only is not None else book.hardware_names(),
            planner,
            link_gbps=link_gbps,
            weights=weights,
            prices=prices,
            given=pairs,
        )
        if disaggregated or pairs
        else (),
        kept=kept,
    )


def pair_seconds(
    book: ProfileBook,
    inputs: Sizes,
    outputs: Sizes,
    slo: SLO,
    types: Sequence[str],
    planner: str = "ricardo",
    *,
    link_gbps: float = DEFAULT_LINK_GBPS,
    slack_target: float = SLACK_TARGET,
    weights: Weights | None = None,
    prices: Mapping[str, float] | None = None,
    max_pairs: int = MAX_PAIRS,
    given: Mapping[tuple[str, str], float] | None = None,
) -> list[PairSeconds]:
    """The pair candidates for the planner over `types` (every ordered (prefill, decode) pair, the same type on
    both sides included: disaggregation alone), each with its roles' mean replica-seconds per request of each
    bucket (inf where some request of the bucket cannot be served by the pair in time). Rule "ricardo" divides
    them by the safe utilization of the pair's latency alone, "exact" does not; "melange" plans no pairs.
    Only the `max_pairs` that save most on the sample against the best unified type are kept. With `given`
    ({(prefill, decode): link Gb/s}: the pairs a gateway has configured), exactly those are the candidates, each
    over its own link, whatever they save."""
    if planner == "melange":
        return []
    prices = book.prices if prices is None else prices
    roles = {hw: book.role(hw) for hw in types if book.role(hw) is not None and hw in prices}
    if given is None:
        combos = {(p, d): link_gbps for p in roles for d in roles}
    else:
        roles = {hw: book.role(hw) for pair in given for hw in pair if book.role(hw) is not None and hw in prices}
        combos = {pair: link for pair, link in given.items() if set(pair) <= set(roles)}
    sizes = list(zip(np.asarray(inputs).tolist(), np.asarray(outputs).tolist(), strict=True))
    weight = np.ones(len(sizes)) if weights is None else np.asarray(weights, dtype=float)
    distinct = sorted(set(sizes))
    where = {size: k for k, size in enumerate(distinct)}
    rows = [where[size] for size in sizes]
    # the best unified type's dollars for each distinct size (at its operating point), to rank the pairs
    # and the most room any unified type leaves it (the slack target is half the best room, as `request_seconds`)
    unified, room = np.full(len(distinct), np.inf), np.zeros(len(distinct))
    d_in, d_out = np.array([i for i, _ in distinct]), np.array([o for _, o in distinct])
    for hw in types:
        if hw in prices and book.has(hw):
            cost = book.request_seconds(hw, d_in, d_out) * prices[hw] / 3600
            unified = np.minimum(unified, np.where(np.isfinite(cost), cost, np.inf))
            if book.alone_seconds_per_token(hw, 1, 1) is not None:
                alone_hw = [book.alone_seconds_per_token(hw, i, o) or 0.0 for i, o in distinct]
                room = np.maximum(room, 1.0 - np.array(alone_hw) * 1000 / slo.tpot_ms)
    seconds = slo.tpot_ms / 1000.0
    candidates = []
    for (prefill, decode), link in combos.items():
        p_roles, d_roles = roles[prefill], roles[decode]
        assert p_roles is not None and d_roles is not None
        pre, dec, alone = pair_cost_arrays(p_roles, d_roles, d_in, d_out, seconds, link)
        # ranked at the operating point, as the unified types' dollars are
        dollars = (prices[prefill] * pre + prices[decode] * dec) / 3600
        best = np.where(np.isfinite(unified), unified, 1.0)
        saving = np.where(np.isfinite(dollars), np.maximum(0.0, best - dollars), 0.0)
        if planner == "ricardo":  # `safe_utilization`, vectorised
            share = alone * 1000 / slo.tpot_ms
            target = np.minimum(slack_target, 0.5 * np.maximum(room, 1.0 - share))
            with np.errstate(divide="ignore", invalid="ignore"):
                safe = np.where(1.0 - share > target, 1.0 - target / (1.0 - share), 0.0)
            safe = np.maximum(MIN_SAFE_UTILIZATION, safe)
            pre, dec = pre / safe, dec / safe
        total = float(np.dot(saving[rows], weight))
        if total > 0 or given is not None:
            candidates.append((total, prefill, decode, pre[rows], dec[rows]))
    candidates.sort(key=lambda c: -c[0])
    if given is not None:
        max_pairs = len(candidates)
    result = []
    for _, prefill, decode, pre, dec in candidates[:max_pairs]:
        result.append(
            PairSeconds(
                prefill,
                decode,
                _bucket_mean(book, inputs, outputs, pre, weight),
                _bucket_mean(book, inputs, outputs, dec, weight),
            )
        )
    return result


def _bucket_mean(
    book: ProfileBook, inputs: Sizes, outputs: Sizes, seconds: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Weighted mean of per-request seconds in each bucket (inf if any request of the bucket is inf; inf where no
    request falls: the planner only reads buckets with demand)."""
    cells = book.buckets(np.asarray(inputs), np.asarray(outputs))
    total, count, bad = np.zeros(book.shape), np.zeros(book.shape), np.zeros(book.shape)
    finite = np.isfinite(seconds)
    np.add.at(total, cells, np.where(finite, seconds, 0.0) * weight)
    np.add.at(count, cells, weight)
    np.add.at(bad, cells, (~finite).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean: np.ndarray = np.where((count > 0) & (bad == 0), total / np.where(count > 0, count, 1.0), np.inf)
    return mean


def desired_replicas(result: Plan, pools: Mapping[str, str | tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Replicas per pool and role, from a plan: `pools` names each pool's hardware (a type, or (prefill, decode)
    for a pair). {pool: {"unified": n}} or {pool: {"prefill": n, "decode": m}}; of several pools of the same
    type or pair the first listed gets the count, the others 0 (what the scaling hints export)."""
    wanted = result.desired_replicas()
    out: dict[str, dict[str, int]] = {}
    taken: set[str] = set()
    for name, hardware in pools.items():
        unit = hardware if isinstance(hardware, str) else f"{hardware[0]}>{hardware[1]}"
        roles = ("unified",) if isinstance(hardware, str) else ("prefill", "decode")
        counts = wanted.get(unit, {}) if unit not in taken else {}
        taken.add(unit)
        out[name] = {role: counts.get(role, 0) for role in roles}
    return out
