"""Cost-aware routing through the real gateway: each request size lands where the profile says it is cheapest.

Real processes over loopback sockets: emulated L4, A10G, A100-80GB and H100 backends (`ricardo emulate`, timed by
the calibrated engine model) behind a real `ricardo serve` with the `cost-aware` policy and the Mélange price set,
driven by the official `openai` client.

Nothing here names the pool a size "should" use. The expectation is derived from the profile the gateway loads
and its prices: a request's cost on a pool is price_per_hour / 3600 / (the requests/s one replica sustains at the
request's size, input tokens x predicted p50 output), the project's one definition of it
(`policies.routing.request_cost_usd`, over `ProfileBook`), among the pools whose profile can serve that size.
On idle pools the cost-aware policy must pick the cheapest; under load it may spill to the next-cheapest.

How the request's size is pinned down from outside the gateway:
- input: the gateway is configured with the exact llama3 tokenizer, so the test counts the same tokens with the
  same counter (`predictor.tokens.InputTokenCounter`). (Without one, the gateway estimates 4 bytes per token and
  corrects the estimate online, which a test cannot reproduce to the token.)
- output: the gateway's prediction (p50) comes back in `x-ricardo-predicted-output-tokens`; `max_tokens` caps it
  (small requests: max_tokens=20, so p50 <= 20). The true length goes to the emulator in
  `x-emulator-output-tokens`, which the gateway forwards without reading.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass

import openai
import pytest
from ricardo.emulator.text import TokenCounter
from ricardo.policies.routing import (
    SLACK_TARGET,
    capacity_share,
    cost_aware,
    predicted_slack,
    request_cost_usd,
    safe_utilization,
)
from ricardo.policies.types import SLO, PoolView, RequestShape
from ricardo.predictor.tokens import InputTokenCounter
from ricardo.profiles.catalog import load_default_book

from tests.integration.harness import Cluster

MODEL = "llama2-7b"
PRICE_SET = "melange"
# what the gateway loads (GatewayState: the shipped profile, measured tables first, under the config's price set)
BOOK = load_default_book(MODEL, price_set=PRICE_SET, include_estimated=True)
SLO_DEFAULT = SLO(ttft_ms=2000.0, tpot_ms=120.0)  # the gateway's default SLO (config.SLOConfig)
TOKENIZER = "llama3"  # the gateway's `tokenizer` setting: exact input counts

FLEET = {"l4": ("L4", 1), "a10g": ("A10G", 1), "a100": ("A100-80GB", 1), "h100": ("H100", 1)}
# spill test: one replica each of three types that can all serve ~1,600-token prompts
TINY_FLEET = {"l4": ("L4", 1), "a10g": ("A10G", 1), "a100": ("A100-80GB", 1)}

SMALL_QUESTIONS = [
    "What is the capital of France?",
    "Say hello.",
    "Name a prime number.",
    "Translate 'cat' to French.",
    "What is 7 times 8?",
    "Spell the word house.",
    "Is water wet?",
    "Give me a color.",
    "What day follows Monday?",
    "Name a planet.",
    "Count to three.",
    "What is the opposite of hot?",
]
NAMES = ["Maria", "James", "Aisha", "Kenji", "Olga", "Pedro", "Lena", "Tom"]
ITEMS = ["apples", "notebooks", "tickets", "bags of rice", "candles", "bolts", "plants", "books"]


@dataclass(frozen=True)
class Req:
    kind: str
    text: str
    max_tokens: int
    true_output: int  # handed to the emulator; the gateway never reads it
    stream: bool = False

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.text}]


@dataclass(frozen=True)
class Outcome:
    req: Req
    pool: str
    cost_usd: float
    predicted_p50: int
    policy: str
    prompt_tokens: int
    completion_tokens: int
    text: str


def word_problems(count: int, seed: int) -> str:
    """A long prompt of arithmetic word problems, deterministic per seed. The output predictor expects longer
    answers to these than to a word salad of the same length (~60 tokens at ~1,600 prompt tokens, against ~10)."""
    rng = random.Random(seed)
    problems = []
    for k in range(count):
        seller, buyer = rng.sample(NAMES, 2)
        item = rng.choice(ITEMS)
        a, b, c, d = rng.randint(3, 90), rng.randint(2, 60), rng.randint(2, 25), rng.randint(10, 40)
        problems.append(
            f"Problem {k + 1}. {seller} buys {a} {item} for ${c} each and sells {b} of them to {buyer} "
            f"at a {d}% markup. {buyer} then gives away a third of what she bought. How many {item} "
            f"does {seller} have left, how much profit did {seller} make, and how many {item} does "
            f"{buyer} keep?"
        )
    return (
        "Solve each of the following problems. Show your reasoning step by step, then give the final answers."
        "\n\n" + "\n\n".join(problems)
    )


def mixed_workload() -> list[Req]:
    """Small chat turns, medium prompts (~1,600 tokens) and long ones (~2,900 tokens), interleaved.

    What the profile says about these sizes (Mélange tables and prices, 120 ms TPOT; costs at the request's own
    size, as the policy computes them):
    - small (<= 25 tokens in, <= 20 out): the L4 is cheapest per request (the A10G ~7% dearer).
    - long (2,000-4,000 in): only the A100-80GB and H100 profiles serve it at all; for the short answers the
      predictor expects after such prompts (~5-10 tokens) the A100 is ~35% cheaper than the H100. These are the
      "long ones on a big GPU". Below ~6 predicted tokens the prefill alone leaves the A100 less SLO headroom than
      the policy asks for, and the H100 is the cheapest pool with room (`costs_with_headroom`).
    - medium (1,000-2,000 in): NOT a big-GPU size for this predictor. The output predictor expects ~40-60 tokens
      for these prompts (it predicts shorter answers the longer the prompt), and at ~1,600 x 60 the A10G is a
      few % cheaper than the A100 (the A100 only wins from ~100 predicted tokens up). So this class checks
      that the gateway follows the profile per request, not the class-level split.
    """
    requests = [
        Req("small", q, max_tokens=20, true_output=20, stream=k % 2 == 1) for k, q in enumerate(SMALL_QUESTIONS)
    ]
    requests += [
        Req("medium", word_problems(24, seed=100 + k), max_tokens=400, true_output=60, stream=k % 2 == 0)
        for k in range(8)
    ]
    requests += [
        Req("long", word_problems(44, seed=200 + k), max_tokens=200, true_output=12, stream=k % 2 == 1)
        for k in range(4)
    ]
    random.Random(7).shuffle(requests)
    return requests


# a long prompt whose answer is capped at one token (a classification, a yes/no, a prefill-only request)
ONE_TOKEN = [Req("one-token", word_problems(24, seed=300 + k), max_tokens=1, true_output=1) for k in range(3)]
# the spill test's requests: long prompts, answers capped at 10 tokens, all sent at once
SPILL = [Req("spill", SMALL_QUESTIONS[k], max_tokens=10, true_output=10) for k in range(8)]

EMULATOR_COUNTER = TokenCounter()  # how the emulated backends count prompt tokens (llama3 BPE + their template)
GATEWAY_COUNTER = InputTokenCounter(TOKENIZER)  # how the gateway counts them (llama3 BPE + the llama3 chat template)


def emulator_prompt_tokens(req: Req) -> int:
    return EMULATOR_COUNTER.count_chat([(m["role"], m["content"]) for m in req.messages])


def gateway_input_tokens(req: Req) -> int:
    return GATEWAY_COUNTER.count_messages(req.messages)


def profile_costs(fleet: dict[str, tuple[str, int]], input_tokens: int, output_tokens: int) -> dict[str, float]:
    """$ per request of this size on each pool of `fleet` whose profile can serve it (one replica's time at the
    profile's SLO operating point, under the Mélange prices)."""
    costs = {}
    for name, (hardware, _) in fleet.items():
        if BOOK.max_rps(hardware, input_tokens, output_tokens) > 0:
            costs[name] = request_cost_usd(BOOK, hardware, BOOK.price(hardware), input_tokens, output_tokens)
    return costs


def costs_with_headroom(input_tokens: int, output_tokens: int) -> dict[str, float]:
    """`profile_costs` of FLEET less the pools on which this request, alone on an idle pool, would keep less SLO
    slack than the policy asks for (`SLACK_TARGET`): a long prompt with a very short answer has a high latency per
    token even alone (its prefill), and only fast hardware leaves it room."""
    costs = profile_costs(FLEET, input_tokens, output_tokens)
    roomy = {}
    for name, cost in costs.items():
        hardware, replicas = FLEET[name]
        alone = BOOK.alone_seconds_per_token(hardware, input_tokens, output_tokens)
        share = capacity_share(BOOK, hardware, input_tokens, output_tokens, SLO_DEFAULT) / replicas
        if alone is None or predicted_slack(alone * 1000.0 / SLO_DEFAULT.tpot_ms, share) >= SLACK_TARGET:
            roomy[name] = cost
    return roomy or costs


def outcome_of(req: Req, raw, completion) -> Outcome:
    return Outcome(
        req,
        raw.headers["x-ricardo-pool"],
        float(raw.headers["x-ricardo-expected-cost-usd"]),
        int(raw.headers["x-ricardo-predicted-output-tokens"]),
        raw.headers["x-ricardo-policy"],
        completion["prompt_tokens"],
        completion["completion_tokens"],
        completion["text"],
    )


def send(client: openai.OpenAI, req: Req, **extra_headers: str) -> Outcome:
    headers = {"x-emulator-output-tokens": str(req.true_output), **extra_headers}
    if not req.stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=req.messages, max_tokens=req.max_tokens, extra_headers=headers
        )
        completion = raw.parse()
        return outcome_of(
            req,
            raw,
            {
                "prompt_tokens": completion.usage.prompt_tokens,
                "completion_tokens": completion.usage.completion_tokens,
                "text": completion.choices[0].message.content,
            },
        )
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=req.messages,
        max_tokens=req.max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    chunks = list(raw.parse())
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return outcome_of(
        req,
        raw,
        {"prompt_tokens": usage[0].prompt_tokens, "completion_tokens": usage[0].completion_tokens, "text": text},
    )


def check_answer(outcome: Outcome) -> None:
    """The emulator got the request as sent: the prompt it counted, the true length it was told (capped)."""
    req = outcome.req
    assert outcome.prompt_tokens == emulator_prompt_tokens(req)
    assert outcome.completion_tokens == min(req.true_output, req.max_tokens)
    assert outcome.text.count(" ") == outcome.completion_tokens  # one word per emulated token
    assert outcome.policy == "cost-aware"
    assert 1 <= outcome.predicted_p50 <= req.max_tokens  # the prediction is capped by max_tokens


def admin_pools(cluster: Cluster) -> dict[str, dict]:
    request = urllib.request.Request(cluster.url + "/admin/pools", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        return {p["name"]: p for p in json.loads(response.read())["pools"]}


def start(fleet: dict[str, tuple[str, int]], tmp, speed: float) -> Cluster:
    return Cluster(fleet, tmp, speed=speed, policy="cost-aware", price_set=PRICE_SET, tokenizer=TOKENIZER).start()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    # 10x real time: routing on idle pools does not depend on how fast they answer, and the run stays short
    cluster = start(FLEET, tmp_path_factory.mktemp("cost-fleet"), speed=10.0)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_gateway_prices_are_the_profile_price_set(fleet):
    pools = admin_pools(fleet)
    assert set(pools) == set(FLEET)
    for name, (hardware, replicas) in FLEET.items():
        assert pools[name]["price_per_hour"] == pytest.approx(BOOK.price(hardware))
        assert pools[name]["price_source"] == f"price set {PRICE_SET}"
        assert len(pools[name]["backends"]) == replicas


def test_mixed_workload_lands_where_the_profile_is_cheapest(fleet, client):
    requests = mixed_workload()
    for req in requests:  # the classes are what their names say (bucket upper edges 25, ..., 1000, 2000, 4000)
        tokens = gateway_input_tokens(req)
        assert {"small": tokens <= 25, "medium": 1000 < tokens <= 2000, "long": 2000 < tokens <= 4000}[req.kind]
    started = time.monotonic()
    outcomes = [send(client, req) for req in requests]  # one at a time: every decision is made on idle pools
    elapsed = time.monotonic() - started

    by_kind: dict[str, list[tuple[Outcome, str]]] = {}
    for outcome in outcomes:
        check_answer(outcome)
        size = gateway_input_tokens(outcome.req), outcome.predicted_p50
        costs = profile_costs(FLEET, *size)
        roomy = costs_with_headroom(*size)
        cheapest = min(roomy, key=roomy.get)
        # the header carries the expected cost on the pool actually used (8 decimals)
        assert outcome.pool in costs, f"{outcome.pool} cannot serve {size} by the profile"
        assert outcome.cost_usd == pytest.approx(costs[outcome.pool], abs=1e-8)
        by_kind.setdefault(outcome.req.kind, []).append((outcome, cheapest))

    report = {kind: Counter((o.pool, cheapest) for o, cheapest in rows) for kind, rows in by_kind.items()}
    matched = sum(o.pool == cheapest for rows in by_kind.values() for o, cheapest in rows)
    assert matched >= 0.9 * len(outcomes), f"(landed, cheapest by profile) per class: {report}\n{fleet.logs()}"
    for kind, rows in by_kind.items():
        assert sum(o.pool == cheapest for o, cheapest in rows) >= 0.9 * len(rows), f"{kind}: {report[kind]}"

    # comparative advantage: the small requests and the long ones go to different hardware, the small ones to a
    # cheap GPU (one of the two lowest list prices in the fleet), the long ones to a big one (the two highest)
    prices = sorted(BOOK.price(hardware) for hardware, _ in FLEET.values())
    majority = {kind: Counter(o.pool for o, _ in rows).most_common(1)[0][0] for kind, rows in by_kind.items()}
    price_of = {kind: BOOK.price(FLEET[pool][0]) for kind, pool in majority.items()}
    assert majority["small"] != majority["long"], report
    assert price_of["small"] <= prices[1], report
    assert price_of["long"] >= prices[-2], report
    assert elapsed < 30, f"{len(outcomes)} requests took {elapsed:.1f}s"


def test_one_token_answers_on_long_prompts_go_where_they_can_meet_the_slo(fleet, client):
    # a one-token answer's latency per token is its whole prefill: on the L4 and A10G a ~1,600-token prompt
    # alone takes longer than the 120 ms SLO, though their tables (measured with 25-token answers) serve the
    # bucket, so the cheapest pool by cost is the wrong one
    for req in ONE_TOKEN:
        outcome = send(client, req)
        check_answer(outcome)
        input_tokens = gateway_input_tokens(req)
        costs = profile_costs(FLEET, input_tokens, outcome.predicted_p50)
        in_time = {
            name: cost
            for name, cost in costs.items()
            if BOOK.alone_seconds_per_token(FLEET[name][0], input_tokens, outcome.predicted_p50) * 1000
            <= SLO_DEFAULT.tpot_ms
        }
        assert set(in_time) < set(costs), "the prompt should be too long for some pool to answer in time"
        assert outcome.pool in in_time and outcome.pool != min(costs, key=costs.get), (outcome.pool, in_time, costs)
        # and it is the policy's own first choice for idle pools: the simulator's code decides in the gateway
        shape = RequestShape(MODEL, input_tokens, outcome.predicted_p50, outcome.predicted_p50, SLO_DEFAULT)
        idle = [PoolView(name, hw, BOOK.price(hw), n) for name, (hw, n) in FLEET.items()]
        assert outcome.pool == cost_aware(shape, idle, BOOK)[0].pool


def test_a_40_ms_slo_routes_by_the_40_ms_tables(fleet, client):
    # the L4 is the cheapest for small requests at 120 ms, and its decode step alone (~45 ms) misses 40 ms per token
    book_40 = load_default_book(MODEL, price_set=PRICE_SET, include_estimated=True, slo_tpot_ms=40)
    assert not book_40.capacity("L4").any()
    for req in SPILL[:4]:
        outcome = send(client, req, **{"x-slo-tpot-ms": "40"})
        check_answer(outcome)
        input_tokens = gateway_input_tokens(req)
        assert outcome.pool != "l4"
        assert outcome.cost_usd == pytest.approx(
            request_cost_usd(
                book_40, FLEET[outcome.pool][0], BOOK.price(FLEET[outcome.pool][0]), input_tokens, outcome.predicted_p50
            ),
            rel=1e-5,
        )
    # and at the default 120 ms, where the L4 serves it too, the idle fleet's first choice by the 120 ms tables
    idle = [PoolView(name, hw, BOOK.price(hw), n) for name, (hw, n) in FLEET.items()]
    shape = RequestShape(MODEL, gateway_input_tokens(SPILL[0]), 10, 10, SLO_DEFAULT)
    assert send(client, SPILL[0]).pool == cost_aware(shape, idle, BOOK)[0].pool


@pytest.fixture(scope="module")
def tiny_fleet(tmp_path_factory):
    # real time, so that requests sent together are still in flight when the next ones are routed
    cluster = start(TINY_FLEET, tmp_path_factory.mktemp("cost-tiny"), speed=1.0)
    yield cluster
    cluster.stop()


def test_a_burst_spills_from_the_first_choice_to_other_pools(tiny_fleet):
    # p50 = p90 = 10, the cap; the policy's first choice for an idle fleet takes the first request, and spills
    # the others before it saturates (ricardo/policies/routing.py: SLO slack below SLACK_TARGET)
    costs = {req: profile_costs(TINY_FLEET, gateway_input_tokens(req), 10) for req in SPILL}
    idle = [PoolView(name, hw, BOOK.price(hw), n) for name, (hw, n) in TINY_FLEET.items()]
    first_choices = {
        cost_aware(RequestShape(MODEL, gateway_input_tokens(req), 10, 10, SLO_DEFAULT), idle, BOOK)[0].pool
        for req in SPILL
    }
    assert len(first_choices) == 1, first_choices
    (first,) = first_choices
    assert first != "a100", "small requests should not be cheapest on the big GPU"
    # how many of them the first choice takes before its predicted slack falls below the target (the most,
    # over the burst's sizes, so that the assertions below stay on the safe side)
    hardware = TINY_FLEET[first][0]
    fits = max(
        int(
            safe_utilization(BOOK.alone_seconds_per_token(hardware, gateway_input_tokens(req), 10) / 0.120)
            // capacity_share(BOOK, hardware, gateway_input_tokens(req), 10, SLO_DEFAULT)
        )
        for req in SPILL
    )
    burst_of = [SPILL[k % len(SPILL)] for k in range(fits + len(SPILL))]  # overfills the first choice

    async def burst() -> list[Outcome]:
        async with openai.AsyncOpenAI(
            base_url=tiny_fleet.url + "/v1", api_key="unused", max_retries=0, timeout=30
        ) as client:

            async def one(req: Req) -> Outcome:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=req.messages,
                    max_tokens=req.max_tokens,
                    extra_headers={"x-emulator-output-tokens": str(req.true_output)},
                )
                completion = raw.parse()
                return outcome_of(
                    req,
                    raw,
                    {
                        "prompt_tokens": completion.usage.prompt_tokens,
                        "completion_tokens": completion.usage.completion_tokens,
                        "text": completion.choices[0].message.content,
                    },
                )

            return await asyncio.gather(*(one(req) for req in burst_of))

    started = time.monotonic()
    outcomes = asyncio.run(burst())  # raises if any request failed
    elapsed = time.monotonic() - started

    for outcome in outcomes:
        check_answer(outcome)
        assert outcome.predicted_p50 == 10
        assert outcome.cost_usd == pytest.approx(costs[outcome.req][outcome.pool], abs=1e-8)
    landed = Counter(o.pool for o in outcomes)
    detail = f"landed {dict(landed)}, idle first choice {first} fits {fits}\n{tiny_fleet.logs()}"
    assert 1 <= landed[first] <= max(1, fits), detail
    assert len(landed) >= 2, detail  # spilled to the others
    assert elapsed < 20, f"burst took {elapsed:.1f}s"
