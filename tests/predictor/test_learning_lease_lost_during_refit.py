"""A replica that loses the refit lease while its refit runs (gateway/learning.py): the new holder's model is what the
store serves, and every replica must end up serving it, the old holder included, whatever order the two refits end
in."""

from __future__ import annotations

import asyncio

from ricardo.gateway.learning import LEASE, MODEL_BLOB
from ricardo.gateway.store import MemoryStore
from ricardo.predictor.model import FittedModel

from .synthetic import requests
from .test_gateway_learning import replica, reservoir, serve, until

__all__ = ["reservoir"]  # the module-scoped fixture, shared

SLOW = dict(sync_interval_s=30.0)  # leases last 90 s: only the test moves them


async def test_a_replica_whose_refit_ends_after_it_lost_the_lease_serves_the_stores_model(reservoir):
    store = MemoryStore()
    a, b = replica(store, "a", reservoir, **SLOW), replica(store, "b", reservoir, **SLOW)
    serve(a, requests(200, seed=31))
    serve(b, requests(200, seed=32))
    # a's refit takes long (a busy machine: the niced worker gets little CPU); the gate stands for that
    gate = asyncio.Event()
    refit = a.predictor.refit_async

    async def slow_refit(executor):
        await gate.wait()
        return await refit(executor)

    a.predictor.refit_async = slow_refit  # type: ignore[method-assign]
    try:
        await a.tick()  # a holds the lease and starts refitting
        assert a.status()["refitting"] and a.holder
        await store.release_lease(LEASE, "a")  # a tick of a's came late: the lease expired meanwhile
        await b.tick()  # b holds it now, and refits
        assert b.holder
        await until(lambda: b.refits == 1 and b.model_version > 0)
        await a.tick()  # a, a follower now, adopts b's model from the store
        assert not a.holder and a.model_version == b.model_version
        gate.set()  # a's refit ends: it must not replace the store's model on a for good
        await until(lambda: not a.status()["refitting"])
        for _ in range(2):
            await a.tick()
        _, blob = await store.get_blob(MODEL_BLOB)
        served = FittedModel.from_bytes(blob).info
        assert b.predictor.info == served  # the holder serves the store's model ...
        assert a.predictor.info == served, (a.predictor.info, served)  # ... and so must every other replica
    finally:
        gate.set()
        await asyncio.gather(a.close(), b.close())
