"""Health of the backends: probes for backends not recently proven, and the trials that bring ejected ones back.

The probe is a tiny real completion (the pool's model, `max_tokens: 1`, not streamed), read whole and checked
as a client's answer would be: a backend whose `/v1/models` answers while its completions fail is found out.
A backend that does not take such a request (400, 404, 405, 422, 501: no chat template, another route) is
probed with `GET /v1/models` from then on. A probe carries the hop header like any request the gateway sends:
a backend that is another gateway is probed through it, and gateways that route to each other never pass.
To stay cheap, only a backend that has given no clean answer for `health_interval_s` is probed: traffic already
says how busy backends are doing. On the same interval every healthy backend's own `/metrics` is read
(gateway/telemetry.py). The same probe is the trial of an ejected backend once its ejection is over
(gateway/outlier.py): if it passes, one real request decides. A backend that answers a probe that it is overloaded
(429, 503) is rested, as that answer to a request rests it: up and busy, which says nothing of its answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp

from ricardo.gateway import telemetry
from ricardo.gateway.dispatch import BUSY_STATUSES, HOPS_HEADER, checked_json, retry_after_of
from ricardo.gateway.metrics import forget
from ricardo.gateway.pools import Backend, Pool, post

if TYPE_CHECKING:
    from ricardo.gateway.state import GatewayState

log = logging.getLogger("ricardo.gateway")

TICK_S = 0.5  # how often ejections that ended and backends due for a probe are looked for
NOT_FOR_PROBES = {400, 404, 405, 422, 501}  # the backend does not take the probe completion; it may still be healthy
MAX_TELEMETRY_MISSES = 3  # a healthy backend whose /metrics shows nothing we know this often is not asked again
PROBE_HEADERS = {"Content-Type": "application/json", "x-ricardo-probe": "1", HOPS_HEADER: "1"}


class Busy(Exception):
    """The backend answered the probe that it is overloaded (429, 503): it is up, and busy."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class Health:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._busy: set[Backend] = set()  # probed or on trial now
        self._scraping: set[Backend] = set()
        self._tasks: set[asyncio.Task] = set()
        self._gauged: tuple[set[str], set[tuple[str, str]]] = (set(), set())  # pools, (pool, backend) with gauges
        self._telemetry_shown: set[tuple[str, str]] = set()  # (pool, backend) whose figures /metrics shows

    async def probe_all(self) -> None:
        """Probe every backend now (at start)."""
        backends = [(pool, b) for pool in list(self.state.pools.values()) for b in pool.backends]
        await asyncio.gather(*(self._check(pool, b, trial=False) for pool, b in backends))
        self._gauges()

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(TICK_S)
                now = time.monotonic()
                interval = self.state.config.health_interval_s
                for pool in list(self.state.pools.values()):
                    for backend in pool.backends:
                        if backend in self._busy:
                            continue
                        if backend.outlier.probe_due(now):
                            self._spawn(pool, backend, trial=True)
                        elif backend.outlier.in_service() and now - backend.last_checked_at() >= interval:
                            self._spawn(pool, backend, trial=False)
                    for backend in pool.backends:
                        if self._scrape_due(backend, now, interval):
                            self._scrape(backend, now)
                self._gauges()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, pool: Pool, backend: Backend, trial: bool) -> None:
        self._busy.add(backend)
        task = asyncio.create_task(self._check(pool, backend, trial))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _scrape_due(self, backend: Backend, now: float, interval: float) -> bool:
        """A healthy backend's /metrics, once per health interval, until it has shown it has none we know."""
        return (
            backend not in self._scraping
            and backend.healthy
            and backend.telemetry_misses < MAX_TELEMETRY_MISSES
            and now - backend.telemetry_tried_at >= interval
        )

    def _scrape(self, backend: Backend, now: float) -> None:
        self._scraping.add(backend)
        backend.telemetry_tried_at = now

        async def run() -> None:
            try:
                seen = await telemetry.scrape(backend.session, backend.url)
            except telemetry.Unread:  # no word on its names: not a miss, asked again on the next interval
                backend.telemetry = None
                return
            finally:
                self._scraping.discard(backend)
            # at the page's arrival, what of its count is ours: requests in flight there and a probe under way
            own = backend.in_flight + (backend in self._busy)
            backend.telemetry = None if seen is None else replace(seen, own_in_flight=own)
            backend.telemetry_misses = 0 if backend.telemetry is not None else backend.telemetry_misses + 1

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, pool: Pool, backend: Backend, trial: bool) -> None:
        try:
            backend.last_probed_at = time.monotonic()
            ok = await probe(pool, backend)
        except Busy as busy:
            # rested, as a request's 429 or 503 rests it: up and busy is neither down nor failing its answers
            backend.rest(time.monotonic(), busy.retry_after)
            if trial:
                backend.outlier.probe_later(backend.cooldown_until)
            return
        finally:
            self._busy.discard(backend)
        now = time.monotonic()
        if trial:
            backend.outlier.probe_result(now, ok)
            log.warning(
                "backend %s of pool %s: probe after ejection %s",
                backend.shown,
                pool.name,
                "passed; half-open: the next request decides"
                if ok
                else f"failed; ejected for {backend.outlier.ejected_until - now:.0f} s",
            )
        if ok:
            backend.last_clean_at = now
        if ok != backend.healthy:
            log.warning("backend %s of pool %s is now %s", backend.shown, pool.name, "up" if ok else "down")
        backend.healthy = ok

    def _gauges(self) -> None:
        state, now = self.state, time.monotonic()
        for pool in state.pools.values():
            state.metrics.in_flight.labels(pool.name).set(pool.ledger.in_flight)
            view = pool.view(now)
            # the gateway's own share (workers' gauges add up), and apart what the backends say beyond it
            own = replace(view, external_load=0.0).utilization if pool.backends else 0
            state.metrics.utilization.labels(pool.name).set(own)
            state.metrics.external_load.labels(pool.name).set(view.external_load)
            for b in pool.backends:
                state.metrics.backend_up.labels(pool.name, b.shown).set(1 if b.available(now) else 0)
                seen = b.telemetry
                fresh = seen is not None and now - seen.at <= pool.telemetry_max_age_s
                figures = state.metrics.backend_telemetry(seen) if seen is not None and fresh else []
                for gauge, value in figures:
                    gauge.labels(pool.name, b.shown).set(value)
                key = (pool.name, b.shown)
                if figures:
                    self._telemetry_shown.add(key)
                elif key in self._telemetry_shown:  # its page is gone or stale: its last figures are not its load
                    self._telemetry_shown.discard(key)
                    forget(state.metrics.telemetry_gauges(), *key)
        m, (pools, backends) = state.metrics, self._gauged
        self._gauged = (
            {p.name for p in state.pools.values()},
            {(p.name, b.shown) for p in state.pools.values() for b in p.backends},
        )
        for name in pools - self._gauged[0]:  # a pool removed: its figures go (its price: GatewayState.apply)
            forget([m.in_flight, m.utilization, m.external_load], name)
        for labels in backends - self._gauged[1]:  # a backend removed (or its pool)
            forget([m.backend_up, m.backend_running, m.backend_waiting, m.backend_kv_cache], *labels)
        state.metrics.store_up.set(1 if state.store.healthy else 0)


async def probe(pool: Pool, backend: Backend) -> bool:
    """Whether the backend gives a clean answer to a tiny completion (or, if it does not take one, answers
    `GET /v1/models`), within its pool's first-byte timeout; Busy if it says it is overloaded."""
    t = pool.timeouts
    timeout = aiohttp.ClientTimeout(sock_connect=t.connect_s)
    try:
        async with asyncio.timeout(t.first_byte_s):
            if backend.probe_completions:
                body = {"model": pool.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
                async with await post(
                    backend.session,
                    backend.url + "/v1/chat/completions",
                    data=json.dumps(body),
                    headers=PROBE_HEADERS,
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    if response.status == 200:
                        return checked_json(await response.read()) is not None
                    if response.status in BUSY_STATUSES:
                        raise Busy(retry_after_of(response))
                    if response.status not in NOT_FOR_PROBES:
                        return False
                log.warning(
                    "backend %s of pool %s does not take a probe completion (HTTP %d); probing GET /v1/models",
                    backend.shown,
                    pool.name,
                    response.status,
                )
                backend.probe_completions = False
            async with backend.session.get(
                backend.url + "/v1/models", timeout=timeout, allow_redirects=False
            ) as response:
                return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
