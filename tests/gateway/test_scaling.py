import importlib.util
import itertools
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from ricardo.gateway.scaling import Damper, PoolSpec, RequestWindow, ScalingAdvisor, merge_summaries, plan_replicas
from ricardo.profiles.catalog import ProfileBook, load_default_book

REPO = Path(__file__).resolve().parents[2]
RAMP_TRACE = REPO / ".." / "shared" / "data" / "prompts" / "sharegpt_aibrix" / "8min_up_and_down.jsonl"


@pytest.fixture(scope="module")
def book() -> ProfileBook:
    return load_default_book(price_set="melange")


def melange_pools(book, current=0):
    return [PoolSpec(hw, hw, book.price(hw), current) for hw in ("L4", "A10G", "A100-80GB", "H100")]


# -- window ------------------------------------------------------------------------------------


def test_window_counts_per_bucket_and_rate_over_the_covered_span(book):
    window = RequestWindow(10.0, book, start=0.0)
    for k in range(20):  # 2 req/s for 10 s: small requests, then long prompts
        window.observe(k * 0.5, 20, 20) if k < 10 else window.observe(k * 0.5, 3000, 300)
    snap = window.snapshot(10.0)
    assert snap.span_s == pytest.approx(10.0)
    assert snap.total == 20 and snap.rate == pytest.approx(2.0)
    assert snap.counts[book.bucket(20, 20)] == 10 and snap.counts[book.bucket(3000, 300)] == 10
    assert snap.rates.sum() == pytest.approx(2.0)

    early = RequestWindow(10.0, book, start=0.0)
    for k in range(4):
        early.observe(k * 0.5, 20, 20)
    assert early.snapshot(2.0).rate == pytest.approx(2.0)  # 2 s covered, not the whole 10 s window


def test_window_forgets_requests_older_than_the_window(book):
    window = RequestWindow(10.0, book, start=0.0)
    for t in np.arange(0.0, 10.0, 0.25):  # 4 req/s during 10 s, then silence
        window.observe(float(t), 100, 100)
    assert window.snapshot(10.0).rate == pytest.approx(4.0)
    assert window.snapshot(15.0).rate == pytest.approx(2.0)  # second half still in the window
    assert window.snapshot(20.5).total == 0
    assert window.snapshot(20.5).rate == 0.0


def test_window_memory_is_bounded_by_its_slots_not_the_request_rate(book):
    window = RequestWindow(5.0, book, start=0.0)
    for k in range(20_000):  # 1000 req/s for 20 s
        window.observe(k / 1000, 100 + k % 3000, 10 + k % 500)
    assert len(window._slots) <= 6
    assert window.snapshot(20.0).rate == pytest.approx(1000.0, rel=0.01)


def test_window_counts_late_observations_still_in_the_window_and_drops_older_ones(book):
    window = RequestWindow(10.0, book, start=0.0)
    window.observe(12.0, 100, 100)
    window.observe(5.5, 100, 100)  # late, between slots that exist: counted
    window.observe(1.0, 100, 100)  # left the window already: dropped
    window.observe(11.9, 100, 100)
    assert window.snapshot(12.5).total == 3


def test_merged_replica_summaries_equal_one_window_that_saw_everything(book):
    rng = np.random.default_rng(1)
    arrivals = np.sort(rng.uniform(0, 30, 500))
    sizes = rng.integers(1, 5000, size=(500, 2))
    whole, first, second = (RequestWindow(20.0, book, start=0.0) for _ in range(3))
    for k, (t, (i, o)) in enumerate(zip(arrivals, sizes, strict=True)):
        whole.observe(t, i, o)
        (first if k % 3 else second).observe(t, i, o)
    shared = [json.loads(json.dumps(w.snapshot(30.0).to_dict())) for w in (first, second)]  # via a store
    rates, total = merge_summaries(shared)
    expected = whole.snapshot(30.0)
    np.testing.assert_allclose(rates, expected.rates)
    assert total == pytest.approx(expected.rate)


def test_summaries_on_different_grids_do_not_merge(book):
    summary = RequestWindow(10.0, book, start=0.0).snapshot(1.0).to_dict()
    other = dict(summary, input_edges=summary["input_edges"][:-1])
    with pytest.raises(ValueError, match="grids"):
        merge_summaries([summary, other])
    with pytest.raises(ValueError):
        merge_summaries([])


# -- damper ------------------------------------------------------------------------------------


def test_damper_scales_up_at_once_and_down_only_after_the_hold():
    damper = Damper(scale_down_hold_s=30.0)
    assert damper.update(0.0, {"p": 2}) == {"p": 2}
    assert damper.update(5.0, {"p": 6}) == {"p": 6}  # up: immediately
    assert damper.update(10.0, {"p": 3}) == {"p": 6}
    assert damper.update(30.0, {"p": 1}) == {"p": 6}  # 6 was targeted at 5 s: held until 35 s
    assert damper.update(35.0, {"p": 1}) == {"p": 3}  # down to the highest target of (5, 35]
    assert damper.update(39.0, {"p": 1}) == {"p": 3}
    assert damper.update(40.0, {"p": 1}) == {"p": 1}  # 3 was targeted at 10 s


def direction_changes(values) -> int:
    steps = [b - a for a, b in itertools.pairwise(values) if b != a]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


def test_damper_does_not_flap_under_an_oscillating_target():
    damper = Damper(scale_down_hold_s=60.0)
    times = np.arange(0.0, 600.0, 5.0)
    targets = [3 if k % 2 else 1 for k in range(len(times))]  # flips every 5 s
    out = [damper.update(t, {"p": n})["p"] for t, n in zip(times, targets, strict=True)]
    assert direction_changes(targets) == len(times) - 2
    assert out[0] == 1 and set(out[1:]) == {3}
    assert direction_changes(out) == 0


def test_damper_never_falls_within_the_hold_after_a_rise():
    rng = random.Random(7)
    hold = 40.0
    damper = Damper(hold)
    t, history = 0.0, {"a": [], "b": []}
    for _ in range(2000):
        t += rng.choice([1.0, 2.5, 5.0])
        out = damper.update(t, {"a": rng.randint(0, 6), "b": rng.choice([0, 0, 1, 9])})
        for key, n in out.items():
            history[key].append((t, n))
    for series in history.values():
        last_rise = None
        for (_, before), (now, after) in itertools.pairwise(series):
            if after > before:
                last_rise = now
            elif after < before:
                assert last_rise is None or now - last_rise >= hold
    assert all(direction_changes([n for _, n in s]) > 10 for s in history.values())  # it did move


def test_damper_starts_from_current_replicas_forgets_removed_keys_and_refuses_time_travel():
    damper = Damper(scale_down_hold_s=10.0)
    assert damper.update(0.0, {"p": 1, "q": 4}, current={"p": 5, "q": 2}) == {"p": 5, "q": 4}
    assert damper.update(10.0, {"p": 1}) == {"p": 1}
    assert damper.update(11.0, {"p": 1, "q": 0}) == {"q": 0, "p": 1}  # q's old 4 was forgotten
    assert Damper(0.0).update(0.0, {"p": 3}) == {"p": 3}
    with pytest.raises(ValueError, match="backwards"):
        damper.update(5.0, {"p": 1})


# -- planning ----------------------------------------------------------------------------------


def test_zero_traffic_falls_to_the_floor(book):
    zero = np.zeros(book.shape)
    assert plan_replicas(zero, book, melange_pools(book, current=3)).replicas == {
        hw: {"unified": 0} for hw in ("L4", "A10G", "A100-80GB", "H100")
    }
    floor = plan_replicas(zero, book, melange_pools(book), headroom=0.1, min_replicas=2)
    assert all(roles == {"unified": 2} for roles in floor.replicas.values())


def test_the_cheaper_type_gets_the_replicas_when_prices_change(book):
    rates = np.zeros(book.shape)
    rates[book.bucket(20, 20)] = 20.0  # one L4 (25 req/s) or one A10G (34 req/s) suffices
    pools = [PoolSpec("l4", "L4", 0.70), PoolSpec("a10g", "A10G", 1.01)]
    assert plan_replicas(rates, book, pools).replicas == {"l4": {"unified": 1}, "a10g": {"unified": 0}}
    pools = [PoolSpec("l4", "L4", 1.50), PoolSpec("a10g", "A10G", 1.01)]
    assert plan_replicas(rates, book, pools).replicas == {"l4": {"unified": 0}, "a10g": {"unified": 1}}


def test_pools_sharing_a_hardware_type_plan_at_the_cheapest_price(book):
    rates = np.zeros(book.shape)
    rates[book.bucket(20, 20)] = 60.0
    pools = [PoolSpec("l4", "L4", 0.70), PoolSpec("a10g", "A10G", 1.01), PoolSpec("a10g-spot", "A10G", 0.40)]
    result = plan_replicas(rates, book, pools, min_replicas=1)
    assert result.prices == {"L4": 0.70, "A10G": 0.40}
    assert result.replicas["a10g-spot"]["unified"] == 2 and result.replicas["a10g"]["unified"] == 1
    assert result.replicas["l4"]["unified"] == 1  # the floor
    tie = [PoolSpec("x", "A10G", 1.0, current_replicas=0), PoolSpec("y", "A10G", 1.0, current_replicas=3)]
    assert plan_replicas(rates, book, tie).replicas == {"x": {"unified": 0}, "y": {"unified": 2}}


def test_unservable_demand_is_dropped_and_unprofiled_pools_stay_at_the_floor(book):
    rates = np.zeros(book.shape)
    rates[book.bucket(20, 20)] = 20.0
    rates[book.bucket(15000, 1500)] = 1.0  # too long for an L4
    result = plan_replicas(rates, book, [PoolSpec("l4", "L4", 0.7), PoolSpec("cpu", "TPU-v9", 0.1)], min_replicas=1)
    assert result.replicas == {"l4": {"unified": 1}, "cpu": {"unified": 1}}
    assert result.plan.unserved_rate == pytest.approx(1.0)
    assert result.unprofiled == ("cpu",)
    with pytest.raises(ValueError, match="unified"):
        plan_replicas(rates, book, [PoolSpec("p", "L4", 0.7, role="prefill")])


# -- advisor -----------------------------------------------------------------------------------


def test_advisor_hints_carry_their_inputs_and_count_other_replicas(book):
    advisor = ScalingAdvisor(book, window_s=10.0, scale_down_hold_s=30.0, start=0.0)
    for t in np.arange(0.0, 10.0, 0.1):  # 10 req/s
        advisor.observe(float(t), 300, 200)
    alone = advisor.compute(10.0, melange_pools(book))
    twin = ScalingAdvisor(book, window_s=10.0, start=0.0)
    for t in np.arange(0.0, 10.0, 0.1):
        twin.observe(float(t), 300, 200)
    foreign = dict(twin.summary(10.0), output_edges=[1, 2])
    both = advisor.compute(10.0, melange_pools(book), extra_summaries=[twin.summary(10.0), foreign])

    assert alone.inputs["rate"] == pytest.approx(10.0) and both.inputs["rate"] == pytest.approx(20.0)
    assert both.inputs["replicas_merged"] == 2 and both.inputs["summaries_ignored"] == 1
    assert sum(r["unified"] for r in both.desired.values()) > sum(r["unified"] for r in alone.desired.values())
    assert alone.cost_per_hour == pytest.approx(sum(book.price(p) * r["unified"] for p, r in alone.desired.items()))
    dumped = json.loads(json.dumps(both.to_dict()))
    assert set(dumped) == {"computed_at", "desired", "raw", "cost_per_hour", "inputs", "planner"}
    assert dumped["inputs"]["pools"]["H100"]["price_per_hour"] == book.price("H100")
    assert dumped["planner"]["optimal"] is True


def test_advisor_with_no_traffic_yet_hints_the_floor(book):
    advisor = ScalingAdvisor(book, min_replicas=1)
    hints = advisor.compute(100.0, melange_pools(book))
    assert hints.desired == {hw: {"unified": 1} for hw in ("L4", "A10G", "A100-80GB", "H100")}
    assert hints.inputs["rate"] == 0.0


# -- acceptance: an eight-minute up-and-down ramp in virtual time --------------------------------

# chosen before the first run, not tuned: interval 5 s, window 30 s, hold 60 s (the config's ratio of
# hold to window, on a trace compressed to eight minutes), headroom 0.1 (the config default)
RAMP = {"window_s": 30.0, "hold_s": 60.0, "interval_s": 5.0, "headroom": 0.1}
MIN_CORRELATION = 0.8


def load_bench():
    spec = importlib.util.spec_from_file_location("replay_ramp", REPO / "bench" / "scaling" / "replay_ramp.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hints_follow_an_up_and_down_ramp_without_flapping(book):
    if not RAMP_TRACE.is_file():
        pytest.skip("../shared/data is not beside the repo")
    bench = load_bench()
    run = bench.replay(bench.read_trace(str(RAMP_TRACE)), book, **RAMP)
    figures = bench.figures(run)
    print(figures)
    assert figures["corr_cost_vs_trailing_load"] > MIN_CORRELATION
    assert 0 <= figures["lag_vs_centred_load_s"] <= RAMP["window_s"]
    assert figures["direction_changes_desired_cost"] <= figures["direction_changes_load"]
    assert figures["shortest_rise_to_fall_s"] is None or figures["shortest_rise_to_fall_s"] >= RAMP["hold_s"]
    assert run.cost.max() > 4 * run.cost[:6].mean()  # it did scale with the ramp, not sit still
