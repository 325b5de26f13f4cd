"""The gateway's Prometheus metrics, all under `ricardo_`. Latency and token histograms use the
OpenTelemetry GenAI bucket boundaries so dashboards built for those conventions read them as is.

With several worker processes (`ricardo serve --workers`), prometheus-client's multiprocess mode keeps each
worker's values in files of a directory the parent made (PROMETHEUS_MULTIPROC_DIR), and `/metrics` sums them:
counters and histograms add up; each gauge says how its workers' values combine (`multiprocess_mode`: in-flight
load adds up, a backend is up only where every worker sees it up, a config version is the oldest in force).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ricardo.gateway.telemetry import Telemetry

# gen_ai.server.time_to_first_token, gen_ai.server.time_per_output_token, gen_ai.server.request.duration
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# gen_ai.client.token.usage
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
ROUTING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "ricardo_requests", "Requests answered, by pool and HTTP status.", ["model", "pool", "status"], registry=r
        )
        self.duration = Histogram(
            "ricardo_request_duration_seconds",
            "End-to-end request duration.",
            ["pool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ricardo_time_to_first_token_seconds",
            "Time to first token seen by the gateway.",
            ["pool"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "ricardo_time_per_output_token_seconds",
            "Time per output token after the first.",
            ["pool"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.slo = Counter(
            "ricardo_slo_judged",
            "Streamed requests judged against their SLO (TTFT, and TPOT after the first token), by pool and whether "
            "they met it; a failed answer misses it.",
            ["pool", "met"],
            registry=r,
        )
        self.tokens = Counter(
            "ricardo_tokens",
            "Tokens served, as backends report them (of a stream a client with a key left, as far as it was sent).",
            ["pool", "type"],
            registry=r,
        )
        self.token_usage = Histogram(
            "ricardo_token_usage", "Tokens per request.", ["type"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.cost = Counter(
            "ricardo_cost_usd", "Estimated dollars spent, from actual tokens and profiles.", ["pool"], registry=r
        )
        self.decisions = Counter(
            "ricardo_routing_decisions", "First choice of the policy, by pool.", ["policy", "pool"], registry=r
        )
        self.routing_seconds = Histogram(
            "ricardo_routing_seconds", "Time to shape and rank one request.", buckets=ROUTING_BUCKETS, registry=r
        )
        self.fallbacks = Counter(
            "ricardo_fallbacks", "Attempts abandoned for another backend, by reason.", ["pool", "reason"], registry=r
        )
        self.upstream_errors = Counter(
            "ricardo_upstream_errors", "Upstream failures, by kind.", ["pool", "kind"], registry=r
        )
        self.ejections = Counter(
            "ricardo_backend_ejections",
            "Backends taken out of service on their failed answers (outlier detection).",
            ["pool", "backend"],
            registry=r,
        )
        self.shed = Counter(
            "ricardo_shed",
            "Requests refused with 429 because no pool could serve them in time (admission control).",
            ["model", "priority"],
            registry=r,
        )
        self.in_flight = Gauge(
            "ricardo_pool_in_flight", "Requests in flight per pool.", ["pool"], multiprocess_mode="livesum", registry=r
        )
        self.utilization = Gauge(
            "ricardo_pool_utilization",
            "Share of profiled capacity in use per pool by this gateway's requests.",
            ["pool"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.external_load = Gauge(
            "ricardo_pool_external_load",
            "Replicas' worth of load a pool's backends report beyond this gateway's requests (their /metrics).",
            ["pool"],
            # a worker counts the other workers' requests as foreign: the one that sees most, not their sum
            multiprocess_mode="livemax",
            registry=r,
        )
        self.backend_up = Gauge(
            "ricardo_backend_up",
            "1 when a backend may take requests.",
            ["pool", "backend"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.price = Gauge(
            "ricardo_pool_price_per_hour",
            "Price per replica-hour in force.",
            ["pool"],
            multiprocess_mode="livemax",
            registry=r,
        )
        labels = ["pool", "backend"]
        self.backend_running = Gauge(
            "ricardo_backend_running",
            "Requests a backend says it runs (its /metrics).",
            labels,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.backend_waiting = Gauge(
            "ricardo_backend_waiting",
            "Requests a backend says it queues (its /metrics).",
            labels,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.backend_kv_cache = Gauge(
            "ricardo_backend_kv_cache_usage",
            "KV-cache share a backend says is used, 0-1.",
            labels,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.predicted_output = Histogram(
            "ricardo_predicted_output_tokens", "Predicted output tokens (p50).", buckets=TOKEN_BUCKETS, registry=r
        )
        self.prediction_error = Histogram(
            "ricardo_output_prediction_error_tokens",
            "Absolute error of the p50 output prediction.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prediction_under_p90 = Counter(
            "ricardo_output_within_p90", "Outcomes at or under the predicted p90.", registry=r
        )
        self.store_up = Gauge(
            "ricardo_state_store_up", "1 when the shared state store answers.", multiprocess_mode="livemin", registry=r
        )
        self.config_version = Gauge(
            "ricardo_config_version", "Version of the shared config in force.", multiprocess_mode="livemin", registry=r
        )
        self.desired_replicas = Gauge(
            "ricardo_desired_replicas",
            "Scaling hint: replicas each pool needs.",
            ["pool", "role"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.admin_changes = Counter(
            "ricardo_admin_changes", "Accepted admin changes, by action.", ["action"], registry=r
        )
        self.outcomes = Counter("ricardo_outcomes", "Completed requests with reported usage.", registry=r)
        self.key_spend = Counter(
            "ricardo_key_spend_usd",
            "Estimated dollars spent per client key (as ricardo_cost_usd), on this replica.",
            ["key", "name"],
            registry=r,
        )
        # the children every answered request touches without a pool label, bound once
        self.input_usage = self.token_usage.labels("input")
        self.output_usage = self.token_usage.labels("output")
        self.key_refusals = Counter(
            "ricardo_key_refusals",
            "Requests refused for their client key: invalid_api_key, requests, tokens, budget.",
            ["key", "reason"],
            registry=r,
        )

    def telemetry_gauges(self) -> list[Gauge]:
        return [self.backend_running, self.backend_waiting, self.backend_kv_cache]

    def backend_telemetry(self, seen: Telemetry) -> list[tuple[Gauge, float]]:
        """The gauges a backend's scraped figures set (those its page had)."""
        pairs = [
            (self.backend_running, seen.running),
            (self.backend_waiting, seen.waiting),
            (self.backend_kv_cache, seen.kv_cache_usage),
        ]
        return [(gauge, value) for gauge, value in pairs if value is not None]


class PoolMetrics:
    """One pool's labelled children, bound when the config is applied (`GatewayState.apply`): `labels()` takes a
    lock and builds a tuple per call, and an answered request would make about a dozen such calls."""

    def __init__(self, m: GatewayMetrics, pool: str, models: tuple[str, ...], policy: str):
        self.pool = pool
        self._requests = m.requests
        self.answered = {model: m.requests.labels(model, pool, "200") for model in models}
        self.decisions = m.decisions.labels(policy, pool)
        self.duration = m.duration.labels(pool)
        self.ttft = m.ttft.labels(pool)
        self.tpot = m.tpot.labels(pool)
        self.input_tokens = m.tokens.labels(pool, "input")
        self.output_tokens = m.tokens.labels(pool, "output")
        self.cost = m.cost.labels(pool)
        self.slo_met, self.slo_missed = m.slo.labels(pool, "true"), m.slo.labels(pool, "false")

    def requests(self, model: str, status: int) -> Counter:
        """The child counting answers of `status` for `model` (bound ahead for the answers that succeed)."""
        child = self.answered.get(model) if status == 200 else None
        return child if child is not None else self._requests.labels(model, self.pool, str(status))


def forget(gauges: list[Gauge], *labels: str) -> None:
    """Drop the series of a pool or backend that is gone; with workers, where removal is not implemented, zero it."""
    for gauge in gauges:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            gauge.labels(*labels).set(0)
        else:
            gauge.remove(*labels)


def served(registry: CollectorRegistry) -> CollectorRegistry:
    """The registry `/metrics` serves: this process's, or with workers one that combines every worker's values."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        MultiProcessCollector(combined)
        return combined
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text `/metrics` serves: this process's registry, or with workers every worker's values combined."""
    return generate_latest(served(registry))
