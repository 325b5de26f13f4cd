"""Load that bypasses the gateway steers it: the backends' own /metrics enter the pool views the policy ranks.

Real processes over loopback: two emulated A10G pools behind a real `ricardo serve` (cost-aware), the same hardware at
two prices. Idle, every request goes to the cheaper pool. Then another client sends requests straight to the cheap
pool's backend: the gateway has none of them in flight (its own counts still say the cheap pool is idle), but the
backend's `vllm:num_requests_running` / `_waiting` show them, and new requests go to the dear pool. Once that
client's requests end, they go back to the cheap one.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from tests.integration.harness import Cluster, metric, wait_for

MODEL = "llama2-7b"
POOLS = {"cheap": ("A10G", 1), "dear": ("A10G", 1)}
DIRECT_REQUESTS = 30  # x the share of a typical request on an A10G (~0.04 of a replica): past one replica
DIRECT_OUTPUT_TOKENS = 400  # long enough to stay in flight for several health intervals (0.5 s each)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("external"),
        admin_token="external-load-admin-token-0123",
        pool_settings={"cheap": {"price_per_hour": 1.0}, "dear": {"price_per_hour": 2.0}},
    ).start()
    yield cluster
    cluster.stop()


def complete(url: str, output_tokens: int, timeout: float = 120.0) -> urllib.request.addinfourl:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": output_tokens}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "x-emulator-output-tokens": str(output_tokens)},
    )
    response = urllib.request.urlopen(request, timeout=timeout)
    response.read()
    return response


def routed_to(cluster: Cluster) -> str:
    return complete(cluster.url, 5).headers["x-ricardo-pool"]


def pool_status(cluster: Cluster, name: str) -> dict:
    request = urllib.request.Request(cluster.url + f"/admin/pools/{name}", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_requests_that_bypass_the_gateway_send_its_traffic_to_the_other_pool(cluster):
    try:
        _check(cluster)
    except AssertionError:
        print(cluster.logs()[-6000:])
        raise


def _check(cluster: Cluster) -> None:
    # idle: the cheap pool, every time (the gateway's own counts alone would keep choosing it)
    assert [routed_to(cluster) for _ in range(3)] == ["cheap"] * 3
    assert wait_for(lambda: pool_status(cluster, "cheap")["backends"][0]["telemetry"], timeout=5)
    assert pool_status(cluster, "cheap")["external_load"] == 0.0

    backend = f"http://127.0.0.1:{cluster.pool_ports['cheap'][0]}"
    direct = [
        threading.Thread(target=complete, args=(backend, DIRECT_OUTPUT_TOKENS), daemon=True)
        for _ in range(DIRECT_REQUESTS)
    ]
    for thread in direct:
        thread.start()
    try:
        loaded = wait_for(lambda: pool_status(cluster, "cheap")["external_load"] > 1.0, timeout=10)
        status = pool_status(cluster, "cheap")
        seen = status["backends"][0]
        assert loaded, status
        # what the gateway counts of its own is still nothing, and the backend still takes requests
        assert status["in_flight"] == 0 and seen["healthy"] and seen["outlier"] == "in service", status
        assert seen["telemetry"]["running"] + seen["telemetry"]["waiting"] >= DIRECT_REQUESTS
        # Prometheus shows it apart from the gateway's own utilization, which stays nothing
        assert wait_for(lambda: metric(cluster.url, "ricardo_pool_external_load", pool="cheap") > 1.0, timeout=2)
        assert metric(cluster.url, "ricardo_pool_utilization", pool="cheap") == 0.0
        assert [routed_to(cluster) for _ in range(3)] == ["dear"] * 3
    finally:
        for thread in direct:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in direct)
    # the other client is gone: within a few scrapes the cheap pool is idle again, and chosen again
    assert wait_for(lambda: pool_status(cluster, "cheap")["external_load"] == 0.0, timeout=10)
    assert routed_to(cluster) == "cheap"
