"""Everything one gateway process holds: config, pools, profiles, policy, predictor, metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time

import aiohttp

from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.metrics import GatewayMetrics
from ricardo.gateway.pools import Backend, Pool, new_session
from ricardo.gateway.shaping import Shaper
from ricardo.policies.routing import capacity_share, get_policy
from ricardo.policies.types import SLO, Choice, RequestShape
from ricardo.profiles.catalog import load_default_book

log = logging.getLogger("ricardo.gateway")


class GatewayState:
    def __init__(self, config: GatewayConfig, seed: int | None = None):
        self.config = config
        self.models = set(config.models)
        self.book = load_default_book(price_set=config.price_set)
        self.policy_name = config.policy
        self.policy = get_policy(config.policy)
        self.shaper = Shaper(SLO(config.slo.ttft_ms, config.slo.tpot_ms), config.tokenizer)
        self.metrics = GatewayMetrics()
        self.pools: dict[str, Pool] = {}
        self._index = itertools.count()
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task] = []
        for pool_config in config.pools:
            if not self.book.has(pool_config.hardware):
                raise ValueError(f"pool {pool_config.name}: no profile for hardware {pool_config.hardware!r}; "
                                 f"known: {', '.join(self.book.hardware_names())}")
            price = pool_config.price_per_hour
            if price is None:
                price = self.book.price(pool_config.hardware)
            self.pools[pool_config.name] = Pool(pool_config, tuple(config.pool_models(pool_config)), price)
            self.metrics.price.labels(pool_config.name).set(price)

    # -- decisions --------------------------------------------------------------------------
    def rank(self, shape: RequestShape, now: float) -> list[Choice]:
        views = [p.view(now) for p in self.pools.values() if shape.model in p.models]
        return self.policy(shape, views, self.book, draw=self._rng.random(), index=next(self._index))

    def load_share(self, pool: Pool, shape: RequestShape) -> float:
        return capacity_share(self.book, pool.hardware, shape.input_tokens, shape.output_p50, shape.slo)

    def request_cost(self, pool: Pool, input_tokens: int, output_tokens: int) -> float:
        """Dollars of the pool's time a request of this size uses at the profile's operating point."""
        rps = self.book.max_rps(pool.hardware, input_tokens, output_tokens)
        return pool.price_per_hour / 3600.0 / rps if rps > 0 else 0.0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        limits = self.config.limits
        for pool in self.pools.values():
            for url in pool.config.backends:
                pool.backends.append(Backend(str(url).rstrip("/"), new_session(limits, pool.config.api_key)))
        await self.probe_all()
        self._tasks.append(asyncio.create_task(self._health_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self.pools.values():
            for backend in pool.backends:
                await backend.session.close()

    def ready(self) -> dict[str, int]:
        now = time.monotonic()
        return {name: len(pool.available_backends(now)) for name, pool in self.pools.items()}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.probe_all()

    async def probe_all(self) -> None:
        checks = [self._probe(pool, b) for pool in self.pools.values() for b in pool.backends]
        await asyncio.gather(*checks)
        now = time.monotonic()
        for pool in self.pools.values():
            self.metrics.in_flight.labels(pool.name).set(pool.in_flight)
            self.metrics.utilization.labels(pool.name).set(pool.view(now).utilization if pool.backends else 0)

    async def _probe(self, pool: Pool, backend: Backend) -> None:
        """A backend is healthy when it answers GET /v1/models, which every OpenAI-compatible server has."""
        try:
            async with backend.session.get(backend.url + "/v1/models",
                                           timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                healthy = response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            healthy = False
        if healthy != backend.healthy:
            log.warning("backend %s of pool %s is now %s", backend.url, pool.name, "up" if healthy else "down")
        backend.healthy = healthy
        self.metrics.backend_up.labels(pool.name, backend.url).set(1 if backend.available(time.monotonic()) else 0)
