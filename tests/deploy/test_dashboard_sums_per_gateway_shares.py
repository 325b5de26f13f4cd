"""The dashboard combines a gauge over gateway replicas the way the gateway combines it over its own workers: a
gauge that is one gateway's share (`multiprocess_mode="livesum"`: in flight, utilization) is summed over replicas,
or two replicas splitting a pool's traffic show half of its load (compose and the Kubernetes manifests run two)."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
from prometheus_client import Gauge
from ricardo.gateway.metrics import GatewayMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _summed_gauges() -> set[str]:
    collectors = GatewayMetrics().registry._collector_to_names  # type: ignore[attr-defined]
    return {c._name for c in collectors if isinstance(c, Gauge) and c._multiprocess_mode == "livesum"}


def _aggregations(expr: str) -> list[tuple[str, set[str]]]:
    """(aggregating operator, the series it reads) of each aggregation in `expr`."""
    found: list[tuple[str, set[str]]] = []

    def visit(node) -> bool:
        if isinstance(node, promql_parser.AggregateExpr):
            names: set[str] = set()
            promql_parser.walk(
                node.expr, lambda n: names.add(n.name) if isinstance(n, promql_parser.VectorSelector) else None
            )
            found.append((str(node.op).lower(), names))
        return True

    promql_parser.walk(promql_parser.parse(expr.replace("$__rate_interval", "1m")), visit)
    return found


def test_a_per_gateway_share_is_summed_over_replicas_on_the_dashboard():
    summed = _summed_gauges()
    assert {"ricardo_pool_in_flight", "ricardo_pool_utilization"} <= summed
    dashboard = json.loads((DEPLOY / "grafana" / "ricardo-dashboard.json").read_text())
    wrong = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for op, names in _aggregations(target["expr"]):
                if names & summed and not op.endswith("sum"):
                    wrong.append((panel["title"], target["expr"]))
    assert wrong == []
