"""Answers that break: completeness, timeouts and cancellation, through the real gateway and emulated backends
given standing faults, with the official openai client.

Each pool serves a model of its own, so a request reaches the fault it is about. Outlier ejection is turned
off here (tests/integration/test_outliers.py covers it): each test sees its fault on every request.
"""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from tests.integration.harness import Cluster, metric, wait_for

OUTLIERS_OFF = {"consecutive_failures": 1000, "min_requests": 1000}
SPARE_PROBES = "min-tokens=2"  # the faults spare the gateway's one-token probe: real answers meet them
POOLS = {
    "nodone": ("A10G", 1),
    "cut": ("A10G", 1),
    "stall": ("A10G", 1),
    "hang": ("A10G", 1),
    "trunc": ("A10G", 2),
    "broken": ("A10G", 1),
    "slow": ("A10G", 1),
}
FAULTS = {
    "nodone": [f"no-done,{SPARE_PROBES}"],
    "cut": [f"cut-after=3,{SPARE_PROBES}"],
    "stall": [f"stall-after=3,{SPARE_PROBES}"],
    "hang": [f"hang,{SPARE_PROBES}"],
    "trunc": [f"no-done,{SPARE_PROBES}", None],
    "broken": [f"cut-after=0,{SPARE_PROBES}"],
}
STALL_IDLE_S = 1.0
HANG_FIRST_BYTE_S = 1.5
HANG_RESPONSE_S = 2.0
SLACK_S = 1.5  # what a loaded 2-core machine may add to a timeout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    settings = {name: {"models": [name]} for name in POOLS}
    settings["stall"]["timeouts"] = {"idle_timeout_s": STALL_IDLE_S}
    settings["hang"]["timeouts"] = {
        "connect_timeout_s": 1.0,
        "first_byte_timeout_s": HANG_FIRST_BYTE_S,
        "response_timeout_s": HANG_RESPONSE_S,
    }
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("reliability"),
        speed=4.0,
        faults=FAULTS,
        pool_settings=settings,
        models=list(POOLS),
        outlier=OUTLIERS_OFF,
        admission={"enabled": False},
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.openai_client(timeout=30)


def stream(client, model: str, tokens: int = 20) -> tuple[str, float]:
    """Stream an answer; return its text and how long it took (raises what the openai client raises)."""
    started = time.monotonic()
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "tell me"}],
        stream=True,
        extra_headers={"x-emulator-output-tokens": str(tokens)},
    )
    text = ""
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    return text, time.monotonic() - started


def complete(client, model: str, tokens: int = 20):
    return client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "tell me"}],
        extra_headers={"x-emulator-output-tokens": str(tokens)},
    )


def test_a_stream_that_ends_without_done_reaches_the_client_as_an_error_event(cluster, client):
    before = metric(cluster.url, "ricardo_upstream_errors_total", pool="nodone", kind="incomplete")
    with pytest.raises(openai.APIError, match="before it was complete") as caught:
        stream(client, "nodone")
    assert caught.value.body["type"] == "upstream_error"
    assert metric(cluster.url, "ricardo_upstream_errors_total", pool="nodone", kind="incomplete") == before + 1
    assert metric(cluster.url, "ricardo_requests_total", pool="nodone", status="502") >= 1


def test_a_stream_dropped_midway_ends_with_an_error_event(client):
    with pytest.raises(openai.APIError, match="broke off"):
        stream(client, "cut")


def test_a_stream_that_stalls_ends_with_an_error_event_within_the_idle_timeout(client):
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="stalled"):
        stream(client, "stall")
    assert time.monotonic() - started < STALL_IDLE_S + SLACK_S


def test_a_backend_that_hangs_gives_504_within_the_first_byte_timeout(client):
    for streamed, budget in ((True, HANG_FIRST_BYTE_S), (False, HANG_RESPONSE_S)):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            stream(client, "hang") if streamed else complete(client, "hang")
        elapsed = time.monotonic() - started
        assert caught.value.status_code == 504 and caught.value.body["type"] == "timeout_error"
        assert budget <= elapsed < budget + SLACK_S


def test_a_truncated_whole_answer_is_retried_on_the_next_backend(cluster, client):
    before = metric(cluster.url, "ricardo_upstream_errors_total", pool="trunc", kind="bad_json")
    attempts = []
    for _ in range(6):
        raw = complete(client, "trunc", tokens=12)
        completion = raw.parse()
        assert completion.usage.completion_tokens == 12 and completion.choices[0].finish_reason
        attempts.append(int(raw.headers["x-ricardo-attempts"]))
    assert 2 in attempts, "the truncating backend was tried first at least once, then the other"
    after = metric(cluster.url, "ricardo_upstream_errors_total", pool="trunc", kind="bad_json")
    assert after == before + attempts.count(2)


def test_an_answer_that_breaks_before_anything_was_sent_gives_502_not_500(client):
    for streamed in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            stream(client, "broken") if streamed else complete(client, "broken")
        assert caught.value.status_code == 502
        assert caught.value.body["type"] == "upstream_error" and "Traceback" not in caught.value.message


def running(cluster: Cluster, pool: str) -> float:
    return metric(f"http://127.0.0.1:{cluster.pool_ports[pool][0]}", "vllm:num_requests_running")


@pytest.mark.parametrize("streamed", [False, True])
def test_a_client_that_goes_away_cancels_the_upstream_request(cluster, streamed):
    body = {"model": "slow", "messages": [{"role": "user", "content": "a long story"}], "stream": streamed}
    connection = http.client.HTTPConnection("127.0.0.1", cluster.gateway_port, timeout=30)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "x-emulator-output-tokens": "3000"},
    )
    if streamed:
        response = connection.getresponse()
        assert response.status == 200 and response.read1(100)  # the answer is under way
    assert wait_for(lambda: running(cluster, "slow") == 1, timeout=5), "the request reached the engine"
    assert metric(cluster.url, "ricardo_pool_in_flight", pool="slow") <= 1
    connection.close()  # the client goes away, long before the 3,000 tokens are done
    assert wait_for(lambda: running(cluster, "slow") == 0, timeout=3), "the backend stopped working on it"
    # the gateway let go of it too: the pool's in-flight gauge (refreshed every 0.5 s) is back to 0
    assert wait_for(lambda: metric(cluster.url, "ricardo_pool_in_flight", pool="slow") == 0, timeout=3)
    assert metric(cluster.url, "ricardo_requests_total", pool="slow", status="499") >= 1
