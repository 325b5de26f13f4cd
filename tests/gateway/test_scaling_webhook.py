"""The scaling loop's webhook (gateway/scaling_loop.py), against a real HTTP receiver on loopback: an autoscaler that
follows the webhook must end up with the hints in force, even when a POST fails or a slow POST is overtaken."""

from __future__ import annotations

import asyncio
import warnings

from aiohttp import web
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.scaling_loop import ScalingLoop
from ricardo.gateway.state import GatewayState

from tests.gateway.fakes import port, serve


def scaling_loop(webhook_url: str | None) -> ScalingLoop:
    config = GatewayConfig.model_validate(
        {
            "models": ["llama2-7b"],
            "pools": [{"name": "a10g", "hardware": "A10G"}],
            "scaling": {"interval_s": 60, "webhook_url": webhook_url, "min_replicas": 1},
        }
    )
    state = GatewayState(config)
    state.apply(1, state.shared.model_dump(mode="json"))  # what `start` does with the store's version
    return ScalingLoop(state)


class Receiver:
    """An autoscaler's webhook endpoint: `answers` scripts each POST (a status, or a delay before 200)."""

    def __init__(self, answers: list[int | float]):
        self.answers = answers
        self.received: list[dict] = []  # the hints it accepted, in the order they were applied

    async def handle(self, request: web.Request) -> web.Response:
        hints = await request.json()
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = 200
        if answer == 200:
            self.received.append(hints)
        return web.Response(status=answer)

    async def start(self) -> tuple[str, web.AppRunner]:
        app = web.Application()
        app.router.add_post("/hints", self.handle)
        at = port()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            runner = await serve(app, at)
        return f"http://127.0.0.1:{at}/hints", runner


async def settle(loop: ScalingLoop, seconds: float) -> None:
    """Ticks now and then (the hints do not change), for `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await loop.tick()
        await asyncio.sleep(0.2)
    await asyncio.gather(*loop._webhooks, return_exceptions=True)


async def test_a_webhook_post_that_failed_is_sent_again():
    receiver = Receiver([503])  # the autoscaler is briefly unavailable when the first hints are posted
    url, runner = await receiver.start()
    try:
        loop = scaling_loop(url)
        await loop.tick()
        assert loop.current()["desired"] == {"a10g": {"unified": 1}}
        await settle(loop, 3.0)
        # the receiver is up again and the loop kept ticking: the hints in force must have reached it
        assert receiver.received, "the hints never reached the webhook after one failed POST"
        assert receiver.received[-1]["desired"] == loop.current()["desired"]
    finally:
        await runner.cleanup()


async def test_a_slow_webhook_post_does_not_overwrite_newer_hints():
    receiver = Receiver([1.5])  # the first POST is slow to be answered; the next ones are quick
    url, runner = await receiver.start()
    try:
        loop = scaling_loop(url)
        await loop.tick()  # desired 1 replica, posted (slowly)
        await asyncio.sleep(0.2)
        loop.advisor.min_replicas = 3  # the next tick's hints differ: 3 replicas, posted too
        await loop.tick()
        assert loop.current()["desired"] == {"a10g": {"unified": 3}}
        await settle(loop, 2.5)
        # what the autoscaler applied last must be the hints in force, not the older ones that arrived late
        assert [h["desired"]["a10g"]["unified"] for h in receiver.received][-1] == 3, receiver.received
    finally:
        await runner.cleanup()
