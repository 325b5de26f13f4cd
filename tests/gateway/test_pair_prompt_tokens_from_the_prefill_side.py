"""A prefill/decode pair's prompt tokens are the prefill side's (gateway/handoff.py: "prompt tokens from the prefill
side, completion tokens from the decode side"), in what the client is told as in what the gateway counts.

The client was told the decode side's prompt tokens and priced on them, while the gateway counted, and charged the
client's key for, the prefill side's: a decode side that reports only the prompt tokens it computed itself (the last
partial block of a pulled KV cache) made the two disagree. And the prefill side's usage of a pair attempt that failed
stayed with the request: an answer a unified pool then gave was counted with the failed pair's prompt tokens."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from ricardo.gateway.app import build_app
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.security import AdminAccess
from ricardo.gateway.state import GatewayState

from tests.gateway.fakes import ADMIN_TOKEN, backend_app, call, chat, port, serve
from tests.gateway.test_pair_access_line_names_the_decode_backend import answer, prefill_ok

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

PREFILL_PROMPT = 10  # what prefill_ok reports


async def decode_computed_three(request: web.Request) -> web.Response:
    """A decode side that counts only the prompt tokens it computed itself."""
    return web.json_response(answer("decoded", 3, 5))


async def decode_fails(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "engine died", "type": "server_error"}}, status=500)


async def unified_counts_twelve(request: web.Request) -> web.Response:
    return web.json_response(answer("unified", 12, 5))


@contextlib.asynccontextmanager
async def gateway_of(pools: list[tuple[dict, dict]]) -> AsyncIterator[tuple[str, GatewayState]]:
    """A gateway of `pools`: (pool config without backends, {side ("" for a unified pool): handler}), in that order
    of price (cheapest-price ranks them so)."""
    runners, configs = [], []
    try:
        for pool, handlers in pools:
            pool = dict(pool)
            for side, handler in handlers.items():
                at = port()
                runners.append(await serve(backend_app(handler), at))
                (pool[side] if side else pool)["backends"] = [f"http://127.0.0.1:{at}"]
            configs.append(pool)
        gw_port = port()
        config = GatewayConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": gw_port,
                "models": ["llama2-7b"],
                "policy": "cheapest-price",
                "health_interval_s": 60,
                "admin_token": ADMIN_TOKEN,
                "pools": configs,
            }
        )
        state = GatewayState(config, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", web.NotAppKeyWarning)
            app = build_app(config, state, AdminAccess(ADMIN_TOKEN))
        runners.append(await serve(app, gw_port))
        yield f"http://127.0.0.1:{gw_port}", state
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def pair() -> dict:
    return {
        "name": "pair",
        "prefill": {"hardware": "H100", "price_per_hour": 0.5},
        "decode": {"hardware": "A10G", "price_per_hour": 0.5},
        "link_gbps": 100,
    }


def counted(state: GatewayState, pool: str, what: str) -> float:
    return (
        state.metrics.registry.get_sample_value(
            f"ricardo_{what}_total", {"pool": pool, **({"type": "input"} if what == "tokens" else {})}
        )
        or 0.0
    )


async def test_the_client_is_told_and_charged_the_prefill_sides_prompt_tokens():
    async with gateway_of([(pair(), {"prefill": prefill_ok, "decode": decode_computed_three})]) as (url, state):
        status, raw = await call(url, chat())
        assert status == 200
        usage = json.loads(raw)["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (PREFILL_PROMPT, 5, 15)
        expected = state.request_cost(state.pools["pair"], PREFILL_PROMPT, 5, state.shaper.default_slo)
        assert usage["ricardo_cost_usd"] == pytest.approx(expected)
        assert counted(state, "pair", "cost_usd") == pytest.approx(usage["ricardo_cost_usd"])
        assert counted(state, "pair", "tokens") == PREFILL_PROMPT


async def test_a_failed_pair_attempts_prefill_usage_is_not_counted_for_the_unified_pool_that_answered():
    unified = {"name": "a100", "hardware": "A100-80GB", "price_per_hour": 9.0}
    pools = [(pair(), {"prefill": prefill_ok, "decode": decode_fails}), (unified, {"": unified_counts_twelve})]
    async with gateway_of(pools) as (url, state):
        status, raw = await call(url, chat())
        assert status == 200 and b"unified" in raw
        assert json.loads(raw)["usage"]["prompt_tokens"] == 12
        assert counted(state, "a100", "tokens") == 12  # the answer's own, not the failed pair's prefill's
