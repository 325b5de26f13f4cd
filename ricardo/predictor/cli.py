"""`ricardo predictor eval|train`: score the output-length model against peers' baselines; rebuild the shipped one."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ricardo.errors import InvalidInput


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("predictor", help="output-length predictor: evaluate, rebuild the cold-start model")
    commands = parser.add_subparsers(dest="predictor_command", metavar="ACTION", required=True)

    evaluate = commands.add_parser(
        "eval",
        help="train a fresh model on one JSONL file, score it and the baselines on another",
        description='Each FILE holds one JSON object a line: {"prompt": str, "output_tokens": int}, or "messages" '
        'instead of "prompt"; optional "model" and "max_tokens".',
    )
    evaluate.add_argument("--train", required=True, type=Path, metavar="FILE")
    evaluate.add_argument("--test", required=True, type=Path, metavar="FILE")
    evaluate.add_argument(
        "--encoding",
        default="llama3",
        help='count input tokens exactly with this quicktok encoding, or "none" for the '
        "gateway's estimate (default: %(default)s)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the AIBrix baseline's random draws")
    evaluate.add_argument(
        "--output-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply the test rows' output lengths by X: a served model more verbose than the training data, "
        "for the cold-start figures (default: %(default)s)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(func=_eval)

    train = commands.add_parser(
        "train",
        help="rebuild the shipped cold-start model and its reservoir from the shared data",
        description="Writes cold_start_model.npz and cold_start_samples.jsonl.gz into --out "
        "(ricardo/predictor/data is the shipped copy).",
    )
    train.add_argument("--out", required=True, type=Path, metavar="DIR")
    train.add_argument("--data", type=Path, help="the shared data folder (default: ../shared/data beside the repo)")
    train.set_defaults(func=_train)


def _eval(args: argparse.Namespace) -> int:
    from ricardo.predictor.datasets import read_rows
    from ricardo.predictor.evaluate import TIMING_PASSES, evaluate

    encoding = None if args.encoding.lower() == "none" else args.encoding
    if not args.output_scale > 0:
        print("ricardo predictor eval: --output-scale must be positive", file=sys.stderr)
        return 2
    try:
        train, test = _rows(read_rows, args.train, "--train"), _rows(read_rows, args.test, "--test")
    except InvalidInput as exc:
        print(f"ricardo predictor eval: {exc}", file=sys.stderr)
        return 2
    result = evaluate(train, test, encoding=encoding, seed=args.seed, output_scale=args.output_scale)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"train {result['n_train']} rows, test {result['n_test']} rows, input counted with {encoding or 'estimate'}")
    print(f"{'predictor p50':<26}{result['mae']:>10.2f}  MAE (tokens)")
    for name, mae in sorted(result["baselines"].items(), key=lambda item: item[1]):
        print(f"{name:<26}{mae:>10.2f}")
    print(
        f"gain vs best baseline ({result['best_baseline']}): {_share(result['gain_vs_best_baseline'])}; vs best "
        f"running baseline ({result['best_running_baseline']}): {_share(result['gain_vs_best_running_baseline'])}"
    )
    print(f"p90 coverage {result['p90_coverage']:.3f}, mean p90 {result['mean_p90']:.0f} tokens")
    for name, what in (
        ("predict_us", "features + prediction"),
        ("count_input_tokens_us", "input token count"),
        ("count_and_predict_us", "both"),
    ):
        print(f"{what:<26}p50 {result[name + '_p50']:>5.0f} µs, p99 {result[name + '_p99']:>5.0f} µs")
    fastest = result[f"predict_fastest_of_{TIMING_PASSES}_us_p99"]
    print(
        f"{f'prediction, fastest of {TIMING_PASSES}':<26}         p99 {fastest:>5.0f} µs (the machine's noise left out)"
    )
    cold, lengths = result["cold_start"], result["cold_start_lengths_only"]
    scale = f", outputs x{args.output_scale:g}" if args.output_scale != 1 else ""
    print(
        f"cold start (test rows in order, learning from each outcome{scale}), MAE from outcome {cold['after']} on "
        f"({cold['n']} rows):"
    )
    print(
        f"  blend {cold['mae']:.2f} (p90 coverage {cold['p90_coverage']:.3f}), text model alone "
        f"{cold['mae_text_model']:.2f} ({cold['p90_coverage_text_model']:.3f}), running median "
        f"{cold['mae_running_median']:.2f}"
    )
    print(
        f"  lengths only (input tokens, model, max_tokens): blend {lengths['mae']:.2f} "
        f"(p90 coverage {lengths['p90_coverage']:.3f}), running median {lengths['mae_running_median']:.2f}"
    )
    return 0


def _rows(read_rows: Callable[[Path], list[Any]], path: Path, flag: str) -> list[dict[str, Any]]:
    """The rows of `path`, each with a prompt (or messages) and a count of output tokens; InvalidInput if not."""
    try:
        rows = read_rows(path)
    except (OSError, ValueError) as exc:  # no file, not UTF-8, not JSON lines
        raise InvalidInput(f"{flag} {path}: {exc}") from None
    for number, row in enumerate(rows, start=1):
        length = row.get("output_tokens") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not ({"prompt", "messages"} & row.keys()) or not isinstance(length, int):
            raise InvalidInput(f'{flag} {path}: row {number} needs "prompt" or "messages" and "output_tokens"')
    if len(rows) < 2:
        raise InvalidInput(f"{flag} {path}: needs at least 2 rows, has {len(rows)}")
    return rows


def _share(gain: float | None) -> str:
    return "n/a (the baseline's MAE is 0)" if gain is None else f"{gain:.1%}"


def _train(args: argparse.Namespace) -> int:
    from ricardo.predictor.coldstart import build
    from ricardo.predictor.datasets import SHARED_DATA

    data = args.data or SHARED_DATA
    if not data.is_dir():
        print(f"ricardo predictor train: no shared data at {data} (give --data)", file=sys.stderr)
        return 2
    print(json.dumps(build(args.out, data), indent=2))
    return 0
