"""A prefill/decode pair's load and replicas as the status page and GET /admin/pools show them.

The status page showed a pair's replicas as its prefill side's alone (`1/4` for one prefill and three decode workers,
all up), beside a backend count and a hint that count both sides. GET /admin/pools divided the pair's prefill load
(`in_flight_load`, the prefill role's) by its decode workers: a pair whose decode side was busy showed almost idle."""

import time

import pytest
from ricardo.gateway.admin import _pool_status
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.state import GatewayState
from ricardo.gateway.status import status_document
from ricardo.policies.types import SLO, RequestShape

PAIR = {
    "name": "h100-a10g",
    "prefill": {"hardware": "H100", "price_per_hour": 4.0, "backends": ["http://127.0.0.1:9100"]},
    "decode": {
        "hardware": "A10G",
        "price_per_hour": 1.0,
        "backends": [f"http://127.0.0.1:{9200 + i}" for i in range(3)],
    },
    "link_gbps": 100,
}


async def test_the_status_page_counts_both_sides_of_a_pair_as_its_replicas():
    state = GatewayState(GatewayConfig.model_validate({"models": ["llama2-7b"], "pools": [PAIR]}))
    try:
        state.apply(1, state.shared.model_dump(mode="json"))
        (shown,) = status_document(state, {"desired": {"h100-a10g": {"prefill": 1, "decode": 3}}})["pools"]
        assert (shown["replicas"], shown["backends"], shown["desired_replicas"]) == (4, 4, 4), shown
        assert shown["pair"], shown  # the page shows its unit's price, not a button that PUTs it without a role
    finally:
        await state.close()


async def test_the_admin_api_shows_a_pairs_utilization_as_its_busier_roles():
    state = GatewayState(GatewayConfig.model_validate({"models": ["llama2-7b"], "pools": [PAIR]}))
    try:
        state.apply(1, state.shared.model_dump(mode="json"))
        pool = state.pools["h100-a10g"]
        shape = RequestShape("llama2-7b", input_tokens=1000, output_p50=200, output_p90=400, slo=SLO(1000, 100))
        ticket = pool.ledger.dispatch(shape, state.book_for("llama2-7b", shape.slo), time.monotonic())
        assert ticket.decode_load > 10 * ticket.load  # a long answer: the decode side is the busier one
        busier = max(ticket.load / 1, ticket.decode_load / 3)  # one prefill worker, three decode workers
        assert _pool_status(state, "h100-a10g")["utilization"] == pytest.approx(busier, abs=1e-4)
    finally:
        await state.close()
