"""Admission control as a pure function: refuse only when every pool is both a predicted miss and past the bound."""

from ricardo.policies.admission import AdmissionLimits, admit, utilization_bound
from ricardo.policies.types import SLO, Choice, PoolView, RequestShape

LIMITS = AdmissionLimits(max_utilization=1.0, priority_factor=1.5)


def shape(priority: int = 0) -> RequestShape:
    return RequestShape("m", 100, 100, 200, SLO(2000, 120), priority=priority)


def pool(name: str, load: float, replicas: int = 2) -> PoolView:
    return PoolView(name, "A10G", 1.0, replicas, in_flight=int(load * 4), in_flight_load=load * replicas)


def choice(name: str, slack: float | None) -> Choice:
    return Choice(name, 0.0, 0.001, slack=slack)


def test_admits_while_some_pool_has_slack_or_room():
    pools = {"a": pool("a", 1.4), "b": pool("b", 0.5)}
    assert admit(shape(), [choice("a", -0.3), choice("b", 0.2)], pools, LIMITS).admit
    assert admit(shape(), [choice("a", -0.3), choice("b", -0.1)], pools, LIMITS).admit, "b is under the bound"
    # a predicted miss on a pool that is idle (a long prompt on slow hardware) is served as well as it can be
    assert admit(shape(), [choice("a", -0.2)], {"a": pool("a", 0.0)}, LIMITS).admit


def test_refuses_when_every_pool_misses_and_is_past_the_bound():
    pools = {"a": pool("a", 1.4), "b": pool("b", 1.1)}
    decision = admit(shape(), [choice("a", -0.4), choice("b", -0.1)], pools, LIMITS)
    assert not decision.admit and "utilization 1.10" in decision.reason


def test_higher_priority_waits_in_longer_queues_lower_is_shed_first():
    pools = {"a": pool("a", 1.2)}
    choices = [choice("a", -0.2)]
    assert not admit(shape(0), choices, pools, LIMITS).admit
    assert admit(shape(1), choices, pools, LIMITS).admit  # bound 1.5
    assert not admit(shape(-1), [choice("a", -0.2)], {"a": pool("a", 0.7)}, LIMITS).admit  # bound 0.67
    assert utilization_bound(LIMITS, 2) == 2.25


def test_a_policy_without_slack_is_judged_by_utilization_alone():
    assert admit(shape(), [choice("a", None)], {"a": pool("a", 0.9)}, LIMITS).admit
    assert not admit(shape(), [choice("a", None)], {"a": pool("a", 1.0)}, LIMITS).admit


def test_no_choice_is_not_a_refusal_of_admission():
    assert admit(shape(), [], {}, LIMITS).admit


def test_a_standing_queue_refuses_what_the_model_would_admit():
    # the model sees room (the predictor under-sized the requests, or the backend is bound by its KV cache), but
    # most requests there lately waited past the TTFT SLO (2 s) for their first token: a newcomer would too
    pools = {"a": PoolView("a", "A10G", 1.0, 2, in_flight=10, in_flight_load=1.0)}
    choices = [choice("a", 0.3)]
    assert admit(shape(), choices, pools, LIMITS, {"a": 1500.0}).admit
    refused = admit(shape(), choices, pools, LIMITS, {"a": 2100.0})
    assert not refused.admit and "queueing 2100 ms" in refused.reason
    assert admit(shape(1), choices, pools, LIMITS, {"a": 2100.0}).admit, "priority 1 waits up to 3 s"
    assert admit(shape(), choices, pools, LIMITS, {"a": None}).admit, "no recent start: no evidence"


def test_a_slow_start_with_no_queue_is_not_a_standing_queue():
    # one long prompt on slow hardware takes longer than the TTFT SLO alone: as many requests as replicas
    idle = PoolView("cpu", "CPU", 1.0, 2, in_flight=2, in_flight_load=0.4)
    assert admit(shape(), [choice("cpu", -0.5)], {"cpu": idle}, LIMITS, {"cpu": 9000.0}).admit
