"""Window summaries read from the store (other replicas', gateway/scaling.py): one that this version cannot read is left
out and counted as ignored, as the advisor promises; it must not stop the hints of the whole fleet (the lease holder's
tick would fail on it every interval for as long as the summary is in the store)."""

import math

import pytest
from ricardo.gateway.scaling import PoolSpec, ScalingAdvisor
from ricardo.policies.types import SLO
from ricardo.profiles.catalog import load_default_book

GOOD = {"at": 0.0, "span_s": 10.0, "count": 2, "inputs": [100, 200], "outputs": [50, 60], "weights": [1.0, 1.0]}


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD, "inputs": ["a", 5]},
        {**GOOD, "outputs": [None, 5]},
        {**GOOD, "inputs": [[1], [2]]},
        {**GOOD, "inputs": [10**30, 5]},
        {**GOOD, "inputs": [-100, 5]},  # a negative size is no request
        {**GOOD, "weights": [1.0, math.nan]},
        {**GOOD, "span_s": math.inf},
    ],
)
def test_a_summary_this_version_cannot_read_is_ignored_not_fatal(bad):
    book = load_default_book()
    advisor = ScalingAdvisor(window_s=30.0)
    hints = advisor.compute(
        100.0,
        [PoolSpec("a10g", "A10G", 1.01, 1, model="llama2-7b")],
        SLO(2000.0, 120.0),
        {"llama2-7b": book},
        own={"llama2-7b": GOOD},
        extra_summaries=[{"llama2-7b": bad}],
    )
    assert hints.inputs["summaries_ignored"] == 1
    assert hints.inputs["rate"] == pytest.approx(0.2)  # this replica's 2 requests over 10 s, alone
