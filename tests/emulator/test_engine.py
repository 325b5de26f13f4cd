"""The engine model: vLLM 0.2.7-style scheduling, token accounting, KV capacity, preemption, timing."""

from __future__ import annotations

import math

import pytest
from ricardo.emulator.engine import Engine, Sequence
from ricardo.emulator.virtual import Timing, VirtualEngine, run_fixed_size
from ricardo.profiles.engine_params import EngineParams

KV_BYTES = 2 * 32 * 32 * 128 * 2


def params(kv_tokens: int | None = None, **fields) -> EngineParams:
    """A100-like parameters; `kv_tokens` shrinks the memory so the KV cache holds about that many tokens."""
    base = dict(
        hardware="test",
        peak_tflops=312,
        mem_bw_gbs=2039,
        mem_gb=85.9,
        flops_efficiency=0.6,
        bw_efficiency=0.6,
        step_overhead_s=0.004,
        seq_overhead_s=1e-4,
        reserved_gb=1.0,
    )
    if kv_tokens is not None:
        base["mem_gb"] = (13.5e9 + 1e9 + (kv_tokens + 0.5) * KV_BYTES) / 0.9 / 1e9
    return EngineParams(**(base | fields))


def run_to_completion(engine: Engine, limit: int = 100_000) -> list:
    steps = []
    while (step := engine.step()) is not None:
        steps.append(step)
        assert len(steps) < limit
    return steps


def test_kv_capacity_helper_is_exact():
    assert params(kv_tokens=1000).kv_capacity_tokens == 1000


def test_prefill_precedes_decode_and_gives_the_first_token():
    engine = Engine(params())
    seq = Sequence(prompt_tokens=100, output_tokens=5)
    engine.submit(seq)
    first = engine.step()
    assert first.kind == "prefill" and first.advanced == [seq] and seq.generated == 1
    assert engine.context_tokens == 101
    second = engine.step()
    assert second.kind == "decode" and seq.generated == 2


def test_a_request_gets_exactly_its_tokens_one_prefill_then_decodes():
    engine = Engine(params())
    seq = Sequence(prompt_tokens=50, output_tokens=20)
    engine.submit(seq)
    steps = run_to_completion(engine)
    assert [s.kind for s in steps] == ["prefill"] + ["decode"] * 19
    assert seq.generated == 20 and seq.finished and steps[-1].finished == [seq]
    assert engine.idle and engine.context_tokens == 0


def test_new_arrivals_are_prefilled_before_running_sequences_decode():
    engine = Engine(params())
    a, b = Sequence(10, 10), Sequence(10, 10)
    engine.submit(a)
    engine.step()
    engine.submit(b)
    step = engine.step()
    assert step.kind == "prefill" and step.advanced == [b] and a.generated == 1


def test_one_output_token_finishes_at_prefill():
    engine = Engine(params())
    seq = Sequence(30, 1)
    engine.submit(seq)
    step = engine.step()
    assert step.finished == [seq] and engine.idle and engine.context_tokens == 0


def test_kv_capacity_makes_requests_queue():
    engine = Engine(params(kv_tokens=1000))
    seqs = [Sequence(300, 10) for _ in range(5)]
    for seq in seqs:
        engine.submit(seq)
    step = engine.step()
    assert step.kind == "prefill" and len(step.advanced) == 3  # a fourth 300-token prompt does not fit
    assert list(engine.waiting) == seqs[3:]
    run_to_completion(engine)
    assert all(s.generated == 10 for s in seqs)


def test_a_request_larger_than_the_kv_cache_is_refused():
    with pytest.raises(ValueError):
        Engine(params(kv_tokens=1000)).submit(Sequence(900, 200))


def test_batch_and_token_budgets_bound_a_prefill():
    engine = Engine(params(max_num_seqs=4))
    for _ in range(10):
        engine.submit(Sequence(10, 5))
    assert len(engine.step().advanced) == 4
    engine = Engine(params(max_batched_tokens=1000))
    for _ in range(5):
        engine.submit(Sequence(400, 5))
    assert len(engine.step().advanced) == 2


def test_prefill_batches_are_padded_like_vllm_0_2_7():
    engine = Engine(params())
    short, long = Sequence(100, 5), Sequence(500, 5)
    engine.submit(short)
    engine.submit(long)
    assert engine.step().advanced == [short]  # padding 100 -> 500 would waste 400 > 256 tokens
    engine = Engine(params())
    a, b = Sequence(400, 5), Sequence(500, 5)
    engine.submit(a)
    engine.submit(b)
    step = engine.step()
    assert step.advanced == [a, b]
    assert step.seconds == pytest.approx(engine.params.prefill_seconds(1000, 2, 500))


def test_growing_sequences_preempt_the_newest_which_is_recomputed():
    engine = Engine(params(kv_tokens=520))
    old, new = Sequence(200, 100), Sequence(200, 100)
    engine.submit(old)
    engine.submit(new)
    assert len(engine.step().advanced) == 2
    steps = run_to_completion(engine)
    preempting = [s for s in steps if s.preempted]
    assert preempting and preempting[0].preempted == [new]
    assert new.preemptions >= 1 and old.preemptions == 0
    recompute = next(s for s in steps if s.kind == "prefill")
    assert recompute.advanced == [new]
    assert old.generated == 100 and new.generated == 100 and engine.idle and engine.context_tokens == 0


def test_decode_run_equals_repeated_steps():
    def loaded() -> tuple[Engine, list[Sequence]]:
        engine = Engine(params())
        seqs = [Sequence(100 + 10 * k, 40 + 7 * k) for k in range(4)]
        for seq in seqs:
            engine.submit(seq)
        assert len(engine.step().advanced) == 4
        return engine, seqs

    fast, fast_seqs = loaded()
    slow, slow_seqs = loaded()
    run = fast.decode_run(max_iterations=1000)
    assert run.iterations == 39 and run.finished == [fast_seqs[0]]  # stops at the first completion
    seconds = sum(slow.step().seconds for _ in range(run.iterations))
    assert run.seconds == pytest.approx(seconds, rel=1e-12)
    assert [s.generated for s in fast_seqs] == [s.generated for s in slow_seqs]
    assert fast.context_tokens == slow.context_tokens and len(fast.running) == len(slow.running) == 3


def test_decode_run_stops_once_its_time_is_spent():
    engine = Engine(params())
    engine.submit(Sequence(100, 500))
    engine.step()
    one = engine.params.decode_seconds(1, 101)
    run = engine.decode_run(max_iterations=1000, max_seconds=10.5 * one)
    assert run.iterations == 11


def test_decode_run_stops_before_the_kv_cache_overflows():
    engine = Engine(params(kv_tokens=400))
    engine.submit(Sequence(100, 250))
    engine.submit(Sequence(100, 250))
    engine.step()
    run = engine.decode_run(max_iterations=1000)
    assert engine.context_tokens <= engine.capacity and run.iterations == (400 - 202) // 2


def test_cancel_frees_the_kv_cache_and_the_queue():
    engine = Engine(params(kv_tokens=1000))
    running, waiting = Sequence(600, 50), Sequence(600, 50)
    engine.submit(running)
    engine.submit(waiting)
    engine.step()
    assert engine.running == [running] and list(engine.waiting) == [waiting]
    engine.cancel(running)
    assert engine.context_tokens == 0 and not engine.running
    assert engine.step().advanced == [waiting]
    engine.cancel(waiting)
    assert engine.idle and engine.step() is None
    engine.cancel(Sequence(1, 1))  # unknown: nothing to do


def test_a_lone_request_takes_prefill_plus_its_decodes_in_virtual_time():
    p = params()
    engine = VirtualEngine(p)
    timing = Timing(arrival=1.0, prompt_tokens=200, output_tokens=10)
    engine.submit(timing)
    engine.drain()
    prefill = p.prefill_seconds(200, 1)
    decodes = sum(p.decode_seconds(1, 201 + k) for k in range(9))
    assert timing.ttft == pytest.approx(prefill)
    assert timing.latency == pytest.approx(prefill + decodes)
    assert timing.latency_per_token == pytest.approx(timing.latency / 10)


def test_latency_grows_with_load():
    p = params()
    light = run_fixed_size(p, 1.0, 100, 100, count=200)
    heavy = run_fixed_size(p, 30.0, 100, 100, count=200)
    mean = lambda ts: sum(t.latency_per_token for t in ts) / len(ts)  # noqa: E731
    assert all(math.isfinite(t.finished_at) for t in light + heavy)
    assert mean(heavy) > 1.5 * mean(light)


def test_prefill_is_compute_bound_and_decode_bandwidth_bound():
    p = params()
    assert p.prefill_seconds(4000, 1) > 5 * p.prefill_seconds(400, 1)  # long prompts: FLOPs
    assert p.prefill_seconds(20, 1) == pytest.approx(p.prefill_seconds(40, 1), rel=1e-3)  # tiny: weights
    assert p.decode_seconds(8, 1000) == pytest.approx(p.decode_seconds(1, 1000) + 7 * p.seq_overhead_s)
    assert p.decode_seconds(256, 0) > p.decode_seconds(1, 0) + 255 * p.seq_overhead_s  # big batch: FLOPs


def test_untracked_tokens_time_the_same_and_sync_on_leaving():
    p = params(kv_tokens=3000)  # small enough to preempt

    def timings(track: bool) -> list[tuple[float, float]]:
        engine = VirtualEngine(p)
        engine.engine = Engine(p, track_tokens=track)
        runs = [
            Timing(arrival=0.05 * k, prompt_tokens=200 + 37 * (k % 5), output_tokens=60 + 41 * (k % 7))
            for k in range(60)
        ]
        for timing in runs:
            engine.submit(timing)
        engine.drain()
        return [(t.first_token_at, t.finished_at) for t in runs]

    assert timings(False) == timings(True)
    engine = Engine(p, track_tokens=False)
    seq = Sequence(100, 50)
    engine.submit(seq)
    engine.step()
    run = engine.decode_run(max_iterations=10)
    assert run.iterations == 10 and run.advanced == [] and seq.generated == 1  # not kept current
    engine.cancel(seq)
    assert seq.generated == 11 and engine.context_tokens == 0


def test_a_prefilled_sequence_skips_the_prefill_and_holds_its_transferred_blocks():
    """A disaggregated decode side: the KV cache of the prompt arrived from a prefill worker."""
    engine = Engine(params())
    seq = Sequence(prompt_tokens=1000, output_tokens=3, prefilled=True)
    engine.submit(seq)
    admitted = engine.step()  # admitted at no compute cost, its first token sampled from the transferred cache
    assert admitted.kind == "prefill" and admitted.seconds == 0.0 and admitted.advanced == [seq]
    assert seq.generated == 1 and engine.context_tokens == 1001  # the transferred blocks count against the KV cache
    steps = run_to_completion(engine)
    assert [s.kind for s in steps] == ["decode"] * 2 and seq.generated == 3
    # a decode iteration costs far less than prefilling the 1,000-token prompt would have
    assert steps[0].seconds < engine.params.prefill_seconds(1000, 1, 1000)


def test_a_prefilled_sequence_beside_a_new_one_charges_only_the_new_prompt():
    engine = Engine(params())
    fresh, moved = Sequence(prompt_tokens=100, output_tokens=2), Sequence(4000, 2, prefilled=True)
    engine.submit(fresh)
    engine.submit(moved)
    step = engine.step()
    assert step.advanced == [fresh, moved] and step.seconds == engine.params.prefill_seconds(100, 1, 100)
    assert engine.context_tokens == 101 + 4001


def test_a_preempted_prefilled_sequence_is_recomputed_here():
    engine = Engine(params(kv_tokens=300))
    first = Sequence(prompt_tokens=100, output_tokens=150, prefilled=True)
    second = Sequence(prompt_tokens=100, output_tokens=150, prefilled=True)
    engine.submit(first)
    engine.submit(second)
    steps = run_to_completion(engine)
    assert second.preemptions >= 1 and not second.prefilled  # its blocks were dropped: prefilled again here
    assert any(s.kind == "prefill" and s.seconds > 0 for s in steps)
    assert first.generated == 150 and second.generated == 150
