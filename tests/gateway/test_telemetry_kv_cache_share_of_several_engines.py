"""A backend's /metrics with one label set per engine (vLLM data parallel): its KV-cache share is not a sum."""

from __future__ import annotations

from ricardo.gateway.telemetry import parse
from ricardo.policies.external import KV_SATURATED, BackendReport, external_load

# vLLM with --data-parallel-size 2: one page, one label set per engine, each engine's cache 60% full
VLLM_DATA_PARALLEL = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 4.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.6
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6
"""


def test_a_kv_cache_share_is_not_summed_over_a_servers_engines():
    seen = parse(VLLM_DATA_PARALLEL, 10.0)
    assert seen is not None and seen.running == 8.0  # requests add up over engines
    # a share of a cache is no count: two engines 60% full are not one cache 120% full (saturated)
    assert seen.kv_cache_usage is not None and seen.kv_cache_usage <= 1.0
    assert seen.kv_cache_usage < KV_SATURATED
    # so the backend, running only this gateway's 8 requests, carries no foreign load
    assert (
        external_load([BackendReport(seen.running, seen.waiting, seen.kv_cache_usage, 10.0, 8)], 0.05, 10.0, 15.0)
        == 0.0
    )
