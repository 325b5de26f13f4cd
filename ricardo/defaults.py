"""The gateway's embedded default config (ricardo/gateway/data/default.yaml), read as data.

Not a room: it imports nothing of ours, and every room may read it, so that the tools judge by what the gateway
states rather than by constants of their own. Its `slo` is the default SLO of the gateway (`SLOConfig`), of
`ricardo loadgen`'s SLO attainment and of `ricardo simulate`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

DEFAULT_CONFIG = "gateway/data/default.yaml"  # inside the `ricardo` package


@cache
def embedded_config() -> dict[str, Any]:
    """The embedded default config as parsed YAML (not validated: the gateway's config module does that)."""
    data = yaml.safe_load(resources.files("ricardo").joinpath(DEFAULT_CONFIG).read_text())
    assert isinstance(data, dict), "the embedded default config is a mapping"
    return data


def default_slo_ms() -> tuple[float, float]:
    """(TTFT ms, TPOT ms) of the embedded default config's `slo`. TPOT is (latency - TTFT) / (output tokens - 1)."""
    slo = embedded_config()["slo"]
    return float(slo["ttft_ms"]), float(slo["tpot_ms"])
