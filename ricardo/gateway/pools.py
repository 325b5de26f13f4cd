"""Live state of pools and their backends in this gateway process.

A backend takes requests when its last health probe passed, it is not draining, it is not resting (it
could not be reached, or said it is overloaded: 429/503) and its outlier detector has it in service
(its recent answers completed; gateway/outlier.py).
"""

from __future__ import annotations

import base64
import itertools
import statistics
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ricardo.gateway.config import LimitsConfig, OutlierConfig, PoolConfig, Timeouts
from ricardo.gateway.metrics import PoolMetrics
from ricardo.gateway.outlier import OutlierDetector
from ricardo.gateway.telemetry import Telemetry
from ricardo.gateway.urls import redact, split_credentials
from ricardo.policies.external import external_load, share_per_request
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.types import PairSpec, PoolView

REST_BASE_S = 1.0
REST_MAX_S = 30.0
QUEUE_WINDOW_S = 2.0  # recent starts a pool's queueing delay is measured over
QUEUE_REFRESH_S = 0.01  # how long a pool's queueing delay, once measured, stands


@dataclass(eq=False)
class Backend:
    """One endpoint of a pool: its connection pool, its load, whether it may be used now."""

    url: str  # where requests go, without credentials (the session sends them)
    session: aiohttp.ClientSession
    outlier: OutlierDetector
    role: str = "unified"  # of a pair: "prefill" or "decode"
    shown: str = ""  # the configured URL with its password redacted: what logs, metrics and the admin API show
    in_flight: int = 0
    healthy: bool = True  # last health probe succeeded
    failures: int = 0  # unreachable or overloaded answers in a row, for the rest's back-off
    cooldown_until: float = 0.0  # resting until then
    rested_at: float = 0.0  # when the last failure that rests it came
    draining: bool = False
    last_clean_at: float = 0.0  # last clean answer or passed probe: a backend recently proven needs no probe
    last_probed_at: float = 0.0
    probe_completions: bool = True  # False once it refused a probe completion: probed with GET /v1/models
    telemetry: Telemetry | None = None  # its own /metrics, last scraped (gateway/telemetry.py)
    telemetry_tried_at: float = 0.0
    telemetry_misses: int = 0  # scrapes in a row, while healthy, that found no metrics we know
    # what its session authenticates with: the configured URL (credentials included) and the pool's api_key
    credentials: tuple[str, str | None] = field(default=("", None), repr=False)

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
        self.rested_at = now
        backoff = min(REST_MAX_S, REST_BASE_S * 2 ** (self.failures - 1))
        # a later failure extends the rest, never shortens it
        self.cooldown_until = max(self.cooldown_until, now + max(backoff, retry_after or 0.0))

    def reached(self, sent_at: float) -> None:
        """It took a request sent at `sent_at` (answered 200): whatever it said before then, it is not overloaded
        now. Not what it said since: a 200 to a request it took before answering another 429 ends no rest."""
        if self.rested_at <= sent_at:
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
    metrics: PoolMetrics = field(init=False)  # bound by GatewayState.apply
    _tiebreak: itertools.count = field(default_factory=itertools.count)
    _starts: deque[tuple[float, float]] = field(default_factory=deque)  # (when, time to first token ms)
    _waiting: dict[int, float] = field(default_factory=dict)  # streams sent and not started: key -> sent at
    _delay: tuple[float, float | None] = (-1.0, None)  # queue_delay_ms's last (when, value)
    # what a foreign request on its backends is charged while none of this gateway's is in flight, and how old their
    # /metrics may be to count (policies/external.py); set by GatewayState.apply
    typical_share: float = 0.0
    telemetry_max_age_s: float = 0.0

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
        computed_at, delay = self._delay
        if 0 <= now - computed_at < QUEUE_REFRESH_S:  # a median over hundreds of samples: not once per request
            return delay
        while self._starts and self._starts[0][0] < now - QUEUE_WINDOW_S:
            self._starts.popleft()
        samples = [ttft for _, ttft in self._starts] + [(now - sent) * 1000 for sent in self._waiting.values()]
        delay = statistics.median(samples) if samples else None
        self._delay = (now, delay)
        return delay

    @classmethod
    def new(
        cls,
        config: PoolConfig,
        models: tuple[str, ...],
        price_per_hour: float,
        timeouts: Timeouts,
        pair: PairSpec | None = None,
    ) -> Pool:
        """A pool; a pair's ledger is charged on its decode type, at the price of one prefill + one decode replica."""
        return cls(config, PoolLedger(config.name, config.kind_hardware, price_per_hour, models, pair=pair), timeouts)

    @property
    def pair(self) -> PairSpec | None:
        return self.ledger.pair

    @property
    def model(self) -> str:
        """The model a probe asks for."""
        return self.models[0]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hardware(self) -> str:
        return self.config.kind_hardware

    @property
    def price_per_hour(self) -> float:
        return self.ledger.price_per_hour

    @property
    def models(self) -> tuple[str, ...]:
        return self.ledger.models

    def available_backends(self, now: float, role: str | None = None) -> list[Backend]:
        return [b for b in self.backends if b.available(now) and (role is None or b.role == role)]

    def view(self, now: float) -> PoolView:
        if self.pair is None:
            available = self.available_backends(now)
            return self.ledger.view(len(available), external_load=self.external_load(available, now))
        # a pair takes a request only with both sides up: with either at 0, it shows 0 replicas of both
        prefill = len(self.available_backends(now, "prefill"))
        decode = len(self.available_backends(now, "decode"))
        return self.ledger.view(prefill if decode else 0, decode if prefill else 0)

    def external_load(self, backends: list[Backend], now: float) -> float:
        """Replicas' worth of load `backends` run or queue beyond this gateway's requests, by their own /metrics."""
        reports = [b.telemetry for b in backends if b.telemetry is not None]
        if not reports:
            return 0.0
        ledger = self.ledger
        share = share_per_request(ledger.in_flight, ledger.in_flight_load, self.typical_share)
        return external_load(reports, share, now, self.telemetry_max_age_s)

    def pick_backend(self, now: float, exclude: set[Backend], role: str | None = None) -> Backend | None:
        """The available backend (of `role`, if given) with the fewest requests in flight (rotating among ties)."""
        candidates = [b for b in self.available_backends(now, role) if b not in exclude]
        if not candidates:
            return None
        least = min(b.in_flight for b in candidates)
        tied = [b for b in candidates if b.in_flight == least]
        return tied[next(self._tiebreak) % len(tied)]


class QueueDelays(Mapping[str, float | None]):
    """The pools' queueing delays as admission reads them: measured when asked for, and it asks for the first
    pool that can take the request (nearly always the first ranked) only."""

    def __init__(self, pools: dict[str, Pool], names: list[str], now: float):
        self._pools, self._names, self._now = pools, names, now

    def __getitem__(self, name: str) -> float | None:
        if name not in self._names:
            raise KeyError(name)
        return self._pools[name].queue_delay_ms(self._now)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def new_backend(
    configured: str, limits: LimitsConfig, outlier: OutlierConfig, api_key: str | None, role: str = "unified"
) -> Backend:
    """A backend for the URL as configured: requests go to it without its credentials, which the session sends
    as basic auth; logs, metrics and the admin API show it redacted."""
    url, credentials = split_credentials(configured)
    session = new_session(limits, api_key, credentials)
    backend = Backend(url.rstrip("/"), session, OutlierDetector(outlier), role=role, shown=redact(configured))
    backend.credentials = (configured, api_key)
    return backend


def new_session(
    limits: LimitsConfig, api_key: str | None, credentials: tuple[str, str] | None = None
) -> aiohttp.ClientSession:
    """One pooled client session per backend, so one slow backend cannot starve the others' connections.
    The backend's credentials: a bearer `api_key`, or the user and password its URL carried (basic auth).
    No timeout here: each request sets the connect timeout of its pool, and the gateway enforces the first-byte
    and idle timeouts itself (aiohttp's sock_read would apply one read timeout to both: the idle timeout
    silently capped the wait for the first byte)."""
    headers = None
    if api_key:
        headers = {"Authorization": f"Bearer {api_key}"}
    elif credentials:  # RFC 7617, as aiohttp's BasicAuth (deprecated in 3.14) encoded it: latin-1
        headers = {"Authorization": "Basic " + base64.b64encode(":".join(credentials).encode("latin1")).decode()}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limits.connections_per_backend, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        headers=headers,
        # a backend's cookies are not kept: the session serves every client, and the jar costs every request
        cookie_jar=aiohttp.DummyCookieJar(),
        trace_configs=[_REUSED_CONNECTION],  # for `post`: whether a request went on a kept-alive connection
    )


class _Sent:
    """One POST as its trace saw it: whether it went on a kept-alive connection (one the server may have closed)."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _note_reuse(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceConnectionReuseconnParams
) -> None:
    if isinstance(context.trace_request_ctx, _Sent):
        context.trace_request_ctx.reused = True


_REUSED_CONNECTION = aiohttp.TraceConfig()
_REUSED_CONNECTION.on_connection_reuseconn.append(_note_reuse)


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
    """POST on a pooled connection, sent again once on a fresh one if the server closed the pooled one under it.

    Some servers close a kept-alive connection after a streamed answer without saying so (llama.cpp's
    llama-server): the next request on it then meets a closed socket before any answer, through no fault of the
    backend's. aiohttp sends such requests again by itself only for idempotent methods; a POST that got no
    answer on a kept-alive connection is sent once more here (a backend that is really gone fails the second time
    too, and is counted then). Not one that went on a new connection: the backend got that one and may be working
    on it (it died, or dropped the connection, under way), and would do the work twice."""
    sent = _Sent()
    try:
        return await session.post(url, trace_request_ctx=sent, **kwargs)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if isinstance(exc, aiohttp.ClientConnectorError) or not sent.reused:  # not a stale connection
            raise
        return await session.post(url, **kwargs)
