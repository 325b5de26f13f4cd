"""`ricardo loadgen`: replay a trace open-loop against an OpenAI-compatible server and report."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from urllib.parse import urlparse

from ricardo.defaults import default_slo_ms
from ricardo.errors import InvalidInput

# unless told otherwise, requests are judged by the SLO the gateway's embedded default config states
DEFAULT_SLO_TTFT_MS, DEFAULT_SLO_TPOT_MS = default_slo_ms()


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "loadgen",
        help="replay a trace open-loop against an OpenAI-compatible server",
        description="Replay real arrival times (open loop: late arrivals never wait for slow responses) "
        "against any OpenAI-compatible server, streaming every request, and write "
        "DIR/requests.jsonl and DIR/summary.json. Exit 0 when the run completed, even with "
        "request errors; 130 when interrupted (the report is still written); 1 when the server "
        "cannot be reached; 2 on bad arguments.",
    )
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    p.add_argument(
        "--trace",
        required=True,
        metavar="NAME|FILE",
        help="azure-conv | azure-code (bundled Azure 2023 traces) | FILE: .csv in the Azure format, "
        ".jsonl in the AIBrix workload format or lines {timestamp_s?, prompt?, input_tokens?, "
        "output_tokens}",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="directory for requests.jsonl and summary.json"
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="WALL-CLOCK seconds of replay, i.e. S x speed seconds of trace (default: to the trace's end); "
        "the run stops at S + --drain-timeout",
    )
    p.add_argument(
        "--start",
        type=float,
        default=0.0,
        metavar="S",
        help="skip the first S seconds of TRACE time, before --speed (default: 0)",
    )
    p.add_argument(
        "--speed", type=float, default=1.0, metavar="X", help="time compression: 2 replays twice as fast (default: 1)"
    )
    p.add_argument("--max-requests", type=int, metavar="N", help="send at most the first N requests of the window")
    p.add_argument("--model", help="model name to send (default: the first id of GET /v1/models)")
    p.add_argument(
        "--endpoint",
        choices=("chat", "completions"),
        default="chat",
        help="/v1/chat/completions (default) or /v1/completions",
    )
    p.add_argument(
        "--length-mode",
        choices=("header", "max_tokens"),
        default="header",
        help="how the trace's output length reaches the server. header (default): only the "
        "x-emulator-output-tokens header, for the emulator; a gateway does not read it. "
        "max_tokens: also max_tokens=N and ignore_eos=true, for real vLLM/SGLang backends; "
        "this REVEALS the length to a gateway through max_tokens",
    )
    p.add_argument(
        "--no-length-header", dest="length_header", action="store_false", help="do not send x-emulator-output-tokens"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="M",
        help="header mode: send max_tokens=M on every request (default: no max_tokens)",
    )
    p.add_argument(
        "--slo-ttft-ms",
        type=float,
        metavar="MS",
        help=f"TTFT SLO: sent as x-slo-ttft-ms when given; SLO attainment uses it, else the gateway's default "
        f"({DEFAULT_SLO_TTFT_MS:g} ms)",
    )
    p.add_argument(
        "--slo-tpot-ms",
        type=float,
        metavar="MS",
        help=f"TPOT SLO, (latency - TTFT) / (output tokens - 1): sent as x-slo-tpot-ms when "
        f"given; SLO attainment uses it, else the gateway's default ({DEFAULT_SLO_TPOT_MS:g} ms)",
    )
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds one request, whole stream, may take (default: 300)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds in-flight requests may still finish after --duration, or after the last arrival without it; "
        "later they count as errors, whatever --timeout allows (default: 60)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="cap on requests in flight; waiting shows as scheduling lag (default: none, pure open loop)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompt text (default: 0)")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (it only shows on a terminal anyway)",
    )
    p.set_defaults(func=handle)


def _validate(args: argparse.Namespace) -> str | None:
    url = urlparse(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        return f"--url must be an http(s) URL, got {args.url!r}"
    positive = {
        "--speed": args.speed,
        "--duration": args.duration,
        "--timeout": args.timeout,
        "--max-requests": args.max_requests,
        "--max-tokens": args.max_tokens,
        "--max-concurrency": args.max_concurrency,
        "--slo-ttft-ms": args.slo_ttft_ms,
        "--slo-tpot-ms": args.slo_tpot_ms,
    }
    for name, value in positive.items():
        if value is not None and not value > 0:  # NaN too
            return f"{name} must be > 0, got {value:g}"
    if not args.start >= 0 or not args.drain_timeout >= 0:
        return "--start and --drain-timeout must be >= 0"
    if args.length_mode == "max_tokens" and args.max_tokens is not None:
        return "--max-tokens applies to --length-mode header; max_tokens mode sends each request's trace length"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} exists and is not a directory"
    return None


def _raise_open_file_limit() -> None:
    """Open loop may hold thousands of connections at once."""
    try:
        import resource
    except ImportError:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit is not a valid soft one everywhere
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def handle(args: argparse.Namespace) -> int:
    from ricardo.loadgen import replay, report, traces

    def fail(message: str, code: int = 2) -> int:
        print(f"ricardo loadgen: error: {message}", file=sys.stderr)
        return code

    if problem := _validate(args):
        return fail(problem)
    try:
        requests = traces.select(
            traces.read_trace(args.trace),
            start_s=args.start,
            duration_s=args.duration,
            speed=args.speed,
            max_requests=args.max_requests,
        )
    except InvalidInput as exc:  # a trace that cannot be read (TraceError), or a window select refuses
        return fail(str(exc))
    if not requests:
        return fail(
            f"no request of {args.trace} arrives in the window start={args.start:g}s "
            f"duration={args.duration}s speed={args.speed:g}"
        )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create --out {args.out}: {exc}")
    _raise_open_file_limit()

    config = replay.ReplayConfig(
        base_url=args.url,
        model=args.model,
        endpoint=args.endpoint,
        length_mode=args.length_mode,
        length_header=args.length_header,
        max_tokens=args.max_tokens,
        slo_ttft_ms=args.slo_ttft_ms,
        slo_tpot_ms=args.slo_tpot_ms,
        api_key=args.api_key,
        timeout_s=args.timeout,
        max_concurrency=args.max_concurrency,
        duration_s=args.duration,
        drain_timeout_s=args.drain_timeout,
        seed=args.seed,
        progress=args.progress,
    )
    try:
        result = replay.run(requests, config)
    except replay.ServerUnreachable as exc:
        return fail(str(exc), code=1)
    except KeyboardInterrupt:  # only before the replay starts; during it Ctrl-C ends the run cleanly
        return fail("interrupted before the replay started", code=130)

    records = [vars(r) for r in result.records]  # flat dataclasses; asdict would deep-copy every chunk list
    run = {
        "url": args.url,
        "endpoint": args.endpoint,
        "model": result.model,
        "trace": args.trace,
        "start_s": args.start,
        "duration_s": args.duration,
        "speed": args.speed,
        "max_requests": args.max_requests,
        "length_mode": args.length_mode,
        "length_header": args.length_header,
        "max_concurrency": args.max_concurrency,
        "seed": args.seed,
        "slo_headers_sent": args.slo_ttft_ms is not None or args.slo_tpot_ms is not None,
        "started_at": result.started_at,
        "wall_s": result.wall_s,
        "scheduled": result.scheduled,
        "interrupted": result.interrupted,
    }
    summary = report.summarize(
        records,
        run=run,
        slo_ttft_ms=args.slo_ttft_ms or DEFAULT_SLO_TTFT_MS,
        slo_tpot_ms=args.slo_tpot_ms or DEFAULT_SLO_TPOT_MS,
    )
    report.write_report(args.out, records, summary)
    print(report.format_summary(summary))
    print(f"wrote {args.out / 'requests.jsonl'} and {args.out / 'summary.json'}")
    return 130 if result.interrupted else 0  # 128 + SIGINT, as shells report an interrupted command
