"""Load on a pool that did not come through this gateway, from what its backends say of themselves.

The ledger charges only the requests this gateway sent. A backend's own Prometheus figures (running and waiting
requests, KV-cache use; read by gateway/telemetry.py) also count another gateway replica's requests and direct
clients'. Per backend, at the moment its page was read:

- requests it runs or queues beyond this gateway's in flight there are foreign; each is charged the share of a
  replica this pool's requests hold on average (`share_per_request`): their sizes are unknown, and the pool's own
  mix is the best guess of them;
- a KV cache at least `KV_SATURATED` full takes no new sequence without preempting one, so the backend counts as a
  whole replica busy whatever its request counts say;
- a page older than `max_age_s` (a backend that stopped answering its /metrics) says nothing.

The sum, in replicas' worth like `PoolView.in_flight_load`, is the view's `external_load`. It lags the backends by up
to a health interval. A request this gateway gave up on that its backend still runs counts as foreign: it is load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ricardo.policies.routing import capacity_share
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import ProfileBook

# vLLM admits a sequence only while its prompt's blocks fit beside a 1% watermark; with under 5% free, a typical
# prompt waits for blocks or preempts a running sequence: the engine is full for new work (a reading of vLLM's
# scheduler, not a figure tuned on a bench)
KV_SATURATED = 0.95
STALE_INTERVALS = 3  # a page older than this many health intervals is ignored


@dataclass(frozen=True, slots=True)
class BackendReport:
    """One backend's last page, as figures (None where its page lacks one), when it was read, and this gateway's
    requests in flight there at that moment."""

    running: float | None
    waiting: float | None
    kv_cache_usage: float | None  # 0-1
    at: float  # the caller's clock
    own_in_flight: int = 0


def share_per_request(in_flight: int, in_flight_load: float, typical_share: float) -> float:
    """The share of a replica one request holds on the pool: the mean over this gateway's requests in flight there,
    or, with none, `typical_share`."""
    return in_flight_load / in_flight if in_flight > 0 else typical_share


def typical_share(book: ProfileBook, hardware: str, slo: SLO) -> float:
    """The share of a replica a request of the middle of the profile's grid holds (1,000 tokens in, 250 out on the
    shipped grids): what a foreign request is charged while the pool carries none of this gateway's."""
    middle_in = book.input_edges[(len(book.input_edges) - 1) // 2]
    middle_out = book.output_edges[(len(book.output_edges) - 1) // 2]
    return capacity_share(book, hardware, middle_in, middle_out, slo)


def external_load(reports: Iterable[BackendReport], share: float, now: float, max_age_s: float) -> float:
    """Replicas' worth of load on the backends beyond this gateway's own requests (see the module's docstring):
    `share` per foreign request, at least the rest of a replica on a backend whose KV cache is saturated."""
    total = 0.0
    for report in reports:
        if now - report.at > max_age_s:
            continue
        seen = (report.running or 0.0) + (report.waiting or 0.0)
        load = max(0.0, seen - report.own_in_flight) * share
        if report.kv_cache_usage is not None and report.kv_cache_usage >= KV_SATURATED:
            load = max(load, 1.0 - report.own_in_flight * share)
        total += load
    return total
