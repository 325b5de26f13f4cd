"""`ricardo emulate`: emulated GPU backends, real time, OpenAI-compatible."""

from __future__ import annotations

import argparse
import math


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "emulate",
        help="run emulated GPU backends (OpenAI-compatible, timed by the engine model)",
        description="Run one emulated backend (--gpu/--port) or every backend named in a gateway config (--config).",
    )
    p.add_argument("--gpu", help="hardware type, e.g. L4, A10G, A100-80GB, H100, CPU")
    p.add_argument("--model", default="llama2-7b", help="model id to serve (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--config", help="a gateway config: start an emulator for every local backend of every pool")
    p.add_argument(
        "--link-gbps",
        type=float,
        default=100.0,
        help="as the decode side of a prefill/decode pair, pull KV caches over a link this fast, Gb/s "
        "(default: %(default)s; with --config, each pair's link_gbps)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run the emulated hardware this many times faster than real time (default: 1)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[PORT:]SPEC",
        help="give backends a fault, e.g. cut-after=2, stall-after=3, no-done, hang, error-rate=0.3, slow=5 "
        "(comma-separated; PORT: for one backend of --config); see ricardo/emulator/faults.py",
    )
    p.set_defaults(func=_emulate)


def _emulate(args: argparse.Namespace) -> int:
    from ricardo.emulator.launch import BackendSpec, backends_from_config, run_backends, with_faults
    from ricardo.errors import InvalidInput

    if not 0 < args.speed < math.inf:  # NaN fails too; 0 divided the engine's step times (a dead engine task)
        raise SystemExit(f"ricardo emulate: --speed must be a finite number > 0, got {args.speed}")
    if args.config:
        specs = backends_from_config(args.config)
    elif args.gpu:
        specs = [
            BackendSpec(hardware=args.gpu, model=args.model, host=args.host, port=args.port, link_gbps=args.link_gbps)
        ]
    else:
        raise SystemExit("ricardo emulate: give --gpu (with --port) or --config")
    try:
        specs = with_faults(specs, args.fault)
    except InvalidInput as exc:
        raise SystemExit(f"ricardo emulate: {exc}") from None
    return run_backends(specs, speed=args.speed)
