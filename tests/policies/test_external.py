"""Load that did not come through this gateway, from the backends' own figures, and how it steers `cost-aware`."""

import dataclasses

import pytest
from ricardo.policies.external import (
    KV_SATURATED,
    BackendReport,
    external_load,
    share_per_request,
    typical_share,
)
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.routing import capacity_share, cost_aware
from ricardo.policies.types import SLO, PoolView, RequestShape
from ricardo.profiles.catalog import load_default_book

SLO_DEFAULT = SLO(ttft_ms=2000, tpot_ms=120)
NOW = 100.0
MAX_AGE = 15.0


@pytest.fixture(scope="module")
def book():
    return load_default_book()


def report(running=0.0, waiting=0.0, kv=None, own=0, age=1.0) -> BackendReport:
    return BackendReport(running, waiting, kv, NOW - age, own)


def test_requests_beyond_the_gateways_own_count_at_the_pools_share_each():
    # 7 running + 3 waiting, 4 of them ours: 6 foreign, at 0.05 of a replica each
    assert external_load([report(7, 3, own=4)], 0.05, NOW, MAX_AGE) == pytest.approx(0.3)
    # two backends add up; one that runs only ours (or fewer than we count in flight: ours in transit) adds nothing
    both = [report(7, 3, own=4), report(2, 0, own=2), report(1, 0, own=3)]
    assert external_load(both, 0.05, NOW, MAX_AGE) == pytest.approx(0.3)
    assert external_load([], 0.05, NOW, MAX_AGE) == 0.0
    # a page without request counts (a KV figure only) says nothing of requests
    assert external_load([report(None, None, kv=0.5)], 0.05, NOW, MAX_AGE) == 0.0


def test_a_saturated_kv_cache_fills_the_backend_whatever_its_counts():
    # 2 foreign requests would be 0.1 of a replica; with the KV cache full the backend is a whole replica busy,
    # 0.2 of which is this gateway's own (4 x 0.05, charged in its ledger already)
    assert external_load([report(6, 0, kv=KV_SATURATED, own=4)], 0.05, NOW, MAX_AGE) == pytest.approx(0.8)
    assert external_load([report(6, 0, kv=KV_SATURATED - 0.01, own=4)], 0.05, NOW, MAX_AGE) == pytest.approx(0.1)
    # many foreign requests already count more than a replica: saturation does not lower that
    assert external_load([report(40, 10, kv=0.99)], 0.05, NOW, MAX_AGE) == pytest.approx(2.5)


def test_a_stale_page_is_ignored():
    assert external_load([report(10, 0, kv=1.0, age=MAX_AGE + 0.1)], 0.05, NOW, MAX_AGE) == 0.0
    assert external_load([report(10, 0, age=MAX_AGE)], 0.05, NOW, MAX_AGE) == pytest.approx(0.5)


def test_a_foreign_request_is_charged_the_pools_mean_share_else_a_typical_ones(book):
    assert share_per_request(in_flight=4, in_flight_load=0.2, typical_share=0.9) == pytest.approx(0.05)
    assert share_per_request(in_flight=0, in_flight_load=0.0, typical_share=0.9) == 0.9
    typical = typical_share(book, "A10G", SLO_DEFAULT)
    assert typical == pytest.approx(capacity_share(book, "A10G", 1000, 250, SLO_DEFAULT))
    assert 0 < typical < 1 and typical_share(book, "H100", SLO_DEFAULT) < typical  # a bigger GPU holds more at once
    assert typical_share(book, "A10G", SLO(2000, 5e-324)) == 1.0  # computed when a config applies: never raises


def test_the_ledgers_view_carries_the_external_load_into_utilization(book):
    ledger = PoolLedger("a10g", "A10G", 1.01)
    ticket = ledger.dispatch(RequestShape("llama2-7b", 500, 100, 200, SLO_DEFAULT), book, now=0.0)
    view = ledger.view(replicas=2, external_load=0.6)
    assert view.in_flight_load == pytest.approx(ticket.load)  # the ledger's own count is left as it is
    assert view.utilization == pytest.approx((ticket.load + 0.6) / 2)
    assert ledger.view(replicas=2).external_load == 0.0  # a new figure is a new view, not the cached one


def test_foreign_load_on_the_cheap_pool_sends_requests_to_the_dear_one(book):
    """Two pools of one type, one dearer: idle, cost-aware picks the cheap one; with another client's requests
    running on the cheap one's backend (which this gateway's counts do not see), the dear one."""
    cheap = PoolView("cheap", "A10G", price_per_hour=1.0, replicas=1)
    dear = PoolView("dear", "A10G", price_per_hour=2.0, replicas=1)
    request = RequestShape("llama2-7b", 60, 10, 20, SLO_DEFAULT)
    assert cost_aware(request, [cheap, dear], book)[0].pool == "cheap"
    share = share_per_request(cheap.in_flight, cheap.in_flight_load, typical_share(book, "A10G", SLO_DEFAULT))
    foreign = external_load([report(30, 0)], share, NOW, MAX_AGE)
    assert foreign > 1.0
    busy = dataclasses.replace(cheap, external_load=foreign)
    ranked = cost_aware(request, [busy, dear], book)
    assert [c.pool for c in ranked] == ["dear", "cheap"] and ranked[1].slack < 0
