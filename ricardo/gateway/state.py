"""Everything one gateway process holds: config, pools, profiles, policy, predictor, metrics, store.

The part operators change at run time (pools, backends, prices, SLO, policy: `SharedConfig`) lives
in the state store, versioned. Every replica applies each new version as it arrives; requests
only ever read the state already applied, never the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ricardo.errors import InvalidInput
from ricardo.gateway.config import (
    ConfigError,
    GatewayConfig,
    PoolConfig,
    SharedConfig,
    backend_id,
    backend_key,
    check_shared,
    upstream_timeouts,
)
from ricardo.gateway.health import Health
from ricardo.gateway.keys import KeyRing
from ricardo.gateway.learning import PredictorLearning, load_predictor
from ricardo.gateway.metrics import GatewayMetrics, PoolMetrics, forget
from ricardo.gateway.pools import Backend, Pool, new_backend
from ricardo.gateway.shaping import Shaper
from ricardo.gateway.store import StateStore, open_store
from ricardo.gateway.urls import Listener, is_loopback, redact
from ricardo.policies.external import STALE_INTERVALS, typical_share
from ricardo.policies.routing import get_policy, pair_request_cost_usd, request_cost_usd
from ricardo.policies.types import SLO, Choice, PairSpec, PoolView, RequestShape
from ricardo.profiles.catalog import ProfileBook, load_default_book, modelled_slos

if TYPE_CHECKING:
    from ricardo.gateway.trip import Trip

log = logging.getLogger("ricardo.gateway")


class GatewayState:
    def __init__(self, config: GatewayConfig, seed: int | None = None, store: StateStore | None = None):
        self.config = config
        self.models = set(config.models)
        self.replica_id = config.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # one profile book per model (`config.profiles`: which shipped book a model id goes by), and per model the
        # books at each TPOT SLO the engine model's tables are shipped for
        by_profile = {
            name: load_default_book(name, price_set=config.price_set, include_estimated=True)
            for name in {config.profile_of(m) for m in config.models}
        }
        self.books = {model: by_profile[config.profile_of(model)] for model in config.models}
        self.book = self.books[config.models[0]]  # the gateway's first model's: its price set, unknown model ids
        at_slo = {
            (name, slo): load_default_book(name, price_set=config.price_set, include_estimated=True, slo_tpot_ms=slo)
            for name in by_profile
            for slo in modelled_slos(name)
            if slo != by_profile[name].slo_tpot_ms
        }
        self._books = {
            (model, slo): book
            for model in config.models
            for (name, slo), book in at_slo.items()
            if name == config.profile_of(model)
        }  # by (model, TPOT SLO)
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
        self.health = Health(self)
        self.trips: set[Trip] = set()  # requests in flight, for a graceful shutdown
        # every API request's task while in flight (a completion also before it is a Trip), for the same
        self.passing: set[asyncio.Task] = set()
        self.draining = False  # shutting down: /readyz says 503
        self.refusing = False  # shutting down: new requests are refused
        # the shared config version this replica could not apply, and why: it runs an older one meanwhile, and its
        # admin changes, made on top of the version it runs, cannot commit (admin._commit says so)
        self.refused: tuple[int, str] | None = None
        self.check(self.shared)

    @property
    def policy_name(self) -> str:
        return self.shared.policy

    # -- decisions --------------------------------------------------------------------------
    def book_for(self, model: str, slo: SLO) -> ProfileBook:
        """The model's capacity tables at the request's TPOT SLO where they are shipped (40 ms), else its book at
        its own SLO (at another SLO, `capacity_share` scales their concurrency linearly: a first-order guess)."""
        book = self._books.get((model, slo.tpot_ms))
        return book if book is not None else self.model_book(model)

    def model_book(self, model: str) -> ProfileBook:
        """The model's book at its own SLO (the first model's for a model id the gateway does not serve)."""
        return self.books.get(model, self.book)

    def views(self, shape: RequestShape, now: float) -> list[PoolView]:
        """The pools that serve the request's model, as the policy sees them now."""
        return [p.view(now) for p in self.pools.values() if shape.model in p.models]

    def rank(self, shape: RequestShape, views: list[PoolView]) -> list[Choice]:
        book = self.book_for(shape.model, shape.slo)
        return self.policy(shape, views, book, draw=self._rng.random(), index=next(self._index))

    def request_cost(
        self, pool: Pool, input_tokens: int, output_tokens: int, slo: SLO, model: str | None = None
    ) -> float:
        """Dollars of the pool's time a request of this size uses at the profile's operating point, on the tables
        the request was ranked by (its model's at its SLO). A pair: its prefill and decode sides' time at their own
        prices (`pair_request_cost_usd`); where the role model cannot serve the size, each side as a unified replica
        of its type would be for its part (an upper bound)."""
        model = model or self.config.pool_model(pool.config)
        book = self.book_for(model, slo)
        pair = pool.pair
        if pair is None:
            return request_cost_usd(book, pool.hardware, pool.price_per_hour, input_tokens, output_tokens)
        cost = pair_request_cost_usd(book, pair, input_tokens, output_tokens, slo)
        if cost > 0:
            return cost
        prefill = request_cost_usd(book, pair.prefill_hardware, pair.prefill_price_per_hour, input_tokens, 1)
        decode = request_cost_usd(book, pair.decode_hardware, pair.decode_price_per_hour, input_tokens, output_tokens)
        return prefill + decode

    # -- shared config ------------------------------------------------------------------------
    def check(self, shared: SharedConfig) -> None:
        """Raise ConfigError (or UnsafeURL) if this replica could not apply `shared` (unknown hardware, model,
        policy, a backend that is this gateway itself)."""
        check_shared(shared, self.config.models)
        for pool in shared.pools:
            upstream_timeouts(self.config.limits, pool)
            book = self.model_book(self.config.pool_model(pool))
            for role in pool.roles():
                for url in role.backends:
                    self.listener.check(str(url))
                side = f" ({role.role})" if pool.is_pair else ""
                if not book.has(role.hardware):
                    raise ConfigError(
                        f"pool {pool.name}{side}: no profile of {book.model} for hardware {role.hardware!r}; "
                        f"known: {', '.join(book.hardware_names())}"
                    )
                if role.price_per_hour is None:
                    try:
                        book.price(role.hardware)
                    except ValueError:
                        raise ConfigError(
                            f"pool {pool.name}{side}: price set {self.config.price_set!r} has no price for "
                            f"{role.hardware}; give price_per_hour"
                        ) from None

    def role_prices(self, pool_config: PoolConfig) -> dict[str, float]:
        """$/h per replica of each role of the pool (its override, else the price set's)."""
        book = self.model_book(self.config.pool_model(pool_config))
        return {
            role.role: role.price_per_hour if role.price_per_hour is not None else book.price(role.hardware)
            for role in pool_config.roles()
        }

    def apply(self, version: int, doc: dict) -> None:
        """Make `doc` (a SharedConfig) the state in force; keep live backends and their connections."""
        try:
            shared = SharedConfig.model_validate(doc)
            self.check(shared)
        except (ValidationError, InvalidInput) as exc:
            log.error("config version %d refused, keeping version %d: %s", version, self.version, redact(str(exc)))
            self.refused = (version, redact(str(exc)))
            return
        self.refused = None
        old_backends = {(p.name, b.role, backend_id(b.shown)): b for p in self.pools.values() for b in p.backends}
        slo = SLO(shared.slo.ttft_ms, shared.slo.tpot_ms)
        pools: dict[str, Pool] = {}
        for pool_config in shared.pools:
            prices = self.role_prices(pool_config)
            pair = pair_spec(pool_config, prices)
            price = sum(prices.values())  # a pair's unit is one prefill and one decode replica
            models = tuple(self.config.pool_models(pool_config))
            timeouts = upstream_timeouts(self.config.limits, pool_config)
            pool = self.pools.get(pool_config.name)
            if pool is None or _kinds(pool.config) != _kinds(pool_config):
                pool = Pool.new(pool_config, models, price, timeouts, pair)
            pool.config, pool.timeouts = pool_config, timeouts
            pool.metrics = PoolMetrics(self.metrics, pool.name, models, shared.policy)
            pool.ledger.reprice(price, models, pair)
            if pair is None:  # a pair's view has no external load yet (policies/external.py)
                pool.typical_share = typical_share(
                    self.book_for(self.config.pool_model(pool_config), slo), pool.hardware, slo
                )
            pool.telemetry_max_age_s = STALE_INTERVALS * self.config.health_interval_s
            pool.backends = []
            for role in pool_config.roles():
                draining = {backend_id(u) for u in role.draining}
                for configured in map(backend_key, role.backends):
                    key = (pool.name, role.role, backend_id(configured))
                    backend = old_backends.pop(key, None)
                    # new, or its credentials changed (a redacted URL hides a new password, and the api_key)
                    if backend is None or backend.credentials != (configured, pool_config.api_key):
                        if backend is not None:
                            old_backends[key] = backend  # closed below
                        backend = new_backend(
                            configured, self.config.limits, self.config.outlier, pool_config.api_key, role.role
                        )
                    backend.draining = backend_id(configured) in draining
                    pool.backends.append(backend)
            pools[pool.name] = pool
            self.metrics.price.labels(pool.name).set(price)
        for backend in old_backends.values():  # removed: close once their requests are done
            self._tasks.append(asyncio.create_task(_close_when_idle(backend)))
        for name in self.pools.keys() - pools.keys():  # removed: its price leaves /metrics
            forget([self.metrics.price], name)
        self.pools, self.shared, self.version = pools, shared, version
        self.policy = get_policy(shared.policy)
        self.shaper.default_slo = slo
        self.metrics.config_version.set(version)
        log.info("config version %d in force: %d pools, policy %s", version, len(pools), shared.policy)

    @contextlib.contextmanager
    def passing_through(self) -> Iterator[None]:
        """The calling handler's task counted as an API request in flight while inside: a graceful shutdown waits
        for it (gateway/shutdown.py), a completion also before it is a Trip."""
        task = asyncio.current_task()
        assert task is not None  # a handler runs in its task
        self.passing.add(task)
        try:
            yield
        finally:
            self.passing.discard(task)

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
        """Backends that can take a request now, per pool (a pair: its prefill side's, 0 without a decode side)."""
        now = time.monotonic()
        return {name: pool.view(now).replicas for name, pool in self.pools.items()}


def pair_spec(pool_config: PoolConfig, prices: dict[str, float]) -> PairSpec | None:
    """The PairSpec of a pair pool (None for a unified one), at the role prices in force."""
    if pool_config.prefill is None or pool_config.decode is None or pool_config.link_gbps is None:
        return None
    return PairSpec(
        prefill_hardware=pool_config.prefill.hardware,
        decode_hardware=pool_config.decode.hardware,
        prefill_price_per_hour=prices["prefill"],
        decode_price_per_hour=prices["decode"],
        link_gbps=pool_config.link_gbps,
    )


def _kinds(pool_config: PoolConfig) -> tuple[str, ...]:
    """The hardware of each role: a pool whose hardware changed starts a new ledger."""
    return tuple(f"{role.role}:{role.hardware}" for role in pool_config.roles())


async def _close_when_idle(backend: Backend, patience_s: float = 600.0) -> None:
    deadline = time.monotonic() + patience_s
    while backend.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await backend.session.close()
