"""The bill of an answer is its actual tokens priced on the pool that served it (DESIGN.md, "The bill is the actual
cost"). Without a tokenizer configured the gateway routes on an estimate of the prompt's tokens; a prompt it
underestimates (digits: about 2 tokens per "7 " for Llama-2, 0.5 by the byte estimate) goes to a pool whose profile
has no capacity for its real size (an A10G past 2,000 prompt tokens: rate 0), is served there, and must cost
something: billed $0, a client's budget never runs out on such requests and `ricardo_cost_usd_total` misses them."""

import json

import pytest
from aiohttp import web

from tests.gateway.fakes import call, gateway

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

PROMPT_TOKENS, COMPLETION_TOKENS = 2600, 100  # what the backend counts; the gateway estimated ~650


async def answer(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "llama2-7b",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
    )


async def test_an_answer_beyond_the_pools_profile_is_not_billed_zero():
    async with gateway({"a10g": ("A10G", [answer])}) as (url, _):
        body = {
            "model": "llama2-7b",
            "messages": [{"role": "user", "content": "7 " * (PROMPT_TOKENS // 2)}],
            "max_tokens": COMPLETION_TOKENS,
        }
        status, raw = await call(url, body)
        assert status == 200, raw
        usage = json.loads(raw)["usage"]
        assert usage["prompt_tokens"] == PROMPT_TOKENS
        assert usage["ricardo_cost_usd"] > 0, usage
