"""Everything one gateway process holds: config, pools, profiles, policy, predictor, metrics, store.

The part operators change at run time (pools, backends, prices, SLO, policy: `SharedConfig`) lives
in the state store, versioned. Every replica applies each new version as it arrives; requests
only ever read the state already applied, never the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ricardo.errors import InvalidInput
from ricardo.gateway.config import (
    ConfigError,
    GatewayConfig,
    SharedConfig,
    backend_id,
    backend_key,
    check_shared,
    upstream_timeouts,
)
from ricardo.gateway.health import Health
from ricardo.gateway.keys import KeyRing
from ricardo.gateway.learning import PredictorLearning, load_predictor
from ricardo.gateway.metrics import GatewayMetrics, PoolMetrics
from ricardo.gateway.pools import Backend, Pool, new_backend
from ricardo.gateway.shaping import Shaper
from ricardo.gateway.store import StateStore, open_store
from ricardo.gateway.urls import Listener, is_loopback, redact
from ricardo.policies.routing import get_policy, request_cost_usd
from ricardo.policies.types import SLO, Choice, PoolView, RequestShape
from ricardo.profiles.catalog import ProfileBook, load_default_book, modelled_slos

if TYPE_CHECKING:
    from ricardo.gateway.trip import Trip

log = logging.getLogger("ricardo.gateway")


class GatewayState:
    def __init__(self, config: GatewayConfig, seed: int | None = None, store: StateStore | None = None):
        self.config = config
        self.models = set(config.models)
        self.replica_id = config.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.book = load_default_book(price_set=config.price_set, include_estimated=True)
        self._books = {
            slo: load_default_book(price_set=config.price_set, include_estimated=True, slo_tpot_ms=slo)
            for slo in modelled_slos()
        }  # by TPOT SLO
        self.metrics = GatewayMetrics()
        self.listener = Listener(config.host, config.port)
        self.store = store or open_store(config.redis_url)
        self.pools: dict[str, Pool] = {}
        self.shared = config.shared()
        self.version = 0
        self.policy = get_policy(self.shared.policy)
        predictor, source = load_predictor(config.predictor.model_path)
        self.shaper = Shaper(
            SLO(self.shared.slo.ttft_ms, self.shared.slo.tpot_ms),
            config.tokenizer,
            predictor,
            max_header_priority=config.admission.max_header_priority,
        )
        self.learning = PredictorLearning(
            predictor, self.store, config.predictor, self.replica_id, self.metrics.registry, source
        )
        self.shaper.outcome_hooks.append(self.learning.observe)
        required = config.auth.require_api_keys
        self.keys = KeyRing(self.store, self.metrics, not is_loopback(config.host) if required is None else required)
        self._index = itertools.count()
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task] = []
        # called with (prompt_tokens, completion_tokens) of every request that completed with usage
        self.outcome_listeners: list[Callable[[int, int], None]] = []
        self.health = Health(self)
        self.trips: set[Trip] = set()  # requests in flight, for a graceful shutdown
        self.draining = False  # shutting down: /readyz says 503
        self.refusing = False  # shutting down: new requests are refused
        self.check(self.shared)

    @property
    def policy_name(self) -> str:
        return self.shared.policy

    # -- decisions --------------------------------------------------------------------------
    def book_for(self, slo: SLO) -> ProfileBook:
        """The capacity tables at the request's TPOT SLO where they are shipped (40 ms), else the measured ones
        (at another SLO, `capacity_share` scales their concurrency linearly: a first-order guess)."""
        return self._books.get(slo.tpot_ms, self.book)

    def views(self, shape: RequestShape, now: float) -> list[PoolView]:
        """The pools that serve the request's model, as the policy sees them now."""
        return [p.view(now) for p in self.pools.values() if shape.model in p.models]

    def rank(self, shape: RequestShape, views: list[PoolView]) -> list[Choice]:
        return self.policy(shape, views, self.book_for(shape.slo), draw=self._rng.random(), index=next(self._index))

    def request_cost(self, pool: Pool, input_tokens: int, output_tokens: int) -> float:
        """Dollars of the pool's time a request of this size uses at the profile's operating point."""
        return request_cost_usd(self.book, pool.hardware, pool.price_per_hour, input_tokens, output_tokens)

    # -- shared config ------------------------------------------------------------------------
    def check(self, shared: SharedConfig) -> None:
        """Raise ConfigError (or UnsafeURL) if this replica could not apply `shared` (unknown hardware, model,
        policy, a backend that is this gateway itself)."""
        check_shared(shared, self.config.models)
        for pool in shared.pools:
            for url in pool.backends:
                self.listener.check(str(url))
            upstream_timeouts(self.config.limits, pool)
            if not self.book.has(pool.hardware):
                raise ConfigError(
                    f"pool {pool.name}: no profile for hardware {pool.hardware!r}; "
                    f"known: {', '.join(self.book.hardware_names())}"
                )
            if pool.price_per_hour is None:
                try:
                    self.book.price(pool.hardware)
                except ValueError:
                    raise ConfigError(
                        f"pool {pool.name}: price set {self.config.price_set!r} has no price for "
                        f"{pool.hardware}; give price_per_hour"
                    ) from None

    def apply(self, version: int, doc: dict) -> None:
        """Make `doc` (a SharedConfig) the state in force; keep live backends and their connections."""
        try:
            shared = SharedConfig.model_validate(doc)
            self.check(shared)
        except (ValidationError, InvalidInput) as exc:
            log.error("config version %d refused, keeping version %d: %s", version, self.version, redact(str(exc)))
            return
        old_backends = {(p.name, backend_id(b.shown)): b for p in self.pools.values() for b in p.backends}
        pools: dict[str, Pool] = {}
        for pool_config in shared.pools:
            price = pool_config.price_per_hour
            if price is None:
                price = self.book.price(pool_config.hardware)
            models = tuple(self.config.pool_models(pool_config))
            timeouts = upstream_timeouts(self.config.limits, pool_config)
            pool = self.pools.get(pool_config.name)
            if pool is None or pool.hardware != pool_config.hardware:
                pool = Pool.new(pool_config, models, price, timeouts)
            pool.config, pool.timeouts = pool_config, timeouts
            pool.metrics = PoolMetrics(self.metrics, pool.name, models, shared.policy)
            pool.ledger.reprice(price, models)
            draining = {backend_id(u) for u in pool_config.draining}
            pool.backends = []
            for configured in map(backend_key, pool_config.backends):
                key = backend_id(configured)
                backend = old_backends.pop((pool.name, key), None)
                if backend is None or backend.shown != redact(configured):  # new, or its credentials changed
                    if backend is not None:
                        old_backends[(pool.name, key)] = backend  # closed below
                    backend = new_backend(configured, self.config.limits, self.config.outlier, pool_config.api_key)
                backend.draining = key in draining
                pool.backends.append(backend)
            pools[pool.name] = pool
            self.metrics.price.labels(pool.name).set(price)
        for (_, _), backend in old_backends.items():  # removed: close once their requests are done
            self._tasks.append(asyncio.create_task(_close_when_idle(backend)))
        self.pools, self.shared, self.version = pools, shared, version
        self.policy = get_policy(shared.policy)
        self.shaper.default_slo = SLO(shared.slo.ttft_ms, shared.slo.tpot_ms)
        self.metrics.config_version.set(version)
        log.info("config version %d in force: %d pools, policy %s", version, len(pools), shared.policy)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        version, doc = await self.store.init_config(self.shared.model_dump(mode="json"))
        self.apply(version, doc)
        self.store.watch_config(self.apply)
        await self.store.start()
        await self.learning.start()
        await self.keys.start()
        await self.health.probe_all()
        self._tasks.append(asyncio.create_task(self.health.run()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.learning.close()
        await self.keys.close()
        await self.store.close()
        for pool in self.pools.values():
            for backend in pool.backends:
                await backend.session.close()

    def ready(self) -> dict[str, int]:
        now = time.monotonic()
        return {name: len(pool.available_backends(now)) for name, pool in self.pools.items()}


async def _close_when_idle(backend: Backend, patience_s: float = 600.0) -> None:
    deadline = time.monotonic() + patience_s
    while backend.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await backend.session.close()
