"""Malformed trace files are refused with a TraceError that names the file (and the line), which `ricardo loadgen`,
`plan` and `simulate` print as one line; never a traceback, and never a trace silently read wrong."""

from pathlib import Path

import pytest
from ricardo.cli import main
from ricardo.loadgen.traces import TraceError, read_trace


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("list.jsonl", b"[1, 2]\n", "list.jsonl:1"),  # a JSON value that is not an object
        ("text.jsonl", b'"abc"\n', "text.jsonl:1"),
        ("latin1.jsonl", b'{"input_tokens": 3, "output_tokens": 5, "prompt": "caf\xe9"}\n', "latin1.jsonl"),
        ("binary.csv", b"\xff\xfe\x00\x01garbage\n", "binary.csv"),
        # a negative count, or an arrival that is not a number, is refused as the lengths-only CSV refuses them
        ("negative.jsonl", b'{"timestamp_s": 0, "input_tokens": 3, "output_tokens": -5}\n', "negative.jsonl:1"),
        (
            "nan.jsonl",
            b'{"timestamp_s": NaN, "input_tokens": 3, "output_tokens": 5}\n'
            b'{"timestamp_s": 1, "input_tokens": 3, "output_tokens": 5}\n',
            "nan.jsonl:1",
        ),
        # token counts are whole numbers: 1e999 (inf) raised an OverflowError traceback, 3.7 was read as 3
        ("infinite.jsonl", b'{"input_tokens": 1e999, "output_tokens": 5}\n', "infinite.jsonl:1"),
        ("fraction.jsonl", b'{"input_tokens": 3.7, "output_tokens": 5}\n', "fraction.jsonl:1"),
        (
            "aibrix.jsonl",
            b'{"timestamp": 0, "requests": [{"Prompt Length": 3, "Output Length": 1e999}]}\n',
            "aibrix.jsonl:1",
        ),
        # a prompt is text: a list reached the tokenizer (a three-line pybind error), a number was sent as the message
        ("list_prompt.jsonl", b'{"prompt": ["a"], "output_tokens": 5}\n', "list_prompt.jsonl:1: TypeError: 'prompt'"),
        ("number_prompt.jsonl", b'{"prompt": 7, "input_tokens": 3, "output_tokens": 5}\n', "number_prompt.jsonl:1"),
        (
            "negative.csv",
            b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,-44\n",
            "negative.csv:2",
        ),
    ],
)
def test_a_malformed_trace_file_is_a_trace_error(tmp_path: Path, name: str, content: bytes, message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TraceError, match=message):
        read_trace(str(path))


@pytest.mark.parametrize("command", ["loadgen", "plan", "simulate"])
def test_the_commands_print_one_line_for_a_trace_of_non_objects(tmp_path: Path, capsys, command: str):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    args = {
        "loadgen": ["loadgen", "--url", "http://127.0.0.1:9", "--trace", str(path), "--out", str(tmp_path / "out")],
        "plan": ["plan", "--workload", str(path), "--rate", "1"],
        "simulate": ["simulate", "--trace", str(path), "--fleet", "A10G=1"],
    }[command]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "list.jsonl:1" in stderr, stderr
