"""`ricardo profile` against an emulated A10G at 10x real time: it finds the capacity the engine model has for
that size (the emulator's calibrated figure, which the virtual-time sweep of `emulator/calibrate.py` computes) within
25%, stops at its budget with a partial file, resumes from it, and writes a file the planner accepts."""

from __future__ import annotations

import json
import subprocess

from ricardo.emulator.calibrate import Measurement, max_rate
from ricardo.profiles.engine_params import load_engine_params

from tests.integration.harness import Process, free_port, ricardo_command

SPEED = 10.0
INPUT, OUTPUT = 250, 100  # one bucket: about 5.5 req/s on an A10G, 55 req/s of wall clock at 10x


def profile(url: str, out, budget_s: float) -> subprocess.CompletedProcess:
    args = ["profile", "--url", url, "--model", "llama2-7b", "--hardware", "A10G", "--out", str(out)]
    args += ["--inputs", str(INPUT), "--outputs", str(OUTPUT), "--speed", str(SPEED), "--budget-s", str(budget_s)]
    args += ["--trial-s", "3", "--start-rate", "2", "--precision", "0.2", "--price-per-hour", "1.01"]
    return subprocess.run(ricardo_command(*args), capture_output=True, text=True, timeout=600)


def test_profile_finds_the_emulators_capacity_resumes_and_feeds_the_planner(tmp_path):
    port = free_port()
    emulator = Process(ricardo_command("emulate", "--gpu", "A10G", "--port", str(port), "--speed", str(SPEED)), "emu")
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "a10g.json"
    try:
        emulator.wait_http(url + "/v1/models")
        stopped = profile(url, out, budget_s=0)
        assert stopped.returncode == 3, stopped.stderr[-2000:]  # out of budget: partial
        assert json.loads(out.read_text())["profile_run"]["complete"] is False
        done = profile(url, out, budget_s=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        emulator.stop()
    document = json.loads(out.read_text())
    assert document["profile_run"]["complete"] is True
    measured = document["gpus"]["A10G"]["max_rps"][0][0]
    calibrated = max_rate(load_engine_params("A10G"), INPUT, OUTPUT, Measurement())
    assert abs(measured / calibrated - 1) <= 0.25, (measured, calibrated)
    plan = subprocess.run(
        ricardo_command("plan", "--profile", str(out), "--price-set", "profile", "--workload", "azure-conv"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "A10G" in plan.stdout
