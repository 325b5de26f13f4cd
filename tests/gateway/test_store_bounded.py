"""What a replica leaves in Redis, and holds while Redis is down, stays bounded: by the replicas alive, not by how
many ever ran or how long an outage lasts."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from ricardo.gateway.config import PredictorConfig
from ricardo.gateway.keys import KeyBody, KeyRing, today
from ricardo.gateway.learning import LEASE, OUTBOX_BLOB, PredictorLearning, load_predictor
from ricardo.gateway.metrics import GatewayMetrics
from ricardo.gateway.store import RedisStore, StoreUnavailable
from ricardo.predictor.features import features_from_body

from tests.redis_server import RedisServer, available

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not available(), reason="no redis-server binary")]


async def test_the_outbox_of_outcomes_of_a_replica_that_stopped_expires() -> None:
    # Every process is a new replica id (hostname-pid-random): an outbox kept for good is one more blob of up to
    # `shared_outcomes` outcomes in Redis per replica ever started, deploy after deploy.
    with RedisServer() as server:
        store = RedisStore(server.url, "outbox", timeout_s=5.0)
        predictor, _ = load_predictor(None)
        follower = PredictorLearning(predictor, store, PredictorConfig(sync_interval_s=0.05), "stopped")
        try:
            assert await store.acquire_lease(LEASE, "refitter", 60)  # another replica refits
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            follower.observe(features_from_body(body, 20), 7)
            await follower.tick()
            async with Redis.from_url(server.url) as raw:
                key = f"outbox:blob:{OUTBOX_BLOB}stopped"
                assert await raw.exists(key)
                assert await raw.pttl(key) > 0, "the outbox outlives its replica for good"
        finally:
            await follower.close()
            await store.close()


async def test_an_idle_replica_keeps_its_outbox_of_outcomes_alive(monkeypatch) -> None:
    # An outbox that expired while its replica runs would be written back by the refitting replica's copy, for good.
    monkeypatch.setattr("ricardo.gateway.learning.OUTBOX_TTL_S", 0.6)
    with RedisServer() as server:
        store = RedisStore(server.url, "idle", timeout_s=5.0)
        predictor, _ = load_predictor(None)
        follower = PredictorLearning(predictor, store, PredictorConfig(sync_interval_s=0.05), "idle")
        try:
            assert await store.acquire_lease(LEASE, "refitter", 60)
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            follower.observe(features_from_body(body, 20), 7)
            async with Redis.from_url(server.url) as raw:
                for _ in range(10):  # 1 s: past the outbox's time to live, with no new outcome
                    await follower.tick()
                    await asyncio.sleep(0.1)
                assert await raw.exists(f"idle:blob:{OUTBOX_BLOB}idle")
        finally:
            await follower.close()
            await store.close()


async def test_spend_kept_through_an_outage_is_a_batch_or_two_not_one_per_flush() -> None:
    # The flush task runs every second while Redis is down: one batch each is 3600 an hour, each summed by every
    # request's budget check (`spend_today`) and sent one by one once Redis is back.
    with RedisServer() as server:
        store = RedisStore(server.url, "outage", cooloff_s=0.05, max_cooloff_s=0.1)
        ring = KeyRing(store, GatewayMetrics(), required=True)
        try:
            key, _ = await ring.create(KeyBody(name="alice", budget_usd_per_day=100.0))
            server.stop()
            for _ in range(100):  # 100 s of an outage, a request a second
                ring.charge(key, 0.01, 1)
                with pytest.raises(StoreUnavailable):
                    await ring._flush()
            assert (await ring.spend_today())[key.id] == pytest.approx(1.0)
            assert len(ring._unsent) <= 2, f"{len(ring._unsent)} batches kept"
            server.start()
            await asyncio.sleep(0.2)  # past the breaker's cool-off
            sent = []
            add_spend = store.add_spend

            async def counted(*args, **kwargs) -> None:
                sent.append(args)
                await add_spend(*args, **kwargs)

            store.add_spend = counted  # type: ignore[method-assign]
            await ring._flush()
            assert len(sent) <= 2
            assert (await store.read_spend(today()))[key.id] == pytest.approx(1.0)
        finally:
            await ring.close()
            await store.close()
