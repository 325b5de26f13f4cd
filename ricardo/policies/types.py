"""The data a routing decision is made of. Plain, immutable (a `Choice` by convention), cheap to build on the request
path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SLO:
    """What a request must meet. `tpot_ms` bounds the time per output token after the first, (latency - TTFT) /
    (output tokens - 1), as the gateway and loadgen measure it. The capacity model (profiles, `capacity_share`,
    `alone` latencies) judges it by the profiles' measure, latency per token = latency / output tokens, which is
    the larger of the two whenever the TTFT exceeds the TPOT: a conservative reading of the same bound."""

    ttft_ms: float
    tpot_ms: float


@dataclass(frozen=True, slots=True)
class RequestShape:
    """How big a request is (or is predicted to be), and what it must meet."""

    model: str
    input_tokens: int
    output_p50: int
    output_p90: int
    slo: SLO
    max_tokens: int | None = None
    stream: bool = False
    priority: int = 0


@dataclass(frozen=True, slots=True)
class PairSpec:
    """The two sides of a disaggregated prefill/decode pool and the link the KV cache crosses between them."""

    prefill_hardware: str
    decode_hardware: str
    prefill_price_per_hour: float  # one prefill replica
    decode_price_per_hour: float  # one decode replica
    link_gbps: float


@dataclass(frozen=True, slots=True)
class PoolView:
    """A snapshot of one pool at decision time.

    `hardware` names the profile the pool runs on. A disaggregated pair has role "pair" and names
    both sides in `prefill_hardware` / `decode_hardware` (a unified pool leaves them empty).
    """

    name: str
    hardware: str
    price_per_hour: float  # for the whole pool unit a request runs on (one replica, or one P+D pair)
    replicas: int  # healthy endpoints that can take a request now
    in_flight: int = 0
    in_flight_load: float = 0.0  # sum over in-flight requests of the capacity share each one uses
    ttft_ms: float | None = None  # live estimates from recent outcomes, if any
    latency_per_token_ms: float | None = None  # request latency / output tokens (policies/live.py), not TPOT
    role: str = "unified"
    prefill_hardware: str = ""
    decode_hardware: str = ""
    models: tuple[str, ...] = ()
    pair: PairSpec | None = None  # set for role "pair": `replicas` counts prefill replicas, `decode_replicas` decode
    decode_replicas: int = 0
    decode_load: float = 0.0  # of a pair: decode replicas' worth in flight (`in_flight_load` is then the prefill's)
    # replicas' worth of load the backends run or queue beyond this gateway's requests (another replica's, a direct
    # client's; policies/external.py), beside `in_flight_load` (of a pair: on its prefill side)
    external_load: float = 0.0
    # how much later than the capacity model predicted the pool's recent requests finished (observed / predicted
    # latency per token; policies/ledger.py); None before a request a ledger could judge has finished
    lateness: float | None = None
    median_load: float = 0.0  # as `in_flight_load`, with each request charged at its predicted p50 output, not p90

    @property
    def utilization(self) -> float:
        """Share of the pool's sustainable capacity in use (1.0 = at its SLO limit); of a pair, its busier role's."""
        prefill = (self.in_flight_load + self.external_load) / self.replicas if self.replicas else float("inf")
        if self.pair is None:
            return prefill
        return max(prefill, self.decode_load / self.decode_replicas if self.decode_replicas else float("inf"))


# not frozen: a frozen dataclass sets each field through object.__setattr__, which made building a Choice 4x dearer
# (1.1 against 0.25 µs), and a policy builds one per pool for every request
@dataclass(slots=True)
class Choice:
    """One ranked option, with the reason it ranks where it does. Read, never changed, once the policy returns it."""

    pool: str
    score: float  # lower is better
    cost_usd: float  # expected dollars for this request on this pool
    ttft_ms: float | None = None
    latency_per_token_ms: float | None = None  # the pool's live request latency / output tokens
    slack: float | None = None  # SLO slack, as a share of the SLO (negative: predicted miss)
    explain: str | Callable[[Choice], str] = ""  # the reason, or the function that words it from the choice
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why the option ranks where it does. Worded when asked: a policy ranks every pool for every request, and
        formatting the numbers of each cost as much as ranking it, while only a choice that is read needs words."""
        return self.explain if isinstance(self.explain, str) else self.explain(self)
