"""A prefill/decode pair made, priced and given backends per role through the admin API of one gateway replica,
and used by another: the change travels through a real redis-server like any pool's."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.harness import Cluster, wait_for
from tests.redis_server import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

TOKEN = "test-admin-token-0123456789"
SMALL = {"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def cluster(redis, tmp_path_factory):
    cluster = Cluster(
        {"a10g": ("A10G", 1)},
        tmp_path_factory.mktemp("pairs-admin"),
        speed=8.0,
        gateways=2,
        redis_url=redis.url,
        admin_token=TOKEN,
        policy="cheapest-price",  # needs no profile of the pair: the list price decides
    )
    cluster.start()
    yield cluster
    cluster.stop()


def call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def pool_of_a_request(gateway: str) -> str:
    status, answer, headers = call(gateway + "/v1/chat/completions", "POST", SMALL)
    assert status == 200, answer
    return headers["x-ricardo-pool"]


def until(gateway: str, pool: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while pool_of_a_request(gateway) != pool:
        assert time.monotonic() < deadline, f"{gateway} never routed to {pool}"
        time.sleep(0.1)


def test_a_pair_is_made_priced_and_staffed_per_role_on_one_replica_and_used_by_the_other(cluster):
    first, second = cluster.urls
    prefill, decode = cluster.emulate_more("H100"), cluster.emulate_more("A10G")
    pair = {
        "name": "h100-a10g",
        "prefill": {"hardware": "H100", "backends": [prefill]},
        "decode": {"hardware": "A10G", "backends": []},
        "link_gbps": 100,
    }
    status, answer, _ = call(first + "/admin/pools", "POST", pair)
    assert status == 201, answer

    # a backend of a pair names its role; a unified pool's names none
    url = first + "/admin/pools/h100-a10g/backends"
    assert call(url, "POST", {"url": decode})[0] == 422
    assert call(first + "/admin/pools/a10g/backends", "POST", {"url": decode, "role": "decode"})[0] == 422
    status, answer, _ = call(url, "POST", {"url": decode, "role": "decode"})
    assert status == 201, answer
    assert call(url, "POST", {"url": decode, "role": "prefill"})[0] == 409  # one backend, one role

    # the pair costs the list prices of both its sides: dearer than an A10G until its prices fall (once the other
    # replica has the config version with its decode backend: it arrives through Redis)
    def decode_seen() -> bool:
        return bool(call(second + "/admin/pools/h100-a10g")[1].get("roles", {}).get("decode", {}).get("backends"))

    assert wait_for(decode_seen, 10)
    shown = call(second + "/admin/pools/h100-a10g")[1]
    assert shown["price_per_hour"] > call(second + "/admin/pools/a10g")[1]["price_per_hour"]
    assert pool_of_a_request(second) == "a10g"
    for role in ("prefill", "decode"):
        status, answer, _ = call(first + "/admin/pools/h100-a10g/price", "PUT", {"price_per_hour": 0.05, "role": role})
        assert status == 200, answer
    until(second, "h100-a10g")
    shown = call(second + "/admin/pools/h100-a10g")[1]
    assert shown["price_per_hour"] == pytest.approx(0.1)
    assert {r: v["price_per_hour"] for r, v in shown["roles"].items()} == {"prefill": 0.05, "decode": 0.05}
    assert {(b["url"], b["role"]) for b in shown["backends"]} == {(prefill, "prefill"), (decode, "decode")}

    # several prices at once, a pair's per role
    status, answer, _ = call(first + "/admin/prices", "PUT", {"prices": {"h100-a10g": {"decode": 9.0}}})
    assert status == 200, answer
    until(second, "a10g")

    # without its decode side the pair takes no request
    call(first + "/admin/prices", "PUT", {"prices": {"h100-a10g": {"decode": 0.05}}})
    until(second, "h100-a10g")
    status, answer, _ = call(first + "/admin/pools/h100-a10g/backends/remove", "POST", {"url": decode})
    assert status == 200, answer
    until(second, "a10g")
