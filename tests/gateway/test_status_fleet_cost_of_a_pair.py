"""The status page's `fleet_usd_per_hour` of a prefill/decode pair: what its backends cost per hour, each at its own
side's price. It was the pair's unit price (one prefill plus one decode replica) times *all* its backends, so a pair
of one H100 prefill and one A10G decode worker showed twice its cost, and one with three decode workers ~3x."""

import pytest
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.state import GatewayState
from ricardo.gateway.status import status_document


@pytest.mark.parametrize("decode_workers", [1, 3])
async def test_a_pairs_fleet_cost_prices_each_backend_at_its_side(decode_workers):
    decode = [f"http://127.0.0.1:{9200 + i}" for i in range(decode_workers)]
    pool = {
        "name": "h100-a10g",
        "prefill": {"hardware": "H100", "price_per_hour": 4.0, "backends": ["http://127.0.0.1:9100"]},
        "decode": {"hardware": "A10G", "price_per_hour": 1.0, "backends": decode},
        "link_gbps": 100,
    }
    state = GatewayState(GatewayConfig.model_validate({"models": ["llama2-7b"], "pools": [pool]}))
    try:
        state.apply(1, state.shared.model_dump(mode="json"))
        (shown,) = status_document(state, {})["pools"]
        assert shown["fleet_usd_per_hour"] == pytest.approx(4.0 + 1.0 * decode_workers), shown
    finally:
        await state.close()


async def test_a_pair_priced_per_role_says_its_price_is_an_override():
    """Both sides priced by the operator, the status page said `price set` (it read the pair's own price_per_hour,
    which a pair never has); GET /admin/pools says `per role`, each side `override`."""
    pool = {
        "name": "h100-a10g",
        "prefill": {"hardware": "H100", "price_per_hour": 4.0},
        "decode": {"hardware": "A10G", "price_per_hour": 1.0},
        "link_gbps": 100,
    }
    state = GatewayState(GatewayConfig.model_validate({"models": ["llama2-7b"], "pools": [pool]}))
    try:
        state.apply(1, state.shared.model_dump(mode="json"))
        (shown,) = status_document(state, {})["pools"]
        assert shown["price_source"] == "override", shown
    finally:
        await state.close()
