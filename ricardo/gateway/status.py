"""What the status page (/ui) shows, as one JSON document: GET /admin/status.

Per pool: its price, live load (healthy replicas, requests in flight, share of capacity in use), the scaling hint,
and running totals (requests, billed dollars, streams judged against their SLO and those that met it). The totals
are read from the Prometheus registry `/metrics` serves, so the page and the metrics cannot disagree; the page
turns them into rates (spend per hour, SLO attainment over the last minute) from the difference between two polls,
so the gateway keeps no history for it. Totals are this replica's, as `/metrics` are.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ricardo.gateway.metrics import served

if TYPE_CHECKING:
    from ricardo.gateway.state import GatewayState

# Prometheus sample name -> the status field its per-pool sum goes to
TOTALS = {
    "ricardo_requests_total": "requests",
    "ricardo_cost_usd_total": "cost_usd",
    "ricardo_slo_judged_total": "slo_judged",
}


def _totals(state: GatewayState) -> dict[str, dict[str, float]]:
    """pool -> field -> running total (plus `slo_met`), summed over the other labels."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys([*TOTALS.values(), "slo_met"], 0.0))
    for family in served(state.metrics.registry).collect():  # with workers, all of theirs, as /metrics
        for sample in family.samples:
            field = TOTALS.get(sample.name)
            pool = sample.labels.get("pool")
            if field is None or pool is None:
                continue
            totals[pool][field] += sample.value
            if field == "slo_judged" and sample.labels.get("met") == "true":
                totals[pool]["slo_met"] += sample.value
    return totals


def _finite(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def status_document(state: GatewayState, hints: dict[str, Any]) -> dict[str, Any]:
    now = time.monotonic()
    totals = _totals(state)
    desired = {pool: sum(roles.values()) for pool, roles in (hints.get("desired") or {}).items()}
    pools = []
    for name, pool in state.pools.items():
        view = pool.view(now)
        prices = state.role_prices(pool.config)  # a pair's backends at their side's price, not the pair's unit's
        pools.append(
            {
                "name": name,
                "hardware": pool.hardware,
                "price_per_hour": pool.price_per_hour,
                # a pair's price is its unit's (one replica of each side): each side's is changed apart, by role
                "pair": pool.pair is not None,
                "price_source": "override"
                if any(role.price_per_hour is not None for role in pool.config.roles())  # a pair's: its sides'
                else "price set",
                "backends": len(pool.backends),
                # backends that can take a request now (a pair's `replicas` are its prefill side's)
                "replicas": view.replicas + view.decode_replicas,
                "desired_replicas": desired.get(name),
                "fleet_usd_per_hour": round(sum(prices[b.role] for b in pool.backends), 6),
                "in_flight": view.in_flight,
                "utilization": _finite(view.utilization),
                "external_load": _finite(view.external_load),
                "ttft_ms": _finite(view.ttft_ms, 1),
                "latency_per_token_ms": _finite(view.latency_per_token_ms, 2),
                "lateness": _finite(view.lateness, 3),
                **{field: value for field, value in totals[name].items()},
            }
        )
    accuracy = state.shaper.predictor.accuracy()
    return {
        "time": time.time(),
        "replica": state.replica_id,
        "version": state.version,
        "refused_version": None if state.refused is None else {"version": state.refused[0], "why": state.refused[1]},
        "policy": state.policy_name,
        "slo": state.shared.slo.model_dump(),
        "pools": pools,
        "predictor": {k: accuracy.get(k) for k in ("n", "mae_p50", "p90_coverage", "model_version")},
        "store": state.store.status(),  # whole: its last error's text too, which the public /readyz names by kind
        "scaling": {
            "desired_cost_per_hour": hints.get("cost_per_hour"),
            "computed_at": hints.get("computed_at"),
            "note": hints.get("note"),
        },
    }
