"""The pool ledger: the one piece of code that turns request events into the `PoolView` a policy ranks."""

import pytest
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.routing import capacity_share, cost_aware
from ricardo.policies.types import SLO, PairSpec, RequestShape
from ricardo.profiles.catalog import load_default_book

SLO_DEFAULT = SLO(ttft_ms=2000, tpot_ms=120)


@pytest.fixture(scope="module")
def book():
    return load_default_book()


def shape(input_tokens: int, output: int) -> RequestShape:
    return RequestShape("llama2-7b", input_tokens, output, output * 2, SLO_DEFAULT)


def test_load_is_charged_at_dispatch_and_released_exactly_once(book):
    ledger = PoolLedger("a10g", "A10G", 1.01)
    first = ledger.dispatch(shape(500, 100), book, now=0.0)
    second = ledger.dispatch(shape(50, 20), book, now=0.5)
    assert first.load == pytest.approx(capacity_share(book, "A10G", 500, 200, SLO_DEFAULT))  # at the p90
    view = ledger.view(replicas=2)
    assert view.in_flight == 2 and view.in_flight_load == pytest.approx(first.load + second.load)
    assert view.utilization == pytest.approx((first.load + second.load) / 2)
    assert view.median_load == pytest.approx(  # the same requests charged at their p50 answers
        capacity_share(book, "A10G", 500, 100, SLO_DEFAULT) + capacity_share(book, "A10G", 50, 20, SLO_DEFAULT)
    )
    ledger.abandon(first)
    ledger.abandon(first)  # a second release of the same request changes nothing
    ledger.finish(first, now=3.0, output_tokens=100)
    assert ledger.view(2).in_flight == 1 and ledger.view(2).in_flight_load == pytest.approx(second.load)
    assert ledger.view(2).median_load == pytest.approx(second.median_load)  # the p50 charge released with it
    assert second.median_load == pytest.approx(capacity_share(book, "A10G", 50, 20, SLO_DEFAULT))
    assert ledger.latency_per_token_ms is None  # an abandoned attempt teaches nothing about latency
    ledger.finish(second, now=1.5, output_tokens=20)
    assert ledger.view(2).in_flight == 0 and ledger.view(2).in_flight_load == 0.0 and ledger.view(2).median_load == 0.0


def test_a_request_holds_at_most_one_replica():
    """A long prompt with a short answer at a tight SLO: the profile serves far fewer than one at a time."""
    book = load_default_book(slo_tpot_ms=40)
    tight = RequestShape("llama2-7b", 7000, 2, 2, SLO(10_000, 40.0))
    assert capacity_share(book, "A100-80GB", 7000, 2, tight.slo) == 1.0
    ledger = PoolLedger("a100", "A100-80GB", 3.67)
    for _ in range(3):
        ledger.dispatch(tight, book, now=0.0)
    assert ledger.view(replicas=17).utilization == pytest.approx(3 / 17)


def test_live_estimates_learn_from_clean_answers_only(book):
    ledger = PoolLedger("h100", "H100", 7.5)
    ticket = ledger.dispatch(shape(100, 10), book, now=10.0)
    ledger.first_token(ticket, 10.2)
    ledger.first_token(ticket, 10.9)  # only the first one counts
    ledger.finish(ticket, now=11.0, output_tokens=10)
    assert ledger.ttft_ms == pytest.approx(200.0) and ledger.latency_per_token_ms == pytest.approx(100.0)
    broken = ledger.dispatch(shape(100, 10), book, now=20.0)
    ledger.finish(broken, now=40.0, output_tokens=None)  # ended without a clean answer
    assert ledger.latency_per_token_ms == pytest.approx(100.0)


def test_views_are_reused_until_something_changes(book):
    ledger = PoolLedger("l4", "L4", 0.7, models=("llama2-7b",))
    view = ledger.view(2)
    assert ledger.view(2) is view
    assert ledger.view(1) is not view and ledger.view(1).replicas == 1
    ticket = ledger.dispatch(shape(10, 10), book, now=0.0)
    assert ledger.view(1).in_flight == 1
    ledger.reprice(0.5, ("llama2-7b",))
    assert ledger.view(1).price_per_hour == 0.5
    ledger.finish(ticket, now=1.0, output_tokens=10)
    assert ledger.view(1).in_flight == 0


def test_the_shares_cost_aware_carries_are_what_the_ledger_charges():
    """`cost_aware` computes, while ranking, the share each pool's ledger charges on dispatch, and the ledger takes
    it from the choice instead of computing it again: the same figures, for unified pools and pairs, servable or
    not (a size beyond a pool holds a whole replica), and a choice of another pool is not taken."""
    book = load_default_book(price_set="neocloud", include_estimated=True)
    pair = PairSpec("L40S", "MI300X", book.price("L40S"), book.price("MI300X"), 100.0)
    fresh = [PoolLedger(hw, hw, book.price(hw), ("llama2-7b",)) for hw in ("L4", "A10G", "H100")]
    fresh.append(PoolLedger("pair", "L40S", book.price("L40S") + book.price("MI300X"), ("llama2-7b",), pair))
    for size in [(500, 100), (3000, 20), (20, 3000), (9000, 9000)]:
        request = shape(*size)
        computed = {ledger.name: ledger.shares(request, book) for ledger in fresh}
        views = [ledger.view(2, 2 if ledger.pair else 0) for ledger in fresh]
        for choice in cost_aware(request, views, book):
            ledger = next(ledger for ledger in fresh if ledger.name == choice.pool)
            assert choice.extra["shares"] == computed[choice.pool], (size, choice.pool)
            ticket = ledger.dispatch(request, book, 0.0, choice)
            assert (ticket.load, ticket.decode_load) == computed[choice.pool]
            if ledger.pair is None:  # and its p50 share, what `shares` computes at the p90
                median = capacity_share(book, ledger.hardware, request.input_tokens, request.output_p50, request.slo)
                assert ticket.median_load == pytest.approx(median), (size, choice.pool)
            ledger.abandon(ticket)
    other = cost_aware(shape(500, 100), [fresh[0].view(2)], book)[0]
    assert fresh[1].dispatch(shape(500, 100), book, 0.0, other).load == fresh[1].shares(shape(500, 100), book)[0]


def test_a_pool_learns_how_late_it_runs_against_the_capacity_model():
    """A pool's requests finishing at twice the latency per token the capacity model predicted for their real size
    and load: the ledger learns a lateness near 2, shown in its view; one finishing in half the time, 0.5. Only a
    dispatch that carries the policy's prediction (cost-aware's utilization) is judged."""
    book = load_default_book()
    request = shape(500, 100)
    a100, h100 = (PoolLedger(hw, hw, book.price(hw), ("llama2-7b",)) for hw in ("A100-80GB", "H100"))

    def run(ledger: PoolLedger, slowdown: float) -> None:
        for k in range(30):
            choice = next(c for c in cost_aware(request, [ledger.view(2)], book) if c.pool == ledger.name)
            ticket = ledger.dispatch(request, book, float(k), choice)
            alone = book.alone_seconds_per_token(ledger.hardware, 500, 100)
            predicted = 1 - (1 - alone * 1000 / 120) * (1 - choice.extra["utilization"])  # as a share of the SLO
            ledger.finish(ticket, k + slowdown * predicted * 0.120 * 100, output_tokens=100)

    run(a100, 2.0)
    run(h100, 0.5)
    assert a100.view(2).lateness == pytest.approx(2.0, rel=0.01)
    assert h100.view(2).lateness == pytest.approx(0.5, rel=0.01)
    other = PoolLedger("l4", "L4", book.price("L4"))
    other.finish(other.dispatch(request, book, 0.0), 50.0, 100)  # no policy prediction carried: nothing learnt
    assert other.lateness is None
