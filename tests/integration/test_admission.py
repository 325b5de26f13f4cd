"""Load shedding through a real gateway: a pool past its capacity for a request refuses it at once with 429 and
Retry-After, higher priorities still get in, and what is admitted is served."""

from __future__ import annotations

import threading
import time
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
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def short(client, priority: str | None = None):
    headers = {"x-emulator-output-tokens": "2"}
    if priority is not None:
        headers["x-priority"] = priority
    return client.chat.completions.with_raw_response.create(
        model="llama2-7b", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=2, extra_headers=headers
    )


def test_a_full_pool_sheds_normal_priority_at_once_and_still_admits_higher(client):
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
