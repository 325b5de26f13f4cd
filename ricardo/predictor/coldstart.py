"""The shipped cold-start model: trained on public prompts with known output lengths.

Training rows: every GSM8K train question (answers counted with the llama3 tokenizer) and the training half of
the AIBrix ShareGPT replay (see `datasets.py`; the other half stays held out for evaluation). Each prompt is sent
as one user message of a chat request, as the gateway mostly sees them, and its input is counted exactly with
llama3 and its chat template. The reservoir kept for refits is a seeded sample of up to `RESERVOIR_PER_SOURCE`
rows of each source, so neither source drowns the other when live outcomes are scarce.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ricardo.predictor.datasets import SHARED_DATA, gsm8k_rows, sharegpt_rows
from ricardo.predictor.features import features_from_body
from ricardo.predictor.model import DEFAULT_MODEL, DEFAULT_RESERVOIR, fit_model
from ricardo.predictor.tokens import InputTokenCounter

ENCODING = "llama3"
RESERVOIR_PER_SOURCE = 1000


def build(out_dir: Path, data_dir: Path = SHARED_DATA, seed: int = 0) -> dict[str, Any]:
    """Fit the cold-start model and write it and its reservoir into `out_dir`; returns a summary."""
    counter = InputTokenCounter(ENCODING)
    sources = {"gsm8k": gsm8k_rows("train", data_dir), "sharegpt_aibrix": sharegpt_rows(False, data_dir)}
    records: dict[str, list[dict[str, Any]]] = {}
    for name, rows in sources.items():
        records[name] = []
        for row in tqdm(rows, desc=name, unit="req", leave=False):
            body = {"messages": [{"role": "user", "content": row["prompt"]}]}
            records[name].append(
                {"body": body, "input_tokens": counter.count_body(body), "output_tokens": row["output_tokens"]}
            )
    everything = [record for rows in records.values() for record in rows]
    model = fit_model([(features_from_body(r["body"], r["input_tokens"]), r["output_tokens"]) for r in everything])

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, reservoir_path = out_dir / DEFAULT_MODEL.name, out_dir / DEFAULT_RESERVOIR.name
    model_path.write_bytes(model.to_bytes())
    rng = random.Random(seed)
    reservoir = [r for rows in records.values() for r in rng.sample(rows, min(RESERVOIR_PER_SOURCE, len(rows)))]
    with open(reservoir_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        for record in reservoir:
            packed.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    return {
        "model": str(model_path),
        "model_bytes": model_path.stat().st_size,
        "reservoir": str(reservoir_path),
        "reservoir_bytes": reservoir_path.stat().st_size,
        "reservoir_rows": len(reservoir),
        "rows": {name: len(rows) for name, rows in records.items()},
        **model.info,
    }
