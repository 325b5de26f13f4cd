"""Live state of pools and their backends in this gateway process."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import aiohttp

from ricardo.gateway.config import LimitsConfig, PoolConfig
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.types import PoolView

COOLDOWN_BASE_S = 1.0
COOLDOWN_MAX_S = 30.0
ERRORS_BEFORE_COOLDOWN = 3  # consecutive HTTP 500 / 502 / 504 answers (connection errors, 429 and 503: the first)


@dataclass(eq=False)
class Backend:
    """One endpoint of a pool: its connection pool, its load, whether it may be used now."""

    url: str  # where requests go, without credentials (the session sends them)
    session: aiohttp.ClientSession
    shown: str = ""  # the configured URL with its password redacted: what logs, metrics and the admin API show
    in_flight: int = 0
    healthy: bool = True  # last health probe succeeded
    failures: int = 0  # consecutive failures, for the cooldown's back-off
    cooldown_until: float = 0.0
    draining: bool = False

    def __post_init__(self) -> None:
        self.shown = self.shown or self.url

    def available(self, now: float) -> bool:
        return self.healthy and not self.draining and now >= self.cooldown_until

    def record_failure(self, now: float, retry_after: float | None = None, *, at_once: bool = True) -> None:
        """Count a failure and cool the backend down, with an exponential back-off. `at_once=False` (an HTTP 500,
        502 or 504: maybe this request's fault, a "poison" body that fails every backend) cools it down only from
        the ERRORS_BEFORE_COOLDOWN-th failure in a row, as Envoy's consecutive-5xx outlier detection does: one
        bad request must not take every backend out of service."""
        self.failures += 1
        strikes = self.failures if at_once else self.failures - ERRORS_BEFORE_COOLDOWN + 1
        if strikes <= 0:
            return
        backoff = min(COOLDOWN_MAX_S, COOLDOWN_BASE_S * 2 ** (strikes - 1))
        # a later failure extends the cooldown, never shortens it
        self.cooldown_until = max(self.cooldown_until, now + max(backoff, retry_after or 0.0))

    def record_success(self) -> None:
        self.failures = 0
        self.cooldown_until = 0.0


@dataclass(eq=False)
class Pool:
    config: PoolConfig
    ledger: PoolLedger  # requests in flight, their load, live latency: the same accounting as the simulator's
    backends: list[Backend] = field(default_factory=list)
    _tiebreak: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def new(cls, config: PoolConfig, models: tuple[str, ...], price_per_hour: float) -> Pool:
        return cls(config, PoolLedger(config.name, config.hardware, price_per_hour, models))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hardware(self) -> str:
        return self.config.hardware

    @property
    def price_per_hour(self) -> float:
        return self.ledger.price_per_hour

    @property
    def models(self) -> tuple[str, ...]:
        return self.ledger.models

    def available_backends(self, now: float) -> list[Backend]:
        return [b for b in self.backends if b.available(now)]

    def view(self, now: float) -> PoolView:
        return self.ledger.view(len(self.available_backends(now)))

    def pick_backend(self, now: float, exclude: set[Backend]) -> Backend | None:
        """The available backend with the fewest requests in flight (rotating among ties)."""
        candidates = [b for b in self.available_backends(now) if b not in exclude]
        if not candidates:
            return None
        least = min(b.in_flight for b in candidates)
        tied = [b for b in candidates if b.in_flight == least]
        return tied[next(self._tiebreak) % len(tied)]


def new_session(
    limits: LimitsConfig, api_key: str | None, credentials: tuple[str, str] | None = None
) -> aiohttp.ClientSession:
    """One pooled client session per backend, so one slow backend cannot starve the others' connections.
    The backend's credentials: a bearer `api_key`, or the user and password its URL carried (basic auth)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limits.connections_per_backend, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, connect=limits.connect_timeout_s, sock_read=limits.idle_timeout_s),
        headers=headers,
        auth=aiohttp.BasicAuth(*credentials) if credentials else None,
    )


def monotonic() -> float:
    return time.monotonic()
