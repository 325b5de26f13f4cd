"""`PUT /admin/pools/{pool}/price` and `PUT /admin/prices` refuse a price past 10,000 $/h, but `POST /admin/pools` took
any price >= 0, and JSON's 1e400 is Python's inf: the pool was added at an infinite price, and from then on
`GET /admin/pools` and `GET /admin/status` (the status page's one document) answered `Infinity`, which is not JSON."""

import json

import aiohttp
import pytest

from tests.gateway.fakes import ADMIN_TOKEN, gateway

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_a_pool_added_at_an_infinite_price_is_refused():
    async with gateway({"a10g": ("A10G", [])}) as (url, _state), aiohttp.ClientSession(headers=AUTH) as session:
        body = b'{"name": "l4", "hardware": "L4", "price_per_hour": 1e400}'
        headers = {"Content-Type": "application/json"}
        async with session.post(url + "/admin/pools", data=body, headers=headers) as response:
            status = response.status
        async with session.get(url + "/admin/pools") as response:
            text = await response.text()
        json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))  # strict JSON
        assert status == 422, status


PAIR = b'{"name": "p", "prefill": {"hardware": "H100"}, "decode": {"hardware": "A10G"}, "link_gbps": 1e400}'


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("PUT", "/admin/slo", b'{"ttft_ms": 1e400, "tpot_ms": 120}'),  # then GET /admin/slo: Infinity
        ("POST", "/admin/pools", PAIR),  # then GET /admin/pools: "link_gbps": Infinity
    ],
)
async def test_an_infinite_slo_or_link_is_refused(method, path, body):
    async with gateway({"a10g": ("A10G", [])}) as (url, _state), aiohttp.ClientSession(headers=AUTH) as session:
        headers = {"Content-Type": "application/json"}
        async with session.request(method, url + path, data=body, headers=headers) as response:
            status = response.status
        async with session.get(url + path) as response:
            text = await response.text()
        assert "Infinity" not in text and status == 422, (status, text)
