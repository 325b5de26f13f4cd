"""Client API keys on two gateway replicas sharing one private redis-server: each key's rate limit, token limit
and budget hold across both, and the store never holds a key in plain text."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.error
import urllib.request

import aiohttp
import openai
import pytest
import redis as redis_client
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Cluster
from tests.redis_server import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

TOKEN = "test-admin-token-keys-0123456789"
POOLS = {"a10g": ("A10G", 2)}
CHAT = {"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}


@pytest.fixture(scope="module")
def cluster(redis, tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("keys"),
        speed=20.0,
        gateways=2,
        redis_url=redis.url,
        admin_token=TOKEN,
        auth={"require_api_keys": True},
    )
    cluster.start()
    yield cluster
    cluster.stop()


def admin(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def new_key(cluster: Cluster, **limits) -> dict:
    """A key made on replica A, once replica B knows it too (it reads the keys every second)."""
    status, made = admin(cluster.urls[0] + "/admin/keys", "POST", {"name": f"k{time.monotonic_ns()}", **limits})
    assert status == 201, made
    deadline = time.monotonic() + 5
    while complete(cluster.urls[1], made["key"], path="/v1/models")[0] != 200:  # authenticates, charges nothing
        assert time.monotonic() < deadline, "replica B never learnt the key"
        time.sleep(0.1)
    return made


def complete(url: str, key: str, output_tokens: int = 4, path: str = "/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}", "x-emulator-output-tokens": str(output_tokens)}
    data = None if path.endswith("models") else json.dumps(CHAT).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def until_refused(url: str, key: str, within_s: float = 3.0):
    """Spend is written to the store just after each request: the other replica refuses once it reads it."""
    deadline = time.monotonic() + within_s
    while True:
        status, body, headers = complete(url, key, output_tokens=1)
        if status == 429:
            return body, headers
        assert status == 200 and time.monotonic() < deadline, (status, body)
        time.sleep(0.05)


def metric(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_v1_needs_a_key(cluster):
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="llama2-7b", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert metric(cluster.url, "ricardo_key_refusals_total", reason="invalid_api_key") >= 2


def test_keys_are_stored_hashed_and_never_shown_again(cluster, redis):
    made = new_key(cluster, requests_per_second=100)
    plain = made["key"]
    assert plain.startswith("sk-rc-") and len(plain) > 40
    client = openai.OpenAI(base_url=cluster.urls[1] + "/v1", api_key=plain, max_retries=0)
    answer = client.chat.completions.create(
        model="llama2-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.usage.completion_tokens == 3
    dump = b""
    raw = redis_client.Redis.from_url(redis.url)
    for name in raw.scan_iter("*"):
        kind = raw.type(name)
        value = {
            b"string": lambda n: raw.get(n),
            b"hash": lambda n: raw.hgetall(n),
            b"list": lambda n: raw.lrange(n, 0, -1),
            b"set": lambda n: raw.smembers(n),
            b"zset": lambda n: raw.zrange(n, 0, -1, withscores=True),
        }[kind](name)
        dump += name + repr(value).encode()
    raw.close()
    assert plain.encode() not in dump and plain[12:].encode() not in dump  # not the key, nor its secret part
    assert hashlib.sha256(plain.encode()).hexdigest().encode() in dump  # its hash is what is kept
    for url in cluster.urls:
        status, listed = admin(url + "/admin/keys")
        assert status == 200 and plain not in json.dumps(listed)
        assert made["id"] in [k["id"] for k in listed["keys"]]
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            assert plain not in response.read().decode()


def test_the_request_rate_holds_across_replicas(cluster):
    key = new_key(cluster, requests_per_second=3)["key"]

    async def burst() -> list[tuple[int, dict, str | None]]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int):
                url = cluster.urls[i % 2] + "/v1/chat/completions"
                headers = {"Authorization": f"Bearer {key}", "x-emulator-output-tokens": "2"}
                async with session.post(url, json=CHAT, headers=headers) as response:
                    return response.status, await response.json(), response.headers.get("Retry-After")

            return await asyncio.gather(*(one(i) for i in range(10)))

    results = asyncio.run(burst())
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 3 + [429] * 7, results
    for status, body, retry_after in results:
        if status == 429:
            assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
            assert retry_after == "1"
    print(f"requests/s limit 3, 10 at once over 2 replicas: {statuses.count(200)} served, {statuses.count(429)} 429")


def test_tokens_per_minute_hold_across_replicas(cluster):
    key = new_key(cluster, tokens_per_minute=100)["key"]
    status, body, _ = complete(cluster.urls[0], key, output_tokens=120)  # allowed: the minute was empty
    assert status == 200 and body["usage"]["total_tokens"] > 100
    refused, headers = until_refused(cluster.urls[1], key)
    assert refused["error"]["type"] == "tokens" and 1 <= int(headers["Retry-After"]) <= 60


def test_a_budget_spent_through_one_replica_is_refused_on_the_other(cluster):
    made = new_key(cluster, budget_usd_per_day=0.0001)
    key = made["key"]
    cost_before = sum(metric(u, "ricardo_cost_usd_total") for u in cluster.urls)
    spent = 0
    while (status := complete(cluster.urls[0], key, output_tokens=300)[0]) == 200:  # ~$0.00008 each
        spent += 1
        assert spent < 10
    assert status == 429 and spent >= 1
    client = openai.OpenAI(base_url=cluster.urls[1] + "/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 3
    while True:
        try:
            client.chat.completions.create(model="llama2-7b", messages=[{"role": "user", "content": "hi"}])
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota" and int(exc.response.headers["Retry-After"]) > 0
            break
        assert time.monotonic() < deadline, "replica B never saw the spend"
    # the key's spend is what ricardo_cost_usd counted for its requests, summed over both replicas
    cost = sum(metric(u, "ricardo_cost_usd_total") for u in cluster.urls) - cost_before
    key_spend = sum(metric(u, "ricardo_key_spend_usd_total", key=made["id"]) for u in cluster.urls)
    listed = {k["id"]: k for k in admin(cluster.urls[1] + "/admin/keys")[1]["keys"]}
    assert key_spend == pytest.approx(cost, rel=1e-9)
    assert listed[made["id"]]["spend_today_usd"] == pytest.approx(key_spend, rel=1e-6)
    assert listed[made["id"]]["spend_today_usd"] >= 0.0001
    print(f"budget $0.0001: {spent} requests served on A, then refused on A and B; spend ${key_spend:.6f}")


def test_a_key_revoked_on_one_replica_is_refused_by_the_other(cluster):
    made = new_key(cluster)
    assert complete(cluster.urls[0], made["key"])[0] == 200
    status, _ = admin(cluster.urls[1] + f"/admin/keys/{made['id']}", "DELETE")
    assert status == 200
    assert admin(cluster.urls[1] + f"/admin/keys/{made['id']}", "DELETE")[0] == 404
    deadline = time.monotonic() + 3
    while (status := complete(cluster.urls[0], made["key"])[0]) != 401:
        assert status == 200 and time.monotonic() < deadline
        time.sleep(0.1)
