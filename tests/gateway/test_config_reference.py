"""docs/config.md is the reference `ricardo config reference` generates from the config's schema: it names every
key of the schema, and the committed file is what the code generates now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.reference import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        found.append(prefix + name)
        annotation = field.annotation
        args = [annotation, *getattr(annotation, "__args__", ())]
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                list_of = getattr(annotation, "__origin__", None) is list
                found += keys(arg, prefix + name + ("[]" if list_of else "") + ".")
    return found


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == reference(), "regenerate it: ricardo config reference --out docs/config.md"


def test_every_key_has_a_row_with_a_description():
    rows = {line.split("|")[1].strip(" `"): line for line in reference().splitlines() if line.startswith("| `")}
    expected = keys(GatewayConfig)
    assert "pools[].timeouts.idle_timeout_s" in expected and "slo.tpot_ms" in expected
    assert sorted(rows) == sorted(expected)
    undescribed = [key for key, line in rows.items() if line.rstrip().endswith("|  |")]
    assert not undescribed


def test_the_command_writes_the_file(tmp_path):
    out = tmp_path / "config.md"
    command = [sys.executable, "-m", "ricardo.cli", "config", "reference", "--out", str(out)]
    subprocess.run(command, check=True, timeout=60)
    assert out.read_text() == reference()
