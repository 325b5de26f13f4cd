"""The scaling loop: every few seconds, share this replica's traffic windows (one per model), and on the replica
that holds the lease, turn all replicas' windows into scaling hints for the others to read.

Hints go to the gauge `ricardo_desired_replicas{pool,role}` (role `unified`, or `prefill` / `decode` for a pair),
to `GET /admin/scaling`, and, when a webhook is configured, are POSTed there whenever the damped figures change.
Every completed request is observed (pairs' too), by its model: each model's pools are planned on its book.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import aiohttp

from ricardo.gateway.scaling import PoolSpec, ScalingAdvisor
from ricardo.gateway.state import GatewayState
from ricardo.gateway.urls import redact
from ricardo.policies.planner import PlanError
from ricardo.policies.types import SLO

log = logging.getLogger("ricardo.scaling")
LEASE = "scaling"
HINTS_BLOB = "scaling-hints"
WEBHOOK_RETRY_S, WEBHOOK_RETRY_MAX_S = 0.5, 30.0  # pauses before a failed webhook POST is sent again


class ScalingLoop:
    def __init__(self, state: GatewayState):
        self.state = state
        self.settings = state.config.scaling
        self.advisor = ScalingAdvisor(
            window_s=self.settings.window_s,
            scale_down_hold_s=self.settings.scale_down_hold_s,
            headroom=self.settings.headroom,
            min_replicas=self.settings.min_replicas,
        )
        self.hints: dict | None = None
        self._blob_version: int | None = None
        self._task: asyncio.Task | None = None
        self._webhooks: set[asyncio.Task] = set()  # the loop holds tasks weakly: a post could be collected mid-flight
        self._webhook_pending: dict | None = None  # the newest hints the webhook has not taken yet
        self._gauged: set[tuple[str, str]] = set()  # (pool, role) the desired replicas gauge shows

    def observe(self, model: str, input_tokens: int, output_tokens: int) -> None:
        # the advisor's clock is monotonic: a wall clock stepped back would stop the damper (time may not go back)
        # and drop the window's requests as too old
        self.advisor.observe(time.monotonic(), model, input_tokens, output_tokens)

    def current(self) -> dict:
        return self.hints or {"desired": {}, "note": "no hints computed yet"}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        for task in [self._task, *self._webhooks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._webhooks] if t is not None), return_exceptions=True)
        await self.state.store.release_lease(LEASE, self.state.replica_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.tick()
            except Exception:  # a bad tick must not end the loop
                log.exception("scaling tick failed")

    def pool_specs(self) -> list[PoolSpec]:
        """One spec per unified pool, one per role of a pair (its role's hardware, price and replicas), each with the
        model the pool serves."""
        specs = []
        for p in self.state.pools.values():
            model = self.state.config.pool_model(p.config)
            if p.pair is None:
                specs.append(PoolSpec(p.name, p.hardware, p.price_per_hour, len(p.backends), model=model))
                continue
            for role, hardware, price in (
                ("prefill", p.pair.prefill_hardware, p.pair.prefill_price_per_hour),
                ("decode", p.pair.decode_hardware, p.pair.decode_price_per_hour),
            ):
                replicas = sum(1 for b in p.backends if b.role == role)
                specs.append(PoolSpec(p.name, hardware, price, replicas, role, model, p.pair.link_gbps))
        return specs

    def planned_as(self) -> dict[str, str]:
        """Request model -> the model whose pools serve it: itself where some pool runs it, else the model of the first
        pool answering its id (a pool listing several `models` runs one, its `model`)."""
        run = {self.state.config.pool_model(p.config) for p in self.state.pools.values()}
        mapping: dict[str, str] = {}
        for p in self.state.pools.values():
            for model in p.models:
                mapping.setdefault(model, model if model in run else self.state.config.pool_model(p.config))
        return mapping

    async def tick(self) -> None:
        store, me = self.state.store, self.state.replica_id
        now = time.monotonic()
        ttl = 3 * self.settings.interval_s
        summaries = self.advisor.summaries(now)  # here, on the loop: `observe` writes the windows from the loop too
        await store.push_stats(me, {"windows": summaries}, ttl)
        if await store.acquire_lease(LEASE, me, ttl):
            stats = [s for replica, s in (await store.pull_stats()).items() if replica != me]
            # a replica of an older version shares one "window" of all models: left out, counted as ignored
            others = [s.get("windows") for s in stats if "windows" in s or "window" in s]
            pools = self.pool_specs()
            slo = SLO(self.state.shared.slo.ttft_ms, self.state.shared.slo.tpot_ms)
            books = {p.model: self.state.book_for(p.model, slo) for p in pools}
            try:  # the sizing and the solve take a few hundred ms: keep them off the event loop
                hints = await asyncio.to_thread(
                    self.advisor.compute,
                    now,
                    pools,
                    slo,
                    books,
                    own=summaries,
                    extra_summaries=others,
                    planned_as=self.planned_as(),
                )
            except PlanError as exc:
                log.warning("scaling hints not updated: %s", exc)
                return
            self._publish(hints.to_dict() | {"computed_at": time.time(), "computed_by": me})
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
        shown = set()
        for pool, roles in hints.get("desired", {}).items():
            for role, count in roles.items():
                gauge.labels(pool, role).set(count)
                shown.add((pool, role))
        for pool, role in self._gauged - shown:  # a pool removed, or a role it no longer has: its figure goes
            gauge.labels(pool, role).set(0)  # what workers' shared files keep: multiprocess mode cannot remove
            if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                gauge.remove(pool, role)
        self._gauged = shown
        if changed and self.settings.webhook_url and hints.get("computed_by") == self.state.replica_id:
            self._webhook_pending = hints
            if not self._webhooks:  # one sender, so that hints arrive in order
                task = asyncio.create_task(self._send_webhooks())
                self._webhooks.add(task)
                task.add_done_callback(self._webhooks.discard)

    async def _send_webhooks(self) -> None:
        """POST the newest hints, one at a time; after a failed POST the hints in force are sent again, with a
        growing pause: an autoscaler that missed a change would otherwise wait for the next one."""
        pause = WEBHOOK_RETRY_S
        while (hints := self._webhook_pending) is not None:
            self._webhook_pending = None
            if await self._post_webhook(hints):
                pause = WEBHOOK_RETRY_S
                continue
            current = self.hints  # sent again as they are now, while this replica computes them
            if self._webhook_pending is None and current and current.get("computed_by") == self.state.replica_id:
                self._webhook_pending = current
            await asyncio.sleep(pause)
            pause = min(2 * pause, WEBHOOK_RETRY_MAX_S)

    async def _post_webhook(self, hints: dict) -> bool:
        url = str(self.settings.webhook_url)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.post(url, json=hints) as response,
            ):
                if response.status >= 300:
                    log.warning("scaling webhook %s answered %d", redact(url), response.status)
                return response.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("scaling webhook %s failed: %s", redact(url), redact(str(exc)))
            return False
