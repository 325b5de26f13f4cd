"""Synthetic stress traces: the shapes of traffic the bundled real traces lack, generated from a fixed seed.

Each is one hour at 1 request/s on average (replay faster with `speed`), lengths drawn from log-normals:

- `synth-longctx`: long-context heavy: prompts around 7k tokens (some past 16k), answers around 300,
  bursty arrivals (inter-arrival CV 2);
- `synth-bimodal`: 70% chat turns (150 in, 60 out), 30% long jobs (3k in, 700 out), Poisson;
- `synth-bursty`: a chat mix (600 in, 200 out) arriving in bursts (inter-arrival CV 6);
- `synth-shift`: the mix changes at half time, from short prompts with long answers (200 in, 400 out) to long
  prompts with short answers (4k in, 80 out), Poisson.

They are stress tests for routers and planners, written for this project, not measurements of anyone's traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SYNTHETIC_TRACES = ("synth-longctx", "synth-bimodal", "synth-bursty", "synth-shift")
DURATION_S = 3600
SEED = 20261206
MAX_INPUT, MAX_OUTPUT = 32_000, 8_000

Lengths = tuple[np.ndarray, np.ndarray]  # (input tokens, output tokens)


def synthetic_lengths_and_arrivals(name: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival seconds, input tokens, output tokens) of a named synthetic trace."""
    try:
        kind, cv = _KINDS[name]
    except KeyError:
        raise ValueError(f"no synthetic trace {name!r}; known: {', '.join(SYNTHETIC_TRACES)}") from None
    rng = np.random.default_rng(seed)
    arrivals = _arrivals(rng, DURATION_S, cv)
    inputs, outputs = kind(rng, len(arrivals))
    return (
        arrivals,
        np.clip(inputs, 1, MAX_INPUT).astype(int),
        np.clip(outputs, 1, MAX_OUTPUT).astype(int),
    )


def _arrivals(rng: np.random.Generator, duration_s: float, cv: float) -> np.ndarray:
    """Arrivals at 1 request/s on average over `duration_s`, with inter-arrival coefficient of variation `cv`
    (1: Poisson; above 1: gamma inter-arrivals, bursts and lulls)."""
    count = int(duration_s)
    shape = 1.0 / cv**2
    gaps = rng.gamma(shape, 1.0 / shape, count)
    times = np.cumsum(gaps)
    times *= duration_s / times[-1]
    arrivals: np.ndarray = times - times[0]
    return arrivals


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    values: np.ndarray = rng.lognormal(math.log(median), sigma, n)
    return values


def _longctx(rng: np.random.Generator, n: int) -> Lengths:
    return _lognormal(rng, 7000, 0.8, n), _lognormal(rng, 300, 0.9, n)


def _bimodal(rng: np.random.Generator, n: int) -> Lengths:
    chat = rng.random(n) < 0.7
    inputs = np.where(chat, _lognormal(rng, 150, 0.7, n), _lognormal(rng, 3000, 0.5, n))
    outputs = np.where(chat, _lognormal(rng, 60, 0.8, n), _lognormal(rng, 700, 0.5, n))
    return inputs, outputs


def _bursty(rng: np.random.Generator, n: int) -> Lengths:
    return _lognormal(rng, 600, 1.0, n), _lognormal(rng, 200, 1.0, n)


def _shift(rng: np.random.Generator, n: int) -> Lengths:
    first = np.arange(n) < n // 2
    inputs = np.where(first, _lognormal(rng, 200, 0.8, n), _lognormal(rng, 4000, 0.6, n))
    outputs = np.where(first, _lognormal(rng, 400, 0.8, n), _lognormal(rng, 80, 0.8, n))
    return inputs, outputs


_KINDS: dict[str, tuple[Callable[[np.random.Generator, int], Lengths], float]] = {
    "synth-longctx": (_longctx, 2.0),
    "synth-bimodal": (_bimodal, 1.0),
    "synth-bursty": (_bursty, 6.0),
    "synth-shift": (_shift, 1.0),
}
