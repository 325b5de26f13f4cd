"""deploy/ without a container engine: the compose file against the compose-spec schema, the Kubernetes manifests
against Kubernetes' schemas (and KEDA's ScaledObject by its shape), Prometheus' and Grafana's files, and the
gateway configs they carry against the gateway's own schema."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ricardo.emulator.launch import backends_from_config
from ricardo.gateway.config import GatewayConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30.0"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def compose_errors(doc: dict) -> list[str]:
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def manifests() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def test_compose_file_follows_the_compose_spec():
    compose = load(DEPLOY / "compose.yaml")
    assert compose_errors(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert compose_errors(broken), "the schema should catch a misspelt key"


def test_compose_runs_two_gateways_sharing_redis_with_pools_prometheus_and_grafana():
    services = load(DEPLOY / "compose.yaml")["services"]
    assert {"redis", "pools", "gateway-1", "gateway-2", "prometheus", "grafana"} <= set(services)
    gateways = [services["gateway-1"], services["gateway-2"]]
    for gateway in gateways:
        command = gateway["command"]
        assert command[0] == "serve" and "redis://redis:6379/0" in command
        assert gateway["network_mode"] == "service:pools"  # where the emulated pools listen on loopback
    ports = {g["command"][g["command"].index("--port") + 1] for g in gateways}
    assert len(ports) == 2, "gateways sharing a network namespace need their own ports"
    assert services["pools"]["command"][:2] == ["emulate", "--config"]
    published = {p.split(":")[-1] for p in services["pools"]["ports"]}
    assert ports <= published
    prometheus = load(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"pools:{port}" for port in ports}
    # the gateways listen beyond loopback: /metrics asks for the token Prometheus reads from the secret
    [job] = prometheus["scrape_configs"]
    [secret] = services["prometheus"]["secrets"]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    compose = load(DEPLOY / "compose.yaml")
    assert compose["secrets"][secret] == {"environment": "RICARDO_METRICS_TOKEN"}
    assert all("RICARDO_METRICS_TOKEN" in gateway["environment"] for gateway in gateways)


def test_the_compose_gateway_config_is_valid_and_every_backend_is_emulated():
    path = DEPLOY / "gateway.yaml"
    config = GatewayConfig.model_validate(load(path))
    emulated = {f"http://{spec.host}:{spec.port}" for spec in backends_from_config(str(path))}
    assert emulated == {str(url).rstrip("/") for pool in config.pools for url in pool.backends}


def test_kubernetes_manifests_follow_the_kubernetes_schemas():
    kinds = []
    for doc in manifests():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ScaledObject"} <= set(kinds)
    deployment = next(d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "ricardo")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_gateway_deployment_has_probes_limits_config_and_secrets():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in manifests()}
    pod = docs["Deployment", "ricardo"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "secretKeyRef" in e["valueFrom"]}
    assert secret_keys == set(docs["Secret", "ricardo-secrets"]["stringData"])
    assert {e["name"] for e in container["env"]} >= {"RICARDO_ADMIN_TOKEN", "RICARDO_METRICS_TOKEN", "REDIS_URL"}
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    config = docs["ConfigMap", volume["configMap"]["name"]]
    assert f"/etc/ricardo/{next(iter(config['data']))}" in container["args"]
    GatewayConfig.model_validate(yaml.safe_load(config["data"]["gateway.yaml"]))


def test_keda_scales_an_example_backend_from_the_gateways_hint():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in manifests()}
    [scaled] = [d for d in manifests() if d["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod", "triggers"
    }  # fmt: skip
    target = docs["Deployment", spec["scaleTargetRef"]["name"]]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(meta) and all(isinstance(v, str) for v in meta.values())
    assert meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) == 1  # replicas = hint / threshold
    pools = GatewayConfig.model_validate(yaml.safe_load(docs["ConfigMap", "ricardo-config"]["data"]["gateway.yaml"]))
    pool = target["metadata"]["labels"]["ricardo.pool"]
    assert pool in {p.name for p in pools.pools}
    assert f'ricardo_desired_replicas{{pool="{pool}"' in meta["query"]


def test_prometheus_and_grafana_provisioning_parse():
    prometheus = load(DEPLOY / "prometheus" / "prometheus.yml")
    assert all(job["metrics_path"] == "/metrics" for job in prometheus["scrape_configs"])
    [source] = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    [provider] = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "ricardo.yaml")["providers"]
    dashboard = json.loads((DEPLOY / "grafana" / "ricardo-dashboard.json").read_text())
    compose = load(DEPLOY / "compose.yaml")["services"]["grafana"]["volumes"]
    assert any(v.endswith(f"{provider['options']['path']}/ricardo-dashboard.json:ro") for v in compose)
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
