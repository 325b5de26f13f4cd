"""Outlier detection through real processes: a backend whose answers break is ejected on its outcomes (its
/v1/models keeps answering), stays out while its probe fails, and comes back through the probe and one real
request once it is repaired."""

from __future__ import annotations

import time

import openai
import pytest

from tests.integration.harness import Cluster, metric, wait_for

POOLS = {"a10g": ("A10G", 2)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("outliers"),
        speed=4.0,
        faults={"a10g": [None, ""]},  # the second backend runs alone, to be restarted with faults
        health_interval_s=60,  # no idle probes: outcomes alone find the fault
        outlier={"consecutive_failures": 3, "base_ejection_s": 1.0, "max_ejection_s": 8.0},
        admission={"enabled": False},
    ).start()
    yield cluster
    cluster.stop()


def stream_ok(client) -> bool:
    try:
        chunks = list(
            client.chat.completions.create(
                model="llama2-7b",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"x-emulator-output-tokens": "8"},
            )
        )
    except openai.APIError:
        return False
    return any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_a_backend_that_breaks_answers_is_ejected_and_comes_back_once_repaired(cluster):
    client = cluster.openai_client(timeout=30)
    port = cluster.pool_ports["a10g"][1]
    bad = f"http://127.0.0.1:{port}"
    cluster.replace_backend(port, "cut-after=2")  # every answer dropped, probes too; /v1/models still answers
    outcomes = [stream_ok(client) for _ in range(12)]
    failures = outcomes.count(False)
    # least-outstanding sends it every other request until its third failure in a row ejects it
    assert 3 <= failures <= 4, outcomes
    assert metric(cluster.url, "ricardo_backend_ejections_total", backend=bad) == 1
    assert outcomes[-4:] == [True] * 4, "once out, it gets no more requests"

    # out it stays while its probe fails (1 s, then 2 s, 4 s ...): no client sees it
    started = time.monotonic()
    while time.monotonic() - started < 3.5:
        assert stream_ok(client)
    assert metric(cluster.url, "ricardo_backend_up", backend=bad) == 0

    cluster.replace_backend(port, "")  # repaired
    served_before = metric(bad, "vllm:request_success_total")
    assert served_before == 0

    def back() -> bool:
        assert stream_ok(client)
        return metric(bad, "vllm:request_success_total") >= 3  # the probe, the trial request, and more

    assert wait_for(back, timeout=12), "the repaired backend is probed, tried with one request, and back"
    # the gauge is refreshed every 0.5 s
    assert wait_for(lambda: metric(cluster.url, "ricardo_backend_up", backend=bad) == 1, timeout=2)
