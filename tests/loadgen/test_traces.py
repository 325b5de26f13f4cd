import json
from pathlib import Path

import pytest
from ricardo.errors import InvalidInput
from ricardo.loadgen.traces import (
    NAMED_TRACES,
    TraceError,
    TraceRequest,
    read_trace,
    select,
    untimed,
    with_poisson_arrivals,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
AIBRIX = SHARED_DATA / "prompts" / "sharegpt_aibrix" / "8min_up_and_down.jsonl"


def write_lines(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("name, rows", [("azure-conv", 19366), ("azure-code", 8819)])
def test_named_azure_traces_are_bundled_whole(name, rows):
    requests = read_trace(name)
    assert len(requests) == rows
    assert requests[0].arrival_s == 0.0
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals)
    assert 3000 < arrivals[-1] < 3700  # about one hour
    assert all(r.input_tokens > 0 and r.output_tokens >= 0 and r.prompt is None for r in requests)
    original = SHARED_DATA / "traces" / "azure2023" / NAMED_TRACES[name].name
    if original.is_file():  # the bundled copy is the shared data's, byte for byte (a fresh clone may lack ../shared)
        assert NAMED_TRACES[name].read_bytes() == original.read_bytes()


def test_azure_csv_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:47.5000000,100,7\n"
        "2023-11-16 18:15:46.2500000,374,44\n"
        "2023-11-16 18:16:46.2500000,5,1\n"
    )
    assert read_trace(str(path)) == [TraceRequest(0.0, 374, 44), TraceRequest(1.25, 100, 7), TraceRequest(60.0, 5, 1)]


def test_csv_rejects_other_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time,in,out\n1,2,3\n")
    with pytest.raises(TraceError, match="expected an Azure CSV"):
        read_trace(str(path))


def test_lengths_only_csvs_are_untimed_and_get_poisson_arrivals(tmp_path):
    lmsys = tmp_path / "lmsys.csv"
    lmsys.write_text("13,263\n52,434\n506,380\n")
    sharegpt = tmp_path / "sharegpt.csv"
    sharegpt.write_text(
        "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n290,905,1195,0.3\n"
    )
    requests = read_trace(str(lmsys))
    assert [(r.input_tokens, r.output_tokens) for r in requests] == [(13, 263), (52, 434), (506, 380)]
    assert untimed(requests)
    assert [(r.input_tokens, r.output_tokens) for r in read_trace(str(sharegpt))] == [(74, 918), (290, 905)]
    timed = with_poisson_arrivals(requests * 1000, rate=50.0, seed=1)
    assert not untimed(timed)
    assert timed[0].arrival_s == 0.0
    assert 2900 / 50 * 0.9 < timed[-1].arrival_s < 3000 / 50 * 1.1
    assert sorted((r.input_tokens, r.output_tokens) for r in timed) == sorted(
        (r.input_tokens, r.output_tokens) for r in requests * 1000
    )


def test_aibrix_jsonl_keeps_prompt_text_and_groups(tmp_path):
    path = write_lines(
        tmp_path / "w.jsonl",
        [
            {
                "timestamp": 2500,
                "requests": [
                    {"Prompt Length": 3, "Output Length": 9, "prompt": "why is sky"},
                    {"Prompt Length": 4, "Output Length": 1, "prompt": "a b c d"},
                ],
            },
            {"timestamp": 1000, "requests": [{"Prompt Length": 2, "Output Length": 5, "prompt": "hi there"}]},
        ],
    )
    assert read_trace(path) == [
        TraceRequest(0.0, 2, 5, "hi there"),
        TraceRequest(1.5, 3, 9, "why is sky"),
        TraceRequest(1.5, 4, 1, "a b c d"),
    ]


@pytest.mark.skipif(not AIBRIX.is_file(), reason="../shared/data is not beside the repo")
def test_real_aibrix_workload():
    requests = read_trace(str(AIBRIX))
    assert len(requests) == 2026
    assert all(r.prompt for r in requests)
    assert 440 < requests[-1].arrival_s < 460  # 8 minutes, timestamps in ms


def test_simple_jsonl_with_timestamps(tmp_path):
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            {"timestamp_s": 10.0, "input_tokens": 100, "output_tokens": 20},
            {"timestamp_s": 12.5, "prompt": "hello world", "input_tokens": 7, "output_tokens": 3},
        ],
    )
    assert read_trace(path) == [TraceRequest(0.0, 100, 20), TraceRequest(2.5, 7, 3, "hello world")]


def test_simple_jsonl_counts_tokens_of_prompt_only_lines(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [{"prompt": "the cat sat on the mat", "output_tokens": 4}])
    assert read_trace(path) == [TraceRequest(0.0, 6, 4, "the cat sat on the mat")]


def test_simple_jsonl_without_timestamps_is_one_burst(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [{"input_tokens": 5, "output_tokens": 1}] * 3)
    assert [r.arrival_s for r in read_trace(path)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "records, message",
    [
        (
            [{"timestamp_s": 1, "input_tokens": 5, "output_tokens": 1}, {"input_tokens": 5, "output_tokens": 1}],
            "timestamp on 1 of 2 lines",
        ),
        ([{"timestamp_s": 1, "output_tokens": 1}], "needs 'prompt' or 'input_tokens'"),
        ([{"timestamp_s": 1, "input_tokens": 3}], "output_tokens"),
    ],
)
def test_simple_jsonl_errors_name_the_problem(tmp_path, records, message):
    with pytest.raises(TraceError, match=message):
        read_trace(write_lines(tmp_path / "bad.jsonl", records))


def test_unknown_trace_name():
    with pytest.raises(TraceError, match="unknown trace 'azure-nope'"):
        read_trace("azure-nope")


EVERY_SECOND = [TraceRequest(float(t), 10 + t, 1) for t in range(10)]


def test_select_start_and_duration_in_wall_seconds():
    chosen = select(EVERY_SECOND, start_s=2, duration_s=3)
    assert [(r.arrival_s, r.input_tokens) for r in chosen] == [(0.0, 12), (1.0, 13), (2.0, 14)]


def test_select_speed_compresses_time_and_widens_the_trace_window():
    chosen = select(EVERY_SECOND, start_s=2, duration_s=2, speed=2)  # 4 s of trace in 2 s of replay
    assert [(r.arrival_s, r.input_tokens) for r in chosen] == [(0.0, 12), (0.5, 13), (1.0, 14), (1.5, 15)]


def test_select_max_requests_and_whole_trace_default():
    assert len(select(EVERY_SECOND)) == 10
    assert [r.input_tokens for r in select(EVERY_SECOND, start_s=5, max_requests=2)] == [15, 16]


def test_synthetic_stress_traces_are_deterministic_and_shaped_as_named():
    import numpy as np
    from ricardo.loadgen.synthetic import SYNTHETIC_TRACES

    for name in SYNTHETIC_TRACES:
        first, again = read_trace(name), read_trace(name)
        assert first == again and len(first) == 3600 and first[0].arrival_s == 0.0
        assert 3500 < first[-1].arrival_s <= 3600  # one hour at 1 req/s
    gaps = np.diff([r.arrival_s for r in read_trace("synth-bursty")])
    assert gaps.std() / gaps.mean() > 5  # bursts
    longctx = np.array([r.input_tokens for r in read_trace("synth-longctx")])
    assert 5000 < np.median(longctx) < 9000 and (longctx > 16_384).any()
    shift = read_trace("synth-shift")
    early, late = shift[: len(shift) // 2], shift[len(shift) // 2 :]
    assert np.median([r.input_tokens for r in late]) > 10 * np.median([r.input_tokens for r in early])
    with pytest.raises(TraceError, match="synth-longctx"):
        read_trace("synth-nope")


@pytest.mark.parametrize("window", [{"max_requests": -1}, {"start_s": -5.0}])
def test_select_refuses_a_negative_count_or_start(window):
    """max_requests=-1 sliced off the last request and kept the rest of the trace; start_s=-5 put 5 s of
    silence before the first arrival (`ricardo simulate` passed both through unchecked)."""
    with pytest.raises(InvalidInput):
        select(EVERY_SECOND, **window)
