import random
import time
from collections import Counter
from dataclasses import replace

import pytest
from ricardo.policies.routing import (
    POLICIES,
    SLACK_TARGET,
    capacity_share,
    cost_aware,
    get_policy,
    melange,
    predicted_slack,
    round_robin,
    safe_utilization,
)
from ricardo.policies.types import SLO, PoolView, RequestShape
from ricardo.profiles.catalog import ProfileBook, load_default_book

SLO_DEFAULT = SLO(ttft_ms=2000, tpot_ms=120)
TINY = RequestShape("llama2-7b", input_tokens=20, output_p50=20, output_p90=40, slo=SLO_DEFAULT)
LONG_INPUT = RequestShape("llama2-7b", input_tokens=1500, output_p50=300, output_p90=450, slo=SLO_DEFAULT)
VERY_LONG_INPUT = RequestShape("llama2-7b", input_tokens=5000, output_p50=300, output_p90=450, slo=SLO_DEFAULT)


@pytest.fixture(scope="module")
def book() -> ProfileBook:
    return load_default_book()


def fleet(book, replicas=2, **changes) -> list[PoolView]:
    """One pool per hardware type at Mélange prices; `changes` = {pool name: {field: value}}."""
    return [
        PoolView(hw, hw, book.price(hw), replicas, **changes.get(hw.replace("-", "_"), {}))
        for hw in book.hardware_names()
    ]


def names(choices) -> list[str]:
    return [c.pool for c in choices]


def test_cost_aware_sends_tiny_requests_to_cheap_gpus_and_long_inputs_to_big_ones(book):
    # a small GPU first (the L4, ~49% of the SLO per token even idle, keeps less slack than SLACK_TARGET asks)
    assert names(cost_aware(TINY, fleet(book), book))[0] in ("L4", "A10G")
    assert names(cost_aware(LONG_INPUT, fleet(book), book))[0] == "A100-80GB"
    # L4 and A10G were not profiled past 2000 input tokens: they cannot take it at all
    assert names(cost_aware(VERY_LONG_INPUT, fleet(book), book)) == ["H100", "A100-80GB"]


def test_cost_aware_keeps_requests_off_hardware_too_slow_for_them_even_when_idle(book):
    # 1,000 tokens in, 2 out: its latency per token is mostly its prefill; the A10G table (measured with
    # 25-token answers) serves the bucket, but this request alone takes ~120 ms per token there
    short_answer = RequestShape("llama2-7b", input_tokens=1000, output_p50=2, output_p90=2, slo=SLO_DEFAULT)
    assert book.alone_seconds_per_token("A10G", 1000, 2) > 0.9 * 0.120
    ranked = cost_aware(short_answer, fleet(book), book)
    assert names(ranked)[0] in ("A100-80GB", "H100")
    assert {c.pool: c.extra["tier"] for c in ranked}["A10G"] > 0
    # the same prompt with a 50-token answer is cheapest on the A10G, as its table says
    long_answer = RequestShape("llama2-7b", input_tokens=1000, output_p50=50, output_p90=80, slo=SLO_DEFAULT)
    assert names(cost_aware(long_answer, fleet(book), book))[0] == "A10G"


def test_cost_aware_judges_a_prompt_heavy_request_by_its_shorter_likely_answer(book):
    """A 1,000-token prompt whose answer is predicted at 2 tokens (p50) or 80 (p90): latency per token is the prefill
    spread over the answer, so the shorter answer is the worse case, and at it the A10G is too slow even idle: it is
    not ranked by cost. Its slack (the order past the cost tier) and its share stay those of the p90 answer."""
    uncertain = RequestShape("llama2-7b", input_tokens=1000, output_p50=2, output_p90=80, slo=SLO_DEFAULT)
    ranked = {c.pool: c for c in cost_aware(uncertain, fleet(book), book)}
    a10g = ranked["A10G"]
    assert a10g.extra["tier"] == 1 and names(cost_aware(uncertain, fleet(book), book))[0] in ("A100-80GB", "H100")
    p90_alone = book.alone_seconds_per_token("A10G", 1000, 80) / 0.120
    assert a10g.slack == pytest.approx(predicted_slack(p90_alone, a10g.extra["utilization"]))
    assert a10g.slack > SLACK_TARGET
    assert a10g.extra["shares"][0] == pytest.approx(capacity_share(book, "A10G", 1000, 80, SLO_DEFAULT))
    # the same prompt with its answer known to be long (p50 = p90) is the A10G's, as before
    certain = replace(uncertain, output_p50=80)
    assert names(cost_aware(certain, fleet(book), book))[0] == "A10G"


def test_cost_aware_fills_the_choice(book):
    best = cost_aware(LONG_INPUT, fleet(book), book)[0]
    rps = book.rate_at("A100-80GB", 1500, 300)
    assert best.cost_usd == pytest.approx(3.67 / 3600 / rps)
    share = capacity_share(book, "A100-80GB", 1500, 450, SLO_DEFAULT)
    alone = book.alone_seconds_per_token("A100-80GB", 1500, 450)  # both at the p90: uncertain counts as longer
    assert best.slack == pytest.approx(predicted_slack(alone / 0.120, share / 2))
    assert best.extra["tier"] == 0 and "A100-80GB" in best.reason
    ranked = cost_aware(LONG_INPUT, fleet(book), book)
    assert [c.score for c in ranked] == sorted(c.score for c in ranked)


def test_cost_aware_ranks_by_expected_dollars_per_request(book):
    ranked = cost_aware(LONG_INPUT, fleet(book), book)
    costs = [c.cost_usd for c in ranked]
    assert costs == sorted(costs)
    for choice in ranked:
        assert choice.cost_usd == pytest.approx(book.price(choice.pool) / 3600 / book.rate_at(choice.pool, 1500, 300))


def test_cost_aware_spills_before_a_pool_saturates(book):
    pools = [p for p in fleet(book) if p.name != "L4"]  # the A10G is then the cheapest for a tiny request
    assert names(cost_aware(TINY, pools, book))[0] == "A10G"
    share = capacity_share(book, "A10G", 20, 40, SLO_DEFAULT)
    spill_at = safe_utilization(book.alone_seconds_per_token("A10G", 20, 20) / 0.120)
    assert 0.1 < spill_at < 1
    below = spill_at * 2 - 3 * share  # two replicas, still headroom after this request
    above = spill_at * 2 + share  # past the spill point

    def loaded(load: float) -> list[PoolView]:
        return [replace(p, in_flight=5, in_flight_load=load) if p.name == "A10G" else p for p in pools]

    assert names(cost_aware(TINY, loaded(below), book))[0] == "A10G"
    ranked = cost_aware(TINY, loaded(above), book)
    assert names(ranked) == ["A100-80GB", "H100", "A10G"]  # after every pool with headroom
    assert ranked[-1].extra["tier"] == 1 and 0 <= ranked[-1].slack < SLACK_TARGET


def test_the_slack_model():
    assert predicted_slack(0.0, 0.0) == 1.0 and predicted_slack(0.5, 0.0) == 0.5
    assert predicted_slack(0.5, 1.0) == 0.0  # the profile's operating point: mean latency = SLO
    assert predicted_slack(1.2, 0.1) < 0 and predicted_slack(1.2, 1.5) < 0 and predicted_slack(0.2, 1.1) < 0
    slacks = [predicted_slack(0.3, u / 10) for u in range(11)]
    assert slacks == sorted(slacks, reverse=True)
    for a in (0.0, 0.3, 0.6):
        assert predicted_slack(a, safe_utilization(a, 0.2)) == pytest.approx(0.2)
    assert predicted_slack(0.5, 0.5) == 0.25
    assert safe_utilization(0.85, 0.2) == 0.0  # even idle, less than 0.2 of slack


def test_cost_aware_sends_a_predicted_miss_to_the_most_overloaded_pool_first(book):
    """A request that fits nowhere in time slows down whatever pool takes it: on a pool past its operating point
    the requests it slows are late anyway; spread over every pool, such requests make every pool late."""
    over = {"in_flight": 9, "in_flight_load": 2.5}  # 125 % of two replicas
    far_over = {"in_flight": 9, "in_flight_load": 4.0}
    saturating = {"in_flight": 9, "in_flight_load": 1.8}
    ranked = cost_aware(TINY, fleet(book, L4=far_over, A10G=over, A100_80GB=saturating, H100=far_over), book)
    assert names(ranked)[0] == "A100-80GB" and ranked[0].extra["tier"] == 1  # still meets the SLO there
    misses = ranked[1:]
    assert all(c.extra["tier"] == 2 and c.slack is not None and c.slack < 0 for c in misses)
    assert set(names(misses[:2])) == {"L4", "H100"} and names(misses)[2] == "A10G"  # 200 % before 125 %
    # a miss on an idle pool (too slow for this request even alone) comes after the overloaded ones
    slow = RequestShape("llama2-7b", 1900, 2, 2, SLO(10_000, 40.0))
    idle_but_slow = cost_aware(slow, fleet(book, A10G=over, A100_80GB={"in_flight": 0}), book)
    assert idle_but_slow[0].extra["tier"] == 2 and names(idle_but_slow)[0] == "A10G"


def test_past_the_fleets_operating_point_the_first_choice_is_drawn_by_capacity(book):
    """No pool with headroom and the fleet's load past its replicas: the better ranked of two pools drawn by capacity
    (Mélange's weights) goes first, so a wrong estimate cannot send every request to the same pool; where every pool
    misses, one draw decides. Short of the operating point, or with headroom somewhere, the ranking's order stands."""
    weight = {hw: 2 * book.max_rps(hw, 20, 20) for hw in book.hardware_names()}  # TINY's bucket, at its p50
    total = sum(weight.values())
    draws = 4000

    def firsts(pools) -> Counter:
        rng = random.Random(7)
        return Counter(names(cost_aware(TINY, pools, book, draw=rng.random()))[0] for _ in range(draws))

    saturating = {"in_flight": 9, "in_flight_load": 1.8}  # 90% of two replicas: no headroom, short of 1.0
    pools = fleet(book, L4=saturating, A10G=saturating, A100_80GB=saturating, H100=saturating)
    assert all(c.extra["tier"] == 1 for c in cost_aware(TINY, pools, book))
    assert len(firsts(pools)) == 1  # the ranking decides

    past = {"in_flight": 9, "in_flight_load": 2.2}  # 110%: past the operating point, still a slack >= 0 for TINY
    pools = fleet(book, L4=past, A10G=saturating, A100_80GB=past, H100=past)
    order = names(cost_aware(TINY, pools, book))
    assert cost_aware(TINY, pools, book)[0].extra["tier"] == 1
    counted = firsts(pools)
    # the first is the better ranked of two independent draws: P(k) = P(both rank >= k) - P(both rank > k)
    at_or_below = [sum(weight[n] for n in order[k:]) / total for k in range(len(order))] + [0.0]
    for k, name in enumerate(order):
        expected = at_or_below[k] ** 2 - at_or_below[k + 1] ** 2
        assert counted[name] / draws == pytest.approx(expected, abs=0.03), name
    for k in range(0, draws, 97):  # whatever is drawn, every pool follows once, in cost-aware's order
        ranked = cost_aware(TINY, pools, book, draw=(k + 0.5) / draws)
        assert names(ranked[1:]) == [n for n in order if n != ranked[0].pool]
        assert ranked[0].extra["drawn"] and "drawn by capacity" in ranked[0].reason

    overloaded = {"in_flight": 9, "in_flight_load": 4.0}  # every pool a predicted miss: one draw, by capacity
    pools = fleet(book, L4=overloaded, A10G=overloaded, A100_80GB=overloaded, H100=overloaded)
    assert all(c.extra["tier"] == 2 for c in cost_aware(TINY, pools, book))
    counted = firsts(pools)
    for name, w in weight.items():
        assert counted[name] / draws == pytest.approx(w / total, abs=0.03)

    idle = fleet(book)  # with headroom somewhere the draw changes nothing
    assert len({tuple(names(cost_aware(TINY, idle, book, draw=k / 10))) for k in range(10)}) == 1


def test_a_predicted_miss_in_a_fleet_overloaded_for_good_is_sunk_into_the_pool_running_latest(book):
    """Every pool a predicted miss, the fleet past its replicas even at p50 sizes, every pool past its own operating
    point and finishing its recent requests late: the request goes to the pool running latest, whatever the draw.
    One pool keeping time, one that has drained, one not heard from yet, the p50 load short of the replicas (a burst
    the pools will work off), or a request with slack somewhere, and the draw by capacity decides as before."""
    late = {"in_flight": 9, "in_flight_load": 4.0, "median_load": 2.0, "latency_per_token_ms": 200.0}
    latest = {**late, "latency_per_token_ms": 900.0}
    pools = fleet(book, L4=late, A10G=late, A100_80GB=latest, H100=late)  # p50 load exactly the replicas: overloaded
    for k in range(20):
        ranked = cost_aware(TINY, pools, book, draw=k / 20)
        assert ranked[0].pool == "A100-80GB" and ranked[0].extra["sunk"], k
        assert "sunk into the pool running latest" in ranked[0].reason
        assert sorted(names(ranked)) == sorted(p.name for p in pools)

    def drawn_firsts(**changes) -> set[str]:
        pools = fleet(book, **({"L4": late, "A10G": late, "A100_80GB": latest, "H100": late} | changes))
        assert all(c.extra["tier"] == 2 for c in cost_aware(TINY, pools, book))  # every pool still a predicted miss
        return {cost_aware(TINY, pools, book, draw=k / 20)[0].pool for k in range(20)}

    assert len(drawn_firsts()) == 1
    assert len(drawn_firsts(A10G={**late, "latency_per_token_ms": 100.0})) > 1  # keeps time (under TINY's 120 ms)
    assert len(drawn_firsts(A10G={**late, "latency_per_token_ms": None})) > 1  # no request finished there yet
    a_burst = {**late, "median_load": 1.9}  # past the replicas at the p90, short of them at the p50
    assert len(drawn_firsts(L4=a_burst, A10G=a_burst, A100_80GB={**latest, "median_load": 1.9}, H100=a_burst)) > 1
    # a pool that drained (its last requests were late, but it has room now) closes the gate: a request that misses
    # everywhere, even alone, must not pile onto the sink while a pool stands idle
    beyond_alone = RequestShape("llama2-7b", input_tokens=1900, output_p50=1, output_p90=1, slo=SLO(2000, 5.0))
    drained = {"in_flight": 0, "in_flight_load": 0.0, "median_load": 0.0, "latency_per_token_ms": 300.0}
    heavy = {**latest, "in_flight_load": 30.0, "median_load": 30.0}
    pools = fleet(book, L4=drained, A10G=drained, A100_80GB=heavy, H100=drained)
    assert all(c.extra["tier"] == 2 for c in cost_aware(beyond_alone, pools, book))
    assert not any(c.extra.get("sunk") for k in range(20) for c in cost_aware(beyond_alone, pools, book, draw=k / 20))
    # with slack somewhere (a pool short of its operating point, the saturating tier first) the two draws decide
    past = {**late, "in_flight_load": 2.2, "median_load": 2.2}
    pools = fleet(
        book,
        L4=past,
        A10G={**past, "in_flight_load": 1.8},
        A100_80GB={**past, "latency_per_token_ms": 900.0},
        H100=past,
    )
    assert cost_aware(TINY, pools, book)[0].extra["tier"] == 1
    assert all(cost_aware(TINY, pools, book, draw=k / 20)[0].extra.get("drawn") for k in range(20))


def test_cost_aware_does_not_read_the_pools_recent_latency(book):
    """A pool's recent latency per token is that of the mix it served: a pool busy with long prompts and short
    answers looks slow at any load. The slack comes from the request's own size and the pool's load (the recent
    latency only tells, in a fleet overloaded for good, which pool a predicted miss is sunk into)."""
    cheapest = names(cost_aware(TINY, fleet(book), book))[0]
    slow_mix = {"in_flight": 1, "in_flight_load": 0.01, "latency_per_token_ms": 150.0, "ttft_ms": 3000.0}
    ranked = cost_aware(TINY, fleet(book, **{cheapest.replace("-", "_"): slow_mix}), book)
    assert names(ranked)[0] == cheapest and ranked[0].extra["tier"] == 0
    assert ranked[0].latency_per_token_ms == 150.0 and ranked[0].ttft_ms == 3000.0  # still reported with the choice


def test_cost_aware_p90_beyond_what_the_hardware_can_serve_ranks_last():
    """A type whose table serves the p50 size but not the p90 one (here: a profile measured to 100 output tokens
    only, on a book built directly, where nothing extends the row) ranks after every pool with a slack, by cost."""
    full = load_default_book()
    tables = {hw: full.capacity(hw).copy() for hw in ("A10G", "A100-80GB")}
    tables["A10G"][:, 2:] = 0.0
    book = ProfileBook(
        model="llama2-7b",
        slo_tpot_ms=120,
        slo_ttft_ms=None,
        input_edges=full.input_edges,
        output_edges=full.output_edges,
        tables=tables,
        sources={hw: "measured" for hw in tables},
        prices={"A10G": 1.01, "A100-80GB": 3.67},
        price_set="melange",
    )
    shape = RequestShape("llama2-7b", 200, 80, 400, SLO_DEFAULT)
    ranked = cost_aware(shape, [PoolView(hw, hw, book.price(hw), 2) for hw in tables], book)
    assert names(ranked) == ["A100-80GB", "A10G"]
    assert ranked[-1].extra["tier"] == 3 and ranked[-1].slack is None


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_ranks_only_pools_that_can_take_the_request(book, policy):
    rank = get_policy(policy)
    pools = [
        *fleet(book),
        PoolView("empty", "A10G", 1.01, replicas=0),
        PoolView("other-model", "L4", 0.7, replicas=2, models=("llama3-70b",)),
        PoolView("unknown-hw", "TPU", 1.0, replicas=2),
        PoolView("same-model", "L4", 0.7, replicas=2, models=("llama2-7b",)),
    ]
    assert set(names(rank(TINY, pools, book, draw=0.5, index=3))) == {"L4", "A10G", "A100-80GB", "H100", "same-model"}
    assert set(names(rank(VERY_LONG_INPUT, pools, book, draw=0.5, index=3))) == {"A100-80GB", "H100"}
    assert rank(TINY, [PoolView("x", "L4", 0.7, replicas=0)], book) == []


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_is_deterministic(book, policy):
    rank = get_policy(policy)
    pools = fleet(book, L4={"in_flight": 3, "in_flight_load": 0.4})
    for draw, index in [(0.0, 0), (0.37, 5), (0.999, 12)]:
        assert rank(LONG_INPUT, pools, book, draw=draw, index=index) == rank(
            LONG_INPUT, pools, book, draw=draw, index=index
        )


def test_round_robin_shares_requests_by_replica_count(book):
    pools = [PoolView("a", "L4", 0.7, 1), PoolView("b", "A10G", 1.01, 3)]
    firsts = Counter(round_robin(TINY, pools, book, index=i)[0].pool for i in range(400))
    assert firsts == {"a": 100, "b": 300}
    assert names(round_robin(TINY, pools, book, index=0)) == ["a", "b"]
    assert names(round_robin(TINY, pools, book, index=1)) == ["b", "a"]


def test_least_outstanding_prefers_fewest_in_flight_per_replica(book):
    pools = [
        PoolView("a", "L4", 0.7, 1, in_flight=3),
        PoolView("b", "A10G", 1.01, 4, in_flight=8),
        PoolView("c", "H100", 7.5, 2, in_flight=1),
    ]
    assert names(get_policy("least-outstanding")(TINY, pools, book)) == ["c", "b", "a"]


def test_cheapest_price_ignores_request_size(book):
    ranked = get_policy("cheapest-price")(LONG_INPUT, fleet(book), book)
    assert names(ranked) == ["L4", "A10G", "A100-80GB", "H100"]
    assert [c.score for c in ranked] == [0.7, 1.01, 3.67, 7.516]


def test_melange_picks_by_capacity_weight(book):
    pools = [*fleet(book, replicas=1), PoolView("A10G-b", "A10G", 1.01, 3)]
    weights = {p.name: p.replicas * book.max_rps(p.hardware, 700, 300) for p in pools}
    total = sum(weights.values())
    draws = 10_000
    shape = RequestShape("m", 700, 300, 600, SLO_DEFAULT)
    firsts = Counter(melange(shape, pools, book, draw=(k + 0.5) / draws)[0].pool for k in range(draws))
    for name, weight in weights.items():
        assert firsts[name] / draws == pytest.approx(weight / total, abs=1.5 / draws)
    by_name = {p.name: p for p in pools}
    ranked = melange(TINY, pools, book, draw=0.0)
    rest = [by_name[c.pool].replicas * book.max_rps(by_name[c.pool].hardware, 20, 20) for c in ranked[1:]]
    assert len(ranked) == len(pools) and rest == sorted(rest, reverse=True)


def test_capacity_share_is_littles_law_at_the_operating_point(book):
    rps = book.rate_at("A10G", 300, 300)
    assert capacity_share(book, "A10G", 300, 300, SLO_DEFAULT) == pytest.approx(1 / (rps * 0.120 * 300))
    # at max_rps arrivals, each lasting TPOT x output, the replica is exactly full
    assert rps * (0.120 * 300) * capacity_share(book, "A10G", 300, 300, SLO_DEFAULT) == pytest.approx(1.0)
    assert capacity_share(book, "A10G", 300, 300, SLO(2000, 60)) == pytest.approx(
        2 * capacity_share(book, "A10G", 300, 300, SLO_DEFAULT)
    )
    assert capacity_share(book, "L4", 5000, 300, SLO_DEFAULT) == 1.0  # not profiled: a whole replica
    # a looser SLO than the tables' counts as theirs: a client's huge x-slo-tpot-ms does not make its request no load
    assert capacity_share(book, "A10G", 300, 300, SLO(2000, 1e12)) == capacity_share(
        book, "A10G", 300, 300, SLO(2000, book.slo_tpot_ms)
    )
    assert capacity_share(book, "L4", 20, 0, SLO_DEFAULT) == capacity_share(book, "L4", 20, 1, SLO_DEFAULT)
    # an SLO the admin API accepts (> 0) but so small the product underflows (the fuzz test sets one): a replica
    assert capacity_share(book, "A10G", 300, 300, SLO(2000, 5e-324)) == 1.0


def test_get_policy_knows_the_registry():
    assert set(POLICIES) == {"cost-aware", "round-robin", "least-outstanding", "cheapest-price", "melange"}
    assert get_policy("cost-aware") is cost_aware
    with pytest.raises(ValueError, match="known: cost-aware"):
        get_policy("fastest")


def test_cost_aware_is_cheap_per_request(book):
    pools = fleet(book) + fleet(book, replicas=3)
    started = time.perf_counter()
    for i in range(2000):
        cost_aware(RequestShape("m", i % 3000, 1 + i % 900, 1 + i % 1800, SLO_DEFAULT), pools, book)
    per_call = (time.perf_counter() - started) / 2000
    assert per_call < 500e-6, f"{per_call * 1e6:.0f} us per ranking of 8 pools"


def test_every_cost_aware_choice_words_its_reason_from_its_own_numbers(book):
    """The reason is worded when read (`Choice.reason`), from the choice's own figures, for every choice."""
    views = fleet(book, A10G={"in_flight": 3, "in_flight_load": 1.9}, L4={"in_flight": 2, "in_flight_load": 2.5})
    for choice in cost_aware(RequestShape("llama2-7b", 900, 150, 400, SLO(2000, 120)), views, book):
        tier = ("headroom", "saturating", "predicted SLO miss", "p90 size not profiled")[choice.extra["tier"]]
        assert choice.reason.startswith(f"{tier}: ${choice.cost_usd:.3g}/req on {choice.pool}"), choice.reason
        if choice.slack is not None:
            assert choice.reason.endswith(f"util {choice.extra['utilization']:.0%}, slack {choice.slack:+.2f}")
