"""`ricardo profile` against an emulated A10G at 10x real time: with the trials of the virtual-time sweep of
`emulator/calibrate.py` (its `Measurement`: trial length, warm-up, arrival pattern), it finds the capacity the engine
model has for that size (the emulator's calibrated figure) within 25%, stops at its budget with a partial file that
keeps the trials of the bucket it was searching, resumes from them, and writes a file the planner accepts.

Against the real llama.cpp server (where it is cached), its prompts built with the model's tokenizer (read from the
GGUF file) are counted exactly by the server."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from ricardo.emulator.calibrate import Measurement, max_rate
from ricardo.profiles.engine_params import load_engine_params

from tests.integration.harness import REPO, Process, free_port, ricardo_command

SPEED = 10.0
INPUT, OUTPUT = 250, 100  # one bucket: about 5.5 req/s on an A10G, 55 req/s of wall clock at 10x
SWEEP = Measurement()  # the calibrated figure's own trials


def profile(url: str, out, budget_s: float) -> subprocess.CompletedProcess:
    args = ["profile", "--url", url, "--model", "llama2-7b", "--hardware", "A10G", "--out", str(out)]
    args += ["--inputs", str(INPUT), "--outputs", str(OUTPUT), "--speed", str(SPEED), "--budget-s", str(budget_s)]
    args += ["--horizon", str(SWEEP.horizon), "--min-requests", str(SWEEP.min_count), "--trial-s", "0"]
    args += ["--seed", str(SWEEP.seed), "--start-rate", "2", "--precision", "0.2", "--price-per-hour", "1.01"]
    return subprocess.run(ricardo_command(*args), capture_output=True, text=True, timeout=600)


def test_profile_finds_the_emulators_capacity_resumes_and_feeds_the_planner(tmp_path):
    port = free_port()
    emulator = Process(ricardo_command("emulate", "--gpu", "A10G", "--port", str(port), "--speed", str(SPEED)), "emu")
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "a10g.json"
    try:
        emulator.wait_http(url + "/v1/models")
        # 40 s: the first trial (500 requests at 20 req/s of wall clock) fits, the second does not
        stopped = profile(url, out, budget_s=40)
        assert stopped.returncode == 3, stopped.stderr[-2000:]  # out of budget: partial
        partial = json.loads(out.read_text())["profile_run"]
        assert partial["complete"] is False and partial["cells"] == {}
        kept = partial["searching"][f"{INPUT}x{OUTPUT}"]  # the bucket's trials so far, which a resumed run goes on from
        assert len(kept) >= 1 and kept[0]["rate"] == 2 and kept[0]["requests"] == SWEEP.min_count
        done = profile(url, out, budget_s=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        emulator.stop()
    document = json.loads(out.read_text())
    assert document["profile_run"]["complete"] is True and document["profile_run"]["searching"] == {}
    assert document["profile_run"]["cells"][f"{INPUT}x{OUTPUT}"]["trials"] > len(kept)
    # no --tokenizer: the synthetic prompts, and what the emulator (Llama-3 count, plus BOS) made of them
    prompts = document["profile_run"]["prompts"]
    assert "no --tokenizer" in prompts["method"] and prompts["backend_counted"] == {str(INPUT): INPUT + 1}
    measured = document["gpus"]["A10G"]["max_rps"][0][0]
    calibrated = max_rate(load_engine_params("A10G"), INPUT, OUTPUT, SWEEP)
    assert abs(measured / calibrated - 1) <= 0.25, (measured, calibrated)
    plan = subprocess.run(
        ricardo_command("plan", "--profile", str(out), "--price-set", "profile", "--workload", "azure-conv"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "A10G" in plan.stdout


def cached_llama_server() -> tuple[str, str]:
    """(llama-server, GGUF file) if scripts/llama_server.sh has built and fetched them (this test never builds)."""
    pytest.importorskip("tokenizers", reason="the optional extra ricardo[tokenizer] is not installed")
    pytest.importorskip("gguf", reason="the optional extra ricardo[tokenizer] is not installed")
    script = REPO / "scripts" / "llama_server.sh"
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip("no llama-server and GGUF file cached: scripts/llama_server.sh builds them (about 10 minutes)")
    binary, gguf = check.stdout.strip().split("\t")
    return binary, gguf


@pytest.mark.llama_cpp
def test_prompts_from_the_models_tokenizer_are_counted_exactly_by_llama_cpp(tmp_path):
    binary, gguf = cached_llama_server()
    from ricardo.loadgen.tokenizer import load_tokenizer

    port = free_port()
    args = [binary, "-t", "1", "--host", "127.0.0.1", "--port", str(port), "-m", gguf, "-c", "2048"]
    server = Process([*args, "--alias", "smollm2-135m"], "llama-server")
    url = f"http://127.0.0.1:{port}"
    inputs = [7, 25, 100, 250]
    out = tmp_path / "smol.json"
    try:
        server.wait_http(url + "/health", timeout=120)
        # the GGUF file's tokenizer, as loadgen/tokenizer.py rebuilds it, splits text as llama.cpp does
        tokenizer = load_tokenizer(gguf)
        text = "It's 3.14159 — naïve café, x=y+z; 12345 日本語 🎉\n\n  spaced\tout"
        body = json.dumps({"content": text, "add_special": False}).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/tokenize", data=body), timeout=30) as answer:
            assert json.load(answer)["tokens"] == tokenizer.encode(text)
        # budget 0: the prompts are built and probed, no trial runs
        args = ["profile", "--url", url, "--model", "smollm2-135m", "--hardware", "CPU", "--out", str(out)]
        args += ["--inputs", ",".join(map(str, inputs)), "--outputs", "25", "--budget-s", "0", "--tokenizer", gguf]
        run = subprocess.run(ricardo_command(*args), capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert run.returncode == 3, run.stderr[-2000:]
    prompts = json.loads(out.read_text())["profile_run"]["prompts"]
    assert prompts["backend_counted"] == {str(n): n for n in inputs} and prompts["exact"] is True, prompts
    assert "exact token counts from the tokenizer" in run.stderr
