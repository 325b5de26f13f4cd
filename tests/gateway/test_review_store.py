"""Review: client API keys across a Redis restart that lost its data (no persistence), as the config survives one."""

from __future__ import annotations

import asyncio
import time

import pytest
from ricardo.gateway.keys import KeyBody, KeyRing, digest
from ricardo.gateway.metrics import GatewayMetrics
from ricardo.gateway.store import RedisStore

from tests.redis_server import RedisServer, available

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not available(), reason="no redis-server binary")]


async def test_client_keys_still_authenticate_after_redis_restarts_empty() -> None:
    with RedisServer() as server:
        store = RedisStore(server.url, "review", cooloff_s=0.05, max_cooloff_s=0.1)
        await store.start()
        await store.init_config({"price": 1})
        ring = KeyRing(store, GatewayMetrics(), required=True)
        try:
            _, plain = await ring.create(KeyBody(name="alice"))
            await ring.refresh()
            assert digest(plain) in ring._by_digest

            server.stop()
            server.start()  # same port, empty: a restart without persistence
            deadline = time.monotonic() + 5
            while not (store.healthy and await store.read_config() is not None):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the sync task has written the config back by now
            assert await store.read_config() == (1, {"price": 1}), "the config is written back"
            await ring.refresh()  # what every replica does every second
            assert digest(plain) in ring._by_digest, "every client key is refused (401) once Redis lost its data"
        finally:
            await store.close()
