"""The gateway's logs, read from a real `ricardo serve --log-format json` process: every line a JSON object, one
access line per request with who served it at what cost (and never the prompt), each config version logged once."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest

from tests.integration.harness import Cluster

SECRET = "zebra-cantaloupe-4471"  # a prompt word that must never reach the logs
POOLS = {"l4": ("L4", 1)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(POOLS, tmp_path_factory.mktemp("logs"), speed=8.0, serve_args=("--log-format", "json"))
    cluster.start()
    yield cluster
    cluster.stop()


def records(cluster: Cluster) -> list[dict]:
    """The gateway's log records. Lines that are not logs (the listening banner, the generated admin token)
    are plain prints; every line that is a log record must parse as one JSON object."""
    lines = cluster.gateways[0].output().splitlines()
    logs = [line for line in lines if line.startswith("{")]
    assert logs, "no JSON log line at all"
    return [json.loads(line) for line in logs]


def access_lines(cluster: Cluster, request_id: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(cluster) if r["logger"] == "ricardo.access" and r.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_every_log_record_is_one_json_object_with_the_common_fields(cluster):
    for record in records(cluster):
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert record["ts"].endswith("+00:00")  # ISO 8601, UTC


@pytest.mark.parametrize("stream", [False, True])
def test_one_access_line_per_request_with_pool_tokens_cost_and_no_prompt(cluster, stream):
    client = cluster.openai_client()
    request_id = f"access-{stream}"
    answer = client.chat.completions.with_raw_response.create(
        model="llama2-7b",
        messages=[{"role": "user", "content": f"Remember {SECRET} and say hello."}],
        stream=stream,
        extra_headers={"x-emulator-output-tokens": "12", "x-request-id": request_id},
    )
    parsed = answer.parse()
    if stream:
        list(parsed)
    [line] = access_lines(cluster, request_id)
    assert line["level"] == "INFO"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/chat/completions", 200)
    assert line["model"] == "llama2-7b"
    assert line["pool"] == answer.headers["x-ricardo-pool"] == "l4"
    assert line["backend"] == f"http://127.0.0.1:{cluster.pool_ports['l4'][0]}"
    assert line["input_tokens"] > 5 and line["output_tokens"] == 12
    if stream:
        assert 0 < line["ttft_ms"] <= line["latency_ms"]
    else:  # a whole answer has no first token of its own
        assert line["ttft_ms"] is None and line["latency_ms"] > 0
    assert line["cost_usd"] > 0
    assert SECRET not in cluster.gateways[0].output()


def test_a_refused_request_has_its_access_line_too(cluster):
    client = cluster.openai_client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": SECRET}],
            extra_headers={"x-request-id": "access-404"},
        )
    [line] = access_lines(cluster, "access-404")
    assert line["status"] == 404 and line.get("pool") is None
    assert SECRET not in cluster.gateways[0].output()


def test_each_config_version_is_logged_once(cluster):
    request = urllib.request.Request(
        cluster.url + "/admin/pools/l4/price",
        data=json.dumps({"price_per_hour": 0.9}).encode(),
        method="PUT",
        headers={**cluster.admin_headers(), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        version = json.load(response)["version"]
    assert version == 2
    in_force = [r["msg"] for r in records(cluster) if r["msg"].startswith("config version")]
    assert [m.split()[2] for m in in_force] == ["1", "2"], in_force


def test_the_prompt_is_logged_only_where_the_config_asks_for_it(tmp_path):
    asked = Cluster(POOLS, tmp_path, speed=8.0, serve_args=("--log-format", "json"), log_prompts=True)
    asked.start()
    try:
        client = openai.OpenAI(base_url=asked.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        client.chat.completions.create(
            model="llama2-7b",
            messages=[{"role": "user", "content": f"Remember {SECRET}\nand say hello."}],
            extra_headers={"x-emulator-output-tokens": "3", "x-request-id": "access-prompt"},
        )
        [line] = access_lines(asked, "access-prompt")
        assert SECRET in json.loads(line["prompt"]) and "\n" not in line["prompt"]  # quoted: one line
    finally:
        asked.stop()
