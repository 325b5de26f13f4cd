"""Write the evaluation files of `ricardo predictor eval` from the shared data.

    python bench/predictor/make_splits.py OUT_DIR [--data ../shared/data]

writes OUT_DIR/gsm8k_{train,test}.jsonl (GSM8K's own split; output = llama3 tokens of the reference answer) and
OUT_DIR/sharegpt_{train,test}.jsonl (the AIBrix ShareGPT replay split by a hash of the prompt; the test half is
the one the shipped cold-start model never saw).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ricardo.predictor.datasets import SHARED_DATA, gsm8k_rows, sharegpt_rows, write_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {
        "gsm8k_train": gsm8k_rows("train", args.data),
        "gsm8k_test": gsm8k_rows("test", args.data),
        "sharegpt_train": sharegpt_rows(False, args.data),
        "sharegpt_test": sharegpt_rows(True, args.data),
    }
    for name, rows in splits.items():
        path = args.out / f"{name}.jsonl"
        print(f"{path}: {write_rows(path, rows)} rows")


if __name__ == "__main__":
    main()
