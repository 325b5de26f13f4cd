"""`ricardo serve --workers 2`: two processes share the port, requests spread across them, `/metrics` counts
all of them whichever worker answers the scrape (a worker killed is replaced, and its counts stay), and SIGTERM
to the parent stops every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from ricardo.gateway.workers import STARTUP_GRACE_S

from tests.integration.harness import Cluster, metric, ricardo_command, wait_for
from tests.redis_server import available

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

TOKEN = "test-admin-token-0123456789"
REQUESTS = 12
WORKERS = {"gw0-w0", "gw0-w1"}  # their replica ids


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def replica_on_a_new_connection(url: str) -> str:
    with urllib.request.urlopen(url + "/readyz", timeout=10) as response:  # urllib: one connection per call
        return json.loads(response.read())["replica"]


def test_two_workers_share_the_port_and_their_metrics(redis, tmp_path):
    cluster = Cluster({"a10g": ("A10G", 1)}, tmp_path, speed=8.0, redis_url=redis.url, admin_token=TOKEN, workers=2)
    cluster.start()
    try:
        parent = cluster.gateways[0].proc
        started = time.monotonic()
        assert wait_for(lambda: "(2 workers)" in cluster.gateways[0].output(), 60), cluster.logs()
        workers = children(parent.pid)
        assert len(workers) == 2, cluster.logs()
        seen = {replica_on_a_new_connection(cluster.url) for _ in range(30)}
        assert seen == WORKERS, "the kernel spreads new connections over both workers"
        for _ in range(REQUESTS):
            with openai.OpenAI(base_url=cluster.url + "/v1", api_key="none", max_retries=0) as client:  # new conn.
                answer = client.chat.completions.create(
                    model="llama2-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                assert answer.usage is not None and answer.usage.completion_tokens > 0
        # every scrape (on a new connection, so by either worker) counts the requests both workers answered
        for _ in range(6):
            assert metric(cluster.url, "ricardo_requests_total", status="200") == REQUESTS
        assert metric(cluster.url, "ricardo_pool_price_per_hour", pool="a10g") == pytest.approx(1.01)
        # a worker that dies after its start is replaced; what it counted still counts
        time.sleep(max(0.0, STARTUP_GRACE_S + 0.5 - (time.monotonic() - started)))
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: len(children(parent.pid) - {victim}) == 2, 30)
        assert replaced, cluster.logs()
        workers = children(parent.pid)
        both = wait_for(lambda: {replica_on_a_new_connection(cluster.url) for _ in range(20)} == WORKERS, 60)
        assert both, cluster.logs()
        for _ in range(4):
            assert metric(cluster.url, "ricardo_requests_total", status="200") == REQUESTS
        parent.terminate()
        assert parent.wait(timeout=30) == 0, cluster.logs()
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived its parent"
    finally:
        cluster.stop()


def test_several_workers_need_the_shared_store():
    done = subprocess.run(
        ricardo_command("serve", "--workers", "2", "--port", "0"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--redis-url" in done.stderr


def test_workers_that_cannot_start_stop_their_parent(tmp_path):
    config = tmp_path / "gateway.yaml"
    pools = [{"name": "x", "hardware": "TPU-v9", "backends": ["http://127.0.0.1:9"]}]  # no such profile
    config.write_text(json.dumps({"host": "127.0.0.1", "models": ["llama2-7b"], "pools": pools}))
    done = subprocess.run(
        ricardo_command("serve", "--config", str(config), "--workers", "2", "--redis-url", "redis://127.0.0.1:9/0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "at start; stopping" in done.stderr and "TPU-v9" in done.stderr
    assert "listening" not in done.stdout
