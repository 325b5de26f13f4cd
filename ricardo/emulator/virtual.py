"""The engine model under a virtual clock: as fast as the CPU allows, exact to the engine's own timing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ricardo.emulator.engine import Engine, Sequence
from ricardo.profiles.engine_params import EngineParams


@dataclass(eq=False)
class Timing:
    """When one request arrived, got its first token and finished (virtual seconds)."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    first_token_at: float = math.nan
    finished_at: float = math.nan

    @property
    def latency(self) -> float:
        return self.finished_at - self.arrival

    @property
    def ttft(self) -> float:
        return self.first_token_at - self.arrival

    @property
    def latency_per_token(self) -> float:
        """Request latency / output tokens, prefill and queueing included: Mélange's "TPOT", the profiles' measure."""
        return self.latency / self.output_tokens

    @property
    def tpot(self) -> float:
        """TPOT as the gateway and loadgen measure it: (latency - TTFT) / (output tokens - 1)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finished_at - self.first_token_at) / (self.output_tokens - 1)


class VirtualEngine:
    """One engine whose iterations are laid on a virtual time line."""

    def __init__(self, params: EngineParams):
        self.engine = Engine(params, track_tokens=False)  # only first and last tokens are timed
        self.busy_until = 0.0  # the engine is inside an iteration until then
        self.finished: list[Timing] = []  # requests finished since the caller last emptied this

    def submit(self, timing: Timing) -> None:
        self.advance_to(timing.arrival)
        self.engine.submit(Sequence(timing.prompt_tokens, timing.output_tokens, tag=timing))

    def submit_prefilled(self, timing: Timing, at: float) -> None:
        """A request whose prompt a prefill worker computed, its KV cache arriving here at `at` (a decode worker)."""
        self.advance_to(at)
        self.engine.submit(Sequence(timing.prompt_tokens, timing.output_tokens, tag=timing, prefilled=True))

    def advance_to(self, t: float) -> None:
        """Run every iteration that starts before `t`."""
        engine = self.engine
        while self.busy_until < t:
            if engine.idle:
                self.busy_until = t
                return
            now = self.busy_until
            if engine.can_admit() or not engine.running:
                step = engine.step()
                assert step is not None  # the engine is not idle
            else:
                step = engine.decode_run(max_iterations=1 << 30, max_seconds=t - now)
            end = now + step.seconds
            if step.kind == "prefill":
                for seq in step.advanced:
                    if math.isnan(seq.tag.first_token_at):
                        seq.tag.first_token_at = end
            for seq in step.finished:
                seq.tag.finished_at = end
                self.finished.append(seq.tag)
            self.busy_until = end

    def drain(self) -> None:
        while not self.engine.idle:
            self.advance_to(self.busy_until + 3600.0)


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / rate, size=count))


def run_fixed_size(
    params: EngineParams, rate: float, prompt_tokens: int, output_tokens: int, count: int = 400, seed: int = 0
) -> list[Timing]:
    """Poisson arrivals of identical requests on one engine, as the Mélange profiler drives a GPU."""
    engine = VirtualEngine(params)
    timings = [Timing(float(t), prompt_tokens, output_tokens) for t in poisson_arrivals(rate, count, seed)]
    for timing in timings:
        engine.submit(timing)
    engine.drain()
    return timings
