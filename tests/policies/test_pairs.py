"""Disaggregated pairs in the policies: their cost and load from the role model, ranked beside unified pools."""

import time

import pytest
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.routing import (
    cost_aware,
    get_policy,
    pair_estimate,
    pair_request_cost_usd,
    pair_shares,
    request_cost_usd,
)
from ricardo.policies.types import SLO, PairSpec, PoolView, RequestShape
from ricardo.profiles.catalog import ProfileBook, load_default_book

SLO_120 = SLO(ttft_ms=10_000, tpot_ms=120)
PROMPT_HEAVY = RequestShape("llama2-7b", input_tokens=2000, output_p50=20, output_p90=30, slo=SLO_120)


@pytest.fixture(scope="module")
def book() -> ProfileBook:
    return load_default_book(price_set="neocloud", include_estimated=True)


def pair_spec(book, prefill, decode, link_gbps=100.0) -> PairSpec:
    return PairSpec(prefill, decode, book.price(prefill), book.price(decode), link_gbps)


def pair_view(book, prefill, decode, replicas=1, decode_replicas=1, **changes) -> PoolView:
    spec = pair_spec(book, prefill, decode)
    return PoolView(
        f"{prefill}>{decode}",
        decode,
        spec.prefill_price_per_hour + spec.decode_price_per_hour,
        replicas,
        role="pair",
        prefill_hardware=prefill,
        decode_hardware=decode,
        pair=spec,
        decode_replicas=decode_replicas,
        **changes,
    )


def unified(book, hw, replicas=1, **changes) -> PoolView:
    return PoolView(hw, hw, book.price(hw), replicas, **changes)


def test_a_pair_that_is_cheaper_within_the_slo_ranks_first(book):
    """L40S prefill (cheap FLOPs) with MI300X decode (cheap bandwidth, a large KV cache) beats the MI300X alone
    on a prompt-heavy request at neocloud prices; the choice carries the pair's cost."""
    views = [unified(book, "MI300X"), pair_view(book, "L40S", "MI300X")]
    choices = cost_aware(PROMPT_HEAVY, views, book)
    assert [c.pool for c in choices] == ["L40S>MI300X", "MI300X"]
    pair_usd = pair_request_cost_usd(book, views[1].pair, 2000, 20, SLO_120)
    assert choices[0].cost_usd == pytest.approx(pair_usd)
    assert pair_usd < request_cost_usd(book, "MI300X", book.price("MI300X"), 2000, 20)
    assert "L40S>MI300X" in choices[0].reason and choices[0].extra["tier"] == 0


def test_a_pair_with_a_dear_decode_side_loses_to_a_unified_pool(book):
    """H100 prefill with A10G decode: the A10G's small KV cache holds few 4000-token contexts, so the pair costs
    more per request than an H100 doing both."""
    shape = RequestShape("llama2-7b", 4000, 100, 150, SLO_120)
    choices = cost_aware(shape, [pair_view(book, "H100", "A10G"), unified(book, "H100")], book)
    assert [c.pool for c in choices] == ["H100", "H100>A10G"]


def test_a_busy_decode_role_spills_to_the_unified_pool(book):
    """Same slack rule as unified pools: a pair whose decode replicas are nearly full loses its headroom."""
    idle = [unified(book, "MI300X"), pair_view(book, "L40S", "MI300X")]
    busy = [idle[0], pair_view(book, "L40S", "MI300X", decode_load=0.9)]
    assert cost_aware(PROMPT_HEAVY, idle, book)[0].pool == "L40S>MI300X"
    choices = cost_aware(PROMPT_HEAVY, busy, book)
    assert choices[0].pool == "MI300X"
    assert choices[1].extra["utilization"] > 0.9
    # and a busy prefill role too
    busy_prefill = [idle[0], pair_view(book, "L40S", "MI300X", in_flight_load=0.9)]
    assert cost_aware(PROMPT_HEAVY, busy_prefill, book)[0].pool == "MI300X"


def test_a_pair_without_healthy_decode_replicas_is_not_ranked(book):
    views = [unified(book, "MI300X"), pair_view(book, "L40S", "MI300X", decode_replicas=0)]
    for name in ("cost-aware", "round-robin", "least-outstanding", "cheapest-price", "melange"):
        assert [c.pool for c in get_policy(name)(PROMPT_HEAVY, views, book)] == ["MI300X"]


def test_every_policy_ranks_pairs(book):
    views = [unified(book, "MI300X"), pair_view(book, "L40S", "MI300X")]
    for name in ("cost-aware", "round-robin", "least-outstanding", "cheapest-price", "melange"):
        assert sorted(c.pool for c in get_policy(name)(PROMPT_HEAVY, views, book)) == ["L40S>MI300X", "MI300X"]


def test_transfer_time_can_make_a_pair_miss_a_tight_slo(book):
    """A long prompt with a short answer: its latency per token is mostly prefill + transfer; over a slow link the
    transfer alone exceeds a 40 ms SLO: that pair leaves no time to decode and is not ranked at all."""
    slo = SLO(10_000, 40)
    shape = RequestShape("llama2-7b", 4000, 20, 20, slo)
    fast = PairSpec("B200", "MI300X", book.price("B200"), book.price("MI300X"), 400.0)
    slow = PairSpec("B200", "MI300X", book.price("B200"), book.price("MI300X"), 1.0)

    def pool(name, spec):
        return PoolView(name, "MI300X", 1.0, 1, role="pair", pair=spec, decode_replicas=1)

    choices = {c.pool: c for c in cost_aware(shape, [pool("fast", fast), pool("slow", slow)], book)}
    assert list(choices) == ["fast"]
    assert pair_estimate(book, slow, 4000, 20, slo).transfer_seconds > 16
    assert (
        pair_estimate(book, slow, 4000, 20, slo).alone_seconds_per_token
        > 8 * pair_estimate(book, fast, 4000, 20, slo).alone_seconds_per_token
    )


def test_the_pair_ledger_charges_and_releases_each_role(book):
    spec = pair_spec(book, "L40S", "MI300X")
    ledger = PoolLedger("p", "MI300X", spec.prefill_price_per_hour + spec.decode_price_per_hour, pair=spec)
    ticket = ledger.dispatch(PROMPT_HEAVY, book, 0.0)
    cost = pair_estimate(book, spec, 2000, 30, SLO_120)
    prefill, decode = pair_shares(book, cost, 30, SLO_120)
    view = ledger.view(2, 4)
    assert (view.in_flight_load, view.decode_load) == pytest.approx((prefill, decode))
    assert view.utilization == pytest.approx(max(prefill / 2, decode / 4))
    assert view.role == "pair" and view.decode_replicas == 4
    ledger.finish(ticket, 1.0, 20)
    ledger.finish(ticket, 2.0, 20)  # released once
    assert ledger.view(2, 4).in_flight_load == 0 and ledger.view(2, 4).decode_load == 0


def test_ranking_pairs_stays_fast(book):
    views = [unified(book, hw) for hw in book.hardware_names() if book.role(hw) and hw in book.prices]
    views += [pair_view(book, p, d) for p in ("L40S", "B200", "H100") for d in ("MI300X", "H200", "A10G")]
    started = time.perf_counter()
    for k in range(300):
        cost_aware(RequestShape("llama2-7b", 100 + 17 * k, 50 + k, 80 + k, SLO_120), views, book)
    per_request = (time.perf_counter() - started) / 300
    assert per_request < 2e-3  # 19 pools; loose for a loaded CI machine


def test_a_pair_is_judged_at_the_shorter_answer_too(book):
    """A prompt-heavy request whose answer may be short: the pair's fixed wait (prefill + transfer) spread over
    the p50 answer is what decides its slack, not the p90's."""
    slo = SLO(10_000, 40)
    sure = RequestShape("llama2-7b", 3000, 200, 200, slo)
    unsure = RequestShape("llama2-7b", 3000, 25, 200, slo)
    view = [pair_view(book, "L40S", "MI300X")]
    sure_slack, unsure_slack = cost_aware(sure, view, book)[0].slack, cost_aware(unsure, view, book)[0].slack
    alone = pair_estimate(book, view[0].pair, 3000, 25, slo).alone_seconds_per_token * 1000 / 40
    assert alone > 0.7 and unsure_slack < 0.3 < sure_slack


def test_a_looser_slo_than_the_tables_holds_a_pair_as_long_as_theirs(book):
    """A client's huge `x-slo-tpot-ms` does not make its request count as no load on a pair (past admission)."""
    spec = pair_spec(book, "L40S", "MI300X")
    cost = pair_estimate(book, spec, 2000, 30, SLO_120)
    loose, tables = SLO(SLO_120.ttft_ms, 1e12), SLO(SLO_120.ttft_ms, book.slo_tpot_ms)
    assert pair_shares(book, cost, 30, loose) == pair_shares(book, cost, 30, tables)
    assert min(pair_shares(book, cost, 30, loose)) > 0
    # nor priced as if batched for it alone: its cost on the pair is the one at the tables' SLO
    assert pair_estimate(book, spec, 2000, 300, loose) == pair_estimate(book, spec, 2000, 300, tables)
