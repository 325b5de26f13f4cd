"""The traces the economics and routing benchmarks run on, and how each is scaled to three request rates.

Real traces: the bundled Azure 2023 conversation and code traces; from ../shared/data (not in the repo): the
lmsys-chat-1m and ShareGPT lengths (Poisson arrivals at a given rate) and the two ServeGen traces (a production
language mix, and a reasoning model with answers to 24k tokens); plus the project's synthetic stress traces
(ricardo/loadgen/synthetic.py). A timed trace is sped up; a lengths-only one gets Poisson arrivals.

Nothing in ricardo was chosen on these traces: its one routing parameter (SLACK_TARGET) was chosen on the AIBrix
ShareGPT ramp (tune_slack.py), which none of them is.
"""

from __future__ import annotations

from pathlib import Path

from ricardo.emulator.cluster import TraceRequest
from ricardo.emulator.fleet import book_for_slo
from ricardo.loadgen.traces import read_trace, select, untimed, with_poisson_arrivals
from ricardo.profiles.catalog import ProfileBook

CATALOGS = {"measured": "melange", "full": "neocloud"}  # catalogue -> price set


def catalog_book(catalog: str, slo_ms: float) -> tuple[ProfileBook, list[str]]:
    """A catalogue's book at a TPOT SLO (the four measured types at Mélange's prices, or the full catalogue at
    neocloud prices) and the types a fleet may use (those with a price)."""
    book = book_for_slo(slo_ms, price_set=CATALOGS[catalog], full_catalog=catalog == "full")
    return book, [hw for hw in book.hardware_names() if hw in book.prices]


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"
# name -> (source, how its rate is set, three knob values: speed-ups of a timed trace, or rates of an untimed one)
TRACES: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "azure-conv": ("azure-conv", "speed", (1, 4, 16)),
    "azure-code": ("azure-code", "speed", (1, 4, 16)),
    "lmsys": (str(SHARED / "lengths" / "lmsys_chat_1m_lengths.csv"), "rate", (2, 8, 32)),
    "sharegpt": (str(SHARED / "lengths" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"), "rate", (2, 8, 32)),
    "servegen-language": (str(SHARED / "servegen" / "servegen_language_m-large.jsonl"), "speed", (0.5, 2, 8)),
    "servegen-reason": (str(SHARED / "servegen" / "servegen_reason_deepseek-r1.jsonl"), "speed", (1, 4, 16)),
    "synth-longctx": ("synth-longctx", "speed", (1, 4, 16)),
    "synth-bimodal": ("synth-bimodal", "speed", (1, 4, 16)),
    "synth-bursty": ("synth-bursty", "speed", (1, 4, 16)),
    "synth-shift": ("synth-shift", "speed", (1, 4, 16)),
}


def available(names: list[str]) -> tuple[list[str], list[str]]:
    """(the traces that can be read here, the ones whose file is missing: ../shared is not in a clone)."""
    missing = [n for n in names if TRACES[n][0].endswith((".csv", ".jsonl")) and not Path(TRACES[n][0]).is_file()]
    return [n for n in names if n not in missing], missing


def trace_requests(name: str, knob: float, max_requests: int, window: int = 0) -> list[TraceRequest]:
    """`max_requests` of the trace at `knob`. `window` picks another sample of the same traffic: for a timed trace
    the next stretch of it (windows start a third of the trace apart), for a lengths-only one another Poisson
    seed and order."""
    source, kind, _ = TRACES[name]
    requests = read_trace(source)
    if kind == "rate":
        if not untimed(requests):
            raise ValueError(f"{name} has timestamps; give it a speed, not a rate")
        chosen = select(with_poisson_arrivals(requests, knob, seed=window), max_requests=max_requests)
    else:
        start = requests[-1].arrival_s * window / 3
        chosen = select(requests, start_s=start, speed=knob, max_requests=max_requests)
    return [TraceRequest(r.arrival_s, r.input_tokens, r.output_tokens, r.prompt) for r in chosen]
