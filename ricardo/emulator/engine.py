"""The engine model: a continuous-batching LLM server reduced to its timing, with no clock of its own.

The scheduler follows vLLM's classic (pre-chunked-prefill) policy, the one the Mélange profiles were
measured on: every iteration, admit waiting sequences first-come-first-served while the batch, the
token budget and the KV cache allow, and if any were admitted, run a prefill iteration for them
(each gets its first token); otherwise run one decode iteration for all running sequences. When the
KV cache cannot hold one more token per running sequence, the newest sequence is preempted and
recomputed later, as vLLM does.

The engine never reads a clock: `step()` says how long the iteration it just performed takes, and
the caller owns time. The real-time emulator sleeps that long; the simulator adds it to virtual
time. `decode_run()` lets the simulator jump over many identical decode iterations at once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ricardo.profiles.engine_params import EngineParams


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    prompt_tokens: int
    output_tokens: int  # how many tokens this request will generate (the emulator decides)
    tag: object = None  # the caller's handle (a stream, a simulated request ...)
    generated: int = 0
    preemptions: int = 0

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def remaining(self) -> int:
        return self.output_tokens - self.generated

    @property
    def finished(self) -> bool:
        return self.generated >= self.output_tokens


@dataclass
class Step:
    """What one iteration (or a run of identical decode iterations) did."""

    seconds: float
    kind: str  # "prefill" or "decode"
    iterations: int = 1
    advanced: list[Sequence] = field(default_factory=list)  # sequences that got new tokens
    finished: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)


class Engine:
    def __init__(self, params: EngineParams):
        self.params = params
        self.capacity = params.kv_capacity_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.context_tokens = 0  # KV held by running sequences

    # -- load, as a vLLM server would export it -------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    @property
    def kv_usage(self) -> float:
        return self.context_tokens / self.capacity if self.capacity else 1.0

    def submit(self, seq: Sequence) -> None:
        if seq.prompt_tokens + seq.output_tokens > self.capacity:
            raise ValueError(
                f"request of {seq.prompt_tokens}+{seq.output_tokens} tokens exceeds the KV cache "
                f"of {self.capacity} tokens on {self.params.hardware}"
            )
        self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.context_tokens -= seq.context
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # -- iterations ---------------------------------------------------------------------------
    def step(self) -> Step | None:
        """Perform one iteration; None when there is nothing to do."""
        admitted = self._admit()
        if admitted:
            return self._prefill(admitted)
        if self.running:
            return self.decode_run(max_iterations=1)
        return None

    def can_admit(self) -> bool:
        """Would the next iteration admit anything? (FCFS: only the head of the queue matters.)"""
        if not self.waiting or len(self.running) >= self.params.max_num_seqs:
            return False
        return self._fits(self.waiting[0].context, 0)

    def _fits(self, extra_tokens: int, batched: int) -> bool:
        # keep room for one more token per running sequence, like vLLM's watermark
        headroom = len(self.running) + 1
        return self.context_tokens + batched + extra_tokens + headroom <= self.capacity

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        batched = 0
        while self.waiting and len(self.running) + len(admitted) < self.params.max_num_seqs:
            head = self.waiting[0]
            if admitted and batched + head.context > self.params.max_batched_tokens:
                break  # a prompt longer than the budget still runs, alone
            if not self._fits(head.context, batched):
                break
            admitted.append(self.waiting.popleft())
            batched += head.context
        return admitted

    def _prefill(self, admitted: list[Sequence]) -> Step:
        tokens = sum(s.context for s in admitted)
        seconds = self.params.prefill_seconds(tokens, len(admitted))
        self.context_tokens += tokens
        self.running.extend(admitted)
        step = Step(seconds=seconds, kind="prefill", advanced=list(admitted))
        for seq in admitted:  # the prefill pass samples each sequence's next token
            seq.generated += 1
            self.context_tokens += 1
        self._retire(step)
        return step

    def decode_run(self, max_iterations: int, max_seconds: float = math.inf) -> Step:
        """Run up to `max_iterations` decode iterations with no admission in between.

        Stops early at the first completion, before the KV cache overflows, and once `max_seconds`
        have been spent (at least one iteration always runs). Valid for more than one iteration only
        while nothing waiting could be admitted, which the caller checks with `can_admit()`.
        """
        preempted = self._make_room()
        batch = len(self.running)
        if batch == 0:
            return Step(seconds=0.0, kind="decode", preempted=preempted)
        p = self.params
        fixed = p.decode_fixed_seconds(batch)
        per_ctx = p.decode_seconds_per_context_token
        limit = min(max_iterations, min(s.remaining for s in self.running))
        limit = max(1, min(limit, (self.capacity - self.context_tokens) // batch))
        # iteration j costs fixed + per_ctx * (C + j * batch); the sum over k iterations is quadratic in k
        first = fixed + per_ctx * self.context_tokens
        if math.isfinite(max_seconds) and limit > 1:
            growth = per_ctx * batch
            if growth > 0:
                k = (-(first - growth / 2) + math.sqrt((first - growth / 2) ** 2 + 2 * growth * max_seconds)) / growth
            else:
                k = max_seconds / first
            limit = max(1, min(limit, math.ceil(k)))
        seconds = limit * first + per_ctx * batch * limit * (limit - 1) / 2
        for seq in self.running:
            seq.generated += limit
        self.context_tokens += batch * limit
        step = Step(seconds=seconds, kind="decode", iterations=limit, advanced=list(self.running), preempted=preempted)
        self._retire(step)
        return step

    def _make_room(self) -> list[Sequence]:
        preempted = []
        while self.running and self.context_tokens + len(self.running) > self.capacity:
            victim = self.running.pop()
            self.context_tokens -= victim.context
            victim.preemptions += 1
            self.waiting.appendleft(victim)  # recomputed (prompt + generated) when readmitted
            preempted.append(victim)
        return preempted

    def _retire(self, step: Step) -> None:
        done = [s for s in self.running if s.finished]
        if done:
            self.running = [s for s in self.running if not s.finished]
            for seq in done:
                self.context_tokens -= seq.context
            step.finished.extend(done)
