"""Load shedding through a real gateway: a pool past its capacity for a request refuses it at once with 429 and
Retry-After, higher priorities still get in, and what is admitted is served."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.integration.harness import Cluster

LONG_PROMPT = "Summarise the following report in detail. " + "The quarterly figures rose and fell. " * 120


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        {"l4": ("L4", 1)},
        tmp_path_factory.mktemp("admission"),
        speed=4.0,
        admission={"max_utilization": 1.0, "priority_factor": 1.5, "max_header_priority": 2},
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.openai_client()


@pytest.fixture(scope="module")
def keys(cluster) -> dict[str, str]:
    """Client keys by the priority they grant (keys are optional on loopback: the anonymous client still works)."""
    made = {}
    for priority in (0, 2):
        body = json.dumps({"name": f"priority{priority}", "priority": priority}).encode()
        headers = {"Content-Type": "application/json", **cluster.admin_headers()}
        request = urllib.request.Request(cluster.url + "/admin/keys", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["priority"] == priority
        made[str(priority)] = answer["key"]
    return made


def short(client, priority: str | None = None, key: str | None = None):
    headers = {"x-emulator-output-tokens": "2"}
    if priority is not None:
        headers["x-priority"] = priority
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return client.chat.completions.with_raw_response.create(
        model="llama2-7b", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=2, extra_headers=headers
    )


def test_a_key_priority_is_kept_with_the_key_and_bounded(cluster, keys):
    listed = urllib.request.Request(cluster.url + "/admin/keys", headers=cluster.admin_headers())
    with urllib.request.urlopen(listed, timeout=10) as response:
        shown = {k["name"]: k["priority"] for k in json.loads(response.read())["keys"]}
    assert shown["priority0"] == 0 and shown["priority2"] == 2
    body = json.dumps({"name": "too-high", "priority": 3}).encode()
    headers = {"Content-Type": "application/json", **cluster.admin_headers()}
    request = urllib.request.Request(cluster.url + "/admin/keys", data=body, headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 422


def test_a_full_pool_sheds_normal_priority_at_once_and_still_admits_higher(client, keys):
    stop = threading.Event()
    holders: list[threading.Thread] = []

    def hold() -> None:  # a long answer at priority 2, read until the test is done
        stream = client.chat.completions.create(
            model="llama2-7b",
            messages=[{"role": "user", "content": LONG_PROMPT}],
            stream=True,
            extra_headers={"x-emulator-output-tokens": "3000", "x-priority": "2"},
        )
        for _ in stream:
            if stop.is_set():
                stream.close()
                return

    try:
        refused = None
        while refused is None and len(holders) < 40:
            thread = threading.Thread(target=hold, daemon=True)
            thread.start()
            holders.append(thread)
            time.sleep(0.3)
            started = time.monotonic()
            try:
                short(client)
            except openai.RateLimitError as exc:
                refused, latency = exc, time.monotonic() - started
        assert refused is not None, "40 long answers in flight on one L4 replica and nothing was shed"
        print(f"\nshed at priority 0 with {len(holders)} long answers in flight, in {latency * 1000:.0f} ms")
        assert latency < 1.0, "refused at once, not after queueing"
        assert refused.response.headers["Retry-After"] == "1"
        assert refused.body["type"] == "rate_limit_error" and refused.body["code"] == "overloaded"
        assert "past its capacity" in refused.message
        assert short(client, priority="2").http_response.status_code == 200, "a higher priority still gets in"
        assert short(client, priority="9").http_response.status_code == 200, "9 is clamped to 2"
        with pytest.raises(openai.RateLimitError):
            short(client, priority="-1")
        with pytest.raises(openai.BadRequestError, match="x-priority"):
            short(client, priority="high")
        # a key's priority is its requests' priority, and the most x-priority may claim with it
        assert short(client, key=keys["2"]).http_response.status_code == 200, "the key grants priority 2"
        with pytest.raises(openai.RateLimitError):
            short(client, priority="2", key=keys["0"])  # the header cannot raise a key's priority
        with pytest.raises(openai.RateLimitError):
            short(client, priority="-1", key=keys["2"])  # but a client may lower its own
    finally:
        stop.set()
        for thread in holders:
            thread.join(timeout=10)


def test_a_burst_at_one_replica_is_partly_shed_at_once_and_the_rest_served(client):
    time.sleep(1.0)  # the previous test's streams have let go

    def one(_: int) -> tuple[int, float]:
        started = time.monotonic()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="llama2-7b",
                messages=[{"role": "user", "content": LONG_PROMPT}],
                extra_headers={"x-emulator-output-tokens": "200"},
            )
            return raw.http_response.status_code, time.monotonic() - started
        except openai.RateLimitError:
            return 429, time.monotonic() - started

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    shed = [t for status, t in results if status == 429]
    served = [t for status, t in results if status == 200]
    assert len(shed) + len(served) == 40, results
    assert len(shed) >= 10 and len(served) >= 2, results
    assert max(shed) < 2.0, "refusals do not wait in a queue"
    print(
        f"\nburst of 40 at one L4: {len(shed)} shed (slowest refusal {max(shed) * 1000:.0f} ms), "
        f"{len(served)} served (median {sorted(served)[len(served) // 2]:.1f} s)"
    )
