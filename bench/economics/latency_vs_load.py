"""How latency per output token grows with load in the engine model, against the profile's operating point.

    .venv/bin/python bench/economics/latency_vs_load.py

A profile's capacity is the rate at which the *mean* latency per output token reaches the SLO (utilization 1.0).
For a few request sizes per hardware type, Poisson arrivals of identical requests at a share u of that rate:
mean and p99 latency per token (as shares of the SLO) and the share of requests missing it. It shows why no fleet
sized at u = 1 keeps 99% of requests within SLO, and what `policies.routing.predicted_slack` approximates.
"""

from __future__ import annotations

import numpy as np
from ricardo.emulator.calibrate import Measurement, max_rate
from ricardo.emulator.virtual import run_fixed_size
from ricardo.profiles.engine_params import load_engine_params

CASES = [
    ("L4", 25, 100),
    ("A10G", 100, 100),
    ("A10G", 500, 250),
    ("A100-80GB", 500, 250),
    ("A100-80GB", 100, 25),
    ("H100", 1000, 100),
]
LOADS = (0.2, 0.4, 0.6, 0.8, 1.0)


def main() -> None:
    print("| SLO | hardware | in, out | alone | " + " | ".join(f"u={u:g}: mean / p99 / miss" for u in LOADS) + " |")
    print("|---" * (4 + len(LOADS)) + "|")
    for slo_s in (0.120, 0.040):
        for hardware, prompt, output in CASES:
            params = load_engine_params(hardware)
            capacity = max_rate(params, prompt, output, Measurement(slo_s=slo_s))
            if capacity <= 0:
                continue
            cells = []
            for u in LOADS:
                timings = run_fixed_size(params, u * capacity, prompt, output, count=3000, seed=1)[1000:]
                lpt = np.array([t.latency_per_token for t in timings]) / slo_s
                cells.append(f"{lpt.mean():.2f} / {np.percentile(lpt, 99):.2f} / {np.mean(lpt > 1):.0%}")
            alone = params.alone_seconds_per_token(prompt, output) / slo_s
            print(
                f"| {slo_s * 1000:g} ms | {hardware} | {prompt}, {output} | {alone:.2f} | " + " | ".join(cells) + " |"
            )


if __name__ == "__main__":
    main()
