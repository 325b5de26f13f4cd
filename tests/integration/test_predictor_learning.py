"""The output-length predictor learning online inside a real gateway process, in front of an emulator: the error
falls as outcomes arrive, the refitted model survives a restart, and the true length the load generator hands the
emulator (x-emulator-output-tokens) never reaches the prediction."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from ricardo.predictor.features import features_from_body
from ricardo.predictor.model import FittedModel
from ricardo.predictor.tokens import InputTokenCounter

from tests.integration.harness import REPO, Cluster, Process, ricardo_command
from tests.predictor.synthetic import requests

POOLS = {"a10g": ("A10G", 1)}
PREDICTOR = {"refit_min_outcomes": 200, "refit_min_interval_s": 0, "sync_interval_s": 0.2, "worker_niceness": 0}


def traffic(n: int, seed: int) -> list[tuple[dict, int]]:
    return [({**body, "model": "llama2-7b"}, actual) for body, actual in requests(n, seed)]


async def send(url: str, batch: list[tuple[dict, int]], concurrency: int = 16) -> list[int]:
    """POST each body with its true length for the emulator; return the predicted p50 the gateway answered with."""
    predicted = [0] * len(batch)
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int, body: dict, actual: int) -> None:
            async with (
                limit,
                session.post(
                    url + "/v1/chat/completions", json=body, headers={"x-emulator-output-tokens": str(actual)}
                ) as response,
            ):
                assert response.status == 200, await response.text()
                assert (await response.json())["usage"]["completion_tokens"] == actual
                predicted[i] = int(response.headers["x-ricardo-predicted-output-tokens"])

        await asyncio.gather(*(one(i, body, actual) for i, (body, actual) in enumerate(batch)))
    return predicted


def mae(predicted: list[int], batch) -> float:
    return float(np.mean([abs(p - actual) for p, (_, actual) in zip(predicted, batch, strict=True)]))


def predictor_status(url: str) -> dict:
    with urllib.request.urlopen(url + "/admin/predictor", timeout=5) as response:
        return json.loads(response.read())


async def until_refitted(url: str, version: int, timeout_s: float = 60.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (status := predictor_status(url))["model"]["version"] < version:
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.2)
    return status


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    model_path = tmp_path_factory.mktemp("predictor") / "output-length.npz"
    # exact input counts: the estimate's online correction starts again after a restart, and would move predictions
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("gw"),
        speed=100.0,
        tokenizer="llama3",
        predictor={**PREDICTOR, "model_path": str(model_path)},
    )
    cluster.start()
    cluster.model_path = model_path
    yield cluster
    cluster.stop()


def test_the_error_falls_as_outcomes_arrive_and_the_model_survives_a_restart(cluster):
    async def scenario():
        before = traffic(60, seed=31)
        cold = mae(await send(cluster.url, before), before)
        await send(cluster.url, traffic(150, seed=32))
        status = await until_refitted(cluster.url, version=2)
        after = traffic(60, seed=33)
        learnt = await send(cluster.url, after)
        return cold, mae(learnt, after), status, learnt, after

    cold, learnt_mae, status, _, after = asyncio.run(scenario())
    print(f"\nonline learning through the gateway: MAE {cold:.1f} -> {learnt_mae:.1f} tokens after one refit")
    assert learnt_mae < 0.6 * cold, (cold, learnt_mae)
    assert status["learning"]["role"] == "refitter" and status["learning"]["refits"] == 1
    assert status["model"]["samples"] > 200 and status["output_tokens"]["n_observed"] == 210
    assert cluster.model_path.is_file()

    gateway = next(p for p in cluster.processes if p.name == "gateway0")
    gateway.stop()
    restarted = Process(
        ricardo_command(
            "serve", "--config", str(cluster.config_path), "--port", str(cluster.gateway_port), "--replica-id", "gw0"
        ),
        "gateway0-restarted",
    )
    cluster.processes.append(restarted)
    restarted.wait_http(cluster.url + "/readyz")
    restored = predictor_status(cluster.url)
    assert restored["model"] == status["model"] and restored["learning"]["source"] == "file"
    # before its first outcome the restarted gateway predicts with the saved text model alone: the running
    # statistics of outcomes that the prediction blends in (predictor/online.py) live in the process
    saved = FittedModel.from_bytes(cluster.model_path.read_bytes())
    body, _ = after[0]
    expected = saved.predict(features_from_body(body, InputTokenCounter("llama3").count_body(body)))
    assert asyncio.run(send(cluster.url, after[:1])) == [expected.p50]


def test_the_true_length_header_never_reaches_the_prediction(cluster):
    body, _ = traffic(1, seed=34)[0]

    async def predicted_with(header: str) -> str:
        # streamed, and left after the response headers: the answer (a second or so) is cut before its end, so no
        # outcome reaches the predictor between the three requests, which therefore meet it in the same state
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                cluster.url + "/v1/chat/completions",
                json={**body, "stream": True},
                headers={"x-emulator-output-tokens": header},
            ) as response,
        ):
            assert response.status == 200
            return response.headers["x-ricardo-predicted-output-tokens"]

    before = predictor_status(cluster.url)["output_tokens"]["n_observed"]
    assert len({asyncio.run(predicted_with(h)) for h in ("3000", "3400", "3800")}) == 1
    assert predictor_status(cluster.url)["output_tokens"]["n_observed"] == before
    # and no gateway code so much as names the header: it is forwarded as any other end-to-end header
    for source in (REPO / "ricardo" / "gateway").rglob("*.py"):
        assert "x-emulator-output-tokens" not in Path(source).read_text().lower(), source
