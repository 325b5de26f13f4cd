import json

import numpy as np
import pytest
from ricardo.loadgen.report import format_summary, group_summary, stats, summarize, write_report

SLO = {"slo_ttft_ms": 500.0, "slo_tpot_ms": 50.0}


def record(
    outcome="ok",
    ttft=100.0,
    tpot=20.0,
    e2e=1000.0,
    tokens=10,
    prompt=100,
    pool=None,
    cost=None,
    lag=1.0,
    chunks=None,
    expected=None,
):
    ok = outcome == "ok"
    return {
        "outcome": outcome,
        "ttft_ms": ttft if ok else None,
        "tpot_ms": tpot if ok else None,
        "e2e_ms": e2e if ok else None,
        "latency_per_token_ms": e2e / tokens if ok and tokens else None,
        "completion_tokens": tokens if ok else None,
        "prompt_tokens": prompt if ok else None,
        "prompt_tokens_estimated": False,
        "completion_tokens_estimated": False,
        "pool": pool,
        "cost_usd": cost,
        "expected_cost_usd": expected,
        "lag_ms": lag,
        "chunk_ms": chunks or [],
    }


def test_stats_are_numpy_percentiles_and_skip_missing_values():
    values = [5.0, 1.0, None, 3.0, 10.0, 7.0]
    present = [5.0, 1.0, 3.0, 10.0, 7.0]
    assert stats(values) == {
        "p50": 5.0,
        "p90": pytest.approx(np.percentile(present, 90)),
        "p99": pytest.approx(np.percentile(present, 99)),
        "mean": pytest.approx(5.2),
    }
    assert stats([]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def test_slo_attainment_counts_errors_as_misses_and_skips_tpot_below_two_tokens():
    records = [
        record(),  # meets both
        record(ttft=600.0),  # TTFT miss
        record(tpot=80.0),  # TPOT miss
        record(tpot=None, tokens=1),  # one token: only TTFT checked, meets
        record(outcome="error"),  # miss
        record(outcome="cancelled"),
    ]  # left out (Ctrl-C)
    group = group_summary(records, wall_s=2.0, **SLO)
    assert (group["count"], group["ok"], group["errors"], group["cancelled"]) == (5, 4, 1, 1)
    assert group["slo_attainment"] == pytest.approx(2 / 5)
    assert group["req_per_s"] == pytest.approx(4 / 2.0)
    assert group["output_tok_per_s"] == pytest.approx(31 / 2.0)
    assert group["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert group["tpot_ms"]["p50"] == pytest.approx(20.0)  # over 20, 20, 80 (the 1-token request has none)


def test_inter_token_gaps_pool_all_requests():
    records = [record(chunks=[100.0, 110.0, 130.0]), record(chunks=[50.0, 90.0])]
    assert group_summary(records, wall_s=1.0, **SLO)["itl_ms"]["p50"] == pytest.approx(20.0)  # gaps 10, 20, 40


def test_cost_sums_the_billed_cost_of_ok_requests_and_keeps_the_estimate_apart():
    records = [
        record(cost=0.002, expected=0.001, tokens=100, prompt=900),
        record(cost=0.001, expected=0.0005, tokens=50, prompt=50),
        record(cost=None),
        record(outcome="error", cost=0.5, expected=0.5),  # a failed answer is not billed
    ]
    group = group_summary(records, wall_s=1.0, **SLO)
    assert group["cost_usd"] == pytest.approx(0.003)
    assert group["expected_cost_usd"] == pytest.approx(0.0015)
    assert group["usd_per_million_tokens"] == pytest.approx(0.003 / 1100 * 1e6)
    assert group["usd_per_million_output_tokens"] == pytest.approx(0.003 / 150 * 1e6)
    assert group_summary([record()], wall_s=1.0, **SLO)["cost_usd"] is None
    assert group_summary([record()], wall_s=1.0, **SLO)["expected_cost_usd"] is None


def test_summary_groups_by_pool_header():
    records = [
        record(pool="h100", ttft=50.0),
        record(pool="h100", ttft=70.0),
        record(pool="l4", ttft=900.0),
        record(outcome="error"),
    ]
    summary = summarize(records, run={"wall_s": 1.0, "scheduled": 5}, **SLO)
    assert summary["schema"] == "ricardo.loadgen.summary/1"
    assert set(summary["pools"]) == {"h100", "l4", "-"}
    assert summary["pools"]["h100"]["count"] == 2
    assert summary["pools"]["h100"]["ttft_ms"]["p50"] == pytest.approx(60.0)
    assert summary["pools"]["l4"]["slo_attainment"] == 0.0
    assert summary["pools"]["-"]["errors"] == 1
    assert summary["overall"]["count"] == 4
    assert summary["overall"]["slo_attainment"] == pytest.approx(0.5)
    assert summary["run"]["sent"] == 4
    assert summary["slo"] == {"ttft_ms": 500.0, "tpot_ms": 50.0}


def test_report_files_and_table(tmp_path):
    records = [record(pool="a", cost=0.01), record(outcome="error")]
    summary = summarize(records, run={"wall_s": 1.0, "scheduled": 2, "interrupted": False}, **SLO)
    write_report(tmp_path / "out", records, summary)
    lines = (tmp_path / "out" / "requests.jsonl").read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in lines] == ["ok", "error"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    table = format_summary(summary).splitlines()
    assert [row.split()[0] for row in table[1:4]] == ["all", "-", "a"]
    assert "50.0%" in table[1]
