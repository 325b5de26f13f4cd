"""Reading a backend's own load from its Prometheus page: vLLM's, llama.cpp's and SGLang's names."""

from __future__ import annotations

from ricardo.gateway.telemetry import parse

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3.0
vllm:num_requests_running{model_name="b"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="a"} 0.25
"""
LLAMA_CPP = """# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 42
"""
SGLANG = """# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 4.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 1.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.5
"""


def test_each_engines_names_are_read_and_summed_over_models():
    vllm = parse(VLLM, 10.0)
    assert vllm is not None and (vllm.running, vllm.waiting, vllm.kv_cache_usage) == (5.0, 7.0, 0.25)
    llama = parse(LLAMA_CPP, 10.0)
    assert llama is not None and (llama.running, llama.waiting, llama.kv_cache_usage) == (1.0, 0.0, None)
    sglang = parse(SGLANG, 10.0)
    assert sglang is not None and (sglang.running, sglang.waiting, sglang.kv_cache_usage) == (4.0, 1.0, 0.5)
    assert vllm.as_json(12.5)["age_s"] == 2.5


def test_a_page_without_known_names_says_nothing():
    assert parse("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n", 0.0) is None
    assert parse("", 0.0) is None
