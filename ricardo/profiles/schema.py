"""What a profile file holds: each hardware type's serving capacity for one model, per request-size bucket.

One file covers one model at one SLO. `max_rps[i][j]` is the highest request rate one replica of the
hardware sustains within the SLO for requests whose input length falls in input bucket i and output
length in output bucket j (bucket k covers (edge[k-1], edge[k]]; a length beyond the last edge counts
in the last bucket). Rows may be ragged: a missing cell means "not profiled: cannot serve".

The format is the Mélange one (../shared/data/profiles/melange_llama2_7b.json) plus a few optional
fields this project adds: `model`, `slo_ttft_ms`, and per hardware type `source` ("measured" by a
profiler, or "estimated" from specs) and `note`. Files without `source` are measured tables.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, field_validator, model_validator

from ricardo.errors import InvalidInput


class HardwareTable(BaseModel):
    """The capacity table of one hardware type (further keys, e.g. provenance, are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    max_rps: list[list[NonNegativeFloat]] = Field(min_length=1)
    source: Literal["measured", "estimated"] = "measured"
    note: str = ""


class Workload(BaseModel):
    """A request-size mix: the share of requests in each (input bucket, output bucket)."""

    model_config = ConfigDict(extra="allow")

    what: str = ""
    fraction: list[list[NonNegativeFloat]] = Field(min_length=1)

    @field_validator("fraction")
    @classmethod
    def _sums_to_one(cls, fraction: list[list[float]]) -> list[list[float]]:
        total = sum(map(sum, fraction))
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"fractions sum to {total:.6f}, not 1")
        return fraction


class ProfileFile(BaseModel):
    """One profile file: every hardware type's capacity for one model at one SLO."""

    model_config = ConfigDict(extra="allow")  # free-form notes (`slo_note`, `input_edges_note`, ...)

    what: str = ""
    model: str | None = None
    source: dict[Any, Any] | str | None = None
    slo_tpot_ms: float = Field(
        gt=0,
        description="SLO the tables were measured at, on latency per token (request latency / output tokens, "
        "Mélange's 'TPOT'; the gateway's TPOT is (latency - TTFT) / (output tokens - 1))",
    )
    slo_ttft_ms: float | None = Field(default=None, gt=0)
    context_tokens: PositiveInt | None = Field(
        default=None, description="the served model's context window (prompt + answer), where the file says it"
    )
    input_bucket_upper_edges: list[PositiveInt] = Field(min_length=1)
    output_bucket_upper_edges: list[PositiveInt] = Field(min_length=1)
    price_per_hour_usd: dict[str, dict[str, NonNegativeFloat]] = Field(default_factory=dict)
    gpus: dict[str, HardwareTable] = Field(min_length=1)
    workloads: dict[str, Workload] = Field(default_factory=dict)

    @field_validator("input_bucket_upper_edges", "output_bucket_upper_edges")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"bucket edges must increase strictly: {edges}")
        return edges

    @model_validator(mode="after")
    def _tables_fit_the_buckets(self) -> ProfileFile:
        n_in, n_out = len(self.input_bucket_upper_edges), len(self.output_bucket_upper_edges)
        named = [(f"gpus.{name}.max_rps", t.max_rps) for name, t in self.gpus.items()]
        named += [(f"workloads.{name}.fraction", w.fraction) for name, w in self.workloads.items()]
        for where, rows in named:
            if len(rows) > n_in:
                raise ValueError(f"{where} has {len(rows)} rows but there are {n_in} input buckets")
            for i, row in enumerate(rows):
                if len(row) > n_out:
                    raise ValueError(f"{where}[{i}] has {len(row)} columns but there are {n_out} output buckets")
        return self


def read_profile_file(path: str | Path) -> ProfileFile:
    """Parse and validate a profile file (JSON, or YAML by its suffix)."""
    path = Path(path)
    try:
        text = path.read_text()  # UnicodeDecodeError is a ValueError
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        return ProfileFile.model_validate(data)
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: JSON's and pydantic's errors
        raise InvalidInput(f"{path}: not a profile file: {exc}") from None
