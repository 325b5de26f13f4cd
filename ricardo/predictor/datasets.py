"""Evaluation rows and the public prompt sets they come from.

An evaluation row is a dict `{"prompt": str, "output_tokens": int}` (or `"messages"` instead of `"prompt"`; optional
`"model"` and `"max_tokens"`), one JSON object per line in a file.

The shared data (../shared/data beside the repository) gives two sets with real output lengths:
- GSM8K: `question` -> prompt, `answer_tokens_llama3` -> output_tokens; its own train / test files.
- ShareGPT as replayed by AIBrix (`8min_up_and_down.jsonl`): `prompt` and `Output Length`, split in two halves by
  the SHA-256 of the prompt text (odd first byte = held out), so a prompt repeated in the trace stays on one side.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SHAREGPT = Path("prompts/sharegpt_aibrix/8min_up_and_down.jsonl")
GSM8K = Path("prompts/gsm8k")


def body_of(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI request body a row stands for: chat if it has messages, completions if it has a prompt."""
    body: dict[str, Any] = {"model": row.get("model", "")}
    if "messages" in row:
        body["messages"] = row["messages"]
    else:
        body["prompt"] = row["prompt"]
    if row.get("max_tokens") is not None:
        body["max_tokens"] = row["max_tokens"]
    return body


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def gsm8k_rows(split: str, data_dir: Path = SHARED_DATA) -> list[dict[str, Any]]:
    """GSM8K `split` ("train" or "test"): question and the llama3 token count of the reference answer."""
    folder = data_dir / GSM8K
    questions = [row["question"] for row in read_rows(folder / f"{split}.jsonl")]
    with open(folder / f"{split}_tokens.csv", encoding="utf-8") as table:
        counts = [int(row["answer_tokens_llama3"]) for row in csv.DictReader(table)]
    if len(questions) != len(counts):
        raise ValueError(f"gsm8k {split}: {len(questions)} questions but {len(counts)} token counts")
    return [{"prompt": q, "output_tokens": n} for q, n in zip(questions, counts, strict=True)]


def sharegpt_rows(held_out: bool, data_dir: Path = SHARED_DATA) -> list[dict[str, Any]]:
    """One half of the AIBrix ShareGPT replay, in trace order."""
    return [row for row in _sharegpt(data_dir) if is_held_out(row["prompt"]) == held_out]


def is_held_out(prompt: str) -> bool:
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0] % 2 == 1


def _sharegpt(data_dir: Path) -> Iterator[dict[str, Any]]:
    for line in (data_dir / SHAREGPT).read_text(encoding="utf-8").splitlines():
        for request in json.loads(line)["requests"]:
            yield {"prompt": request["prompt"], "output_tokens": int(request["Output Length"])}
