"""A pool or backend removed at run time (admin DELETE, .../backends/remove) must not keep its last gauge values on
/metrics: `ricardo_backend_up{...} 1` of a backend that is gone reads as capacity that is not there (and an alert on
`ricardo_backend_up == 0` can never fire for it), a removed pool's price stays in every cost panel, and with backends
that come and go (pods) the label sets grow without bound."""

from prometheus_client import generate_latest
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.state import GatewayState


def gauge_lines(state: GatewayState) -> list[str]:
    page = generate_latest(state.metrics.registry).decode()
    names = ("ricardo_backend_up{", "ricardo_pool_price_per_hour{", "ricardo_pool_in_flight{", "ricardo_pool_util")
    return [line for line in page.splitlines() if line.startswith(names)]


async def test_a_removed_pool_and_backend_leave_no_gauges_behind():
    config = GatewayConfig.model_validate(
        {
            "models": ["llama2-7b"],
            "pools": [
                {"name": "a10g", "hardware": "A10G", "backends": ["http://127.0.0.1:9101", "http://127.0.0.1:9102"]},
                {"name": "l4", "hardware": "L4", "backends": ["http://127.0.0.1:9103"]},
            ],
        }
    )
    state = GatewayState(config)
    try:
        doc = state.shared.model_dump(mode="json")
        state.apply(1, doc)
        state.health._gauges()  # what the health loop does every interval
        assert any("9102" in line for line in gauge_lines(state))

        doc["pools"] = [{**doc["pools"][0], "backends": ["http://127.0.0.1:9101"]}]  # l4 removed, 9102 removed
        state.apply(2, doc)
        state.health._gauges()
        left = [line for line in gauge_lines(state) if 'pool="l4"' in line or "9102" in line]
        assert left == [], left
    finally:
        await state.close()
