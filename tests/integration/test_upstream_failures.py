"""Backends that fail: a gateway over one pool of two emulated backends, told to fail by a header."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from ricardo.gateway.config import OutlierConfig

from tests.integration.harness import Cluster

POOLS = {"a10g": ("A10G", 2)}
BODY = json.dumps({"model": "llama2-7b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}).encode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(POOLS, tmp_path_factory.mktemp("failures"), speed=4.0).start()
    yield cluster
    cluster.stop()


def post(cluster: Cluster, **headers: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        cluster.url + "/v1/chat/completions", data=BODY, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())["error"]


def test_requests_that_crash_every_backend_do_not_take_the_pool_out(cluster):
    # a "poison" request: every backend answers it 500; the gateway tries both, then answers 502
    assert OutlierConfig().consecutive_failures >= 3
    for _ in range(2):
        status, _, error = post(cluster, **{"x-emulator-fail-status": "500"})
        assert status == 502 and error["type"] == "upstream_error" and "Traceback" not in error["message"]
    status, _, answer = post(cluster)  # the next ordinary request still finds both backends in service
    assert status == 200 and answer["usage"]["completion_tokens"] == 3


def test_an_overloaded_backend_is_rested_at_once_and_comes_back(cluster):
    status, _, _ = post(cluster, **{"x-emulator-fail-status": "503"})  # both backends say they are overloaded
    assert status == 503
    status, headers, error = post(cluster)  # both are cooling down: nothing to send to, the client is told when
    assert status == 503 and headers.get("Retry-After") == "1" and error["type"] == "service_unavailable"
    deadline = time.monotonic() + 10
    while (status := post(cluster)[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert status == 200
