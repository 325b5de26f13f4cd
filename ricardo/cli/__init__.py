"""The `ricardo` command: one entry point, one subcommand per job.

Each room owns its subcommands in its own `cli.py` (`add_commands(subparsers)`); heavy
imports stay inside the handlers so `ricardo --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module path of every room that contributes subcommands, in help order
COMMAND_MODULES = (
    "ricardo.gateway.cli",  # serve, config, admin
    "ricardo.emulator.cli",  # emulate
    "ricardo.loadgen.cli",  # loadgen
    "ricardo.cli.plan",  # plan
    "ricardo.cli.simulate",  # simulate
    "ricardo.cli.profile",  # profile
    "ricardo.predictor.cli",  # predictor eval|train
    "ricardo.cli.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ricardo", description="A cost-aware gateway for LLM inference.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a room still being built
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
