"""Disaggregated prefill/decode pairs through the real gateway: emulated prefill and decode workers (each its own
process where a test kills one), the official openai client, streaming and not.

The policy is `least-outstanding`, which needs no profile of the pair (cost-aware's pair ranking is the policies'
business); the pair is the only pool, except where a test wants a unified pool to fall back to.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from ricardo.defaults import default_slo_ms
from ricardo.emulator.kvtransfer import transfer_seconds
from ricardo.emulator.text import TokenCounter, token_text
from ricardo.policies.routing import pair_request_cost_usd
from ricardo.policies.types import SLO, PairSpec
from ricardo.profiles.catalog import load_default_book
from ricardo.profiles.engine_params import LLAMA2_7B

from tests.integration.harness import Cluster, metric, wait_for

LINK_GBPS = 10.0  # slow enough that the KV transfer shows in the time to first token
PROMPT = "Summarise the following notes for the team. " + "The quarterly figures rose again. " * 150
MESSAGES = [{"role": "user", "content": PROMPT}]


def expected_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def prompt_tokens() -> int:
    return TokenCounter("llama3").count_chat([("user", PROMPT)])


def transfer_s() -> float:
    return transfer_seconds(prompt_tokens(), LLAMA2_7B.kv_bytes_per_token, LINK_GBPS)


def client_for(cluster: Cluster) -> openai.OpenAI:
    return cluster.openai_client()


def admin_get(cluster: Cluster, path: str) -> dict:
    request = urllib.request.Request(cluster.url + path, headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pairs = {"h100-a10g": {"prefill": ("H100", 1), "decode": ("A10G", 1), "link_gbps": LINK_GBPS}}
    cluster = Cluster(
        {},
        tmp_path_factory.mktemp("pairs"),
        pairs=pairs,
        policy="least-outstanding",
        tokenizer="llama3",
        scaling={"interval_s": 0.5},
    ).start()
    yield cluster
    cluster.stop()


def test_a_whole_answer_comes_from_the_decode_side_with_usage_counted_once(cluster):
    started = time.monotonic()
    raw = client_for(cluster).chat.completions.with_raw_response.create(
        model="llama2-7b", messages=MESSAGES, extra_headers={"x-emulator-output-tokens": "23"}
    )
    elapsed = time.monotonic() - started
    completion = raw.parse()
    assert raw.headers["x-ricardo-pool"] == "h100-a10g"
    assert raw.headers["x-ricardo-attempts"] == "1"
    assert completion.choices[0].message.content == expected_text(23)  # not the prefill side's one token
    assert completion.usage.prompt_tokens == prompt_tokens()
    assert completion.usage.completion_tokens == 23
    assert elapsed >= transfer_s()  # the decode side waited for the KV cache
    # the gateway counted the prompt once (the prefill side's) and the answer's tokens once (the decode side's)
    assert wait_for(lambda: metric(cluster.url, "ricardo_tokens_total", pool="h100-a10g", type="output") >= 23, 5)
    assert metric(cluster.url, "ricardo_tokens_total", pool="h100-a10g", type="output") == 23
    assert metric(cluster.url, "ricardo_tokens_total", pool="h100-a10g", type="input") == prompt_tokens()
    # its cost: the pair's role model, each side's time at its own type's price, at the default SLO
    book = load_default_book(price_set="melange", include_estimated=True)
    pair = PairSpec("H100", "A10G", book.price("H100"), book.price("A10G"), LINK_GBPS)
    cost = pair_request_cost_usd(book, pair, prompt_tokens(), 23, SLO(*default_slo_ms()))
    assert cost > 0
    assert metric(cluster.url, "ricardo_cost_usd_total", pool="h100-a10g") == pytest.approx(cost)


def test_a_stream_relays_the_decode_side_and_its_first_token_waits_for_the_transfer(cluster):
    client = client_for(cluster)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="llama2-7b",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-emulator-output-tokens": "40"},
    )
    first_token_at = None
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_token_at = first_token_at or time.monotonic()
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == expected_text(40)
    assert usage is not None and usage.completion_tokens == 40 and usage.prompt_tokens == prompt_tokens()
    assert first_token_at is not None and first_token_at - started >= transfer_s()
    # the gateway's own TTFT histogram holds it too: no observation below the transfer time
    buckets_below = [b for b in (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25) if b < transfer_s()]
    for bucket in buckets_below:
        assert metric(cluster.url, "ricardo_time_to_first_token_seconds_bucket", pool="h100-a10g", le=str(bucket)) == 0


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_emulated_sides_speak_vllms_hand_off(cluster):
    """What the gateway relies on, asked of the workers directly: the prefill side's answer names where the KV
    cache waits (NixlConnector's fields), the decode side takes those and nothing less."""
    (prefill_port,), (decode_port,) = (
        cluster.role_ports[("h100-a10g", "prefill")],
        cluster.role_ports[("h100-a10g", "decode")],
    )
    request = {"model": "llama2-7b", "messages": MESSAGES, "max_tokens": 1, "stream": False}
    status, answer = post(
        f"http://127.0.0.1:{prefill_port}/v1/chat/completions",
        request | {"kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}},
    )
    assert status == 200 and answer["usage"]["completion_tokens"] == 1
    params = answer["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert len(params["remote_block_ids"]) == prompt_tokens() // 16  # the full blocks of the prompt
    assert params["remote_port"] == prefill_port and params["remote_host"] == "127.0.0.1"
    assert {"remote_engine_id", "remote_request_id", "tp_size"} <= set(params)

    decode_url = f"http://127.0.0.1:{decode_port}/v1/chat/completions"
    status, answer = post(decode_url, request | {"max_tokens": 5, "kv_transfer_params": params})
    assert status == 200 and answer["choices"][0]["message"]["content"] == expected_text(5)
    assert answer["usage"] == {
        "prompt_tokens": prompt_tokens(),
        "completion_tokens": 5,
        "total_tokens": prompt_tokens() + 5,
    }
    status, answer = post(decode_url, request | {"kv_transfer_params": {"do_remote_prefill": True}})
    assert status == 400 and "remote_engine_id" in answer["error"]["message"]


def test_the_admin_api_shows_the_pair_by_role(cluster):
    pool = admin_get(cluster, "/admin/pools/h100-a10g")
    assert pool["role"] == "pair" and pool["link_gbps"] == LINK_GBPS
    assert pool["roles"]["prefill"]["hardware"] == "H100" and pool["roles"]["decode"]["hardware"] == "A10G"
    prices = pool["roles"]["prefill"]["price_per_hour"], pool["roles"]["decode"]["price_per_hour"]
    assert pool["price_per_hour"] == pytest.approx(sum(prices)) and prices[0] > prices[1]
    assert sorted(b["role"] for b in pool["backends"]) == ["decode", "prefill"]


def test_scaling_hints_size_each_role_of_the_pair(cluster):
    """The pair's roles are the planner's counts for the requests it has served (a light load: one of each side)."""
    client_for(cluster).chat.completions.create(
        model="llama2-7b", messages=MESSAGES, extra_headers={"x-emulator-output-tokens": "60"}
    )

    def planned() -> dict | None:
        hints = admin_get(cluster, "/admin/scaling")
        return hints if hints.get("inputs", {}).get("models", {}).get("llama2-7b", {}).get("requests") else None

    hints = wait_for(planned, 10, interval=0.2)
    assert hints is not None, "no hints with the pair's requests"
    assert hints["desired"]["h100-a10g"] == {"prefill": 1, "decode": 1}
    (chosen,) = hints["planner"]["llama2-7b"]["pairs"]
    assert (chosen["prefill"], chosen["decode"], chosen["prefill_replicas"], chosen["decode_replicas"]) == (
        "H100",
        "A10G",
        1,
        1,
    )
    described = hints["inputs"]["pools"]["h100-a10g"]
    assert described["roles"]["prefill"]["hardware"] == "H100" and described["link_gbps"] == LINK_GBPS
    for role in ("prefill", "decode"):
        assert metric(cluster.url, "ricardo_desired_replicas", pool="h100-a10g", role=role) == 1
    assert metric(cluster.url, "ricardo_desired_replicas", pool="h100-a10g", role="unified") == 0


# -- decode workers killed ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    """A pair with three decode workers, each its own process, whose KV transfers are slow (a request is in flight
    long enough to kill the worker it is on), and a dear unified pool behind it: `cheapest-price` ranks the pair
    first and the unified pool second. The tests below kill one decode worker each, in file order."""
    pairs = {
        "h100-a10g": {
            "prefill": ("H100", 1),
            "decode": ("A10G", 3),
            "link_gbps": 4.0,  # the transfer of PROMPT takes about 1 s: time to kill a worker before its first byte
            "own_process": ["decode"],
        }
    }
    cluster = Cluster(
        {"a100": ("A100-80GB", 1)},
        tmp_path_factory.mktemp("killable"),
        pairs=pairs,
        pool_settings={"a100": {"price_per_hour": 100.0}},
        policy="cheapest-price",
        tokenizer="llama3",
    ).start()
    yield cluster
    cluster.stop()


def decode_ports(cluster: Cluster) -> list[int]:
    return [p for p in cluster.role_ports[("h100-a10g", "decode")] if cluster.backend_processes[p].proc.poll() is None]


def busy_decode_port(cluster: Cluster) -> int | None:
    """The port of the decode worker with a request in flight, as the admin API says."""
    pool = admin_get(cluster, "/admin/pools/h100-a10g")
    busy = [b["url"] for b in pool["backends"] if b["role"] == "decode" and b["in_flight"] > 0]
    return int(busy[0].rsplit(":", 1)[1]) if busy else None


def kill(cluster: Cluster, port: int) -> None:
    process = cluster.backend_processes[port].proc
    process.kill()  # SIGKILL: a crash, not a graceful stop
    process.wait(timeout=5)


def kill_while_in_flight(cluster: Cluster, call) -> dict:
    """Run `call` in a thread, kill the decode worker its request reaches, and return what `call` returned."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = call()
        except openai.APIError as exc:  # pragma: no cover - what the tests say must not happen
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    port = wait_for(lambda: busy_decode_port(cluster), 10, interval=0.02)
    assert port is not None, "no decode worker took the request"
    kill(cluster, port)  # while it pulls the KV cache: nothing has reached the client yet
    thread.join(30)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    return result["value"]


def test_a_decode_worker_killed_mid_stream_ends_the_stream_with_an_error_not_a_hang(killable):
    assert len(decode_ports(killable)) == 3
    stream = client_for(killable).chat.completions.create(
        model="llama2-7b",
        messages=[{"role": "user", "content": "Hello"}],  # a short prompt: the transfer is quick
        stream=True,
        extra_headers={"x-emulator-output-tokens": "2000"},  # about a minute of decoding on an A10G
    )
    received = ""
    started = time.monotonic()
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not received:
                    port = busy_decode_port(killable)
                    assert port is not None
                    kill(killable, port)
                received += chunk.choices[0].delta.content
    assert received  # the client had the first tokens, then a clean error
    assert time.monotonic() - started < 20  # the error came at once, not after a timeout
    errors = {"pool": "h100-a10g", "kind": "decode_broken"}  # the decode side's stream broke off
    assert wait_for(lambda: metric(killable.url, "ricardo_upstream_errors_total", **errors) == 1, 5)


def test_a_decode_worker_killed_before_the_first_byte_is_retried_on_the_pair(killable):
    assert len(decode_ports(killable)) == 2
    client = client_for(killable)

    def call() -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="llama2-7b", messages=MESSAGES, stream=True, extra_headers={"x-emulator-output-tokens": "12"}
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return raw.headers["x-ricardo-pool"], text

    pool, text = kill_while_in_flight(killable, call)
    assert (pool, text) == ("h100-a10g", expected_text(12))  # the pair's third decode worker answered
    # the decode side's connection broke before the first byte: a fallback, counted against that side ("broken", or
    # "connect" when the POST sent once more on a fresh connection is refused; the worker the previous test killed
    # may be tried first too), none against the prefill side
    fallbacks = {
        reason: metric(killable.url, "ricardo_fallbacks_total", pool="h100-a10g", reason=reason)
        for reason in ("decode_broken", "decode_connect", "prefill_broken", "prefill_connect")
    }
    decode, prefill = fallbacks["decode_broken"] + fallbacks["decode_connect"], fallbacks["prefill_broken"]
    assert decode >= 1 and prefill + fallbacks["prefill_connect"] == 0, fallbacks


def test_the_last_decode_worker_killed_before_the_first_byte_falls_back_to_a_unified_pool(killable):
    assert len(decode_ports(killable)) == 1
    client = client_for(killable)

    def call() -> tuple[str, str, str | None]:
        raw = client.chat.completions.with_raw_response.create(
            model="llama2-7b", messages=MESSAGES, extra_headers={"x-emulator-output-tokens": "9"}
        )
        return raw.headers["x-ricardo-pool"], raw.headers["x-ricardo-attempts"], raw.parse().choices[0].message.content

    pool, attempts, text = kill_while_in_flight(killable, call)
    assert (pool, attempts, text) == ("a100", "2", expected_text(9))


# -- a pair that fails falls back to another pair ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_pairs(tmp_path_factory):
    """Two pairs and no unified pool: `cheapest-price` ranks `first` (an A10G decode side) before `second` (an A100
    one). Every decode answer of `first` is an HTTP 500 (`error-rate=1`), but its one-token health probes pass
    (`min-tokens=2`), so the pair stays in service and is tried first."""
    pairs = {
        "first": {
            "prefill": ("H100", 1),
            "decode": ("A10G", 1),
            "link_gbps": LINK_GBPS,
            "faults": {"decode": "error-rate=1,min-tokens=2"},
        },
        "second": {"prefill": ("H100", 1), "decode": ("A100-80GB", 1), "link_gbps": LINK_GBPS},
    }
    cluster = Cluster(
        {}, tmp_path_factory.mktemp("two-pairs"), pairs=pairs, policy="cheapest-price", tokenizer="llama3"
    ).start()
    yield cluster
    cluster.stop()


def fallback_reasons(url: str, pool: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ricardo_fallbacks_total" and sample.labels.get("pool") == pool and sample.value
    }


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_pair_fails_falls_back_to_another_pair(two_pairs, stream):
    pools = {p["name"]: p for p in admin_get(two_pairs, "/admin/pools")["pools"]}
    assert pools["first"]["price_per_hour"] < pools["second"]["price_per_hour"]  # `first` is ranked first
    before = sum(fallback_reasons(two_pairs.url, "first").values())
    raw = client_for(two_pairs).chat.completions.with_raw_response.create(
        model="llama2-7b", messages=MESSAGES, stream=stream, extra_headers={"x-emulator-output-tokens": "9"}
    )
    answer = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices) if stream else None
    assert (raw.headers["x-ricardo-pool"], raw.headers["x-ricardo-attempts"]) == ("second", "2")
    assert (text if stream else answer.choices[0].message.content) == expected_text(9)
    reasons = fallback_reasons(two_pairs.url, "first")
    assert sum(reasons.values()) == before + 1 and all(r.startswith("decode_") for r in reasons), reasons
    assert fallback_reasons(two_pairs.url, "second") == {}
