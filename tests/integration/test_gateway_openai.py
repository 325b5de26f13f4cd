"""The gateway, in front of emulated backends, driven by the official openai client."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from ricardo.emulator.text import token_text

from tests.integration.harness import Cluster

POOLS = {"a10g": ("A10G", 1), "a100": ("A100-80GB", 1)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(POOLS, tmp_path_factory.mktemp("gw"), speed=4.0, tokenizer="llama3").start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.openai_client()


def expected_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def test_non_streaming_chat_has_content_usage_and_pool(client):
    raw = client.chat.completions.with_raw_response.create(
        model="llama2-7b",
        messages=[{"role": "user", "content": "Say hello in five words."}],
        extra_headers={"x-emulator-output-tokens": "17", "x-request-id": "req-nonstream-1"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == expected_text(17)
    assert completion.usage.completion_tokens == 17
    assert completion.usage.prompt_tokens > 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 17
    assert raw.headers["x-ricardo-pool"] in POOLS
    assert raw.headers["x-request-id"] == "req-nonstream-1"
    # the estimate the pool was chosen on in a header; the actual cost of the tokens used in the usage
    expected = float(raw.headers["x-ricardo-expected-cost-usd"])
    assert expected > 0 and completion.usage.ricardo_expected_cost_usd == pytest.approx(expected, rel=1e-5)
    assert completion.usage.ricardo_cost_usd > 0


def test_streaming_chat_relays_chunks_and_usage(client):
    raw = client.chat.completions.with_raw_response.create(
        model="llama2-7b",
        messages=[{"role": "user", "content": "Tell me a story. " * 20}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-emulator-output-tokens": "40"},
    )
    assert raw.headers["x-ricardo-pool"] in POOLS
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(40)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 5, "tokens should arrive over several chunks, not all at once"
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 40
    assert chunks[-1].choices == []  # the usage chunk comes last
    assert usage[0].ricardo_cost_usd > 0 and usage[0].ricardo_expected_cost_usd > 0


def test_streaming_without_usage_request_gets_usage_on_the_finish_chunk(client):
    stream = client.chat.completions.create(
        model="llama2-7b",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-emulator-output-tokens": "5"},
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks), "a client that did not ask for usage must not get the usage chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(5)
    # its usage and cost ride on the last chunk, the one with the finish_reason
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.ricardo_cost_usd > 0


def test_completions_endpoint_and_max_tokens_cap(client):
    completion = client.completions.create(
        model="llama2-7b", prompt="Once upon a time", max_tokens=8, extra_headers={"x-emulator-output-tokens": "30"}
    )
    assert completion.choices[0].text == expected_text(8)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 8


def test_models_lists_the_configured_models(client):
    assert [m.id for m in client.models.list()] == ["llama2-7b"]


def test_usage_is_accounted_even_when_the_client_did_not_ask(cluster, client):
    before = _metric(cluster, "ricardo_outcomes_total")
    list(
        client.chat.completions.create(
            model="llama2-7b",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_headers={"x-emulator-output-tokens": "3"},
        )
    )
    deadline = time.monotonic() + 5  # the gateway accounts once the stream is closed, just after the client's [DONE]
    while _metric(cluster, "ricardo_outcomes_total") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _metric(cluster, "ricardo_outcomes_total") == before + 1


def _metric(cluster: Cluster, name: str) -> float:
    with urllib.request.urlopen(cluster.url + "/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "llama2-7b"}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (
            json.dumps(
                {"model": "llama2-7b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}
            ).encode(),
            400,
            "max_tokens",
        ),
        (json.dumps({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "model"),
    ],
)
def test_bad_input_gets_openai_shaped_errors(cluster, body, status, param):
    code, error = _post(cluster.url + "/v1/chat/completions", body)
    assert code == status
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert "Traceback" not in error["message"]


def _chat(messages: list, **fields) -> bytes:
    return json.dumps({"model": "llama2-7b", "messages": messages, **fields}).encode()


@pytest.mark.parametrize(
    "body",
    [
        _chat([{"role": "user", "content": "a lone surrogate \ud800 is valid JSON"}], max_tokens=4),  # not UTF-8
        _chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": 5},
                        {"type": "text", "text": None},
                        {"type": "text", "text": "odd parts"},
                    ],
                }
            ],
            max_tokens=4,
        ),
        _chat(
            [{"role": "assistant", "content": "x", "tool_calls": 5}, {"role": "user", "content": "hi"}], max_tokens=4
        ),
    ],
    ids=["surrogate", "non-text parts", "tool_calls not a list"],
)
def test_odd_but_valid_bodies_are_answered(cluster, body):
    code, answer = _post(cluster.url + "/v1/chat/completions", body)
    assert code == 200, answer
    assert answer["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("cap", ["3", 3.0])
def test_a_cap_spelt_otherwise_still_caps_the_prediction(cluster, cap):
    body = _chat(
        [{"role": "user", "content": "Write a long essay about the history of the sea, in detail."}], max_tokens=cap
    )
    request = urllib.request.Request(
        cluster.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        assert int(response.headers["x-ricardo-predicted-output-tokens"]) <= 3
        assert json.loads(response.read())["usage"]["completion_tokens"] <= 3


def test_a_huge_prompt_is_counted_off_the_event_loop(cluster):
    # ~3 MB of base64 is one long "word" to the tokenizer: ~0.3 s to count exactly; meanwhile the gateway answers
    prompt = base64.b64encode(os.urandom(2_300_000)).decode()
    body = _chat([{"role": "user", "content": prompt}], max_tokens=1)
    status = []
    sender = threading.Thread(target=lambda: status.append(_post(cluster.url + "/v1/chat/completions", body)[0]))
    sender.start()
    waits = []
    while sender.is_alive():
        started = time.monotonic()
        urllib.request.urlopen(cluster.url + "/healthz", timeout=5).read()
        waits.append(time.monotonic() - started)
    assert status == [400]  # the emulated backend refuses a prompt past the model's context, as vLLM does
    assert len(waits) >= 5 and max(waits) < 0.15, waits


def test_a_cap_past_any_float_is_past_the_context_too(cluster):
    code, error = _post(
        cluster.url + "/v1/chat/completions", _chat([{"role": "user", "content": "x"}], max_tokens=10**400)
    )
    assert code == 400 and error["code"] == "context_length_exceeded"  # as vLLM answers max_tokens > its window


def test_a_request_no_model_can_hold_is_refused_before_routing(client, cluster):
    """Prompt plus the answer asked for beyond the model's context window: OpenAI's 400, from the gateway itself."""
    prompt = expected_text(16_200)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="llama2-7b", messages=[{"role": "user", "content": prompt}], max_tokens=500
        )
    error = caught.value
    assert error.code == "context_length_exceeded" and "16384" in error.message
    assert "x-ricardo-pool" not in error.response.headers  # refused before routing, no backend was asked
    fits = client.chat.completions.create(
        model="llama2-7b", messages=[{"role": "user", "content": prompt}], max_tokens=20
    )
    assert fits.usage is not None and fits.usage.prompt_tokens > 16_000


def test_oversized_body_is_413(cluster):
    body = json.dumps({"model": "llama2-7b", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    code, error = _post(cluster.url + "/v1/chat/completions", body.encode())
    assert code == 413 and error["message"]


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="llama2-7b", messages=[])


def test_health_readiness_and_metrics(cluster):
    with urllib.request.urlopen(cluster.url + "/healthz") as response:
        assert response.status == 200
    with urllib.request.urlopen(cluster.url + "/readyz") as response:
        ready = json.loads(response.read())
    assert ready["ready"] and set(ready["pools"]) == set(POOLS)
    with urllib.request.urlopen(cluster.url + "/metrics") as response:
        text = response.read().decode()
    assert "ricardo_requests_total" in text and "ricardo_time_to_first_token_seconds_bucket" in text


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]
