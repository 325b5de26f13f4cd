"""The engine model: a continuous-batching LLM server reduced to its timing, with no clock of its own.

The scheduler follows vLLM 0.2.7's policy (before chunked prefill), the one the Mélange profiles were
measured on: every iteration, admit waiting sequences first-come-first-served while the batch, the
token budget, the padding budget and the KV cache allow, and if any were admitted, run a prefill
iteration for them (each gets its first token); otherwise run one decode iteration for all running
sequences. vLLM 0.2.7 pads a prefill batch to its longest prompt, so both the token budget and the
prefill's cost count `len(batch) * longest`. When the KV cache cannot hold one more token per
running sequence, the newest sequence is preempted and recomputed later, as vLLM does.

The engine never reads a clock: `step()` says how long the iteration it just performed takes, and
the caller owns time. The real-time emulator sleeps that long; the simulator adds it to virtual
time. `decode_run()` lets the simulator jump over many identical decode iterations at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ricardo.profiles.engine_params import EngineParams


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    prompt_tokens: int
    output_tokens: int  # how many tokens this request will generate (the emulator decides)
    tag: Any = None  # the caller's handle (a stream, a simulated request ...): the engine never reads it
    generated: int = 0
    preemptions: int = 0
    prefilled: bool = False  # its KV cache arrives from a prefill worker: admission computes nothing

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
    """The scheduler and its KV cache.

    With `track_tokens` off (the simulator's choice), a decode run does not update the token count
    of every running sequence nor list them in `Step.advanced`: `generated` is brought up to date
    only when a sequence finishes, is preempted or cancelled. That makes a decode run O(1) instead
    of O(batch); the timing is the same.
    """

    def __init__(self, params: EngineParams, track_tokens: bool = True):
        self.params = params
        self.track_tokens = track_tokens
        self.capacity = params.kv_capacity_tokens
        self.waiting: deque[Sequence] = deque()
        self.context_tokens = 0  # KV held by running sequences
        # Running sequences advance in lockstep, so each finishes at a known decode iteration. They are
        # kept in admission order with that iteration, and a heap of (iteration, tie-break, sequence)
        # finds the next completion without a scan.
        self._iteration = 0
        self._running: dict[Sequence, int] = {}
        self._finish_heap: list[tuple[int, int, Sequence]] = []
        self._order = itertools.count()

    # -- load, as a vLLM server would export it -------------------------------------------------
    @property
    def running(self) -> list[Sequence]:
        """Running sequences, oldest admission first."""
        return list(self._running)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self._running

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
        if seq in self._running:
            self._leave(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # -- iterations ---------------------------------------------------------------------------
    def step(self) -> Step | None:
        """Perform one iteration; None when there is nothing to do."""
        admitted = self._admit()
        if admitted:
            return self._prefill(admitted)
        if self._running:
            return self.decode_run(max_iterations=1)
        return None

    def can_admit(self) -> bool:
        """Would the next iteration admit anything? (FCFS: only the head of the queue matters.)"""
        if not self.waiting or len(self._running) >= self.params.max_num_seqs:
            return False
        return self._fits(self.waiting[0].context, 0)

    def _fits(self, extra_tokens: int, batched: int) -> bool:
        # keep room for one more token per running sequence, like vLLM's watermark
        headroom = len(self._running) + 1
        return self.context_tokens + batched + extra_tokens + headroom <= self.capacity

    def _admit(self) -> list[Sequence]:
        p = self.params
        admitted: list[Sequence] = []
        computed = batched = longest = held = 0  # prompts to compute (padded budget); transferred KV (cache only)
        while self.waiting and len(self._running) + len(admitted) < p.max_num_seqs:
            head = self.waiting[0]
            if head.prefilled:
                if not self._fits(head.context, batched + held):
                    break
                admitted.append(self.waiting.popleft())
                held += head.context
                continue
            if computed:  # a prompt longer than the budget still runs, alone
                padded = (computed + 1) * max(longest, head.context)
                if padded > p.max_batched_tokens or padded - batched - head.context > p.max_paddings:
                    break
            if not self._fits(head.context, batched + held):
                break
            admitted.append(self.waiting.popleft())
            computed += 1
            batched += head.context
            longest = max(longest, head.context)
        return admitted

    def _prefill(self, admitted: list[Sequence]) -> Step:
        computed = [s for s in admitted if not s.prefilled]
        seconds = 0.0
        if computed:
            longest = max(s.context for s in computed)
            seconds = self.params.prefill_seconds(len(computed) * longest, len(computed), longest)
        step = Step(seconds=seconds, kind="prefill", advanced=list(admitted))
        for seq in admitted:  # the prefill pass samples each sequence's next token
            seq.prefilled = False  # preempted later, it is recomputed here
            seq.generated += 1
            if seq.finished:
                step.finished.append(seq)
                continue
            self.context_tokens += seq.context
            at = self._iteration + seq.remaining
            self._running[seq] = at
            heapq.heappush(self._finish_heap, (at, next(self._order), seq))
        return step

    def _sync(self, seq: Sequence) -> None:
        """Bring a running sequence's token count up to date (needed without `track_tokens`)."""
        seq.generated = seq.output_tokens - (self._running[seq] - self._iteration)

    def _leave(self, seq: Sequence) -> None:
        self._sync(seq)
        del self._running[seq]
        self.context_tokens -= seq.context

    def decode_run(self, max_iterations: int, max_seconds: float = math.inf) -> Step:
        """Run up to `max_iterations` decode iterations with no admission in between.

        Stops early at the first completion, before the KV cache overflows, and once `max_seconds`
        have been spent (at least one iteration always runs). Valid for more than one iteration only
        while nothing waiting could be admitted, which the caller checks with `can_admit()`.
        """
        preempted = self._make_room()
        batch = len(self._running)
        if batch == 0:
            return Step(seconds=0.0, kind="decode", preempted=preempted)
        p = self.params
        fixed = p.decode_fixed_seconds(batch)
        per_ctx = p.decode_seconds_per_context_token
        limit = min(max_iterations, self._next_finish() - self._iteration)
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
        self._iteration += limit
        self.context_tokens += batch * limit
        step = Step(seconds=seconds, kind="decode", iterations=limit, preempted=preempted)
        if self.track_tokens:
            for seq in self._running:
                seq.generated += limit
            step.advanced = list(self._running)
        self._retire(step)
        return step

    def _next_finish(self) -> int:
        heap = self._finish_heap
        while self._running.get(heap[0][2]) != heap[0][0]:  # drop entries of preempted or cancelled sequences
            heapq.heappop(heap)
        return heap[0][0]

    def _make_room(self) -> list[Sequence]:
        preempted = []
        while self._running and self.context_tokens + len(self._running) > self.capacity:
            victim = next(reversed(self._running))  # the newest
            self._leave(victim)
            victim.preemptions += 1
            self.waiting.appendleft(victim)  # recomputed (prompt + generated) when readmitted
            preempted.append(victim)
        return preempted

    def _retire(self, step: Step) -> None:
        heap = self._finish_heap
        while heap and heap[0][0] <= self._iteration:
            at, _, seq = heapq.heappop(heap)
            if self._running.get(seq) == at:
                self._leave(seq)
                step.finished.append(seq)
