"""Outlier detection on outcomes: ejection rules, back-off, probe then one-request half-open trial."""

from ricardo.gateway.config import OutlierConfig
from ricardo.gateway.outlier import OutlierDetector

RULES = OutlierConfig(
    consecutive_failures=3, failure_ratio=0.5, window_s=10, min_requests=6, base_ejection_s=5, max_ejection_s=40
)


def test_consecutive_failures_eject_and_a_success_resets_the_count():
    d = OutlierDetector(RULES)
    assert not d.record(0, False) and not d.record(1, False)
    assert not d.record(2, True)
    assert not d.record(3, False) and not d.record(4, False)
    assert d.record(5, False)
    assert d.state == "ejected" and not d.takes_requests() and d.ejected_until == 10


def test_a_failure_ratio_over_the_window_ejects_once_the_window_is_full_enough():
    d = OutlierDetector(RULES)
    ejected = [d.record(t, t % 2 == 0) for t in range(5)]  # ok, fail, ok, fail, ok: 2 of 5, under the volume
    assert not any(ejected)
    assert d.record(5, False)  # 3 failures of 6: half


def test_old_outcomes_leave_the_window():
    d = OutlierDetector(RULES)
    for t in range(3):
        d.record(t, False) if t < 2 else d.record(t, True)
    # 30 s later the early failures no longer count
    for t in range(30, 35):
        assert not d.record(t, t % 3 != 0)
    assert d.in_service()


def test_poison_requests_one_failure_per_backend_do_not_eject():
    # a request that fails on every backend is one failure on each: two of them in a row leave a backend in
    d = OutlierDetector(RULES)
    assert not d.record(0, False) and not d.record(1, False) and d.in_service()


def test_after_the_ejection_a_probe_then_one_real_request_decide_and_failures_double_the_time():
    d = OutlierDetector(RULES)
    for t in range(3):
        d.record(t, False)
    assert not d.probe_due(6)  # ejected at 2 for 5 s
    assert d.probe_due(7) and d.state == "probing" and not d.takes_requests()
    d.probe_result(7.1, ok=False)  # the probe fails: out again, twice as long
    assert d.state == "ejected" and d.ejected_until == 17.1
    assert d.probe_due(17.1)
    d.probe_result(17.2, ok=True)
    assert d.state == "half-open" and d.takes_requests()
    assert d.begin() and not d.takes_requests(), "one trial request at a time"
    assert not d.begin()
    assert not d.record(17.5, False), "an older request's outcome does not decide"
    assert d.record(18, False, trial=True)  # the trial fails: out for 20 s
    assert d.ejected_until == 38
    d.probe_due(38)
    d.probe_result(38, ok=True)
    assert d.begin()
    d.end_trial()  # the client went away: no decision, the next request is the trial
    assert d.takes_requests() and d.begin()
    assert not d.record(39, True, trial=True) and d.in_service()


def test_ejections_back_off_to_a_cap_and_are_forgiven_after_a_quiet_spell():
    d = OutlierDetector(RULES)
    lengths = []
    now = 0.0
    for _ in range(5):
        for _ in range(3):
            d.record(now, False)
        lengths.append(d.ejected_until - now)
        now = d.ejected_until
        d.probe_due(now)
        d.probe_result(now, True)
        d.begin()
        d.record(now, True, trial=True)
    assert lengths == [5, 10, 20, 40, 40]
    assert d.in_service()
    d.record(now + 41, True)  # in service for max_ejection_s without an ejection
    for _ in range(3):
        d.record(now + 42, False)
    assert d.ejected_until - (now + 42) == 5
