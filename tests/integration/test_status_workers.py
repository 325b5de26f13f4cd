"""The status page's totals under `ricardo serve --workers 2` are the gateway's, as `/metrics` counts them: the
page reads them from the registry `/metrics` serves, and turns them into rates from the difference between two
polls; a poll answered by the other worker must not show (or subtract) only that worker's share."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from tests.integration.harness import Cluster, metric, wait_for
from tests.redis_server import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

TOKEN = "test-admin-token-0123456789"
REQUESTS = 12


def status_on_a_new_connection(url: str) -> dict:
    request = urllib.request.Request(url + "/admin/status", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # urllib: one connection per call
        return json.loads(response.read())


def test_the_status_page_counts_every_workers_requests_and_spend(redis, tmp_path):
    cluster = Cluster({"a10g": ("A10G", 1)}, tmp_path, speed=8.0, redis_url=redis.url, admin_token=TOKEN, workers=2)
    cluster.start()
    try:
        assert wait_for(lambda: "(2 workers)" in cluster.gateways[0].output(), 60), cluster.logs()
        for _ in range(REQUESTS):
            with openai.OpenAI(base_url=cluster.url + "/v1", api_key="none", max_retries=0) as client:  # new conn.
                client.chat.completions.create(
                    model="llama2-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
        assert metric(cluster.url, "ricardo_requests_total", status="200") == REQUESTS
        spent = metric(cluster.url, "ricardo_cost_usd_total", pool="a10g")
        polls = [status_on_a_new_connection(cluster.url) for _ in range(24)]
        assert {poll["replica"] for poll in polls} == {"gw0-w0", "gw0-w1"}, "both workers answered a poll"
        for poll in polls:
            [pool] = poll["pools"]
            assert pool["requests"] == REQUESTS, (poll["replica"], pool)
            assert pool["cost_usd"] == pytest.approx(spent), (poll["replica"], pool)
    finally:
        cluster.stop()
