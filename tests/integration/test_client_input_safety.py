"""What a client's request may do to the gateway's shared state: nothing beyond its own answer.

Real processes over real sockets. A client (any client, on loopback where keys are optional) must not be able,
by what it sends, to take healthy backends out of service for everyone or to corrupt a pool's live figures.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import pytest

from tests.integration.harness import Cluster

POOLS = {"a10g": ("A10G", 1)}
TOKEN = "client-input-safety-token"
SMALL = {"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("client-input-safety"),
        speed=10.0,
        admin_token=TOKEN,
        health_interval_s=60,  # no idle probes: a backend ejected stays out for the test to see
        outlier={"consecutive_failures": 3, "base_ejection_s": 30.0},
        admission={"enabled": False},
    ).start()
    yield cluster
    cluster.stop()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def pools(cluster: Cluster) -> dict:
    """GET /admin/pools, parsed as strict JSON (NaN and Infinity are not JSON)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in /admin/pools")

    request = urllib.request.Request(cluster.url + "/admin/pools", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read(), parse_constant=refuse)


@pytest.mark.parametrize("header", ["x-slo-tpot-ms", "x-slo-ttft-ms"])
@pytest.mark.parametrize("value", ["5e-324", "inf", "1e999"])
def test_an_extreme_slo_header_is_refused_or_leaves_the_pools_figures_finite(cluster, header, value):
    """A TPOT SLO of a denormal made the pool's lateness NaN for good (observed / SLO / predicted: inf / inf), which
    GET /admin/pools then served as invalid JSON; an infinite SLO is no number of milliseconds."""
    url = cluster.url + "/v1/chat/completions"
    for stream in (False, True):
        status = post(
            url, json.dumps({**SMALL, "stream": stream}).encode(), {"Content-Type": "application/json", header: value}
        )
        assert status in (200, 400)
    if value != "5e-324":
        assert status == 400
    lateness = pools(cluster)["pools"][0]["lateness"]  # raises on NaN
    assert lateness is None or lateness >= 0


def test_a_gzip_encoded_body_is_answered_and_ejects_no_backend(cluster):
    """aiohttp decodes a Content-Encoding: gzip body; sent upstream as decoded, it must not say it is gzip (the backend
    fails to decode it: each such request counted as a failed answer, and three ejected the pool's only backend)."""
    url = cluster.url + "/v1/chat/completions"
    body = gzip.compress(json.dumps(SMALL).encode())
    statuses = [post(url, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"}) for _ in range(4)]
    assert statuses == [200] * 4
    [backend] = pools(cluster)["pools"][0]["backends"]
    assert backend["outlier"] == "in service"
    assert post(url, json.dumps(SMALL).encode(), {"Content-Type": "application/json"}) == 200
