"""What OpenAI-compatible tools expect of the gateway and of the emulator behind it: `/health`, `n` > 1, lists of
prompts, token-id prompts, `created`, and the fields of a chat message."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import openai
import pytest
from ricardo.emulator.text import token_text

from tests.integration.harness import Cluster, metric, wait_for

POOLS = {"a100": ("A100-80GB", 1), "embed": ("L4", 1)}  # the A100's profile serves long inputs
MODEL = "llama2-7b"
EMBEDDER = "embed-small"
EMBED_USD_PER_MILLION = 0.02
ADMIN_TOKEN = "compat-admin-token-0123456789"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("compat"),
        speed=20.0,
        tokenizer="llama3",
        models=[MODEL, EMBEDDER],
        embedding_models={EMBEDDER: EMBED_USD_PER_MILLION},
        pool_settings={"a100": {"models": [MODEL]}, "embed": {"models": [EMBEDDER]}},
        admin_token=ADMIN_TOKEN,
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.openai_client()


def tokens(n: int) -> dict[str, dict[str, str]]:
    return {"extra_headers": {"x-emulator-output-tokens": str(n)}}


def test_health_answers_where_vllm_tools_look(cluster):
    with urllib.request.urlopen(cluster.url + "/health", timeout=5) as response:
        assert response.status == 200


def test_n_choices_are_generated_and_all_counted(cluster, client):
    cost_before = metric(cluster.url, "ricardo_cost_usd_total")
    output_before = metric(cluster.url, "ricardo_tokens_total", type="output")
    started = int(time.time())
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], n=3, **tokens(5)
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.content == "".join(token_text(i) for i in range(5)) for c in answer.choices)
    assert answer.usage.completion_tokens == 15
    assert started <= answer.created <= int(time.time())  # the answer's time, not the server's start
    assert metric(cluster.url, "ricardo_tokens_total", type="output") == output_before + 15
    assert metric(cluster.url, "ricardo_cost_usd_total") > cost_before


def test_a_chat_message_carries_refusal_as_vllm_does(cluster):
    body = b'{"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    request = urllib.request.Request(
        cluster.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        message = json.loads(response.read())["choices"][0]["message"]
    assert message["role"] == "assistant" and "refusal" in message and message["refusal"] is None


def test_n_choices_stream_with_their_own_indexes(client):
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", n=2, stream=True, stream_options={"include_usage": True}, **tokens(4)
    )
    texts: dict[int, str] = {}
    finished, usage = set(), None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
        usage = chunk.usage or usage
    assert finished == {0, 1}
    assert texts == {0: "".join(token_text(i) for i in range(4)), 1: "".join(token_text(i) for i in range(4))}
    assert usage is not None and usage.completion_tokens == 8


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_n_choices_stream_until_every_one_has_finished_usage_on_the_last(cluster, client, endpoint):
    """Without include_usage: both choices' whole texts and finishes reach the client, and the usage (with its
    cost) rides on the last chunk to finish; the stream counts as a clean answer of its backend."""
    errors_before = metric(cluster.url, "ricardo_upstream_errors_total")
    if endpoint == "chat":
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count."}], n=2, stream=True, **tokens(6)
        )
    else:
        stream = client.completions.create(model=MODEL, prompt="Count.", n=2, stream=True, **tokens(6))
    texts: dict[int, str] = {0: "", 1: ""}
    finished: list[int] = []
    usage, usage_came_after = None, []
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += (choice.delta.content or "") if endpoint == "chat" else choice.text
            if choice.finish_reason:
                finished.append(choice.index)
        if chunk.usage is not None:
            usage, usage_came_after = chunk.usage, list(finished)
    assert sorted(finished) == [0, 1], "each choice finishes once"
    assert texts == {i: "".join(token_text(k) for k in range(6)) for i in (0, 1)}
    assert usage is not None and usage.completion_tokens == 12 and usage_came_after == finished
    assert usage.model_extra["ricardo_cost_usd"] > 0
    assert metric(cluster.url, "ricardo_upstream_errors_total") == errors_before


def test_a_list_of_prompts_gets_n_choices_per_prompt(client):
    one = client.completions.create(model=MODEL, prompt="alpha", max_tokens=3)
    answer = client.completions.create(model=MODEL, prompt=["alpha", "beta gamma"], n=2, max_tokens=3)
    assert sorted(c.index for c in answer.choices) == [0, 1, 2, 3]
    two = client.completions.create(model=MODEL, prompt="beta gamma", max_tokens=3)
    assert answer.usage.prompt_tokens == one.usage.prompt_tokens + two.usage.prompt_tokens  # each prompt once
    assert answer.usage.completion_tokens == 4 * 3


@pytest.mark.parametrize(("prompt", "prompt_tokens", "choices"), [([1, 2, 3], 3, 1), ([[1, 2], [3, 4, 5]], 5, 2)])
def test_token_id_prompts_pass_through_and_are_counted(client, prompt, prompt_tokens, choices):
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert answer.usage.prompt_tokens == prompt_tokens
    assert len(answer.choices) == choices


def test_token_ids_are_counted_against_the_context_before_routing(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt=[7] * 17_000, max_tokens=2)
    assert refused.value.code == "context_length_exceeded" and "17000 in the messages" in refused.value.message
    # two prompts of 9,000 tokens: each fits the 16,384-token window on its own, which is what the backend needs
    answer = client.completions.create(model=MODEL, prompt=[[7] * 9000] * 2, max_tokens=2)
    assert answer.usage.prompt_tokens == 18_000 and len(answer.choices) == 2


@pytest.mark.parametrize("prompt", [[], [[]], ["a", 1], [-1], [[1], "a"]])
def test_malformed_prompts_are_refused_with_a_word(client, prompt):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert "token ids" in refused.value.message


def test_embeddings_pass_through_to_the_embedding_pool_priced_by_input_tokens(cluster, client):
    cost_before = metric(cluster.url, "ricardo_cost_usd_total", pool="embed")
    raw = client.embeddings.with_raw_response.create(model=EMBEDDER, input=["hello there", "general kenobi"])
    answer = raw.parse()
    assert raw.headers["x-ricardo-pool"] == "embed"
    assert [d.index for d in answer.data] == [0, 1] and all(len(d.embedding) == 8 for d in answer.data)
    assert answer.data[0].embedding != answer.data[1].embedding
    cost = answer.usage.prompt_tokens * EMBED_USD_PER_MILLION / 1e6
    # the cost travels as a completion's does, in the usage; no header (a stream's leave before the cost is known)
    assert answer.usage.prompt_tokens > 4 and answer.usage.model_extra["ricardo_cost_usd"] == pytest.approx(cost)
    assert "x-ricardo-cost-usd" not in raw.headers
    assert metric(cluster.url, "ricardo_cost_usd_total", pool="embed") == pytest.approx(cost_before + cost)
    assert client.embeddings.create(model=EMBEDDER, input=[1, 2, 3, 4]).usage.prompt_tokens == 4


def test_embeddings_of_a_model_that_does_not_embed_are_refused(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="hello")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")


def telemetry(cluster: Cluster, pool: str) -> dict | None:
    request = urllib.request.Request(cluster.url + f"/admin/pools/{pool}", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["backends"][0]["telemetry"]


def test_backends_own_metrics_are_scraped_into_the_pool_view(cluster, client):
    seen = wait_for(lambda: telemetry(cluster, "a100"), timeout=5)
    assert seen is not None and seen["waiting"] >= 0 and 0 <= seen["kv_cache_usage"] <= 1  # other tests may run
    # a long answer in flight: the backend's own count of running requests shows it within a health interval
    long = threading.Thread(
        target=lambda: client.completions.create(model=MODEL, prompt="go on", max_tokens=3000, **tokens(3000))
    )
    long.start()
    try:
        busy = wait_for(lambda: (telemetry(cluster, "a100") or {}).get("running", 0) >= 1, timeout=5)
        assert busy
        assert wait_for(lambda: metric(cluster.url, "ricardo_backend_running", pool="a100") >= 1, timeout=2)
    finally:
        long.join(timeout=60)
