"""Every PromQL expression of the Grafana dashboard (and of the KEDA trigger) asks only for series a real gateway
exports, with labels they carry: a gateway in front of emulated pools serves a few requests, its /metrics is
scraped, and each expression is parsed (promql-parser) and its selectors and groupings checked against it."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ricardo.gateway.metrics import GatewayMetrics

from tests.integration.harness import Cluster

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
# series the traffic below must have produced, so the panels that read them show something
MUST_HAVE_SAMPLES = {
    "ricardo_cost_usd_total",
    "ricardo_tokens_total",
    "ricardo_time_to_first_token_seconds_bucket",
    "ricardo_time_per_output_token_seconds_bucket",
    "ricardo_output_prediction_error_tokens_bucket",
    "ricardo_output_within_p90_total",
    "ricardo_outcomes_total",
    "ricardo_desired_replicas",
    "ricardo_backend_up",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict[str, set[str]]]:
    """Series name -> label name -> values seen, from a real gateway after some traffic."""
    pools = {"l4": ("L4", 1), "a100": ("A100-80GB", 1)}
    cluster = Cluster(pools, tmp_path_factory.mktemp("dash"), speed=8.0, scaling={"interval_s": 0.5, "window_s": 10})
    cluster.start()
    try:
        client = cluster.openai_client()
        for index in range(6):
            stream = client.chat.completions.create(
                model="llama2-7b",
                messages=[{"role": "user", "content": f"Question {index}: " + "why is the sky blue? " * 10}],
                stream=True,
                extra_headers={"x-emulator-output-tokens": str(8 + 4 * index)},
            )
            list(stream)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as response:
                text = response.read().decode()
            if _sampled(text) >= MUST_HAVE_SAMPLES:
                return _series(text)
            assert time.monotonic() < deadline, f"missing after traffic: {MUST_HAVE_SAMPLES - set(_sampled(text))}"
            time.sleep(0.5)
    finally:
        cluster.stop()


def _sampled(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def _series(text: str) -> dict[str, dict[str, set[str]]]:
    declared = {c._name: set(c._labelnames) for c in GatewayMetrics().registry._collector_to_names}  # type: ignore[attr-defined]
    series: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            labels = {label: set() for label in declared.get(family.name, ())}  # declared, maybe not yet sampled
            if suffix == "_bucket":
                labels["le"] = set()
            series.setdefault(family.name + suffix, labels)
        for sample in family.samples:
            labels = series.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return series


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "ricardo-dashboard.json").read_text())
    variables = {v["name"]: [o["value"] for o in v["options"]] for v in dashboard["templating"]["list"]}
    raw = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions = []
    for expr in raw:
        expr = expr.replace("$__rate_interval", "1m")
        used = [name for name in variables if f"${name}" in expr]
        for choice in itertools.product(*(variables[name] for name in used)):
            filled = expr
            for name, value in zip(used, choice, strict=True):
                filled = filled.replace(f"${name}", value)
            expressions.append(filled)
    assert "$" not in "".join(expressions), "a dashboard variable the test does not know"
    return expressions


def keda_expressions() -> list[str]:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "scaledobject.yaml").read_text())
    return [t["metadata"]["query"] for d in docs for t in d["spec"]["triggers"]]


def problems(expr: str, exported: dict[str, dict[str, set[str]]]) -> list[str]:
    found: list[str] = []
    ast = promql_parser.parse(expr)

    def selectors(node) -> list:
        seen: list = []
        promql_parser.walk(node, lambda n: seen.append(n) if isinstance(n, promql_parser.VectorSelector) else None)
        return seen

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            labels = exported.get(node.name or "")
            if labels is None:
                found.append(f"{node.name}: not exported")
                return True
            for matcher in node.matchers.matchers:
                if matcher.name not in labels:
                    found.append(f"{node.name}: no label {matcher.name}")
                elif matcher.op == promql_parser.MatchOp.Equal and matcher.value not in (
                    labels[matcher.name] or {matcher.value}
                ):
                    found.append(f"{node.name}: {matcher.name}={matcher.value!r} never seen")
        by = promql_parser.AggModifierType.By
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None and node.modifier.type == by:
            inner = set().union(*(exported.get(s.name, {}).keys() for s in selectors(node.expr)))
            found.extend(f"by ({label}): no series under it has it" for label in set(node.modifier.labels) - inner)
        return True

    promql_parser.walk(ast, visit)
    return found


def test_the_dashboard_queries_only_what_the_gateway_exports(exported):
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    bad = {expr: p for expr in expressions if (p := problems(expr, exported))}
    assert bad == {}


def test_the_keda_trigger_queries_the_gateways_hint(exported):
    [query] = keda_expressions()
    assert problems(query, exported) == []


def test_the_check_catches_a_series_the_gateway_does_not_export(exported):
    assert problems('sum(rate(ricardo_cost_dollars_total{pool="l4"}[1m]))', exported)
    assert problems("sum by (region) (rate(ricardo_cost_usd_total[1m]))", exported)
    assert problems('rate(ricardo_time_to_first_token_seconds_bucket{le="2.0"}[1m])', exported)
