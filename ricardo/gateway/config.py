"""The gateway's configuration: a YAML file validated by pydantic, with an embedded default."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from ricardo.defaults import default_slo_ms
from ricardo.errors import InvalidInput
from ricardo.gateway.urls import check_backend_url, redact, split_credentials


class ConfigError(InvalidInput):
    """A config (file or admin change) that this gateway cannot apply."""

    status = 422


class _Strict(BaseModel):
    # JSON's 1e400 is inf: an infinite SLO, link or timeout is no setting, and shown it is not JSON (Infinity)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SLOConfig(_Strict):
    """The default SLO of requests that send no x-slo-* header; unset fields: the embedded default config's."""

    ttft_ms: float = Field(default=default_slo_ms()[0], gt=0, description="time to first token, ms")
    tpot_ms: float = Field(
        default=default_slo_ms()[1],
        gt=0,
        description="time per output token after the first, ms: (latency - TTFT) / (output tokens - 1)",
    )


class PoolTimeouts(_Strict):
    """A pool's own timeouts (a slow CPU pool may need a longer first byte); unset fields: `limits`'."""

    connect_timeout_s: float | None = Field(default=None, gt=0, description="as `limits.connect_timeout_s`")
    first_byte_timeout_s: float | None = Field(default=None, gt=0, description="as `limits.first_byte_timeout_s`")
    idle_timeout_s: float | None = Field(default=None, gt=0, description="as `limits.idle_timeout_s`")
    response_timeout_s: float | None = Field(default=None, gt=0, description="as `limits.response_timeout_s`")


class RoleConfig(_Strict):
    """One side of a disaggregated prefill/decode pair: its hardware type, backends and price."""

    hardware: str = Field(description="profile name of this role's hardware type", examples=["H100", "A10G"])
    price_per_hour: float | None = Field(
        default=None, ge=0, le=10_000, description="$/h per replica; default: the price set's"
    )
    backends: list[HttpUrl] = Field(
        default_factory=list,
        description="base URLs of this side's workers (vLLM with a KV connector; credentials allowed)",
    )
    draining: list[HttpUrl] = Field(default_factory=list, description="backends that take no new requests")


ROLES = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class RoleView:
    """The backends of one role of a pool, whatever its kind: `unified` (one role), or `prefill` and `decode`."""

    role: str
    hardware: str
    backends: list[HttpUrl]
    draining: list[HttpUrl]
    price_per_hour: float | None


class PoolConfig(_Strict):
    """One pool: a unified one (`hardware`, `backends`: each backend does prefill and decode), or a disaggregated
    prefill/decode pair (`prefill`, `decode`, `link_gbps`). A pair's `hardware` is its decode type (the profile its
    load is charged on), filled in when left out; its backends, draining list and prices are per role."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the pool's name in metrics, headers and the admin API"
    )
    hardware: str | None = Field(
        default=None,
        description="profile name of the hardware type, e.g. A10G, H100 (a pair: its decode type, filled in)",
        examples=["A10G", "L4", "A100-80GB", "H100"],
    )
    price_per_hour: float | None = Field(
        default=None, ge=0, le=10_000, description="$/h per replica; default: the price set's"
    )
    backends: list[HttpUrl] = Field(
        default_factory=list, description="OpenAI-compatible base URLs of the pool's replicas (credentials allowed)"
    )
    model: str | None = Field(
        default=None,
        description="the model this pool serves (whose profile book prices and times it); default: the first of "
        "`models`, else the gateway's first model",
    )
    models: list[str] | None = Field(
        default=None, description="model ids this pool answers; default: `model` if given, else all"
    )
    api_key: str | None = Field(default=None, description="bearer token the backends expect")
    draining: list[HttpUrl] = Field(default_factory=list, description="backends that take no new requests")
    role: Literal["unified", "pair"] = Field(
        default="unified",
        description="`unified`: each backend does prefill and decode; `pair`: a pool with `prefill` and `decode`",
    )
    timeouts: PoolTimeouts | None = Field(default=None, description="this pool's timeouts; unset: the limits'")
    prefill: RoleConfig | None = Field(default=None, description="a pair's prefill side")
    decode: RoleConfig | None = Field(default=None, description="a pair's decode side")
    link_gbps: float | None = Field(default=None, gt=0, description="a pair: the link the KV cache crosses, Gb/s")

    @model_validator(mode="after")
    def _one_kind(self) -> PoolConfig:
        if self.prefill is None and self.decode is None:
            if self.role == "pair":
                raise ValueError("a pair needs `prefill` and `decode`")
            if self.hardware is None:
                raise ValueError("a unified pool needs `hardware`")
            if self.link_gbps is not None:
                raise ValueError("link_gbps is for pairs (with `prefill` and `decode`)")
            return self
        if self.prefill is None or self.decode is None:
            raise ValueError("a pair needs both `prefill` and `decode`")
        if self.backends or self.draining or self.price_per_hour is not None:
            raise ValueError("a pair's backends, draining backends and prices go under `prefill` and `decode`")
        if self.link_gbps is None:
            raise ValueError("a pair needs `link_gbps`: the link the KV cache crosses")
        if self.hardware not in (None, self.decode.hardware):
            raise ValueError("a pair's `hardware` is its decode type; leave it out")
        self.hardware, self.role = self.decode.hardware, "pair"
        return self

    @property
    def kind_hardware(self) -> str:
        assert self.hardware is not None  # set by the validator
        return self.hardware

    @property
    def is_pair(self) -> bool:
        return self.prefill is not None

    def roles(self) -> list[RoleView]:
        """The pool's roles: one `unified`, or `prefill` then `decode`."""
        if self.prefill is None or self.decode is None:
            return [RoleView("unified", self.kind_hardware, self.backends, self.draining, self.price_per_hour)]
        return [
            RoleView(name, side.hardware, side.backends, side.draining, side.price_per_hour)
            for name, side in (("prefill", self.prefill), ("decode", self.decode))
        ]

    @model_validator(mode="after")
    def _backends_sound(self) -> PoolConfig:
        seen: set[str] = set()
        for role in self.roles():
            for url in role.backends:
                check_backend_url(str(url))
            ids = {backend_id(u) for u in role.backends}
            if len(ids) != len(role.backends) or ids & seen:
                raise ValueError("a backend is listed twice")
            seen |= ids
            unknown = {backend_id(u) for u in role.draining} - ids
            if unknown:
                raise ValueError(f"draining backends that are not in the pool: {sorted(map(redact, unknown))}")
            if self.api_key and any(split_credentials(str(u))[1] for u in role.backends):
                raise ValueError("give the backends' credentials as api_key or in their URLs, not both")
        return self


def backend_key(url: HttpUrl | str) -> str:
    """One spelling per backend URL, so `http://h:1` and `http://h:1/` are the same backend."""
    return str(url).rstrip("/")


def backend_id(url: HttpUrl | str) -> str:
    """A backend's identity: its URL without credentials (what the admin API shows, redacted, is enough to name it)."""
    return split_credentials(backend_key(url))[0].rstrip("/")


class LimitsConfig(_Strict):
    """Request size, upstream timeouts (each enforced on its own) and retries."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="largest request body accepted")
    # Each timeout is enforced on its own (none is derived from another), and `upstream_timeouts` checks that
    # none caps another. A stream's first byte waits for queueing and prefill at a busy backend: 60 s is past
    # what a backend that keeps its SLO queues (the planner sizes pools for seconds, not minutes) and still
    # surfaces a hang within a minute. Inside a stream, tokens come every few tens of ms: 20 s of silence is
    # a stall. A whole (non-streamed) answer arrives at once, so its first byte is its last: it gets the time
    # of a long answer (2,000 tokens at a 120 ms SLO take 4 minutes); stream to have a hang surface sooner.
    connect_timeout_s: float = Field(default=3.0, gt=0, description="to open a connection to a backend")
    first_byte_timeout_s: float = Field(
        default=60.0, gt=0, description="stream: from sending the request to the answer's first event"
    )
    idle_timeout_s: float = Field(default=20.0, gt=0, description="stream: longest silence between two events")
    response_timeout_s: float = Field(
        default=300.0, gt=0, description="whole answer (not streamed): from sending the request to its end"
    )
    max_attempts: int = Field(default=3, ge=1, description="backends tried per request before giving up")
    connections_per_backend: int = Field(default=512, gt=0, description="open connections kept per backend")

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> LimitsConfig:
        upstream_timeouts(self, None)
        return self


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The timeouts in force for one pool's backends."""

    connect_s: float
    first_byte_s: float
    idle_s: float
    response_s: float


def upstream_timeouts(limits: LimitsConfig, pool: PoolConfig | None) -> Timeouts:
    """The pool's timeouts (its own where set, else the limits'); ConfigError where one would cap another:
    a connection is part of the wait for the first byte, and a whole answer's wait includes its first byte."""
    own = pool.timeouts if pool is not None and pool.timeouts is not None else PoolTimeouts()
    timeouts = Timeouts(
        connect_s=own.connect_timeout_s or limits.connect_timeout_s,
        first_byte_s=own.first_byte_timeout_s or limits.first_byte_timeout_s,
        idle_s=own.idle_timeout_s or limits.idle_timeout_s,
        response_s=own.response_timeout_s or limits.response_timeout_s,
    )
    where = f"pool {pool.name}: " if pool is not None else ""
    if timeouts.connect_s >= timeouts.first_byte_s:
        raise ConfigError(
            f"{where}connect_timeout_s ({timeouts.connect_s}) must be below first_byte_timeout_s "
            f"({timeouts.first_byte_s}): the connection is part of the wait for the first byte"
        )
    if timeouts.first_byte_s > timeouts.response_s:
        raise ConfigError(
            f"{where}first_byte_timeout_s ({timeouts.first_byte_s}) must not exceed response_timeout_s "
            f"({timeouts.response_s}): a whole answer's wait includes its first byte"
        )
    return timeouts


class OutlierConfig(_Strict):
    """When a backend is taken out of service on its outcomes (gateway/outlier.py; Envoy's outlier detection)."""

    consecutive_failures: int = Field(default=3, ge=1, description="failed outcomes in a row that eject")
    failure_ratio: float = Field(default=0.5, gt=0, le=1, description="share of failed outcomes that ejects ...")
    window_s: float = Field(default=30.0, gt=0, description="... over this sliding window ...")
    min_requests: int = Field(default=10, ge=1, description="... once it holds this many outcomes")
    base_ejection_s: float = Field(default=5.0, gt=0, description="first ejection; each next one lasts twice as long")
    max_ejection_s: float = Field(default=120.0, gt=0, description="longest ejection")


class AdmissionConfig(_Strict):
    """Load shedding (policies/admission.py): refuse at once with 429 what no pool can serve in time."""

    enabled: bool = Field(default=True, description="shed load; off: every request is sent to some pool")
    max_utilization: float = Field(
        default=1.0,
        gt=0,
        description="a request predicted to miss its SLO on every pool is refused once each pool that could "
        "serve it is past this utilization (1.0: the profile's operating point)",
    )
    priority_factor: float = Field(
        default=1.5, ge=1, description="each priority level above 0 multiplies the bound by this, each below divides"
    )
    max_header_priority: int = Field(default=2, ge=0, le=5, description="highest priority `x-priority` can claim")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a refusal")


class ShutdownConfig(_Strict):
    """What SIGTERM does: readiness goes 503, new requests are refused, in-flight work gets a deadline."""

    unready_wait_s: float = Field(
        default=1.0, ge=0, description="keep serving new requests this long after /readyz turns 503 (load balancers)"
    )
    drain_timeout_s: float = Field(
        default=30.0, gt=0, description="from SIGTERM until the streams still open end with an error event"
    )


class ScalingConfig(_Strict):
    """Scaling hints: desired replicas per pool, at /admin/scaling, in `ricardo_desired_replicas` and to a webhook."""

    interval_s: float = Field(default=5.0, gt=0, description="how often scaling hints are recomputed")
    window_s: float = Field(default=30.0, gt=0, description="sliding window of observed traffic")
    scale_down_hold_s: float = Field(
        default=60.0,
        ge=0,
        description="a pool keeps a replica this long after it rose to it (or the plan last asked for it); the plan "
        "is made around the kept replicas",
    )
    headroom: float = Field(default=0.0, ge=0, lt=1, description="extra: load each type to (1 - headroom) of its plan")
    min_replicas: int = Field(default=0, ge=0, description="no pool's hint goes below this")
    webhook_url: HttpUrl | None = Field(default=None, description="POSTed the hints when they change")


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
        "for the refitting replica, each with the head and tail of its prompt text (the model's features); "
        "0: no prompt text in the store, and that replica learns from its own outcomes only",
    )
    model_path: str | None = Field(
        default=None,
        description="file the model is saved to after each change and "
        "loaded from at start (if compatible); default: not persisted",
    )
    worker_niceness: int = Field(default=10, ge=0, le=19, description="CPU priority of the refit worker process")


class SharedConfig(_Strict):
    """What operators change at run time and replicas share: pools, backends, prices, SLO, policy."""

    policy: str = Field(default="cost-aware", description="the routing policy (policies/routing.py)")
    slo: SLOConfig = Field(default_factory=SLOConfig, description="the default SLO")
    pools: list[PoolConfig] = Field(min_length=1, description="the pools")

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
    metrics_token: str | None = Field(
        default=None,
        min_length=16,
        description="bearer token /metrics asks for (it names client keys and their spend; Prometheus sends it as "
        "`authorization`), the admin token also accepted; default: $RICARDO_METRICS_TOKEN; without either, /metrics "
        "is open when listening on loopback and asks for the admin token beyond it",
    )


class GatewayConfig(_Strict):
    """The whole gateway config: a YAML file given to `ricardo serve --config`, or the embedded default."""

    host: str = Field(
        default="127.0.0.1", description="listen address; beyond loopback, API keys and an admin token are required"
    )
    port: int = Field(default=8000, ge=0, lt=65536, description="listen port")
    models: list[str] = Field(
        default_factory=lambda: ["llama2-7b"], min_length=1, description="model ids served (`/v1/models`)"
    )
    profiles: dict[str, str] = Field(
        default_factory=dict,
        description="model id -> the shipped profile book it is priced and timed by (llama2-7b, llama3.1-8b, "
        "smollm2-135m); default: the book of the same name, else llama2-7b's",
        examples=[{"meta-llama/Llama-3.1-8B-Instruct": "llama3.1-8b"}],
    )
    embedding_models: dict[str, float] = Field(
        default_factory=dict,
        description="models of `models` that embed (served on /v1/embeddings by the pools that list them), "
        "each with its price in $ per million input tokens",
    )
    policy: str = Field(
        default="cost-aware",
        description="routing policy: cost-aware, round-robin, least-outstanding, cheapest-price, melange "
        "(policies/routing.py); changeable at run time",
    )
    price_set: str = Field(
        default="melange", description="the profiles' price list a pool without price_per_hour is charged at"
    )
    slo: SLOConfig = Field(
        default_factory=SLOConfig, description="default SLO; a request may set its own (x-slo-ttft-ms, x-slo-tpot-ms)"
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="request size, timeouts and retries")
    health_interval_s: float = Field(
        default=5.0, gt=0, description="a backend without a clean answer for this long gets a probe completion"
    )
    admin_token: str | None = Field(
        default=None, min_length=16, description="bearer token of the admin API; default: $RICARDO_ADMIN_TOKEN"
    )
    redis_url: str | None = Field(default=None, description="share state with other replicas through Redis")
    replica_id: str | None = Field(
        default=None, description="this replica's name in shared state; default: host-pid-random"
    )
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="scaling hints (desired replicas)")
    log_prompts: bool = Field(
        default=False,
        description="put each request's prompt text (its messages or prompts, at most 4,000 characters) in its "
        "access line; off: no log line carries prompt text",
    )
    tokenizer: str | None = Field(
        default=None,
        description="exact input counts with this encoding "
        "(cl100k_base, o200k_base, llama3); default: an estimate corrected online",
    )
    predictor: PredictorConfig = Field(default_factory=PredictorConfig, description="output-length learning")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="who may call the OpenAI API")
    outlier: OutlierConfig = Field(default_factory=OutlierConfig, description="taking failing backends out")
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig, description="load shedding")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig, description="graceful shutdown on SIGTERM")
    pools: list[PoolConfig] = Field(
        min_length=1, description="the pools of backends, one hardware type each; changeable at run time"
    )

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        check_shared(self.shared(), self.models)
        from ricardo.profiles.catalog import shipped_models

        unknown_books = {book for book in self.profiles.values() if book not in shipped_models()}
        if unknown_books or set(self.profiles) - set(self.models):
            raise ConfigError(
                f"`profiles` maps models of `models` to shipped books ({', '.join(shipped_models())}); "
                f"unknown: {sorted(unknown_books | (set(self.profiles) - set(self.models)))}"
            )
        unknown = set(self.embedding_models) - set(self.models)
        if unknown:
            raise ConfigError(f"embedding models not in `models`: {sorted(unknown)}")
        if any(price < 0 for price in self.embedding_models.values()):
            raise ConfigError("an embedding model's price cannot be negative")
        for pool in self.pools:
            upstream_timeouts(self.limits, pool)
        return self

    def shared(self) -> SharedConfig:
        return SharedConfig(policy=self.policy, slo=self.slo, pools=self.pools)

    def pool_models(self, pool: PoolConfig) -> list[str]:
        """The model ids a request may name to be sent to this pool."""
        return pool.models or ([pool.model] if pool.model else self.models)

    def pool_model(self, pool: PoolConfig) -> str:
        """The model the pool serves: its `model`, else the (first) one of its `models`, else the gateway's first."""
        return pool.model or (pool.models or self.models)[0]

    def profile_of(self, model: str) -> str:
        """The shipped profile book a model id is priced and timed by: `profiles`' entry, else the book of the same
        name (ignoring case and dashes: `Llama-3.1-8B` is `llama3.1-8b`), else Llama-2-7B's."""
        from ricardo.profiles.catalog import shipped_models

        if model in self.profiles:
            return self.profiles[model]
        loose = {book.replace("-", ""): book for book in shipped_models()}
        return loose.get(model.lower().replace("-", ""), "llama2-7b")


def check_shared(shared: SharedConfig, models: list[str]) -> None:
    """Rules that need the static part of the config, or other rooms, too."""
    from ricardo.policies.routing import POLICIES

    if shared.policy not in POLICIES:
        raise ConfigError(f"unknown policy {shared.policy!r}; known: {', '.join(POLICIES)}")
    for pool in shared.pools:
        unknown = set(pool.models or ()) - set(models)
        if pool.model is not None and pool.model not in models:
            raise ConfigError(f"pool {pool.name} serves model {pool.model!r}, not in `models`")
        if pool.model is not None and pool.models and pool.model not in pool.models:
            raise ConfigError(f"pool {pool.name}: its `model` {pool.model!r} is not among its `models`")
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
