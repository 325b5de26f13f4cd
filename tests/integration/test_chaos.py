"""Chaos: bounded concurrent load through the real gateway onto emulated backends with standing faults (they hang,
stall mid-stream, drop the connection mid-stream, end without [DONE], answer 500 some of the time, run slow),
with the official openai client. Every request must complete or get a clear error within the timeout budget,
and no stream may end as if complete when it was cut.

The faults spare one-token answers (`min-tokens=2`), so the gateway's probe completion passes and only the
outcomes of real requests can find the broken backends: the hard case (a backend that fails every answer is
found by its first probe). `pytest -s` prints the figures.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest
from ricardo.emulator.text import token_text

from tests.integration.harness import Cluster, metric

# slow enough that the cutter's run outlasts its first ejection (5 s): its half-open trials are counted too
CUTTER_SPEED = 2.0
CHAOS_SPEED = 4.0


@dataclass
class Result:
    kind: str  # "complete", "error" (a clear error: HTTP status or SSE error event), "silent" (cut, unannounced)
    seconds: float
    detail: str = ""


def expected(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def run(client: openai.OpenAI, index: int, streamed: bool, tokens: int) -> Result:
    started = time.monotonic()
    headers = {"x-emulator-output-tokens": str(tokens)}
    messages = [{"role": "user", "content": f"request {index}: tell me something"}]
    try:
        if streamed:
            text, finish = "", None
            for chunk in client.chat.completions.create(
                model="llama2-7b", messages=messages, stream=True, extra_headers=headers
            ):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
        else:
            completion = client.chat.completions.create(model="llama2-7b", messages=messages, extra_headers=headers)
            text, finish = completion.choices[0].message.content or "", completion.choices[0].finish_reason
    except openai.APIStatusError as exc:
        return Result("error", time.monotonic() - started, f"HTTP {exc.status_code}: {_message(exc)}")
    except openai.APIError as exc:  # an SSE error event
        return Result("error", time.monotonic() - started, f"event: {exc.message}")
    seconds = time.monotonic() - started
    if finish is not None and text == expected(tokens):
        return Result("complete", seconds)
    return Result("silent", seconds, f"finish {finish}, {len(text)} of {len(expected(tokens))} characters")


def load(url: str, requests: int, concurrency: int, stream_share: float, seed: int) -> list[Result]:
    rng = random.Random(seed)
    plan = [(i, rng.random() < stream_share, rng.randint(8, 48)) for i in range(requests)]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda p: run(client, *p), plan))


def summary(results: list[Result]) -> str:
    kinds = {k: sum(r.kind == k for r in results) for k in ("complete", "error", "silent")}
    slowest = max(r.seconds for r in results)
    return f"{kinds} of {len(results)}, slowest {slowest:.1f} s"


@pytest.fixture
def one_cutter(tmp_path):
    cluster = Cluster(
        {"a10g": ("A10G", 3)},
        tmp_path,
        speed=CUTTER_SPEED,
        faults={"a10g": [None, None, "cut-after=2,min-tokens=2"]},
        fault_processes=False,
        admission={"enabled": False},
    ).start()
    yield cluster
    cluster.stop()


def test_one_cutting_backend_of_three_costs_few_streams_and_cuts_none_silently(one_cutter):
    # the case: two sound A10Gs and one that drops every stream after two events (its /v1/models and
    # one-token probe answer fine); before outcomes counted, 56 of 300 streams completed
    started = time.monotonic()
    results = load(one_cutter.url, requests=300, concurrency=12, stream_share=1.0, seed=1)
    wall = time.monotonic() - started
    complete = sum(r.kind == "complete" for r in results)
    cutter = f"http://127.0.0.1:{one_cutter.pool_ports['a10g'][2]}"
    ejections = metric(one_cutter.url, "ricardo_backend_ejections_total", backend=cutter)
    print(f"\none cutter of three, 300 streams x 12: {summary(results)}; {ejections:.0f} ejections; {wall:.0f} s")
    assert not [r for r in results if r.kind == "silent"], "no stream may be cut silently"
    assert complete >= 0.97 * len(results), summary(results)
    assert ejections >= 1


TIMEOUTS = {"connect_timeout_s": 1.0, "first_byte_timeout_s": 3.0, "idle_timeout_s": 2.0, "response_timeout_s": 6.0}
FAULTS = [
    None,
    None,
    "hang,min-tokens=2",
    "stall-after=3,min-tokens=2",
    "cut-after=4,min-tokens=2",
    "no-done,min-tokens=2",
    "error-rate=0.3,seed=5",
    "slow=5",
]


@pytest.fixture
def chaos(tmp_path):
    cluster = Cluster(
        {"a10g": ("A10G", len(FAULTS))},
        tmp_path,
        speed=CHAOS_SPEED,
        faults={"a10g": FAULTS},
        fault_processes=False,
        admission={"enabled": False},
        limits=TIMEOUTS,
    ).start()
    yield cluster
    cluster.stop()


def test_every_request_completes_or_gets_a_clear_error_within_the_budget(chaos):
    # a request may try 3 backends, each up to its whole budget (a whole answer: 6 s; a stream: 3 s to the first
    # event, then at most 2 s of silence between events)
    budget_s = 3 * TIMEOUTS["response_timeout_s"] + TIMEOUTS["idle_timeout_s"]
    started = time.monotonic()
    results = load(chaos.url, requests=200, concurrency=10, stream_share=0.7, seed=2)
    wall = time.monotonic() - started
    complete = sum(r.kind == "complete" for r in results)
    errors = sorted({r.detail[:90] for r in results if r.kind == "error"})
    print(f"\nchaos, 8 backends (6 faulty), 200 requests x 10 concurrent: {summary(results)}; {wall:.0f} s")
    for error in errors:
        print("  ", error)
    assert not [r for r in results if r.kind == "silent"], [r for r in results if r.kind == "silent"]
    assert not [r for r in results if r.detail.startswith("HTTP 500")], "no internal error"
    assert max(r.seconds for r in results) < budget_s + 2, "every request ends within the timeout budget"
    assert complete >= 0.9 * len(results), summary(results)


def _message(exc: openai.APIStatusError) -> str:
    return str(exc.body.get("message")) if isinstance(exc.body, dict) else exc.message
