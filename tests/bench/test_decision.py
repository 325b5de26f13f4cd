"""The decision micro-benchmark runs and prints its figures (no timing is asserted: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "overhead" / "decision.py"


def test_decision_bench_prints_shaping_ranking_and_total_for_each_policy(tmp_path: Path) -> None:
    out = tmp_path / "decision.json"
    argv = [sys.executable, str(BENCH), "--decisions", "60", "--warmup", "20", "--rounds", "2", "--pairs"]
    done = subprocess.run([*argv, "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"this cost-aware", "this least-outstanding", "this melange"}
    for name, steps in report["results"].items():
        assert set(steps) == {"shape", "rank", "charge", "total", "total CPU"}, name
        for step, figures in steps.items():
            assert 0 < figures["p50"] <= figures["p99"] <= figures["p99.9"], (name, step)
        assert steps["total"]["p50"] >= steps["shape"]["p50"], name  # the total holds the shaping
    assert set(report["ratios"]) == {"this cost-aware / this least-outstanding", "this cost-aware / this melange"}
    assert "| this | cost-aware | total |" in done.stdout and "p99" in done.stdout


def test_decision_bench_times_a_baseline_tree_in_the_same_run(tmp_path: Path) -> None:
    """`--baseline` times another source tree beside this one (here the same code, copied), with the ratio."""
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(f"git archive HEAD ricardo | tar -x -C {tree}", shell=True, check=True, cwd=REPO)
    argv = [sys.executable, str(BENCH), "--decisions", "40", "--warmup", "10", "--rounds", "2", "--peers", ""]
    done = subprocess.run(
        [*argv, "--baseline", str(tree), "--profile"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| baseline | cost-aware | total |" in done.stdout
    assert "this cost-aware / baseline cost-aware, total: p50" in done.stdout
    assert "cProfile of 40 cost-aware decisions" in done.stdout and "cost_aware" in done.stdout
