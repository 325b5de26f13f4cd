"""Client API keys across a Redis restart that lost its data (no persistence), as the config survives one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import make_mocked_request
from ricardo.gateway.admin import _store_down
from ricardo.gateway.keys import KeyBody, KeyRing, digest, today
from ricardo.gateway.metrics import GatewayMetrics
from ricardo.gateway.store import RedisStore
from ricardo.gateway.store.base import StoreUnavailable

from tests.redis_server import RedisServer, available

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not available(), reason="no redis-server binary")]


async def test_client_keys_still_authenticate_after_redis_restarts_empty() -> None:
    with RedisServer() as server:
        store = RedisStore(server.url, "recovery", cooloff_s=0.05, max_cooloff_s=0.1)
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


class SlowLink:
    """A TCP relay on loopback in front of Redis whose answers can be held back `delay_s` (a slow Redis, or a slow
    network: the command is executed, its reply is late)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
            try:
                while data := await src.read(65536):
                    if delayed and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def behind_a_slow_link(server: RedisServer, prefix: str) -> AsyncIterator[tuple[SlowLink, RedisStore]]:
    """A started store that reaches `server` through a `SlowLink` (on time until its `delay_s` is set)."""
    link = SlowLink(server.port)
    port = await link.start()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix, cooloff_s=0.05, max_cooloff_s=0.1)
    await store.start()
    await store.init_config({"price": 1})
    try:
        yield link, store
    finally:
        await store.close()
        await link.close()


async def test_spend_is_not_counted_twice_when_redis_answers_late() -> None:
    with RedisServer() as server:
        async with behind_a_slow_link(server, "recovery") as (link, store):
            ring = KeyRing(store, GatewayMetrics(), required=True)
            await ring.start()
            try:
                key, _ = await ring.create(KeyBody(name="alice", budget_usd_per_day=1.0))
                ring.charge(key, 0.01, 1)  # a first write on time (it also loads the store's script into Redis)
                while ring._pending_spend or ring._unsent:
                    await asyncio.sleep(0.01)
                link.delay_s = 0.4  # past the store's 0.25 s timeout: Redis adds the spend, its reply comes too late
                ring.charge(key, 0.25, 10)
                await asyncio.sleep(1.0)
                link.delay_s = 0.0
                deadline = time.monotonic() + 5
                while ring._pending_spend or ring._unsent or not store.healthy:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                spent = (await store.read_spend(today()))[key.id]
                assert spent == pytest.approx(0.26), f"requests of $0.01 and $0.25 charged ${spent} to the key"
            finally:
                await ring.close()


async def test_a_write_whose_reply_is_late_says_it_may_have_been_made_and_one_not_sent_says_it_was_not() -> None:
    with RedisServer() as server:
        link = SlowLink(server.port)
        port = await link.start()
        store = RedisStore(f"redis://127.0.0.1:{port}/0", "late", cooloff_s=30.0, max_cooloff_s=30.0)
        await store.init_config({"price": 1})
        try:
            await store.update_config(1, {"price": 2})  # the script loaded, on time
            link.delay_s = 0.4  # past the store's 0.25 s timeout: Redis applies the change, its reply comes late
            with pytest.raises(StoreUnavailable) as late:
                await store.update_config(2, {"price": 3})
            assert late.value.sent
            link.delay_s = 0.0
            with pytest.raises(StoreUnavailable) as refused:  # the breaker is open now: nothing is sent
                await store.update_config(3, {"price": 4})
            assert not refused.value.sent
            assert "may have been made" in _store_down(late.value).message
            assert "was not made" in _store_down(refused.value).message
            direct = RedisStore(server.url, "late")
            assert (await direct.read_config()) == (3, {"price": 3}), "the late write was made"
            await direct.close()
        finally:
            await store.close()
            await link.close()


async def test_client_keys_survive_a_replica_that_starts_on_the_emptied_redis_first() -> None:
    # Redis restarts empty and a replica starting meanwhile (a pod rescheduled with it, say) seeds its own config
    # before the running replicas write theirs back: a config is there again, the keys are not. The running replicas
    # took that for "every key revoked": every client key refused (401) on every replica, for good.
    with RedisServer() as server:
        running = RedisStore(server.url, "seeded", cooloff_s=0.05, max_cooloff_s=0.1)
        await running.init_config({"price": 1})
        assert await running.update_config(1, {"price": 2}) == 2
        ring = KeyRing(running, GatewayMetrics(), required=True)
        starting = RedisStore(server.url, "seeded", cooloff_s=0.05, max_cooloff_s=0.1)
        try:
            _, plain = await ring.create(KeyBody(name="alice"))
            await ring.refresh()

            server.stop()
            server.start()  # same port, empty: a restart without persistence
            assert await starting.init_config({"price": 1}) == (1, {"price": 1})  # the new replica's own document
            await ring.refresh()  # what every replica does every second
            assert digest(plain) in ring._by_digest, "the running replica dropped its keys"
            assert await running.read_config() == (2, {"price": 2}), "the running replica's version is written back"
            elsewhere = KeyRing(starting, GatewayMetrics(), required=True)
            await elsewhere.refresh()
            assert digest(plain) in elsewhere._by_digest, "the keys are not written back with the config"
        finally:
            await running.close()
            await starting.close()


async def test_a_slow_redis_costs_a_key_with_a_budget_and_a_token_limit_one_round_trip_to_admit() -> None:
    """The budget's spend and the token window are read at once: with every Redis reply 0.2 s late, admitting a key
    that has both takes about one late reply, not two (reading them in turn added a round trip per check)."""
    with RedisServer() as server:
        async with behind_a_slow_link(server, "admit") as (link, store):
            ring = KeyRing(store, GatewayMetrics(), required=True)
            _, plain = await ring.create(KeyBody(name="alice", budget_usd_per_day=1.0, tokens_per_minute=1000))
            await ring.refresh()
            headers = {"Authorization": f"Bearer {plain}"}
            request = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
            await ring.admit(request)  # connections made, scripts loaded, on time
            link.delay_s = 0.2
            started = time.perf_counter()
            assert (await ring.admit(request)).name == "alice"
            took = time.perf_counter() - started
            assert 0.2 <= took < 0.35, f"admitting took {took:.2f} s with each reply 0.2 s late"
