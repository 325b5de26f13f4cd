"""Trace readers: a trace is a list of `TraceRequest`s with arrival times, lengths and maybe text.

Accepted sources (`read_trace(spec)`):
- named traces `azure-conv` and `azure-code`: the Azure LLM inference traces 2023 bundled in data/
  (CSV `TIMESTAMP,ContextTokens,GeneratedTokens`, CC-BY-4.0, see data/PROVENANCE.md);
- named synthetic stress traces `synth-longctx`, `synth-bimodal`, `synth-bursty`, `synth-shift` (`synthetic.py`);
- a `.csv` file in that Azure format, or a lengths-only CSV with no arrival times: two columns
  `input,output` without a header (lmsys-chat-1m lengths) or sarathi-serve's ShareGPT stats
  (`num_prefill_tokens,num_decode_tokens,...`); every request of such a trace arrives at 0 (see `untimed`);
- a `.jsonl` file, either
  * AIBrix workload lines `{"timestamp": ms, "requests": [{"Prompt Length", "Output Length", "prompt"}, ...]}`
    (all requests of a line arrive together), or
  * simple lines `{"timestamp_s"?: float, "prompt"?: str, "input_tokens"?: int, "output_tokens": int}`:
    `timestamp_s` on every line or on none (then every request arrives at 0, one burst); a line
    needs `prompt` or `input_tokens` (missing `input_tokens` are counted with cl100k_base).

Arrivals are seconds relative to the trace's first arrival. `select` cuts a window and rescales it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ricardo.errors import InvalidInput
from ricardo.loadgen.synthetic import SYNTHETIC_TRACES, synthetic_lengths_and_arrivals

DATA_DIR = Path(__file__).with_name("data")
NAMED_TRACES = {
    "azure-conv": DATA_DIR / "AzureLLMInferenceTrace_conv.csv",
    "azure-code": DATA_DIR / "AzureLLMInferenceTrace_code.csv",
}
AZURE_COLUMNS = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
SHAREGPT_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")


class TraceError(InvalidInput):
    """The trace cannot be read: unknown name, missing file, malformed content."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    prompt: str | None = None
    line: int = field(default=0, compare=False, repr=False)  # where the file gave it


def read_trace(spec: str) -> list[TraceRequest]:
    """All requests of a named trace or file, sorted by arrival, arrivals relative to the first."""
    if spec in SYNTHETIC_TRACES:
        arrivals, inputs, outputs = synthetic_lengths_and_arrivals(spec)
        return [TraceRequest(float(t), int(i), int(o)) for t, i, o in zip(arrivals, inputs, outputs, strict=True)]
    path = NAMED_TRACES.get(spec) or Path(spec)
    if not path.is_file():
        known = ", ".join([*NAMED_TRACES, *SYNTHETIC_TRACES])
        raise TraceError(f"unknown trace {spec!r}: neither one of {known} nor a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            requests = read_csv(path)
        elif suffix in (".jsonl", ".json"):
            requests = read_jsonl(path)
        else:
            raise TraceError(f"{path}: expected a .csv (Azure format) or .jsonl trace")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for request in requests:  # the lengths-only CSV refuses these line by line; the other formats here
        if not math.isfinite(request.arrival_s) or request.input_tokens < 0 or request.output_tokens < 0:
            raise TraceError(f"{path}:{request.line}: a negative token count or an arrival that is not a number")
    if not requests:
        raise TraceError(f"{path}: no requests")
    requests.sort(key=lambda r: r.arrival_s)
    first = requests[0].arrival_s
    return [replace(r, arrival_s=r.arrival_s - first) for r in requests]


def read_csv(path: Path) -> list[TraceRequest]:
    with open(path, newline="") as f:
        header = [name.strip() for name in next(csv.reader(f), [])]
    if header == AZURE_COLUMNS:
        return read_azure_csv(path)
    if all(c in header for c in SHAREGPT_COLUMNS):
        return _read_lengths(path, [header.index(c) for c in SHAREGPT_COLUMNS], skip_header=True)
    if len(header) == 2 and all(c.isdigit() for c in header):
        return _read_lengths(path, [0, 1], skip_header=False)
    raise TraceError(
        f"{path}: expected an Azure CSV ({','.join(AZURE_COLUMNS)}), a ShareGPT stats CSV "
        f"({','.join(SHAREGPT_COLUMNS)},...) or input,output rows without a header"
    )


def _read_lengths(path: Path, columns: list[int], skip_header: bool) -> list[TraceRequest]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if skip_header:
            next(reader)
        requests = []
        for line_no, row in enumerate(reader, start=1 + skip_header):
            try:
                input_tokens, output_tokens = (int(row[c]) for c in columns)
            except (ValueError, IndexError) as exc:
                raise TraceError(f"{path}:{line_no}: {exc}") from None
            if input_tokens < 0 or output_tokens < 0:
                raise TraceError(f"{path}:{line_no}: negative token count")
            requests.append(TraceRequest(0.0, input_tokens, output_tokens))
    return requests


def untimed(requests: list[TraceRequest]) -> bool:
    """True for a trace without arrival times (every request at 0): give it arrivals, e.g. `with_poisson_arrivals`."""
    return len(requests) > 1 and requests[-1].arrival_s == 0.0


def with_poisson_arrivals(requests: list[TraceRequest], rate: float, seed: int = 0) -> list[TraceRequest]:
    """The same requests, in a seeded random order, arriving as a Poisson process of `rate` req/s."""
    import numpy as np

    if not 0 < rate < math.inf:  # NaN too: every arrival would be NaN; inf: all at 0 s, a run of no duration
        raise InvalidInput(f"rate must be a finite number > 0, got {rate:g}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(requests))
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=len(requests)))
    arrivals -= arrivals[0]
    return [replace(requests[i], arrival_s=float(t)) for i, t in zip(order, arrivals, strict=True)]


def read_azure_csv(path: Path) -> list[TraceRequest]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        requests = []
        for line_no, row in enumerate(reader, start=2):
            try:
                timestamp = dt.datetime.fromisoformat(row[0].strip()).timestamp()
                requests.append(TraceRequest(timestamp, int(row[1]), int(row[2]), line=line_no))
            except (ValueError, IndexError) as exc:
                raise TraceError(f"{path}:{line_no}: {exc}") from None
    return requests


def read_jsonl(path: Path) -> list[TraceRequest]:
    requests: list[TraceRequest] = []
    lines = timestamped_lines = 0
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"a line is a JSON object, not {type(record).__name__}")
                if "requests" in record:
                    requests.extend(replace(r, line=line_no) for r in _aibrix_requests(record))
                    timestamped_lines += 1
                else:
                    requests.append(replace(_simple_request(record), line=line_no))
                    timestamped_lines += "timestamp_s" in record
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{path}:{line_no}: {type(exc).__name__}: {exc}") from None
    if timestamped_lines not in (0, lines):
        raise TraceError(f"{path}: timestamp on {timestamped_lines} of {lines} lines: give it on all or none")
    return requests


def _aibrix_requests(record: dict) -> list[TraceRequest]:
    arrival_s = float(record["timestamp"]) / 1000.0
    return [
        TraceRequest(arrival_s, _tokens(r["Prompt Length"]), _tokens(r["Output Length"]), _prompt(r))
        for r in record["requests"]
    ]


def _simple_request(record: dict) -> TraceRequest:
    prompt = _prompt(record)
    if "input_tokens" in record:
        input_tokens = _tokens(record["input_tokens"])
    elif prompt is not None:
        input_tokens = _count_tokens(prompt)
    else:
        raise KeyError("a line needs 'prompt' or 'input_tokens'")
    return TraceRequest(float(record.get("timestamp_s", 0.0)), input_tokens, _tokens(record["output_tokens"]), prompt)


def _tokens(value: object) -> int:
    """A token count: 5, 5.0 or "5"; 5.9 is not cut to 5, and inf or NaN are refused (int() raises OverflowError)."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"a token count is a whole number, got {value!r}")
    return int(value)  # type: ignore[call-overload]  # a TypeError for what int() does not take


def _prompt(record: dict) -> str | None:
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):  # it is sent as the message and counted as text
        raise TypeError(f"'prompt' is text, not {type(prompt).__name__}")
    return prompt


def _count_tokens(text: str) -> int:
    import quicktok  # only traces with text and no lengths need a tokenizer

    return quicktok.get_encoding("cl100k_base").count(text)


def select(
    requests: list[TraceRequest],
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    speed: float = 1.0,
    max_requests: int | None = None,
) -> list[TraceRequest]:
    """The requests to replay, with arrivals in replay (wall-clock) seconds from the window start.

    start_s: trace seconds to skip (trace time, before speed-up).
    duration_s: wall-clock seconds of replay, i.e. `duration_s * speed` seconds of trace; None = to the end.
    speed: time compression; 2 replays the trace twice as fast.
    max_requests: keep at most the first N requests of the window.
    """
    if not 0 < speed < math.inf:  # NaN too; inf would put every arrival at 0 s
        raise InvalidInput(f"speed must be a finite number > 0, got {speed:g}")
    if not start_s >= 0:
        raise InvalidInput(f"start must be >= 0 trace seconds, got {start_s:g}")
    if max_requests is not None and max_requests < 0:  # a negative slice would drop requests from the end
        raise InvalidInput(f"max_requests must be >= 0, got {max_requests}")
    end_s = float("inf") if duration_s is None else start_s + duration_s * speed
    window = [replace(r, arrival_s=(r.arrival_s - start_s) / speed) for r in requests if start_s <= r.arrival_s < end_s]
    return window if max_requests is None else window[:max_requests]
