"""The two requests of vLLM's hand-off, as the gateway writes them (gateway/handoff.py)."""

import json

from ricardo.gateway.handoff import decode_body, prefill_body

CLIENT = {
    "model": "llama2-7b",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 300,
    "max_completion_tokens": 300,
    "min_tokens": 20,
    "temperature": 0.3,
}


def test_the_prefill_request_asks_for_one_token_whole_and_the_kv_cache_kept():
    prefill = json.loads(prefill_body(CLIENT))
    assert prefill["max_tokens"] == prefill["max_completion_tokens"] == 1 and prefill["stream"] is False
    assert "stream_options" not in prefill and "min_tokens" not in prefill  # vLLM's proxy drops them too
    assert prefill["kv_transfer_params"]["do_remote_decode"] is True
    assert prefill["kv_transfer_params"]["do_remote_prefill"] is False
    assert prefill["messages"] == CLIENT["messages"] and prefill["temperature"] == 0.3


def test_the_decode_request_is_the_clients_with_the_prefill_sides_params():
    params = {"do_remote_prefill": True, "remote_engine_id": "e1", "remote_block_ids": [1, 2], "remote_port": 5}
    decode = json.loads(decode_body(CLIENT, params))
    assert decode == CLIENT | {"kv_transfer_params": params}  # the original limits, streamed as the client asked
    assert CLIENT.get("kv_transfer_params") is None  # the client's body is left as it was
