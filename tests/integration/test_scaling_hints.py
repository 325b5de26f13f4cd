"""Scaling hints across two gateway replicas (separate processes) sharing one real redis-server: the lease holder
merges both replicas' windows, plans with the same planner as `ricardo plan`, and both publish the hints."""

from __future__ import annotations

import time
import urllib.request

import pytest
from openai import OpenAI
from ricardo.policies.sizing import plan_sizes
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book

from tests.integration.harness import Cluster
from tests.integration.test_replicas_redis import call
from tests.redis_server import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

TOKEN = "test-admin-token-0123456789"
POOLS = {"a10g": ("A10G", 1), "a100": ("A100-80GB", 1)}
OUTPUT_TOKENS = 260  # just past an output edge (250): the three sizing rules give different fleets
SENT = (12, 6)  # requests through each replica


@pytest.fixture(scope="module")
def cluster(redis, tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("scaling"),
        speed=50.0,
        gateways=2,
        redis_url=redis.url,
        admin_token=TOKEN,
        scaling={"interval_s": 0.5, "window_s": 60.0},
    )
    cluster.start()
    yield cluster
    cluster.stop()


def hints_of(url: str) -> dict:
    status, hints, _ = call(url + "/admin/scaling")
    assert status == 200, hints
    return hints


def test_hints_merge_both_replicas_and_are_the_planners_fleet_for_their_sizes(cluster):
    sizes = set()
    for url, n in zip(cluster.urls, SENT, strict=True):
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for _ in range(n):
            answer = client.chat.completions.create(
                model="llama2-7b",
                messages=[{"role": "user", "content": "Summarise the plot of a long novel in detail."}],
                max_tokens=OUTPUT_TOKENS,
                extra_headers={"x-emulator-output-tokens": str(OUTPUT_TOKENS)},
            )
            assert answer.usage is not None
            sizes.add((answer.usage.prompt_tokens, answer.usage.completion_tokens))
    assert len(sizes) == 1, sizes  # one size: the merged mix is that size whatever the replicas' weights
    (size,) = sizes

    deadline = time.monotonic() + 10.0
    while True:  # a tick of each replica pushes its window, then the lease holder merges them
        seen = [hints_of(url) for url in cluster.urls]
        if all(h.get("inputs", {}).get("requests") == sum(SENT) for h in seen):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.25)
    leader = next(h for h in seen if "computed_by" in h)
    assert all(h["computed_by"] == leader["computed_by"] for h in seen)  # one replica plans, both publish
    inputs, planner = leader["inputs"], leader["planner"]["llama2-7b"]
    assert inputs["replicas_merged"] == 2 and inputs["summaries_ignored"] == 0
    assert inputs["models"]["llama2-7b"]["sample_size"] == planner["sample_size"] == sum(SENT)  # every size kept
    assert inputs["planner"] == planner["planner"] == "ricardo"
    assert inputs["headroom"] == 0.0 and inputs["slo"] == {"ttft_ms": 2000.0, "tpot_ms": 120.0}

    expected = plan_sizes(
        load_default_book(include_estimated=True),  # the gateway's book; the hints' prices replace its own
        [size[0]],
        [size[1]],
        inputs["rate"],
        SLO(2000.0, 120.0),
        prices=planner["prices"],
        only=list(planner["prices"]),
    )
    assert planner["allocation"] == expected.allocation and sum(expected.allocation.values()) > 0
    assert leader["raw"] == {name: {"unified": expected.allocation[hw]} for name, (hw, _) in POOLS.items()}

    with urllib.request.urlopen(cluster.urls[1] + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    for name in POOLS:  # the other replica publishes the lease holder's damped figures
        desired = seen[1]["desired"][name]["unified"]
        assert f'ricardo_desired_replicas{{pool="{name}",role="unified"}} {float(desired)}' in metrics
