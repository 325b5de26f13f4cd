"""Two models on two pools of the same hardware: each request goes to its model's pool and is billed on its
model's profile book (Llama-2-7B measured, Llama-3.1-8B estimated by the engine model), so the same tokens on the
same GPU at the same price cost what each book says, not the same."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest
from ricardo.policies.routing import request_cost_usd
from ricardo.policies.sizing import plan_sizes
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book

from tests.integration.harness import Cluster, wait_for

POOLS = {"old": ("A10G", 1), "new": ("A10G", 1)}
MODELS = ["llama2-7b", "llama3.1-8b"]
POOL_OF = {"llama2-7b": "old", "llama3.1-8b": "new"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("models"),
        speed=8.0,
        faults={"old": [""], "new": [""]},  # no faults, but a process each: `ricardo emulate --gpu A10G --model NAME`
        models=MODELS,
        pool_settings={"old": {"model": "llama2-7b"}, "new": {"model": "llama3.1-8b"}},
        scaling={"interval_s": 0.5},
    ).start()
    yield cluster
    cluster.stop()


def test_each_model_goes_to_its_pool_and_is_billed_on_its_book(cluster):
    client = cluster.openai_client(api_key="none")
    assert sorted(m.id for m in client.models.list().data) == MODELS
    costs = {}
    for model in MODELS:
        for stream in (False, True):
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "user", "content": "Tell me about comparative advantage. " * 40}],
                stream=stream,
                stream_options={"include_usage": True} if stream else openai.NOT_GIVEN,
                extra_headers={"x-emulator-output-tokens": "200"},
            )
            assert raw.headers["x-ricardo-pool"] == POOL_OF[model], (model, stream)
            answer = raw.parse()
            usage = list(answer)[-1].usage if stream else answer.usage
            assert usage.completion_tokens == 200
            book = load_default_book(model, include_estimated=True)
            expected = request_cost_usd(book, "A10G", book.price("A10G"), usage.prompt_tokens, 200)
            assert usage.ricardo_cost_usd == pytest.approx(expected, rel=1e-9), (model, stream)
            costs[model] = usage.ricardo_cost_usd
    # the 8B model's KV cache is a quarter of the 7B's (GQA): an A10G holds more of its requests at once, so the same
    # tokens use less of a replica, though its weights are larger
    assert costs["llama3.1-8b"] < 0.8 * costs["llama2-7b"], costs


def admin_get(cluster: Cluster, path: str) -> dict:
    request = urllib.request.Request(cluster.url + path, headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_admin_api_shows_each_pools_model_and_book(cluster):
    pools = {p["name"]: p for p in admin_get(cluster, "/admin/pools")["pools"]}
    assert {name: (p["model"], p["models"], p["profile"]) for name, p in pools.items()} == {
        "old": ("llama2-7b", ["llama2-7b"], "measured"),
        "new": ("llama3.1-8b", ["llama3.1-8b"], "estimated"),
    }


def test_scaling_hints_plan_each_models_pool_on_its_book_with_its_requests(cluster):
    """After the first test's two requests of each model: each model's window holds its own two, and its pool is
    planned on its own book (the planner's fleet for those sizes at that model's rate)."""

    def both_seen() -> dict | None:
        hints = admin_get(cluster, "/admin/scaling")
        models = hints.get("inputs", {}).get("models", {})
        return hints if all(models.get(m, {}).get("requests") == 2 for m in MODELS) else None

    hints = wait_for(both_seen, 10, interval=0.2)
    assert hints is not None, json.dumps(admin_get(cluster, "/admin/scaling")["inputs"]["models"])[:3000]
    prompt = "Tell me about comparative advantage. " * 40
    for model in MODELS:
        seen, planner = hints["inputs"]["models"][model], hints["planner"][model]
        assert seen["book"] == model and seen["pools"] == [POOL_OF[model]] and seen["sample_size"] == 2
        book = load_default_book(model, include_estimated=True)
        usage = cluster.openai_client(api_key="none")
        answer = usage.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=1,
            extra_headers={"x-emulator-output-tokens": "1"},
        )
        size = answer.usage.prompt_tokens, 200  # the first test's requests: this prompt, 200 tokens each
        expected = plan_sizes(
            book, [size[0]], [size[1]], seen["rate"], SLO(2000.0, 120.0), prices=planner["prices"], only=["A10G"]
        )
        assert planner["allocation"] == expected.allocation and expected.allocation["A10G"] > 0, model
        assert hints["raw"][POOL_OF[model]] == {"unified": expected.allocation["A10G"]}


def test_an_unknown_model_is_404(cluster):
    client = cluster.openai_client(api_key="none", timeout=30)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-2", messages=[{"role": "user", "content": "hi"}])
