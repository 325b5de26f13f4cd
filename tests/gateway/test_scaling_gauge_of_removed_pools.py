"""`ricardo_desired_replicas{pool,role}` is what an autoscaler follows (README: a KEDA ScaledObject scales a pool to
`max(ricardo_desired_replicas{pool="l4"})`). A pool the hints no longer name (removed from the config, or turned into
a prefill/decode pair, whose roles are prefill and decode) must not keep its last figure on /metrics for good."""

from prometheus_client import generate_latest

from tests.gateway.test_scaling_webhook import scaling_loop


def desired_lines(loop) -> list[str]:
    page = generate_latest(loop.state.metrics.registry).decode()
    return sorted(line for line in page.splitlines() if line.startswith("ricardo_desired_replicas{"))


async def test_a_removed_pool_leaves_no_desired_replicas_behind():
    loop = scaling_loop(None)
    state = loop.state
    doc = state.shared.model_dump(mode="json")
    doc["pools"].append({**doc["pools"][0], "name": "l4", "hardware": "L4"})
    state.apply(2, doc)
    await loop.tick()
    assert loop.current()["desired"] == {"a10g": {"unified": 1}, "l4": {"unified": 1}}
    assert any('pool="l4"' in line for line in desired_lines(loop))

    doc["pools"] = [p for p in doc["pools"] if p["name"] != "l4"]  # the l4 pool is removed (admin DELETE)
    state.apply(3, doc)
    await loop.tick()
    assert loop.current()["desired"] == {"a10g": {"unified": 1}}
    assert not any('pool="l4"' in line for line in desired_lines(loop)), desired_lines(loop)
