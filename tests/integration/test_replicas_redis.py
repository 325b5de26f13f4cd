"""Three gateway replicas (separate processes) sharing one real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from tests.integration.harness import Cluster
from tests.redis_server import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

TOKEN = "test-admin-token-0123456789"
POOLS = {"a10g": ("A10G", 1), "a100": ("A100-80GB", 1)}
SMALL = {"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def cluster(redis, tmp_path_factory):
    cluster = Cluster(
        POOLS, tmp_path_factory.mktemp("replicas"), speed=8.0, gateways=3, redis_url=redis.url, admin_token=TOKEN
    )
    cluster.start()
    yield cluster
    cluster.stop()


def call(
    url: str,
    method: str = "GET",
    body: dict | bytes | None = None,
    token: str | None = TOKEN,
    headers: dict | None = None,
) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def pool_for_small_request(gateway_url: str) -> str:
    status, _, headers = call(
        gateway_url + "/v1/chat/completions", "POST", SMALL, token=None, headers={"x-emulator-output-tokens": "4"}
    )
    assert status == 200
    return headers["x-ricardo-pool"]


def test_price_change_on_one_replica_reroutes_the_others_within_a_second(cluster):
    first, *others = cluster.urls
    assert {pool_for_small_request(u) for u in cluster.urls} == {"a10g"}, "small requests start on the cheap pool"
    status, answer, _ = call(first + "/admin/pools/a10g/price", "PUT", {"price_per_hour": 500.0})
    assert status == 200, answer
    changed_at = time.monotonic()
    for url in others:
        while pool_for_small_request(url) != "a100":
            assert time.monotonic() - changed_at < 1.0, f"{url} still routes to a10g after 1 s"
    seen = {url: call(url + "/admin/pools/a10g")[1]["price_per_hour"] for url in cluster.urls}
    assert set(seen.values()) == {500.0}
    call(first + "/admin/pools/a10g/price", "PUT", {"price_per_hour": 1.01})


def test_backend_added_on_one_replica_is_used_by_all(cluster):
    url = cluster.emulate_more("A10G")
    pool = {"name": "a10g-spot", "hardware": "A10G", "price_per_hour": 0.5, "backends": [url]}
    status, answer, _ = call(cluster.urls[1] + "/admin/pools", "POST", pool)
    assert status == 201, answer
    deadline = time.monotonic() + 5
    for gateway in cluster.urls:  # at half the A10G's price it is the cheapest for tiny requests once healthy
        while pool_for_small_request(gateway) != "a10g-spot":
            assert time.monotonic() < deadline, f"{gateway} never used the new pool's backend"
            time.sleep(0.1)


def test_a_replica_that_refuses_a_version_says_so_and_why_its_changes_cannot_commit(cluster):
    first, second, _ = cluster.urls
    # a pool whose backend is the second replica itself: the others take it, the second refuses it (a loop)
    status, answer, _ = call(first + "/admin/pools", "POST", {"name": "loop", "hardware": "L4", "backends": [second]})
    assert status == 201, answer
    refused = answer["version"]
    deadline = time.monotonic() + 5
    while (shown := call(second + "/admin/status")[1]["refused_version"]) is None:
        assert time.monotonic() < deadline, "the second replica never heard of the new version"
        time.sleep(0.05)
    assert shown["version"] == refused and "this gateway's own address" in shown["why"], shown
    status, answer, _ = call(second + "/admin/pools/a10g/price", "PUT", {"price_per_hour": 2.0})
    assert status == 409 and f"refused config version {refused}" in answer["error"]["message"], answer
    status, answer, _ = call(first + "/admin/pools/loop", "DELETE")
    assert status == 200, answer
    while call(second + "/admin/status")[1]["refused_version"] is not None:  # the next version applies again
        assert time.monotonic() < deadline + 5
        time.sleep(0.05)
    status, answer, _ = call(second + "/admin/pools/a10g/price", "PUT", {"price_per_hour": 1.01})
    assert status == 200, answer


@pytest.mark.parametrize(
    "method, path, body, token, status",
    [
        ("PUT", "/admin/pools/a10g/price", {"price_per_hour": 2.0}, None, 401),
        ("PUT", "/admin/pools/a10g/price", {"price_per_hour": 2.0}, "wrong-token-000000000000", 401),
        ("PUT", "/admin/pools/a10g/price", b"{nope", TOKEN, 400),
        ("PUT", "/admin/pools/a10g/price", {"price_per_hour": -3}, TOKEN, 422),
        ("PUT", "/admin/pools/a10g/price", {"price": 3}, TOKEN, 422),
        ("PUT", "/admin/pools/nosuch/price", {"price_per_hour": 3}, TOKEN, 404),
        ("POST", "/admin/pools", {"name": "x", "hardware": "TPU-v9", "backends": []}, TOKEN, 422),
        ("PUT", "/admin/policy", {"policy": "astrology"}, TOKEN, 422),
        ("PUT", "/admin/slo", {"ttft_ms": 0, "tpot_ms": 50}, TOKEN, 422),
    ],
)
def test_bad_admin_calls_are_refused_and_change_nothing(cluster, method, path, body, token, status):
    before = settled(cluster)
    code, answer, headers = call(cluster.url + path, method, body, token=token)
    assert code == status
    assert answer["error"]["message"]
    if status == 401:
        assert headers.get("WWW-Authenticate") == "Bearer"
    assert call(cluster.url + "/admin/pools")[1]["version"] == before["version"]


def settled(cluster: Cluster) -> dict:
    """The first replica's pools once every replica has applied the same config version: an earlier test's last
    change reaches the others through Redis a moment later, and would pass for a change made by this one."""
    deadline = time.monotonic() + 10
    while len({call(url + "/admin/pools")[1]["version"] for url in cluster.urls}) > 1:
        assert time.monotonic() < deadline, "the replicas never agreed on a config version"
        time.sleep(0.05)
    return call(cluster.url + "/admin/pools")[1]


def test_openapi_document_lists_the_admin_api(cluster):
    status, document, _ = call(cluster.url + "/admin/openapi.json", token=None)
    assert status == 200 and document["openapi"].startswith("3.")
    assert "put" in document["paths"]["/admin/pools/{pool}/price"]
    assert "PriceBody" in document["components"]["schemas"]


async def _load(urls: list[str], seconds: float, results: list):
    """Closed-loop small requests round-robin over the replicas, recording status and duration."""
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds

        async def worker(index: int):
            n = index
            while time.monotonic() < deadline:
                url = urls[n % len(urls)] + "/v1/chat/completions"
                n += 1
                started = time.monotonic()
                try:
                    async with session.post(
                        url,
                        json=SMALL,
                        headers={"x-emulator-output-tokens": "8"},
                        timeout=aiohttp.ClientTimeout(total=20),
                    ) as response:
                        await response.read()
                        results.append((response.status, time.monotonic() - started))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    results.append((repr(exc), time.monotonic() - started))

        await asyncio.gather(*(worker(i) for i in range(6)))


def test_redis_outage_loses_no_request_and_replicas_converge_after(cluster, redis):
    results: list = []

    async def scenario():
        load = asyncio.create_task(_load(cluster.urls, 6.0, results))
        await asyncio.sleep(1.5)
        redis.stop()
        await asyncio.sleep(2.0)
        seen.append(await asyncio.to_thread(call, cluster.urls[0] + "/readyz", token=None))
        seen.append(await asyncio.to_thread(call, cluster.urls[0] + "/admin/status"))
        await asyncio.sleep(1.0)
        redis.start()
        await load

    seen: list = []
    asyncio.run(scenario())
    # the unauthenticated probe names the store's error by kind only; the admin status document has its text
    (_, ready, _), (_, status, _) = seen
    assert not ready["store"]["connected"] and not status["store"]["connected"]
    assert ready["store"]["last_error"] and ":" not in ready["store"]["last_error"]
    assert status["store"]["last_error"].startswith(ready["store"]["last_error"] + ": ")
    statuses = [status for status, _ in results]
    assert len(results) > 50
    assert statuses.count(200) == len(results), f"failed requests during the outage: {set(statuses)}"
    # the gateway adds no Redis wait to a request: nothing near the store's 0.25 s timeout beyond normal service
    baseline = sorted(d for _, d in results)[len(results) // 2]
    assert max(d for _, d in results) < baseline + 1.0
    # after the restart (Redis came back empty), a change made on one replica reaches all of them
    deadline = time.monotonic() + 10
    while True:
        status, _, _ = call(cluster.urls[2] + "/admin/pools/a100/price", "PUT", {"price_per_hour": 3.5})
        if status == 200:
            break
        assert status == 503 and time.monotonic() < deadline, "admin writes never recovered"
        time.sleep(0.3)
    deadline = time.monotonic() + 3
    while {call(u + "/admin/pools/a100")[1]["price_per_hour"] for u in cluster.urls} != {3.5}:
        assert time.monotonic() < deadline, "replicas did not converge after Redis came back"
        time.sleep(0.1)
    assert all(call(u + "/readyz", token=None)[1]["store"]["connected"] for u in cluster.urls)
