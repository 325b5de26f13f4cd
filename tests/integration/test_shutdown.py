"""SIGTERM to a real gateway process: readiness goes first, new requests are refused, in-flight streams finish
up to the drain deadline, and those still running then end with an SSE error event, not a silent cut."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.integration.harness import Cluster, metric, wait_for

UNREADY_WAIT_S = 0.5
DRAIN_S = 3.0


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(
        {"a10g": ("A10G", 1)},
        tmp_path,
        speed=4.0,
        shutdown={"unready_wait_s": UNREADY_WAIT_S, "drain_timeout_s": DRAIN_S},
    ).start()
    yield cluster
    cluster.stop()


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sigterm_drains_then_ends_the_streams_left_with_an_error_event(cluster):
    client = cluster.openai_client(timeout=30)
    results: dict[str, str] = {}
    started = threading.Barrier(7)

    def run(name: str, tokens: int) -> None:
        try:
            stream = client.chat.completions.create(
                model="llama2-7b",
                messages=[{"role": "user", "content": "a story"}],
                stream=True,
                extra_headers={"x-emulator-output-tokens": str(tokens)},
            )
            first = True
            finish = None
            for chunk in stream:
                if first:
                    started.wait(timeout=20)
                    first = False
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            results[name] = f"complete:{finish}" if finish else "cut silently"
        except openai.APIError as exc:
            results[name] = f"error:{exc.message}"

    # three short answers (done well within the deadline), three that outlast it (3,000 tokens: ~15 s here)
    threads = [threading.Thread(target=run, args=(f"short{i}", 150)) for i in range(3)]
    threads += [threading.Thread(target=run, args=(f"long{i}", 3000)) for i in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=20)  # every stream has its first chunk
    gateway = cluster.gateways[0].proc
    signalled = time.monotonic()
    gateway.send_signal(signal.SIGTERM)

    assert wait_for(lambda: readyz(cluster.url) == 503, timeout=0.4), "readiness goes 503 at once"
    time.sleep(UNREADY_WAIT_S + 0.2)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="llama2-7b", messages=[{"role": "user", "content": "late"}])
    assert refused.value.status_code == 503 and "shutting down" in refused.value.message

    for thread in threads:
        thread.join(timeout=DRAIN_S + 5)
    assert gateway.wait(timeout=DRAIN_S + 5) == 0
    elapsed = time.monotonic() - signalled
    assert all(results[f"short{i}"] == "complete:stop" for i in range(3)), results
    assert all(results[f"long{i}"].startswith("error:") and "shutting down" in results[f"long{i}"] for i in range(3)), (
        results
    )
    assert DRAIN_S <= elapsed < DRAIN_S + 3
    # the upstream requests were closed, not left running on the backend
    backend = f"http://127.0.0.1:{cluster.pool_ports['a10g'][0]}"
    assert wait_for(lambda: metric(backend, "vllm:num_requests_running") == 0, timeout=3)
