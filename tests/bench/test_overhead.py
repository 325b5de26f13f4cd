"""The overhead bench's harness works: backend, gateway, load client and /proc accounting, for 1 s a cell
(ricardo and direct only: no peer is installed in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = [
    sys.executable,
    str(REPO / "bench" / "overhead" / "run.py"),
    "--duration",
    "1",
    "--rounds",
    "1",
    "--no-install",
]


def run_bench(tmp_path: Path, *args: str, timeout: float = 180, env: dict | None = None) -> tuple[str, dict]:
    """(what the bench printed, its JSON report), after checking it exited cleanly."""
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [*BENCH, *args, "--json", str(out)], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


def test_overhead_harness_measures_ricardo_against_direct(tmp_path: Path) -> None:
    stdout, report = run_bench(tmp_path, "--targets", "direct,ricardo", "--connections", "1,4")
    assert set(report["results"]) == {"direct", "ricardo"}
    assert report["skipped"] == {} and report["ratios"] == {}  # no peer asked for
    for name, cells in report["results"].items():
        assert set(cells) == {"nonstream c1", "nonstream c4", "stream c1", "stream c4"}
        for cell, figures in cells.items():
            assert figures["errors"] == 0, (name, cell)
            assert figures["rps"] > 0 and figures["p99_ms"] >= figures["p50_ms"] > 0, (name, cell)
            assert figures["cpu_ms_per_request"] > 0, (name, cell)  # the backend's CPU at least
    # the gateway's processes are counted on top of the backend's
    assert (
        report["results"]["ricardo"]["nonstream c4"]["cpu_ms_per_request"]
        > (report["results"]["direct"]["nonstream c4"]["cpu_ms_per_request"])
    )
    assert "| ricardo | stream c4 |" in stdout


def test_a_peer_that_is_not_installed_is_skipped_with_the_reason(tmp_path: Path) -> None:
    stdout, report = run_bench(
        tmp_path,
        *("--targets", "direct,vllm-router", "--connections", "1", "--modes", "nonstream"),
        timeout=120,
        env={**os.environ, "RICARDO_BENCH_VENVS": str(tmp_path / "venvs")},
    )
    assert "not installed" in report["skipped"]["vllm-router"]
    assert report["results"]["direct"]["nonstream c1"]["rps"] > 0
    assert "| vllm-router | skipped: not installed" in stdout


def test_the_relay_is_measured_as_the_floor_of_ricardos_stack(tmp_path: Path) -> None:
    stdout, report = run_bench(tmp_path, "--targets", "direct,relay,ricardo", "--connections", "2")
    assert set(report["results"]) == {"direct", "relay", "ricardo"}
    for cell, figures in report["results"]["relay"].items():  # whole answers and streams, relayed without a failure
        assert figures["errors"] == 0 and figures["rps"] > 0, cell
        assert figures["cpu_ms_per_request"] > report["results"]["direct"][cell]["cpu_ms_per_request"], cell
        assert 0 < figures["own_cpu_ms_per_request"] < figures["cpu_ms_per_request"], cell  # the backend's left out
    # ricardo against its floor; the relay has no peer of its own here
    assert set(report["ratios"]) == {"ricardo / relay"}
    assert set(report["ratios"]["ricardo / relay"]) == {"nonstream c2", "stream c2"}
    assert "| relay | stream c2 |" in stdout
