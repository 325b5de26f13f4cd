"""What backends say about their own load: their Prometheus `/metrics`, scraped on the health interval.

The gateway counts what it sent (in flight per backend); an engine knows what it runs and queues, including work
that did not come through this gateway (another replica, a direct client), and how full its KV cache is. The names
read, per engine (the sum over a page's label sets, so a server of several models or engines reports its total; a
KV-cache share their mean; NaN and infinite samples skipped):
- vLLM: `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (before v0.10
  `vllm:gpu_cache_usage_perc`);
- llama.cpp (`--metrics`): `llamacpp:requests_processing`, `llamacpp:requests_deferred`,
  `llamacpp:kv_cache_usage_ratio`;
- SGLang (`--enable-metrics`): `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`;

as requests running, requests waiting, and the share of the KV cache in use (0-1).

The emulator exports vLLM's names. A healthy backend whose `/metrics` shows none of these names three times in a
row (a 404, another server's page) is not asked again (gateway/health.py); one not read (not reached, timed out, a
5xx) is asked again on the next interval. Each scrape also records this gateway's
requests in flight at the backend when the page arrived (`own_in_flight`, a probe under way included), so the page's
counts beyond them are someone else's. They steer routing: a unified pool's view carries the load its available
backends run or queue beyond this gateway's requests, and a saturated KV cache as a full replica, as
`PoolView.external_load` (the pure rule is policies/external.py; pages older than three health intervals are
ignored), which the policies and admission read in the pool's utilization. Disaggregated pairs do not use them yet.
The figures are shown in `GET /admin/pools` (per backend, and the pool's `external_load`) and as
`ricardo_backend_{running,waiting,kv_cache_usage}` gauges, and the pool's as `ricardo_pool_external_load`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ricardo.policies.external import BackendReport

SCRAPE_TIMEOUT_S = 2.0
MAX_PAGE_BYTES = 4 * 1024 * 1024  # a metrics page is tens of KB; a larger answer is not one

# (running, waiting, kv cache) names, first match wins per field
NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running", "llamacpp:requests_processing", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "llamacpp:requests_deferred", "sglang:num_queue_reqs"),
    "kv_cache_usage": (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "llamacpp:kv_cache_usage_ratio",
        "sglang:token_usage",
    ),
}


@dataclass(frozen=True, slots=True)
class Telemetry(BackendReport):
    """One scrape of a backend: each figure None where its page does not have it; `at` is its time.monotonic(),
    `own_in_flight` this gateway's requests at the backend (a probe included) when the page arrived."""

    def as_json(self, now: float) -> dict[str, float | None]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "kv_cache_usage": self.kv_cache_usage,
            "own_in_flight": self.own_in_flight,
            "age_s": round(now - self.at, 3),
        }


def parse(page: str, now: float) -> Telemetry | None:
    """The figures of a Prometheus text page; None if it has none of the names known."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if math.isfinite(sample.value):  # a NaN or an infinity is no figure (and no JSON)
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
                counts[sample.name] = counts.get(sample.name, 0) + 1
    found: dict[str, float | None] = {}
    for field, names in NAMES.items():
        name = next((n for n in names if n in sums), None)
        # requests add up over label sets (engines, models); a share of a KV cache is their mean, not their sum
        value = None if name is None else sums[name] / (counts[name] if field == "kv_cache_usage" else 1)
        found[field] = value if value is not None and math.isfinite(value) else None
    if all(value is None for value in found.values()):
        return None
    return Telemetry(found["running"], found["waiting"], found["kv_cache_usage"], now)


class Unread(Exception):
    """The page could not be read now (not reached, timed out, a 5xx or 429): that says nothing of its names."""


async def scrape(session: aiohttp.ClientSession, url: str) -> Telemetry | None:
    """GET `url`/metrics and parse it; None if it answers without metrics we know; Unread if it is not read now."""
    try:
        async with (
            asyncio.timeout(SCRAPE_TIMEOUT_S),
            session.get(url + "/metrics", allow_redirects=False) as response,
        ):
            if response.status >= 500 or response.status == 429:
                raise Unread(f"HTTP {response.status}")
            if response.status != 200:
                return None
            raw = await response.content.read(MAX_PAGE_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Unread(type(exc).__name__) from exc
    if len(raw) > MAX_PAGE_BYTES:
        return None
    try:
        return parse(raw.decode("utf-8", "replace"), time.monotonic())
    except ValueError:  # not Prometheus' text format
        return None
