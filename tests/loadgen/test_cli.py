"""`ricardo loadgen` as a real subprocess against the in-test OpenAI-compatible server."""

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ricardo.cli import main

from tests.integration.harness import free_port

from .sse_server import MODEL, FakeServer, start

REPO = Path(__file__).resolve().parents[2]
# ricardo.cli is a package without __main__.py, so `python -m ricardo.cli` does not run
LOADGEN = [sys.executable, "-c", "import sys; from ricardo.cli import main; sys.exit(main(sys.argv[1:]))", "loadgen"]
TTFT_S, ITL_S = 0.2, 0.01


@pytest.fixture
async def server():
    fake = FakeServer(ttft_s=TTFT_S, itl_s=ITL_S)
    runner, port = await start(fake)
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


async def loadgen(*args: str, interrupt_when: Callable[[], bool] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *LOADGEN,
        *args,
        "--no-progress",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if interrupt_when is not None:
        while not interrupt_when() and proc.returncode is None:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # let the client read what the server just sent
        proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    return proc.returncode, stdout.decode(), stderr.decode()


def write_trace(path: Path, lines: list[dict]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def read_out(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return summary, records


async def test_chat_replay_measures_streams_errors_and_pools(server, tmp_path):
    # arrivals 50 ms apart while each response takes > 200 ms: open loop keeps ~5 in flight
    lines = [{"timestamp_s": 0.05 * i, "input_tokens": 20, "output_tokens": 5 + i % 3} for i in range(12)]
    lines += [{"timestamp_s": 0.6 + 0.05 * i, "input_tokens": 300, "output_tokens": 12} for i in range(4)]
    lines += [
        {"timestamp_s": 0.3, "prompt": "test-fail-429 now", "output_tokens": 3},
        {"timestamp_s": 0.35, "prompt": "test-fail-stream now", "output_tokens": 3},
    ]
    out = tmp_path / "out"
    code, stdout, stderr = await loadgen(
        "--url",
        server.url + "/v1",
        "--trace",
        write_trace(tmp_path / "t.jsonl", lines),
        "--out",
        str(out),
        "--duration",
        "5",
        "--drain-timeout",
        "5",
    )
    assert code == 0, stderr
    summary, records = read_out(out)
    overall = summary["overall"]
    assert (overall["count"], overall["ok"], overall["errors"]) == (18, 16, 2)
    assert summary["run"]["model"] == MODEL  # the first id of /v1/models
    assert {name: (g["count"], g["errors"]) for name, g in summary["pools"].items()} == {
        "small": (13, 1),
        "large": (4, 0),
        "-": (1, 1),
    }
    assert TTFT_S * 1000 <= overall["ttft_ms"]["p50"] < TTFT_S * 1000 + 150
    assert ITL_S * 1000 <= overall["tpot_ms"]["p50"] < ITL_S * 1000 + 20
    assert summary["run"]["lag_ms"]["max"] < 100  # nobody waited for the slow responses
    assert overall["slo_attainment"] == pytest.approx(16 / 18)

    errors = {r["error"] for r in records if r["outcome"] == "error"}
    assert errors == {"HTTP 429: too many requests", "stream error: engine died"}
    by_id = {r["request_id"]: r for r in records}
    assert len(server.seen) == 18 and set(by_id) == {s["headers"]["x-request-id"] for s in server.seen}
    for seen in server.seen:
        record = by_id[seen["headers"]["x-request-id"]]
        assert seen["path"] == "/v1/chat/completions"
        assert seen["headers"]["x-emulator-output-tokens"] == str(record["output_tokens"])
        assert seen["body"]["stream"] is True and seen["body"]["stream_options"] == {"include_usage": True}
        assert seen["body"]["model"] == MODEL and "max_tokens" not in seen["body"]
        assert "x-slo-ttft-ms" not in seen["headers"]
    for record in records:
        if record["outcome"] == "ok":
            assert record["completion_tokens"] == record["output_tokens"]
            assert not record["completion_tokens_estimated"]
            assert len(record["chunk_ms"]) == record["output_tokens"]
    ok = [r for r in records if r["outcome"] == "ok"]
    assert all(r["cost_usd"] == pytest.approx(1e-6 * (r["prompt_tokens"] + r["completion_tokens"])) for r in ok)
    assert all(r["expected_cost_usd"] == pytest.approx(2 * r["cost_usd"]) for r in ok)
    # the bill: the actual cost of the answers (usage), not the estimate (header); failed requests cost nothing
    assert overall["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in ok))
    assert overall["expected_cost_usd"] == pytest.approx(2 * overall["cost_usd"])
    assert "small" in stdout and "large" in stdout


async def test_completions_max_tokens_mode_and_slo_headers(server, tmp_path):
    lines = [{"timestamp_s": 0.02 * i, "input_tokens": 40, "output_tokens": 4 + i} for i in range(6)]
    out = tmp_path / "out"
    code, _, stderr = await loadgen(
        "--url",
        server.url,
        "--trace",
        write_trace(tmp_path / "t.jsonl", lines),
        "--out",
        str(out),
        "--endpoint",
        "completions",
        "--length-mode",
        "max_tokens",
        "--no-length-header",
        "--model",
        "other",
        "--slo-ttft-ms",
        "150",
        "--slo-tpot-ms",
        "30",
        "--max-requests",
        "5",
        "--speed",
        "2",
    )
    assert code == 0, stderr
    summary, records = read_out(out)
    assert summary["overall"]["count"] == 5 and summary["overall"]["errors"] == 0
    assert summary["slo"] == {"ttft_ms": 150.0, "tpot_ms": 30.0}
    assert summary["overall"]["slo_attainment"] == 0.0  # TTFT is 200 ms
    assert [r["scheduled_s"] for r in records] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    for seen in server.seen:
        assert seen["path"] == "/v1/completions" and isinstance(seen["body"]["prompt"], str)
        assert seen["body"]["model"] == "other" and seen["body"]["ignore_eos"] is True
        assert "x-emulator-output-tokens" not in seen["headers"]
        assert (seen["headers"]["x-slo-ttft-ms"], seen["headers"]["x-slo-tpot-ms"]) == ("150", "30")
    assert sorted(s["body"]["max_tokens"] for s in server.seen) == [4, 5, 6, 7, 8]


async def test_timeouts_and_plain_json_are_errors_and_ctrl_c_still_writes_the_report(server, tmp_path):
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            {"timestamp_s": 0.0, "prompt": "test-hang", "output_tokens": 2},
            {"timestamp_s": 0.1, "input_tokens": 10, "output_tokens": 2},
            {"timestamp_s": 0.1, "prompt": "test-no-stream", "output_tokens": 2},
        ],
    )
    code, _, stderr = await loadgen(
        "--url", server.url, "--trace", trace, "--out", str(tmp_path / "a"), "--timeout", "1"
    )
    assert code == 0, stderr
    summary, records = read_out(tmp_path / "a")
    assert [r["error"] for r in records] == [
        "timeout after 1 s",
        None,
        "not an event stream (content-type application/json)",
    ]

    finished_before = server.completed
    # SIGINT once the quick request is done and the test-hang one is still in flight
    code, _, stderr = await loadgen(
        "--url",
        server.url,
        "--trace",
        trace,
        "--out",
        str(tmp_path / "b"),
        interrupt_when=lambda: server.completed > finished_before,
    )
    assert code == 130, stderr
    summary, records = read_out(tmp_path / "b")
    assert summary["run"]["interrupted"] is True
    assert (summary["overall"]["count"], summary["overall"]["cancelled"]) == (2, 1)
    assert [r["outcome"] for r in records] == ["cancelled", "ok", "error"]


async def test_a_cut_or_aborted_stream_is_an_error_not_a_success(server, tmp_path):
    # a cut stream may still carry every token and the usage; only [DONE] says the answer is whole. An aborted one
    # ends with [DONE], but the engine gave it up
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            {"timestamp_s": 0.0, "input_tokens": 10, "output_tokens": 3},
            {"timestamp_s": 0.0, "prompt": "test-no-done", "output_tokens": 3},
            {"timestamp_s": 0.0, "prompt": "test-abort", "output_tokens": 3},
        ],
    )
    code, _, stderr = await loadgen("--url", server.url, "--trace", trace, "--out", str(tmp_path / "out"))
    assert code == 0, stderr
    summary, records = read_out(tmp_path / "out")
    assert [r["outcome"] for r in records] == ["ok", "error", "error"]
    assert records[1]["error"] == "stream ended without [DONE]"
    assert records[2]["error"] == "the server aborted the answer (finish_reason abort)"
    assert (summary["overall"]["ok"], summary["overall"]["errors"]) == (1, 2)
    assert summary["overall"]["cost_usd"] == pytest.approx(records[0]["cost_usd"])  # the cut answer is not added


async def test_a_server_that_wants_an_api_key_is_told_as_such(server, tmp_path):
    server.api_key = "sk-right"
    trace = write_trace(tmp_path / "t.jsonl", [{"timestamp_s": 0.0, "input_tokens": 10, "output_tokens": 2}])
    for key in ([], ["--api-key", "sk-wrong"]):  # with or without --model: every request would be refused alike
        out = str(tmp_path / "refused")
        code, _, stderr = await loadgen("--url", server.url, "--trace", trace, "--model", MODEL, "--out", out, *key)
        assert code == 1 and "answered HTTP 401: pass --api-key" in stderr, stderr
    assert not server.seen
    code, _, stderr = await loadgen(
        "--url", server.url, "--trace", trace, "--api-key", "sk-right", "--out", str(tmp_path)
    )
    assert code == 0, stderr


async def test_max_concurrency_queues_requests_and_reports_the_wait_as_lag(server, tmp_path):
    trace = write_trace(tmp_path / "t.jsonl", [{"timestamp_s": 0.0, "input_tokens": 10, "output_tokens": 2}] * 3)
    code, _, stderr = await loadgen(
        "--url", server.url, "--trace", trace, "--out", str(tmp_path / "out"), "--max-concurrency", "1"
    )
    assert code == 0, stderr
    _, records = read_out(tmp_path / "out")
    lags = sorted(r["lag_ms"] for r in records)
    assert lags[0] < 50 and lags[1] >= TTFT_S * 1000 and lags[2] >= 2 * TTFT_S * 1000


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--trace", "azure-nope"], 2, "unknown trace 'azure-nope'"),
        (["--trace", "azure-conv", "--speed", "0"], 2, "--speed must be > 0"),
        (["--trace", "azure-conv", "--start", "99999"], 2, "no request of azure-conv arrives"),
        (["--trace", "azure-conv", "--duration", "1", "--url", "ftp://x"], 2, "--url must be an http(s) URL"),
        (["--trace", "azure-conv", "--duration", "1"], 1, "cannot reach"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path, capsys, args, code, message):
    if "--url" not in args:
        args = [*args, "--url", f"http://127.0.0.1:{free_port()}"]
    assert main(["loadgen", *args, "--out", str(tmp_path / "out")]) == code  # in-process: quicker
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and message in stderr
