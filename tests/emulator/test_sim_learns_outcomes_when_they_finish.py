"""The simulator's router learns an answer's length when the answer has finished in virtual time, never before."""

from __future__ import annotations

from typing import Any

from ricardo.emulator.cluster import TraceRequest, simulate
from ricardo.emulator.fleet import book_for_slo
from ricardo.policies.types import SLO
from ricardo.profiles.engine_params import engine_catalog

BOOK = book_for_slo(120)


class Recording:
    """Sizes that record, at each arrival, which requests' lengths it had been taught."""

    name = "recording"

    def __init__(self) -> None:
        self.taught: list[int] = []
        self.known_at_arrival: list[list[int]] = []

    def predict(self, input_tokens: int, output_tokens: int, prompt: str | None, model: str) -> tuple[int, int, Any]:
        index = len(self.known_at_arrival)
        self.known_at_arrival.append(list(self.taught))
        return 100, 200, index

    def observe(self, handle: Any, output_tokens: int) -> None:
        self.taught.append(handle)


def test_no_outcome_is_learnt_before_its_request_finishes():
    # long prompts arriving close together: prefill iterations and the decode runs that end requests straddle arrivals
    requests = [TraceRequest(0.013 * k, 1_500 + 37 * (k % 7), 1 + (k * 13) % 40) for k in range(120)]
    sizes = Recording()
    result = simulate(
        requests, {"A100-80GB": 1}, engine_catalog(), BOOK, BOOK.prices, "cost-aware", SLO(10_000.0, 120.0), sizes=sizes
    )
    early = [
        (index, known, result.requests[known].timing.finished_at, requests[index].arrival)
        for index, taught in enumerate(sizes.known_at_arrival)
        for known in taught
        if result.requests[known].timing.finished_at > requests[index].arrival
    ]
    assert not early, early[:5]
