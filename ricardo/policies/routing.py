"""Routing policies: rank the pools for one request, best first.

Every policy is a pure function with one signature,

    rank(shape, pools, book, *, draw=0.0, index=0) -> list[Choice]

`draw` is a uniform random number in [0, 1) and `index` a request counter, both supplied by the
caller, so that a policy is a deterministic function of its arguments (the gateway and the
simulator run the same code). Every policy ranks only the pools that serve the model, have a
replica, and whose hardware profile has capacity for the request's size (input tokens, predicted
p50 output); they differ in the order.

- `cost-aware` (default): cheapest expected dollars per request among pools with SLO headroom,
  spilling to the next-cheapest before a pool saturates; where no pool has headroom and the fleet is past its
  operating point, the first choice is drawn by capacity as Mélange's router draws it (the better of two draws),
  and where it is overloaded for good a request that fits nowhere is sunk into the pool running latest.
  Disaggregated pairs (role "pair") rank beside unified pools by the same rule, their cost and latency from
  the role model (`pair_estimate`): a request goes to a pair only where that is cheaper within its SLO.
- baselines: `round-robin`, `least-outstanding`, `cheapest-price` (list price, like LiteLLM's
  cost-based routing) and `melange` (the Mélange paper's router: weighted random by capacity).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate

from ricardo.errors import InvalidInput
from ricardo.policies.types import SLO, Choice, PairSpec, PoolView, RequestShape
from ricardo.profiles.catalog import ProfileBook
from ricardo.profiles.roles import PairCost, pair_cost

Policy = Callable[..., list[Choice]]

# a pool is used by cost while the request's predicted slack there is at least this share of the SLO, then by
# most slack: keep far from saturation, since at utilization 1.0 the profile says the SLO is met only on
# average, and the target is most requests within it. Chosen on a trace the economics benchmark does not use
# (bench/economics/tune_slack.py, the AIBrix ShareGPT ramp at 2, 4 and 12x, after the simulator stopped freeing a
# pool's load before its answers finished: 0.6 to 0.8 gave the cheapest fleets meeting 99% at 120 ms, 0.5 up to 15%
# more, 0.3 up to 84% more; the 40 ms fleets did not change; the smallest of the plateau, the least conservative).
# Over the full catalogue (`--catalog full`) the plateau starts at 0.8 (0.6 is 6-10% dearer there), but at 0.8 hardly
# any pool is ranked by cost at 120 ms any more (an idle A10G uses 29% of the SLO per token, an idle H100 19%), so a
# price edit would move almost no traffic at either SLO; kept at 0.6 (README: variants tried)
SLACK_TARGET = 0.6
_COST_SCALE_USD = 1e-4  # squashes $/request into [0, 1) for the score; any positive scale keeps the order
_TIERS = ("headroom", "saturating", "predicted SLO miss", "p90 size not profiled")


def capacity_share(book: ProfileBook, hardware: str, input_tokens: int, output_tokens: int, slo: SLO) -> float:
    """Share of one replica a request of this size holds while in flight.

    Little's law at the profile's operating point: at `max_rps` requests/s, each lasting about
    latency per token x output tokens, a replica holds max_rps * that * output requests at once, so one request
    holds the inverse. The latency per token is the request's TPOT SLO read as the profiles measure it, request
    latency / output tokens (equal to the profile's by default; for a tighter SLO this scales the concurrency
    linearly, a first-order guess; a looser one counts as the profile's). A size the profile cannot serve is
    charged a whole replica. An answer shorter than the shortest profiled one counts as that long:
    its rate is the shortest profiled answer's, and so is the time it holds the replica (mostly its
    prefill), which a one-token answer's SLO x 1 would understate many times over. A request holds at
    most one replica: one the profile can serve only far below one at a time (a long prompt with a short
    answer at a tight SLO: max_rps x SLO x output < 1) still runs on one replica, and charging it several
    made a pool with a handful of such requests look saturated many times over.
    """
    return _share_at(book, book.rate_at(hardware, input_tokens, output_tokens), output_tokens, slo)


def _accounted_tpot_s(book: ProfileBook, slo: SLO) -> float:
    """The TPOT a request's load and price are reckoned at: its SLO's, or the tables' own where that is tighter. At
    the operating point a request takes the pool's latency whatever its client would accept, and a client's huge
    `x-slo-tpot-ms` would otherwise make its request count as no load (past admission's shedding) and price it on a
    pair as if the decode side batched for it alone."""
    return min(slo.tpot_ms, book.slo_tpot_ms) / 1000.0


def _hold_seconds(book: ProfileBook, output_tokens: int, slo: SLO) -> float:
    """How long a request is in flight at the profile's operating point: its accounted TPOT (`_accounted_tpot_s`) per
    output token, for at least the shortest profiled answer."""
    return _accounted_tpot_s(book, slo) * max(book.output_edges[0], output_tokens)


def _share_at(book: ProfileBook, rps: float, output_tokens: int, slo: SLO) -> float:
    """`capacity_share` of a request whose interpolated rate is `rps`."""
    held = rps * _hold_seconds(book, output_tokens, slo)  # replicas' worth of such requests
    if held <= 0:  # a size the profile cannot serve, or an SLO so tight (a denormal) that the product underflows
        return 1.0
    return min(1.0, 1.0 / held)


# a ranking asks `pair_estimate` for each pair at the request's p50 answer twice (its cost, and its latency alone
# where the p90 differs) and at its p90 once: remembering the last few costs a hash of the arguments (~1 µs), not
# the role model's arithmetic again (~10 µs)
PAIR_MEMO = 16


@lru_cache(maxsize=PAIR_MEMO)
def pair_estimate(
    book: ProfileBook, pair: PairSpec, input_tokens: int, output_tokens: int, slo: SLO
) -> PairCost | None:
    """The role model's figures for a request on a pair (`profiles.roles.pair_cost`); None where the book has no
    step costs for one of its types. Pure, so remembered for the last PAIR_MEMO arguments. Reckoned at the request's
    accounted TPOT (`_accounted_tpot_s`): the decode side batches for all it runs, not for one client."""
    prefill, decode = book.role(pair.prefill_hardware), book.role(pair.decode_hardware)
    if prefill is None or decode is None:
        return None
    return pair_cost(prefill, decode, input_tokens, output_tokens, _accounted_tpot_s(book, slo), pair.link_gbps)


def pair_shares(book: ProfileBook, cost: PairCost, output_tokens: int, slo: SLO) -> tuple[float, float]:
    """(share of one prefill replica, share of one decode replica) a request holds while in flight on a pair.

    Little's law as in `capacity_share`: the request is in flight about SLO x output seconds (`_hold_seconds`, as
    there) and uses each role's replica-seconds of `cost` in that time; at most one replica of each role. Held from
    dispatch to finish for both roles, so the sums over requests in flight are each role's utilisation at the rate
    they arrive."""
    hold = _hold_seconds(book, output_tokens, slo)
    if hold <= 0:  # an SLO so tight (a denormal) that the product underflows: a whole replica of each
        return 1.0, 1.0
    return min(1.0, cost.prefill_seconds / hold), min(1.0, cost.decode_seconds / hold)


def pair_request_cost_usd(book: ProfileBook, pair: PairSpec, input_tokens: int, output_tokens: int, slo: SLO) -> float:
    """Dollars a request of this size costs on a pair at its SLO (0 where the pair cannot serve it)."""
    cost = pair_estimate(book, pair, input_tokens, output_tokens, slo)
    if cost is None or not cost.servable:
        return 0.0
    return cost.usd(pair.prefill_price_per_hour, pair.decode_price_per_hour)


def predicted_slack(alone_share: float, utilization: float) -> float:
    """How far below the SLO, as a share of it, a request's latency per output token is expected to stay on a
    pool at `utilization` (1.0: the profile's operating point), when its latency alone on an idle replica is
    `alone_share` of the SLO: (1 - a) x (1 - u), the idle margin shrinking with the load. Negative: a
    predicted miss. (The engine model's mean latency grows more slowly than this at light load, but routing
    by this estimate gave cheaper fleets at 99% within SLO: bench/economics/tune_slack.py.)"""
    if alone_share >= 1.0 or utilization >= 1.0:
        return min(1.0 - alone_share, 1.0 - utilization)
    return (1.0 - alone_share) * (1.0 - utilization)


def safe_utilization(alone_share: float, slack_target: float = SLACK_TARGET) -> float:
    """The utilization up to which a request whose alone latency is `alone_share` of the SLO keeps
    `slack_target` (`predicted_slack` solved for u; 0 if not even an idle replica gives that much)."""
    room = 1.0 - alone_share
    return 1.0 - slack_target / room if room > slack_target else 0.0


def _servable(
    shape: RequestShape, pools: Sequence[PoolView], book: ProfileBook, interpolated: bool = True
) -> list[tuple[PoolView, float, float]]:
    """(pool, expected $ for the request's p50 size, requests/s of that size the pool's healthy replicas sustain)
    for every pool that can take the request. A unified pool's rate is the one at the exact size
    (`ProfileBook.rate_at`), or with `interpolated=False` its bucket's (the upper edge's); a pair's comes from the
    role model, the rate of its busier role."""
    i, j = book.input_bucket(shape.input_tokens), book.output_bucket(shape.output_p50)
    servable = []
    for pool in pools:
        if pool.replicas <= 0 or (pool.models and shape.model not in pool.models):
            continue
        if pool.pair is not None:
            if pool.decode_replicas <= 0:
                continue
            cost = pair_estimate(book, pool.pair, shape.input_tokens, shape.output_p50, shape.slo)
            if cost is not None and cost.servable:
                usd = cost.usd(pool.pair.prefill_price_per_hour, pool.pair.decode_price_per_hour)
                rate = min(pool.replicas / cost.prefill_seconds, pool.decode_replicas / cost.decode_seconds)
                servable.append((pool, usd, rate))
            continue
        rows = book.rows(pool.hardware)
        if rows is not None and rows[i][j] > 0:
            rate = book.rate_at(pool.hardware, shape.input_tokens, shape.output_p50) if interpolated else rows[i][j]
            servable.append((pool, _cost_usd(pool, rate), pool.replicas * rate))
    return servable


def request_cost_usd(
    book: ProfileBook, hardware: str, price_per_hour: float, input_tokens: int, output_tokens: int
) -> float:
    """Dollars a request of this size costs on `hardware` at `price_per_hour`: its share of the pool's time at the
    profile's operating point. A size the capacity table has no rate for, yet served (a prompt the gateway's estimate
    put within the table and the backend counted beyond it), is charged a whole replica for as long as the request
    takes alone on it (an upper bound: the engine model's step costs; 0 only where the book has none for the type)."""
    rps = book.rate_at(hardware, input_tokens, output_tokens)
    if rps > 0:
        return price_per_hour / 3600.0 / rps
    alone = book.alone_seconds_per_token(hardware, input_tokens, output_tokens)
    return 0.0 if alone is None else price_per_hour / 3600.0 * alone * max(1, output_tokens)


def _cost_usd(pool: PoolView, rps: float) -> float:
    """Dollars of the pool's time one request uses at the profile's operating point (price per hour / 3600 / rps)."""
    return pool.price_per_hour / 3600.0 / rps


def cost_aware(
    shape: RequestShape,
    pools: Sequence[PoolView],
    book: ProfileBook,
    *,
    draw: float = 0.0,
    index: int = 0,
    slack_target: float = SLACK_TARGET,
) -> list[Choice]:
    """Cheapest expected $ per request first (p50 output), among pools predicted to meet the SLO with headroom.

    Costs and capacity shares are those of the request's own size, interpolated between the profile's
    measured sizes (`ProfileBook.rate_at`), not of its bucket's upper edge.

    Slack, as a share of the SLO, is how far below it the request's latency per token is expected to be
    (`predicted_slack`): from `alone`, its latency per token alone on an idle replica (where the book knows
    the hardware's step costs; 0 otherwise), and the pool's utilization after adding this request, both at the
    p90 output: an uncertain size counts as the larger one. (Judged at the p50, a long prompt whose answer the
    predictor guesses short looks hopeless everywhere, prefill over a few tokens, and is sunk into an
    overloaded pool though its real answer would have met the SLO anywhere.) The cost order alone asks the target
    of the p50 answer as well (`_short_answer_alone`): for a prompt-heavy request the shorter answer is the worse case,
    its prefill spread over fewer tokens, and ranked by cost on its p90 slack a cheap, slow type took such requests and
    served them late (the full catalogue's L40S at 120 ms on azure-code: 97.4% within SLO on Mélange's passing fleet,
    against 99.1% for Mélange's router; 99.1% so asked). So a request that barely fits the
    SLO even alone (a long prompt with a short answer) goes only to nearly idle pools, and one the pool cannot
    serve in time at all ranks as a predicted miss, though the capacity table (measured at the bucket's
    longest answer) says the bucket is servable. The pool's recent latency is not used to rank (only to find
    a sink in a fleet overloaded for good, `_drawn_first`): it is the latency
    of the mix it happened to serve (a pool busy with long prompts and short answers shows a high latency
    per token at any load), and capping slack by it sent such requests to slower, cheaper hardware. Nor is its
    lateness (`PoolView.lateness`, recent latencies over what this model predicted for them): scaling the
    predicted latency by it fixed two same-fleet cases and broke two others (README, variants tried).

    Tiers, in order: slack >= slack_target (by cost); slack in [0, that) (most slack first); predicted
    miss, slack < 0; p90 size beyond the profile (by cost). A predicted miss goes first to the pool that is
    past its operating point already (the most loaded first), where the requests it slows down are late
    anyway, then to the others by most slack: spreading requests that fit nowhere over every pool would
    make every pool late (the fleet is too small for the traffic; see `admission` in the gateway).

    Where no pool has headroom (the best is in the saturating or the miss tier) and the fleet is past its
    operating point, the first choice is drawn by capacity (`_drawn_first`), and this order is the fallback
    order: on Mélange's own fleets the order alone fell up to 1.6 points of attainment behind Mélange's weighted
    random (bench/economics/same_fleet.md).
    """
    ranked = []
    for position, (pool, cost, _) in enumerate(_servable(shape, pools, book)):
        utilization, alone, shares = _after_dispatch(shape, pool, book)
        slack = None if utilization is None else predicted_slack(alone, utilization)
        key: tuple[float, ...]
        if slack is None or (
            slack >= slack_target
            and predicted_slack(_short_answer_alone(shape, pool, book), utilization or 0.0) >= slack_target
        ):
            tier, key = (3 if slack is None else 0), (cost,)
            frac = cost / (cost + _COST_SCALE_USD)
        elif slack >= 0:
            tier, key = 1, (-slack,)
            frac = 1.0 / (1.0 + math.exp(slack))
        else:
            tier, overloaded = 2, pool.utilization >= 1.0
            key = (0.0, -pool.utilization) if overloaded else (1.0, -slack)
            frac = 1.0 / (1.0 + math.exp(-pool.utilization if overloaded else slack))
        where = pool.hardware if pool.pair is None else f"{pool.pair.prefill_hardware}>{pool.pair.decode_hardware}"
        choice = Choice(
            pool.name,
            tier + frac,
            cost,
            pool.ttft_ms,
            pool.latency_per_token_ms,
            slack,
            _explain,
            # `shares`: what the pool's ledger charges the request once dispatched there (`PoolLedger.dispatch`)
            {"tier": tier, "utilization": utilization, "on": where, "shares": shares},
        )
        ranked.append(((tier, *key, utilization or 0.0, position), choice))
    ranked.sort(key=lambda item: item[0])
    choices = [choice for _, choice in ranked]
    if choices and choices[0].extra["tier"] in (1, 2):
        return _drawn_first(choices, shape, pools, book, draw)
    return choices


def _drawn_first(
    choices: list[Choice], shape: RequestShape, pools: Sequence[PoolView], book: ProfileBook, draw: float
) -> list[Choice]:
    """`choices` (cost-aware's order, no pool with headroom), with a pool drawn by capacity put first where the
    pools that can serve the request are, all together, past their operating point (their load exceeds their
    replicas: some requests will miss whatever the routing).

    There the ranking rests on the finest and least certain parts of the model: predicted sizes, shares summed
    over a mix the profiles never measured, slacks near or below zero; a wrong estimate repeats itself request
    after request (the pool that looks least loaded gets them all), while Mélange's split by capacity is wrong
    only on average. So the first choice is drawn as Mélange draws it (`melange`'s weights: replicas x the
    profile's rate for the request's bucket): two pools are drawn and the one cost-aware ranks better goes first
    (the power of two choices: the draw's robustness, most of the ranking's information). Where every pool is a
    predicted miss the ranking has nothing to tell them apart that it trusts, and one draw decides (unless the fleet
    is overloaded for good, below). The rest
    follow in cost-aware's order, for fallback. Short of the operating point the order stands: keeping each
    request's slack there is what lets a fleet planned for 99% within SLO be small (drawing there too made the
    cheapest fleets of bench/economics dearer: median 0.84 -> 0.87x Mélange's).

    A predicted miss in a fleet overloaded for good (`_overloaded_for_good`: by the model at p50 sizes and by
    every pool's recent outcomes) is not drawn but sunk into the pool running latest: it is late anywhere, and
    there it slows only requests that are late already, while a split by capacity makes every pool late (under
    1.5x their planned load, Mélange's fleets kept 20.6% in time by the draw against 37.5% so sunk, at
    servegen-language 2x at 40 ms; bench/economics/same_fleet_overload1.5.md). Where the model alone said so,
    sinking into the smallest pool instead lost up to 8.5 points where the fleet was not truly overloaded. The sink
    is found by raw latency per token, not by lateness against the model: in a fleet overloaded for good a request's
    latency is mostly its wait, so the latest pool is the one with the deepest backlog, the one where one more late
    request costs the fewest requests in time. It stops being the sink when any pool drains below its operating
    point or finishes its requests in time: the gate closes, and the draw and the ranking take over again.
    """
    servable = _servable(shape, pools, book, interpolated=False)
    if sum(pool.utilization * pool.replicas for pool, _, _ in servable) < sum(pool.replicas for pool, _, _ in servable):
        return choices  # the fleet as a whole is short of its operating point: the ranking's order stands
    weight = {pool.name: rate for pool, _, rate in servable}
    cumulative = list(accumulate(weight.get(choice.pool, 0.0) for choice in choices))
    total = cumulative[-1]
    if total <= 0:
        return choices

    def drawn(u: float) -> int:
        return min(bisect_right(cumulative, u * total), len(choices) - 1)

    if choices[0].extra["tier"] == 2 and _overloaded_for_good(shape, [pool for pool, _, _ in servable]):
        live = {pool.name: pool.latency_per_token_ms or 0.0 for pool, _, _ in servable}
        first, how = max(range(len(choices)), key=lambda k: live.get(choices[k].pool, 0.0)), "sunk"
    else:
        first, how = drawn(draw), "drawn"
        if choices[0].extra["tier"] == 1:
            first = min(first, drawn(_second_uniform(draw)))  # the better ranked of the two
    pick = choices[first]
    pick.extra[how] = True
    return [pick, *choices[:first], *choices[first + 1 :]]


def _overloaded_for_good(shape: RequestShape, pools: Sequence[PoolView]) -> bool:
    """Whether the pools that can serve the request are past their operating point by more than the model's caution:
    together loaded past their replicas even with every request in flight charged at its p50 answer, not its p90;
    each of them past its own operating point (a pool that has drained is no sink's neighbour to protect: it takes
    requests again); and each finishing its recent requests late (live latency per token over the request's SLO).
    Model and outcomes both say so, so it is no burst the pools will work off (at the p90 alone, or by the model
    alone, a fleet at its planned load passed for overloaded: sinking there cost up to 8 points on Mélange's fleets).
    A pair counts its busier role's utilization, at its p90 (its ledger keeps no p50 split by role)."""
    if sum(_median_load(pool) - pool.replicas for pool in pools) < 0:
        return False
    return all(pool.utilization >= 1.0 and (pool.latency_per_token_ms or 0.0) > shape.slo.tpot_ms for pool in pools)


def _median_load(pool: PoolView) -> float:
    """The pool's load in replicas with its requests charged at their p50 answers, the backends' own load counted
    at the same ratio to its p90 charge as this gateway's requests."""
    if pool.external_load <= 0 or pool.in_flight_load <= 0:
        return pool.median_load + pool.external_load
    return pool.median_load * (1.0 + pool.external_load / pool.in_flight_load)


def _second_uniform(draw: float) -> float:
    """Another uniform number in [0, 1) from the low bits of `draw` (a double's 53 random bits hold two draws of 26
    bits, plenty for picking among a few pools), so that a policy stays a function of one draw."""
    return (draw * (1 << 26)) % 1.0


def _explain(choice: Choice) -> str:
    """The reason of a `cost_aware` choice, worded from its numbers (only for a choice that is read)."""
    extra = choice.extra
    reason = f"{_TIERS[extra['tier']]}: ${choice.cost_usd:.3g}/req on {extra['on']}"
    if extra.get("drawn"):
        reason = f"no headroom anywhere, drawn by capacity; {reason}"
    elif extra.get("sunk"):
        reason = f"overloaded for good, sunk into the pool running latest; {reason}"
    if choice.slack is not None:
        reason += f", util {extra['utilization']:.0%}, slack {choice.slack:+.2f}"
    return reason


def _after_dispatch(
    shape: RequestShape, pool: PoolView, book: ProfileBook
) -> tuple[float | None, float, tuple[float, float]]:
    """(the pool's utilization with this request added, its latency per token alone as a share of the SLO, the
    shares of a replica it holds there), all at the p90 output; utilization None where the p90 size is beyond what
    the pool can serve. A pair's utilization is its busier role's; the shares are (prefill, decode) for a pair,
    (share, 0) for a unified pool, as `PoolLedger.dispatch` charges them (a whole replica where unservable)."""
    if pool.pair is not None:
        cost = pair_estimate(book, pool.pair, shape.input_tokens, shape.output_p90, shape.slo)
        if cost is None or not cost.servable:
            return None, 0.0, (1.0, 1.0)
        prefill, decode = pair_shares(book, cost, shape.output_p90, shape.slo)
        utilization = max(
            (pool.in_flight_load + pool.external_load + prefill) / pool.replicas,
            (pool.decode_load + decode) / pool.decode_replicas,
        )
        # its latency alone at the p50 answer, if that is worse: a pair adds a fixed wait before the first token
        # (the prefill, often on the type with cheaper but fewer FLOPs, then the transfer) that a short answer
        # cannot spread, and judged at the p90 alone a prompt-heavy request whose answer turns out short was sent
        # to a pair it could not meet the SLO on at any scale
        median = (
            cost
            if shape.output_p50 == shape.output_p90
            else pair_estimate(book, pool.pair, shape.input_tokens, shape.output_p50, shape.slo)
        )
        worst = max(cost.alone_seconds_per_token, median.alone_seconds_per_token if median else 0.0)
        return utilization, worst * 1000.0 / shape.slo.tpot_ms, (prefill, decode)
    rps90 = book.rate_at(pool.hardware, shape.input_tokens, shape.output_p90)
    if rps90 <= 0:
        return None, 0.0, (1.0, 0.0)
    share = _share_at(book, rps90, shape.output_p90, shape.slo)
    utilization = (pool.in_flight_load + pool.external_load + share) / pool.replicas
    alone = book.alone_seconds_per_token(pool.hardware, shape.input_tokens, shape.output_p90)
    return utilization, 0.0 if alone is None else alone * 1000.0 / shape.slo.tpot_ms, (share, 0.0)


def _short_answer_alone(shape: RequestShape, pool: PoolView, book: ProfileBook) -> float:
    """The request's latency per token alone on the pool, as a share of the SLO, at its p50 answer (0 where that is
    its p90, or for a pair, whose `_after_dispatch` takes the worse of the two already)."""
    if pool.pair is not None or shape.output_p50 >= shape.output_p90:
        return 0.0
    alone = book.alone_seconds_per_token(pool.hardware, shape.input_tokens, shape.output_p50)
    return 0.0 if alone is None else alone * 1000.0 / shape.slo.tpot_ms


def round_robin(
    shape: RequestShape, pools: Sequence[PoolView], book: ProfileBook, *, draw: float = 0.0, index: int = 0
) -> list[Choice]:
    """Request `index` goes to replica slot `index mod replicas` (so pools get shares by replica count);
    the other pools follow in rotation order."""
    servable = _servable(shape, pools, book)
    if not servable:
        return []
    slot = index % sum(pool.replicas for pool, _, _ in servable)
    start = 0
    while slot >= servable[start][0].replicas:
        slot -= servable[start][0].replicas
        start += 1
    order = servable[start:] + servable[:start]
    return [
        Choice(
            pool.name,
            float(k),
            cost,
            pool.ttft_ms,
            pool.latency_per_token_ms,
            explain=f"round-robin #{k}",
        )
        for k, (pool, cost, _) in enumerate(order)
    ]


def least_outstanding(
    shape: RequestShape, pools: Sequence[PoolView], book: ProfileBook, *, draw: float = 0.0, index: int = 0
) -> list[Choice]:
    """Fewest requests in flight per replica first."""
    servable = sorted(_servable(shape, pools, book), key=lambda item: item[0].in_flight / item[0].replicas)
    return [
        Choice(
            pool.name,
            pool.in_flight / pool.replicas,
            cost,
            pool.ttft_ms,
            pool.latency_per_token_ms,
            explain=f"{pool.in_flight / pool.replicas:.2f} in flight per replica",
        )
        for pool, cost, _ in servable
    ]


def cheapest_price(
    shape: RequestShape, pools: Sequence[PoolView], book: ProfileBook, *, draw: float = 0.0, index: int = 0
) -> list[Choice]:
    """Lowest list price per replica-hour first, whatever the request's size (ties: fewer in flight per replica)."""
    servable = sorted(
        _servable(shape, pools, book), key=lambda item: (item[0].price_per_hour, item[0].in_flight / item[0].replicas)
    )
    return [
        Choice(
            pool.name,
            pool.price_per_hour,
            cost,
            pool.ttft_ms,
            pool.latency_per_token_ms,
            explain=f"list price ${pool.price_per_hour:.3g}/h",
        )
        for pool, cost, _ in servable
    ]


def melange(
    shape: RequestShape, pools: Sequence[PoolView], book: ProfileBook, *, draw: float = 0.0, index: int = 0
) -> list[Choice]:
    """Mélange's router: pick a pool at random with weight replicas x max_rps for the request's bucket
    (its share of the fleet's capacity for this size; a pair's from the role model); the others follow by
    decreasing weight."""
    servable = _servable(shape, pools, book, interpolated=False)
    if not servable:
        return []
    weights = [rate for _, _, rate in servable]
    cumulative = list(accumulate(weights))
    total = cumulative[-1]
    pick = min(bisect_right(cumulative, draw * total), len(servable) - 1)
    rest = sorted((k for k in range(len(servable)) if k != pick), key=lambda k: -weights[k])
    return [
        Choice(
            servable[k][0].name,
            float(n),
            servable[k][1],
            servable[k][0].ttft_ms,
            servable[k][0].latency_per_token_ms,
            explain=f"capacity weight {weights[k] / total:.2f}",
        )
        for n, k in enumerate([pick, *rest])
    ]


POLICIES: dict[str, Policy] = {
    "cost-aware": cost_aware,
    "round-robin": round_robin,
    "least-outstanding": least_outstanding,
    "cheapest-price": cheapest_price,
    "melange": melange,
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise InvalidInput(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
