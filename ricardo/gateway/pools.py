"""Live state of pools and their backends in this gateway process.

A backend takes requests when its last health probe passed, it is not draining, it is not resting (it
could not be reached, or said it is overloaded: 429/503) and its outlier detector has it in service
(its recent answers completed; gateway/outlier.py).
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ricardo.gateway.config import LimitsConfig, OutlierConfig, PoolConfig, Timeouts
from ricardo.gateway.outlier import OutlierDetector
from ricardo.gateway.telemetry import Telemetry
from ricardo.gateway.urls import redact, split_credentials
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.types import PoolView

REST_BASE_S = 1.0
REST_MAX_S = 30.0
QUEUE_WINDOW_S = 2.0  # recent starts a pool's queueing delay is measured over


@dataclass(eq=False)
class Backend:
    """One endpoint of a pool: its connection pool, its load, whether it may be used now."""

    url: str  # where requests go, without credentials (the session sends them)
    session: aiohttp.ClientSession
    outlier: OutlierDetector
    shown: str = ""  # the configured URL with its password redacted: what logs, metrics and the admin API show
    in_flight: int = 0
    healthy: bool = True  # last health probe succeeded
    failures: int = 0  # unreachable or overloaded answers in a row, for the rest's back-off
    cooldown_until: float = 0.0  # resting until then
    draining: bool = False
    last_clean_at: float = 0.0  # last clean answer or passed probe: a backend recently proven needs no probe
    last_probed_at: float = 0.0
    probe_completions: bool = True  # False once it refused a probe completion: probed with GET /v1/models
    telemetry: Telemetry | None = None  # its own /metrics, last scraped (gateway/telemetry.py)
    telemetry_tried_at: float = 0.0
    telemetry_misses: int = 0  # scrapes in a row, while healthy, that found no metrics we know

    def last_checked_at(self) -> float:
        return max(self.last_clean_at, self.last_probed_at)

    def __post_init__(self) -> None:
        self.shown = self.shown or self.url

    def available(self, now: float) -> bool:
        return self.healthy and not self.draining and now >= self.cooldown_until and self.outlier.takes_requests()

    def rest(self, now: float, retry_after: float | None = None) -> None:
        """It could not be reached or said it is overloaded (429, 503): rest it at once, 1 s doubling to 30 s
        (or as long as its Retry-After says). No trial needed to come back: the next attempt is one, and an
        attempt that fails before the first byte costs the client nothing but the retry."""
        self.failures += 1
        backoff = min(REST_MAX_S, REST_BASE_S * 2 ** (self.failures - 1))
        # a later failure extends the rest, never shortens it
        self.cooldown_until = max(self.cooldown_until, now + max(backoff, retry_after or 0.0))

    def reached(self) -> None:
        """It took a request (answered 200): whatever it said before, it is not overloaded now."""
        self.failures = 0
        self.cooldown_until = 0.0

    def outcome(self, now: float, ok: bool, trial: bool = False) -> bool:
        """How an answer ended (`trial`: the half-open trial's; gateway/outlier.py); True if that ejects it."""
        if ok:
            self.last_clean_at = now
        return self.outlier.record(now, ok, trial)


@dataclass(eq=False)
class Pool:
    config: PoolConfig
    ledger: PoolLedger  # requests in flight, their load, live latency: the same accounting as the simulator's
    timeouts: Timeouts
    backends: list[Backend] = field(default_factory=list)
    _tiebreak: itertools.count = field(default_factory=itertools.count)
    _starts: deque[tuple[float, float]] = field(default_factory=deque)  # (when, time to first token ms)
    _waiting: dict[int, float] = field(default_factory=dict)  # streams sent and not started: key -> sent at

    def waits(self, key: int, sent: float) -> None:
        """A stream was sent to one of the pool's backends and waits for its first token."""
        self._waiting[key] = sent

    def started(self, key: int, now: float) -> None:
        """Its first token arrived."""
        sent = self._waiting.pop(key, None)
        if sent is not None:
            self._starts.append((now, (now - sent) * 1000))

    def left(self, key: int) -> None:
        """It ended (or moved to another backend) without a first token here."""
        self._waiting.pop(key, None)

    def queue_delay_ms(self, now: float) -> float | None:
        """How long streams wait for their first token here now: the median over the streams that started in the
        last QUEUE_WINDOW_S (their time to first token) and those still waiting (how long they have waited so
        far, a lower bound: a queue that grows shows in it before its requests start); None without either."""
        while self._starts and self._starts[0][0] < now - QUEUE_WINDOW_S:
            self._starts.popleft()
        samples = [ttft for _, ttft in self._starts] + [(now - sent) * 1000 for sent in self._waiting.values()]
        return statistics.median(samples) if samples else None

    @classmethod
    def new(cls, config: PoolConfig, models: tuple[str, ...], price_per_hour: float, timeouts: Timeouts) -> Pool:
        return cls(config, PoolLedger(config.name, config.hardware, price_per_hour, models), timeouts)

    @property
    def model(self) -> str:
        """The model a probe asks for."""
        return self.models[0]

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


def new_backend(configured: str, limits: LimitsConfig, outlier: OutlierConfig, api_key: str | None) -> Backend:
    """A backend for the URL as configured: requests go to it without its credentials, which the session sends
    as basic auth; logs, metrics and the admin API show it redacted."""
    url, credentials = split_credentials(configured)
    session = new_session(limits, api_key, credentials)
    return Backend(url.rstrip("/"), session, OutlierDetector(outlier), shown=redact(configured))


def new_session(
    limits: LimitsConfig, api_key: str | None, credentials: tuple[str, str] | None = None
) -> aiohttp.ClientSession:
    """One pooled client session per backend, so one slow backend cannot starve the others' connections.
    The backend's credentials: a bearer `api_key`, or the user and password its URL carried (basic auth).
    No timeout here: each request sets the connect timeout of its pool, and the gateway enforces the first-byte
    and idle timeouts itself (aiohttp's sock_read would apply one read timeout to both: the idle timeout
    silently capped the wait for the first byte)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limits.connections_per_backend, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        headers=headers,
        auth=aiohttp.BasicAuth(*credentials) if credentials else None,
    )


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
    """POST on a pooled connection, sent again once on a fresh one if the server closed the pooled one under it.

    Some servers close a kept-alive connection after a streamed answer without saying so (llama.cpp's
    llama-server): the next request on it then meets a closed socket before any answer, through no fault of the
    backend's. aiohttp sends such requests again by itself only for idempotent methods; a POST that got no
    answer at all did nothing on the backend, so it is sent once more here (a backend that is really gone fails
    the second time too, and is counted then)."""
    try:
        return await session.post(url, **kwargs)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):  # could not connect at all: not a stale connection
            raise
        return await session.post(url, **kwargs)
