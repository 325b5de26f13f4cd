"""The gateway's configuration: a YAML file validated by pydantic, with an embedded default."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from ricardo.errors import InvalidInput
from ricardo.gateway.urls import check_backend_url, redact, split_credentials


class ConfigError(InvalidInput):
    """A config (file or admin change) that this gateway cannot apply."""

    status = 422


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SLOConfig(_Strict):
    ttft_ms: float = Field(default=2000.0, gt=0)
    tpot_ms: float = Field(default=120.0, gt=0)


class PoolConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    hardware: str = Field(
        description="profile name of the hardware type, e.g. A10G, H100", examples=["A10G", "L4", "A100-80GB", "H100"]
    )
    price_per_hour: float | None = Field(default=None, ge=0, description="$/h per replica; default: the price set's")
    backends: list[HttpUrl] = Field(default_factory=list)
    models: list[str] | None = Field(default=None, description="models this pool serves; default: all")
    api_key: str | None = Field(default=None, description="bearer token the backends expect")
    draining: list[HttpUrl] = Field(default_factory=list, description="backends that take no new requests")
    role: Literal["unified"] = "unified"

    @field_validator("backends")
    @classmethod
    def _no_duplicates(cls, urls: list[HttpUrl]) -> list[HttpUrl]:
        for url in urls:
            check_backend_url(str(url))
        if len({backend_id(u) for u in urls}) != len(urls):
            raise ValueError("a backend is listed twice")
        return urls

    @model_validator(mode="after")
    def _drain_known_backends(self) -> PoolConfig:
        unknown = {backend_id(u) for u in self.draining} - {backend_id(u) for u in self.backends}
        if unknown:
            raise ValueError(f"draining backends that are not in the pool: {sorted(map(redact, unknown))}")
        if self.api_key and any(split_credentials(str(u))[1] for u in self.backends):
            raise ValueError("give the backends' credentials as api_key or in their URLs, not both")
        return self


def backend_key(url: HttpUrl | str) -> str:
    """One spelling per backend URL, so `http://h:1` and `http://h:1/` are the same backend."""
    return str(url).rstrip("/")


def backend_id(url: HttpUrl | str) -> str:
    """A backend's identity: its URL without credentials (what the admin API shows, redacted, is enough to name it)."""
    return split_credentials(backend_key(url))[0].rstrip("/")


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    first_byte_timeout_s: float = Field(default=300.0, gt=0, description="until the upstream answers with headers")
    idle_timeout_s: float = Field(default=120.0, gt=0, description="longest silence inside a stream")
    max_attempts: int = Field(default=3, ge=1, description="backends tried per request before giving up")
    connections_per_backend: int = Field(default=512, gt=0)


class ScalingConfig(_Strict):
    interval_s: float = Field(default=5.0, gt=0, description="how often scaling hints are recomputed")
    window_s: float = Field(default=30.0, gt=0, description="sliding window of observed traffic")
    scale_down_hold_s: float = Field(default=60.0, ge=0, description="a lower target must hold this long")
    headroom: float = Field(default=0.0, ge=0, lt=1, description="extra: load each type to (1 - headroom) of its plan")
    min_replicas: int = Field(default=0, ge=0)
    webhook_url: HttpUrl | None = None


class PredictorConfig(_Strict):
    """How the output-length model keeps learning (see gateway/learning.py)."""

    learn: bool = Field(default=True, description="refit the model online from the outcomes")
    refit_min_outcomes: int = Field(default=500, ge=1, description="new outcomes before a refit ...")
    refit_min_interval_s: float = Field(default=300.0, ge=0, description="... and at least this long since the last")
    sync_interval_s: float = Field(default=5.0, gt=0, description="how often replicas exchange outcomes and models")
    shared_outcomes: int = Field(
        default=1000,
        ge=0,
        description="latest outcomes each replica keeps in the store "
        "for the refitting replica; 0: that replica learns from its own outcomes only",
    )
    model_path: str | None = Field(
        default=None,
        description="file the model is saved to after each change and "
        "loaded from at start (if compatible); default: not persisted",
    )
    worker_niceness: int = Field(default=10, ge=0, le=19, description="CPU priority of the refit worker process")


class SharedConfig(_Strict):
    """What operators change at run time and replicas share: pools, backends, prices, SLO, policy."""

    policy: str = "cost-aware"
    slo: SLOConfig = Field(default_factory=SLOConfig)
    pools: list[PoolConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_pools(self) -> SharedConfig:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError("pool names must be unique")
        return self


class AuthConfig(_Strict):
    """Who may call the gateway (the admin API's token is `admin_token`)."""

    require_api_keys: bool | None = Field(
        default=None,
        description="/v1 needs `Authorization: Bearer <key>` with a key made through /admin/keys; "
        "default: required when listening beyond loopback, optional on loopback",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names accepted besides loopback ones while the admin token is generated "
        "(the defence against DNS rebinding; e.g. a name in /etc/hosts that points at this machine)",
    )


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, lt=65536)
    models: list[str] = Field(default_factory=lambda: ["llama2-7b"], min_length=1)
    policy: str = "cost-aware"
    price_set: str = "melange"
    slo: SLOConfig = Field(default_factory=SLOConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    health_interval_s: float = Field(default=5.0, gt=0)
    admin_token: str | None = Field(
        default=None, min_length=16, description="bearer token of the admin API; default: $RICARDO_ADMIN_TOKEN"
    )
    redis_url: str | None = Field(default=None, description="share state with other replicas through Redis")
    replica_id: str | None = None
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    log_prompts: bool = False
    tokenizer: str | None = Field(
        default=None,
        description="exact input counts with this encoding "
        "(cl100k_base, o200k_base, llama3); default: an estimate corrected online",
    )
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    pools: list[PoolConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        check_shared(self.shared(), self.models)
        return self

    def shared(self) -> SharedConfig:
        return SharedConfig(policy=self.policy, slo=self.slo, pools=self.pools)

    def pool_models(self, pool: PoolConfig) -> list[str]:
        return pool.models or self.models


def check_shared(shared: SharedConfig, models: list[str]) -> None:
    """Rules that need the static part of the config, or other rooms, too."""
    from ricardo.policies.routing import POLICIES

    if shared.policy not in POLICIES:
        raise ConfigError(f"unknown policy {shared.policy!r}; known: {', '.join(POLICIES)}")
    for pool in shared.pools:
        unknown = set(pool.models or ()) - set(models)
        if unknown:
            raise ConfigError(f"pool {pool.name} serves models not in `models`: {sorted(unknown)}")


def load_config(path: str | Path | None) -> GatewayConfig:
    """Read a config file, or the embedded default (emulated pools on local ports) when none is given."""
    if path is None:
        text = resources.files("ricardo.gateway").joinpath("data/default.yaml").read_text()
    else:
        text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path or 'the embedded config'}: not YAML: {exc}") from None
    return GatewayConfig.model_validate(data)


def default_config_path() -> Path:
    return Path(str(resources.files("ricardo.gateway").joinpath("data/default.yaml")))
