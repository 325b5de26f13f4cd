"""The scaling loop: every few seconds, share this replica's traffic window, and on the replica that
holds the lease, turn all replicas' windows into scaling hints for the others to read.

Hints go to the gauge `ricardo_desired_replicas{pool,role}` (role `unified`, or `prefill` / `decode` for a pair),
to `GET /admin/scaling`, and, when a webhook is configured, are POSTed there whenever the damped figures change.

Each role of a pair is sized on its observed load (gateway/scaling.py, `size_pairs`): every `SAMPLE_S` the loop
samples each pair's prefill and decode load (the ledger's capacity shares of each side); replicas share their
window means like their traffic windows, and the lease holder adds them up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp

from ricardo.gateway.scaling import LoadMeter, PoolSpec, ScalingAdvisor
from ricardo.gateway.state import GatewayState
from ricardo.gateway.urls import redact
from ricardo.policies.planner import PlanError
from ricardo.policies.types import SLO

log = logging.getLogger("ricardo.scaling")
LEASE = "scaling"
HINTS_BLOB = "scaling-hints"
SAMPLE_S = 0.5  # how often the load of each role of a pair is sampled


class ScalingLoop:
    def __init__(self, state: GatewayState):
        self.state = state
        self.settings = state.config.scaling
        self.advisor = ScalingAdvisor(
            state.book,
            window_s=self.settings.window_s,
            scale_down_hold_s=self.settings.scale_down_hold_s,
            headroom=self.settings.headroom,
            min_replicas=self.settings.min_replicas,
        )
        self.hints: dict | None = None
        self._blob_version: int | None = None
        self._task: asyncio.Task | None = None
        self._sampler: asyncio.Task | None = None
        self.meters: dict[tuple[str, str], LoadMeter] = {}  # (pair pool, role) -> its load over the window
        self._webhooks: set[asyncio.Task] = set()  # the loop holds tasks weakly: a post could be collected mid-flight

    def observe(self, input_tokens: int, output_tokens: int) -> None:
        self.advisor.observe(time.time(), input_tokens, output_tokens)

    def current(self) -> dict:
        return self.hints or {"desired": {}, "note": "no hints computed yet"}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._sampler = asyncio.create_task(self._sample_run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, self._sampler) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.state.store.release_lease(LEASE, self.state.replica_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.tick()
            except Exception:  # a bad tick must not end the loop
                log.exception("scaling tick failed")

    async def _sample_run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            self.sample(time.monotonic())

    def sample(self, now: float) -> None:
        """One sample of each pair's role loads, in replicas: the capacity shares its ledger charges each side."""
        seen = set()
        for pool in self.state.pools.values():
            if pool.pair is None:
                continue
            ledger = pool.ledger
            for role, load in (("prefill", ledger.in_flight_load), ("decode", ledger.decode_load)):
                meter = self.meters.get((pool.name, role))
                if meter is None:
                    meter = self.meters[(pool.name, role)] = LoadMeter(self.settings.window_s)
                meter.sample(now, load)
                seen.add((pool.name, role))
        for gone in self.meters.keys() - seen:
            del self.meters[gone]

    def pair_loads(self, now: float) -> dict[str, dict[str, float]]:
        loads: dict[str, dict[str, float]] = {}
        for (pool, role), meter in self.meters.items():
            loads.setdefault(pool, {})[role] = meter.mean(now)
        return loads

    def pool_specs(self) -> list[PoolSpec]:
        """One spec per unified pool, one per role of a pair (its role's hardware, price and replicas)."""
        specs = []
        for p in self.state.pools.values():
            if p.pair is None:
                specs.append(PoolSpec(p.name, p.hardware, p.price_per_hour, len(p.backends)))
                continue
            for role, hardware, price in (
                ("prefill", p.pair.prefill_hardware, p.pair.prefill_price_per_hour),
                ("decode", p.pair.decode_hardware, p.pair.decode_price_per_hour),
            ):
                replicas = sum(1 for b in p.backends if b.role == role)
                specs.append(PoolSpec(p.name, hardware, price, replicas, role=role))
        return specs

    async def tick(self) -> None:
        store, me = self.state.store, self.state.replica_id
        now = time.time()
        ttl = 3 * self.settings.interval_s
        summary = self.advisor.summary(now)  # here, on the loop: `observe` writes the window from the loop too
        own_loads = self.pair_loads(time.monotonic())
        await store.push_stats(me, {"window": summary, "pairs": own_loads}, ttl)
        if await store.acquire_lease(LEASE, me, ttl):
            stats = [s for replica, s in (await store.pull_stats()).items() if replica != me]
            others = [s["window"] for s in stats if "window" in s]
            pair_loads = _sum_loads([own_loads, *(s["pairs"] for s in stats if isinstance(s.get("pairs"), dict))])
            pools = self.pool_specs()
            slo = SLO(self.state.shared.slo.ttft_ms, self.state.shared.slo.tpot_ms)
            try:  # the sizing and the solve take a few hundred ms: keep them off the event loop
                hints = await asyncio.to_thread(
                    self.advisor.compute,
                    now,
                    pools,
                    slo,
                    book=self.state.book_for(self.state.config.models[0], slo),
                    own=summary,
                    extra_summaries=others,
                    pair_loads=pair_loads,
                )
            except PlanError as exc:
                log.warning("scaling hints not updated: %s", exc)
                return
            self._publish(hints.to_dict() | {"computed_by": me})
            await store.put_blob(HINTS_BLOB, json.dumps(self.hints).encode())
        else:
            blob = await store.get_blob(HINTS_BLOB)
            if blob and blob[0] != self._blob_version:
                self._blob_version = blob[0]
                self._publish(json.loads(blob[1]))

    def _publish(self, hints: dict) -> None:
        changed = self.hints is None or self.hints.get("desired") != hints.get("desired")
        self.hints = hints
        gauge = self.state.metrics.desired_replicas
        for pool, roles in hints.get("desired", {}).items():
            for role, count in roles.items():
                gauge.labels(pool, role).set(count)
        if changed and self.settings.webhook_url and hints.get("computed_by") == self.state.replica_id:
            task = asyncio.create_task(self._post_webhook(hints))
            self._webhooks.add(task)
            task.add_done_callback(self._webhooks.discard)

    async def _post_webhook(self, hints: dict) -> None:
        url = str(self.settings.webhook_url)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.post(url, json=hints) as response,
            ):
                if response.status >= 300:
                    log.warning("scaling webhook %s answered %d", redact(url), response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("scaling webhook %s failed: %s", redact(url), redact(str(exc)))


def _sum_loads(loads: list[dict]) -> dict[str, dict[str, float]]:
    """The gateway replicas' role loads added up (each replica's requests load the same backends)."""
    total: dict[str, dict[str, float]] = {}
    for replica in loads:
        for pool, roles in replica.items():
            if not isinstance(roles, dict):
                continue
            for role, load in roles.items():
                if isinstance(load, int | float):
                    total.setdefault(pool, {})[role] = total.get(pool, {}).get(role, 0.0) + float(load)
    return total
