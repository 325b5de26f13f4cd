"""Profiles and prices, loaded once into a `ProfileBook` the policies and the planner read.

A book answers, cheaply and per request: which bucket a request of (input, output) tokens falls in,
how many such requests per second one replica of a hardware type sustains within the SLO
(`max_rps`, 0 = cannot serve), and what that hardware costs per hour under the chosen price set.
Everything is precomputed into tuples and dicts at load time: no pydantic on the hot path.

Hardware names: profiles use short names ("H100"), the price catalog `gpus.csv` full ones
("H100-SXM"); a book accepts either and answers under the profile's name.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ricardo.errors import InvalidInput, NotFound
from ricardo.profiles.engine_params import ALIASES, EngineParams, engine_catalog
from ricardo.profiles.roles import RoleParams, role_params
from ricardo.profiles.schema import ProfileFile, read_profile_file

DATA_DIR = Path(__file__).with_name("data")
GPU_CATALOG = DATA_DIR / "gpus.csv"
# per model: the measured file, then the estimated one (which may not exist yet)
PROFILE_FILES = {
    "llama2-7b": ("melange_llama2_7b.json", "estimated_llama2_7b.json"),
}
# per model: the file stem of tables the engine model computed at another SLO (`emulator/slo_tables.py`)
MODELLED_STEMS = {
    "llama2-7b": "modelled_llama2_7b",
    "llama3.1-8b": "modelled_llama31_8b",
    "smollm2-135m": "modelled_smollm2_135m",
}
# profile name -> gpus.csv name, where they differ
CATALOG_NAMES = {"H100": "H100-SXM"}
PROFILE_NAMES = {v: k for k, v in CATALOG_NAMES.items()}
# named price sets -> gpus.csv column ($ per GPU-hour)
PRICE_COLUMNS = {
    "melange": "price_melange2024_usd_hr",  # the Mélange paper's: L4 .70, A10G 1.01, A100-80GB 3.67, H100 7.516
    "aws": "price_aws_ondemand_usd_per_gpu_hr",
    "gcp": "price_gcp_ondemand_usd_per_gpu_hr",
    "neocloud": "price_neocloud_usd_per_gpu_hr",
}
# sizes whose place on the grid a book remembers (`ProfileBook.grid_point`): a ranking asks `rate_at` the same two
# sizes (the p50 and p90 answers) once per pool; a few more cover the dispatch and the bill of the same request
GRID_MEMO = 8

# where a size lies on the grid: its cell (i, j), the cell below and left (i0, j0), the position between their
# edges (tx, ty, each in [0, 1]) and whether it lies past the last edges
GridPoint = tuple[int, int, int, int, float, float, bool]


def catalog_name(hardware: str) -> str:
    return CATALOG_NAMES.get(hardware, hardware)


def profile_name(hardware: str) -> str:
    return PROFILE_NAMES.get(hardware, hardware)


@cache
def _catalog_prices() -> dict[str, dict[str, float]]:
    """price set -> {profile name: $/h} for every gpus.csv row that has a price in that set's column."""
    with open(GPU_CATALOG, newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        name: {profile_name(row["gpu"]): float(row[column]) for row in rows if row[column].strip()}
        for name, column in PRICE_COLUMNS.items()
    }


def price_set_names(profile: ProfileFile | None = None) -> list[str]:
    """Named price sets: the catalog's, plus any the profile file carries (e.g. Mélange's `paper`, `notebook`)."""
    return list(PRICE_COLUMNS) + [n for n in (profile.price_per_hour_usd if profile else {}) if n not in PRICE_COLUMNS]


def load_prices(price_set: str, profile: ProfileFile | None = None) -> dict[str, float]:
    """{hardware (profile name): $/h per replica} of a named price set."""
    if price_set in PRICE_COLUMNS:
        return dict(_catalog_prices()[price_set])
    if profile is not None and price_set in profile.price_per_hour_usd:
        return {profile_name(k): v for k, v in profile.price_per_hour_usd[price_set].items()}
    raise InvalidInput(f"unknown price set {price_set!r}; known: {', '.join(price_set_names(profile))}")


class ProfileBook:
    """Capacity tables of several hardware types for one model on one bucket grid, plus their prices."""

    def __init__(
        self,
        *,
        model: str | None,
        slo_tpot_ms: float,
        slo_ttft_ms: float | None,
        input_edges: Sequence[int],
        output_edges: Sequence[int],
        tables: Mapping[str, np.ndarray],
        sources: Mapping[str, str],
        prices: Mapping[str, float],
        price_set: str,
        workloads: Mapping[str, np.ndarray] | None = None,
        engines: Mapping[str, EngineParams] | None = None,
        context_tokens: int | None = None,
    ):
        self.model = model
        self.slo_tpot_ms = float(slo_tpot_ms)
        self.slo_ttft_ms = slo_ttft_ms
        self.input_edges = tuple(int(e) for e in input_edges)
        self.output_edges = tuple(int(e) for e in output_edges)
        self.shape = (len(self.input_edges), len(self.output_edges))
        self.price_set = price_set
        self._names = list(tables)
        self._sources = dict(sources)
        self._capacity = {}
        for name, table in tables.items():
            table = np.array(table, dtype=float)
            if table.shape != self.shape:
                raise InvalidInput(f"{name}: table shape {table.shape} is not the bucket grid {self.shape}")
            table.flags.writeable = False
            self._capacity[name] = table
        self._prices = {hw: float(prices[hw]) for hw in self._names if hw in prices}
        self._workloads = dict(workloads or {})
        # step costs of the hardware, where known: the latency of a request alone (see `alone_seconds_per_token`)
        self._engines = {hw: engines[hw] for hw in self._names if engines and hw in engines}
        # the model's context window: the profile's, else the one its engine parameters were made for
        known = [params.model.max_context for params in self._engines.values()]
        self._given_context = context_tokens
        self.context_tokens: int | None = context_tokens if context_tokens is not None else min(known, default=None)
        # alias -> profile name; the tables as nested tuples, also under every alias (hot path: one dict lookup)
        self._canonical = {alias: hw for hw in self._names for alias in (hw, catalog_name(hw))}
        # the role model's floats (prefill-only and decode-only workers, `roles.py`), under every alias
        self._roles = {
            alias: role_params(self._engines[hw]) for alias, hw in self._canonical.items() if hw in self._engines
        }
        self._rows: dict[str, tuple[tuple[float, ...], ...]] = {
            alias: tuple(map(tuple, self._capacity[hw].tolist())) for alias, hw in self._canonical.items()
        }
        self._last_in = len(self.input_edges) - 1
        self._last_out = len(self.output_edges) - 1
        self.grid_point = lru_cache(maxsize=GRID_MEMO)(self.locate)
        # past the last edges a request's replica-seconds grow as (tokens / edge) ** exponent, per type (see
        # `_growth_exponents`): (per input bucket, per output bucket) exponents, as floats for the scalar path
        self._growth = {
            alias: _growth_exponents(self._capacity[hw], self.input_edges, self.output_edges)
            for alias, hw in self._canonical.items()
        }

    # a memo bound to this book cannot be pickled, and a copy must not share it: each book builds its own
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "grid_point"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.grid_point = lru_cache(maxsize=GRID_MEMO)(self.locate)

    # -- names, sources, prices -------------------------------------------------------------
    def hardware_names(self) -> list[str]:
        return list(self._names)

    def has(self, hardware: str) -> bool:
        return hardware in self._canonical

    def canonical(self, hardware: str) -> str:
        try:
            return self._canonical[hardware]
        except KeyError:
            raise NotFound(f"no profile for hardware {hardware!r}; known: {', '.join(self._names)}") from None

    def source(self, hardware: str) -> str:
        """'measured' or 'estimated'."""
        return self._sources[self.canonical(hardware)]

    @property
    def prices(self) -> dict[str, float]:
        return dict(self._prices)

    def price(self, hardware: str) -> float:
        hw = self.canonical(hardware)
        if hw not in self._prices:
            raise InvalidInput(f"price set {self.price_set!r} has no price for {hw}; give the pool a price_per_hour")
        return self._prices[hw]

    def with_prices(self, prices: Mapping[str, float], price_set: str = "custom") -> ProfileBook:
        """The same tables under other prices (e.g. the price set with some per-pool overrides)."""
        resolved = {self.canonical(hw): float(p) for hw, p in prices.items()}
        return self._copy(prices=resolved, price_set=price_set)

    def with_engines(self, engines: Mapping[str, EngineParams]) -> ProfileBook:
        """The same book, knowing the step costs of its hardware (`alone_seconds_per_token`)."""
        return self._copy(engines=engines)

    def _copy(self, **changes: Any) -> ProfileBook:
        fields = dict(
            model=self.model,
            slo_tpot_ms=self.slo_tpot_ms,
            slo_ttft_ms=self.slo_ttft_ms,
            input_edges=self.input_edges,
            output_edges=self.output_edges,
            tables=self._capacity,
            sources=self._sources,
            prices=self._prices,
            price_set=self.price_set,
            workloads=self._workloads,
            engines=self._engines,
            context_tokens=self._given_context,
        )
        return ProfileBook(**(fields | changes))

    def alone_seconds_per_token(self, hardware: str, input_tokens: int, output_tokens: int) -> float | None:
        """Latency per output token of this request alone on an idle replica, or None where the book has no
        step costs for the hardware. A capacity table says what a replica sustains for requests as long as a
        bucket's upper edge; this says whether this request, however short its output, can meet the SLO at all."""
        params = self._roles.get(hardware)  # the step costs as floats (hot path)
        return None if params is None else params.alone_seconds_per_token(input_tokens, output_tokens)

    def role(self, hardware: str) -> RoleParams | None:
        """The type's parameters as a prefill-only or decode-only worker (`profiles.roles`), None without step costs."""
        return self._roles.get(hardware)

    # -- buckets and capacity (hot path) ----------------------------------------------------
    def input_bucket(self, tokens: int) -> int:
        return bisect_left(self.input_edges, tokens, 0, self._last_in)

    def output_bucket(self, tokens: int) -> int:
        return bisect_left(self.output_edges, tokens, 0, self._last_out)

    def bucket(self, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        return self.input_bucket(input_tokens), self.output_bucket(output_tokens)

    def max_rps(self, hardware: str, input_tokens: int, output_tokens: int) -> float:
        """Requests/s of this size one replica sustains within the profile's SLO; 0 = cannot serve."""
        return self._rows[hardware][bisect_left(self.input_edges, input_tokens, 0, self._last_in)][
            bisect_left(self.output_edges, output_tokens, 0, self._last_out)
        ]

    def max_rps_at(self, hardware: str, i: int, j: int) -> float:
        return self._rows[hardware][i][j]

    def rate_at(self, hardware: str, input_tokens: int, output_tokens: int) -> float:
        """Requests/s of exactly this size one replica sustains within the SLO, interpolated; 0 = cannot serve.

        The tables were measured at the bucket edges (a bucket's cell holds its upper edge's capacity), so
        `max_rps` charges every request as if it were as long as its bucket's upper edge: up to 2-4x too
        much for a request just above the lower edge. Between edges this interpolates the replica-seconds a
        request uses (1 / rate) bilinearly in (input, output) tokens: a request's work is close to
        a + b * input + c * output + d * input * output (prefill, decode, attention over the KV cache),
        which bilinear interpolation reproduces. Below the first edge it stays at the first edge; where
        the upper-edge cell cannot serve, neither can this (the profile does not say how far it could).
        """
        i, j, i0, j0, tx, ty, beyond = self.grid_point(input_tokens, output_tokens)
        rows = self._rows[hardware]
        low, high = rows[i0], rows[i]
        top = high[j]
        if top <= 0:
            return 0.0
        low_low, low_high, high_low = low[j0], low[j], high[j0]
        if low_low <= 0 or low_high <= 0 or high_low <= 0:  # a ragged or noisy table: keep the upper edge's figure
            seconds = 1.0 / top
        else:
            seconds = (1 - tx) * ((1 - ty) / low_low + ty / low_high) + tx * ((1 - ty) / high_low + ty / top)
        if beyond:  # most requests are not
            seconds *= self._beyond(hardware, i, j, input_tokens, output_tokens)
        return 1.0 / seconds

    def locate(self, input_tokens: int, output_tokens: int) -> GridPoint:
        """Where a size lies on the bucket grid (`GridPoint`), the same for every hardware type of the book: `rate_at`
        reads it through `grid_point`, which remembers the last GRID_MEMO sizes."""
        i = bisect_left(self.input_edges, input_tokens, 0, self._last_in)
        j = bisect_left(self.output_edges, output_tokens, 0, self._last_out)
        i0, j0 = max(i - 1, 0), max(j - 1, 0)
        tx = _position(self.input_edges, i0, i, input_tokens)
        ty = _position(self.output_edges, j0, j, output_tokens)
        beyond = input_tokens > self.input_edges[-1] or output_tokens > self.output_edges[-1]
        return i, j, i0, j0, tx, ty, beyond

    def _beyond(self, hardware: str, i: int, j: int, input_tokens: int, output_tokens: int) -> float:
        """How many times the last edge's replica-seconds a request past the last edges uses (1 within them)."""
        by_input, by_output = self._growth[hardware]
        factor = 1.0
        if output_tokens > self.output_edges[-1]:
            factor *= (output_tokens / self.output_edges[-1]) ** by_output[i]
        if input_tokens > self.input_edges[-1]:
            factor *= (input_tokens / self.input_edges[-1]) ** by_input[j]
        return factor

    def buckets(self, input_tokens: npt.ArrayLike, output_tokens: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """The (input, output) bucket indices of many requests (`bucket`, vectorised)."""
        i = np.minimum(np.searchsorted(self.input_edges, np.asarray(input_tokens), side="left"), self._last_in)
        j = np.minimum(np.searchsorted(self.output_edges, np.asarray(output_tokens), side="left"), self._last_out)
        return i, j

    def table_seconds(self, hardware: str) -> np.ndarray:
        """Replica-seconds per request at each bucket's upper edge (1 / capacity; inf = cannot serve)."""
        table = self.capacity(hardware)
        with np.errstate(divide="ignore"):
            seconds: np.ndarray = np.where(table > 0, 1.0 / table, np.inf)
        return seconds

    def request_seconds(self, hardware: str, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Replica-seconds each request of these sizes uses (`1 / rate_at`, vectorised; inf = cannot serve)."""
        inputs, outputs = np.asarray(input_tokens, dtype=float), np.asarray(output_tokens, dtype=float)
        i, j = self.buckets(inputs, outputs)
        i0, j0 = np.maximum(i - 1, 0), np.maximum(j - 1, 0)
        in_edges, out_edges = np.array(self.input_edges, float), np.array(self.output_edges, float)
        tx = _positions(in_edges, i0, i, inputs)
        ty = _positions(out_edges, j0, j, outputs)
        inverse = self.table_seconds(hardware)
        with np.errstate(invalid="ignore"):  # inf corners are replaced below
            corners = inverse[i0, j0], inverse[i0, j], inverse[i, j0], inverse[i, j]
            blended = (1 - tx) * ((1 - ty) * corners[0] + ty * corners[1]) + tx * (
                (1 - ty) * corners[2] + ty * corners[3]
            )
        ragged = ~np.isfinite(corners[0]) | ~np.isfinite(corners[1]) | ~np.isfinite(corners[2])
        by_input, by_output = (np.array(exponents) for exponents in self._growth[hardware])
        beyond = np.maximum(outputs / out_edges[-1], 1.0) ** by_output[i]
        beyond = beyond * np.maximum(inputs / in_edges[-1], 1.0) ** by_input[j]
        seconds: np.ndarray = np.where(ragged, corners[3], blended) * beyond
        return seconds

    def bucket_request_seconds(
        self,
        hardware: str,
        input_tokens: Sequence[int] | np.ndarray,
        output_tokens: Sequence[int] | np.ndarray,
        factors: np.ndarray | None = None,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Mean replica-seconds per request in each bucket of the grid for these requests (the planner's
        `request_seconds`), each request's multiplied by its `factors` if given; 1 / capacity where no request
        falls, inf where the hardware cannot serve. With `weights` (how many requests each stands for, > 0: a
        sample drawn unevenly), the mean is weighted."""
        inputs, outputs = np.asarray(input_tokens), np.asarray(output_tokens)
        seconds = self.request_seconds(hardware, inputs, outputs)
        if factors is not None:
            seconds = seconds * factors
        cells = self.buckets(inputs, outputs)
        weight = _weights(weights, inputs.size)
        total, count = np.zeros(self.shape), np.zeros(self.shape)
        np.add.at(total, cells, seconds * weight)
        np.add.at(count, cells, weight)
        with np.errstate(invalid="ignore"):
            return np.where(count > 0, total / np.where(count > 0, count, 1.0), self.table_seconds(hardware))

    def rows(self, hardware: str) -> tuple[tuple[float, ...], ...] | None:
        """The capacity table as nested tuples, or None for unknown hardware (for callers that loop)."""
        return self._rows.get(hardware)

    def capacity(self, hardware: str) -> np.ndarray:
        """The full (input buckets x output buckets) table, 0 where the hardware was not profiled (read-only)."""
        return self._capacity[self.canonical(hardware)]

    # -- workloads --------------------------------------------------------------------------
    def workload_names(self) -> list[str]:
        return list(self._workloads)

    def workload(self, name: str) -> np.ndarray:
        """A named request-size mix as fractions on the book's grid."""
        try:
            return self._workloads[name].copy()
        except KeyError:
            known = ", ".join(self._workloads) or "none"
            raise NotFound(f"no workload {name!r} in the profile; known: {known}") from None

    def histogram(
        self,
        input_tokens: Sequence[int] | np.ndarray,
        output_tokens: Sequence[int] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Fractions of the given requests in each bucket of the book's grid; with `weights`, of their weights
        (how many requests each stands for, > 0)."""
        inputs, outputs = np.asarray(input_tokens), np.asarray(output_tokens)
        if inputs.shape != outputs.shape or inputs.size == 0:
            raise InvalidInput("need the same, non-zero number of input and output lengths")
        weight = _weights(weights, inputs.size)
        counts = np.zeros(self.shape)
        np.add.at(counts, self.buckets(inputs, outputs), weight)
        fractions: np.ndarray = counts / weight.sum()
        return fractions


def _weights(weights: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    """Each request's weight: 1 without `weights`; else `weights`, checked (n of them, finite, > 0)."""
    if weights is None:
        return np.ones(n)
    weight = np.asarray(weights, dtype=float)
    if weight.shape != (n,) or not (np.isfinite(weight) & (weight > 0)).all():
        raise InvalidInput(f"need {n} finite, positive weights, one per request")
    return weight


def _position(edges: tuple[int, ...], low: int, high: int, tokens: int) -> float:
    """Where `tokens` lies between edges[low] and edges[high], in [0, 1] (0 when they are the same edge)."""
    if high == low:
        return 0.0
    return min(1.0, max(0.0, (tokens - edges[low]) / (edges[high] - edges[low])))


def _positions(edges: np.ndarray, low: np.ndarray, high: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    span = edges[high] - edges[low]
    return np.where(span > 0, np.clip((tokens - edges[low]) / np.where(span > 0, span, 1), 0, 1), 0.0)


def _growth_exponents(
    table: np.ndarray, input_edges: Sequence[int], output_edges: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """How a request's replica-seconds grow past the last profiled lengths: (per output bucket, the exponent in
    input tokens past the last input edge; per input bucket, the exponent in output tokens past the last output
    edge). Each is the log-log slope of 1 / capacity between the last two edges, kept in [1, 2]: at least
    proportional (a request twice as long as the longest profiled holds a replica at least twice as long;
    charging it the last edge's figure, as a bucket table does, undercounts a 10k-token answer 5x), at most
    quadratic (attention). 1 where the table lacks one of the two cells."""

    def slope(last: np.ndarray, before: np.ndarray, ratio: float) -> tuple[float, ...]:
        known = (last > 0) & (before > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = np.log(np.where(known, before, 1.0) / np.where(known, last, 1.0)) / np.log(ratio)
        return tuple(float(x) for x in np.where(known, np.clip(raw, 1.0, 2.0), 1.0))

    if table.shape[0] < 2 or table.shape[1] < 2:
        return (1.0,) * table.shape[1], (1.0,) * table.shape[0]
    by_input = slope(table[-1], table[-2], input_edges[-1] / input_edges[-2])
    by_output = slope(table[:, -1], table[:, -2], output_edges[-1] / output_edges[-2])
    return by_input, by_output


def _extend_rows(rows: list[list[float]], shape: tuple[int, int], output_edges: Sequence[int]) -> np.ndarray:
    """A capacity table on the full grid. A ragged row (a profile that measured fewer answer lengths for long
    prompts: Mélange's last A100/H100 row stops at 250 output tokens) is extended to the longer answers by the
    row's own trend between its last two measured lengths, at least proportionally (the same rule as past the
    last edge, `_growth_exponents`): "not measured" is not "cannot serve", and a router that refuses a request
    because its *predicted* answer falls in an unmeasured cell turns prediction error into refusals. Rows with
    no measured cell stay 0 (cannot serve)."""
    table = _dense(rows, shape)
    for i, row in enumerate(rows):
        measured = len(row)
        if measured == 0 or measured >= shape[1] or row[-1] <= 0:
            continue
        exponent = 1.0
        if measured >= 2 and row[-2] > 0:
            ratio = output_edges[measured - 1] / output_edges[measured - 2]
            exponent = min(2.0, max(1.0, math.log(row[-2] / row[-1]) / math.log(ratio)))
        for j in range(measured, shape[1]):
            table[i, j] = row[-1] * (output_edges[measured - 1] / output_edges[j]) ** exponent
    return table


def _dense(rows: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """A ragged table padded with zeros (not profiled = cannot serve) to the full grid."""
    table = np.zeros(shape)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table


def book_from_profiles(
    profiles: Sequence[ProfileFile], *, price_set: str = "melange", model: str | None = None
) -> ProfileBook:
    """Merge profile files into one book. The first file sets the grid and the SLO; later files must
    share both, and only add hardware the earlier ones lack (list measured files before estimated ones)."""
    first = profiles[0]
    shape = (len(first.input_bucket_upper_edges), len(first.output_bucket_upper_edges))
    tables: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    workloads: dict[str, np.ndarray] = {}
    known: set[str] = set()
    for profile in profiles:
        grid = (profile.input_bucket_upper_edges, profile.output_bucket_upper_edges, profile.slo_tpot_ms)
        if grid != (first.input_bucket_upper_edges, first.output_bucket_upper_edges, first.slo_tpot_ms):
            raise InvalidInput("profiles to merge must share bucket edges and SLO")
        for name, table in profile.gpus.items():
            if {name, catalog_name(name), profile_name(name)} & known:
                continue
            known |= {name, catalog_name(name), profile_name(name)}
            tables[name] = _extend_rows(table.max_rps, shape, first.output_bucket_upper_edges)
            sources[name] = table.source
        for name, mix in profile.workloads.items():
            workloads.setdefault(name, _dense(mix.fraction, shape))
    prices = load_prices(price_set, first)
    resolved = {hw: prices.get(hw, prices.get(catalog_name(hw))) for hw in tables}
    return ProfileBook(
        model=model or first.model,
        slo_tpot_ms=first.slo_tpot_ms,
        slo_ttft_ms=first.slo_ttft_ms,
        input_edges=first.input_bucket_upper_edges,
        output_edges=first.output_bucket_upper_edges,
        tables=tables,
        sources=sources,
        prices={hw: p for hw, p in resolved.items() if p is not None},
        price_set=price_set,
        workloads=workloads,
        context_tokens=first.context_tokens,
    )


def load_book(*paths: str | Path, price_set: str = "melange", model: str | None = None) -> ProfileBook:
    """A book from profile files (Mélange format or this project's; JSON or YAML)."""
    if not paths:
        raise InvalidInput("need at least one profile file")
    return book_from_profiles([read_profile_file(p) for p in paths], price_set=price_set, model=model)


def modelled_profile_path(model: str, slo_tpot_ms: float, quantile: float | None = None) -> Path:
    """Where the engine model's tables of `model` at `slo_tpot_ms` are shipped: judged on the mean latency per
    token (the profiler's rule), or with a `quantile` on that quantile (0.99: the rate at which 99% meet it)."""
    try:
        stem = MODELLED_STEMS[model]
    except KeyError:
        raise InvalidInput(f"no shipped profile for model {model!r}; known: {', '.join(MODELLED_STEMS)}") from None
    judged = "" if quantile is None else f"_p{quantile * 100:g}"
    return DATA_DIR / f"{stem}{judged}_tpot{slo_tpot_ms:g}.json"


def modelled_slos(model: str = "llama2-7b") -> list[float]:
    """The TPOT SLOs (ms) at which the engine model's tables of `model` are shipped."""
    stem = MODELLED_STEMS.get(model)
    if stem is None:
        return []
    return sorted(float(path.stem.rsplit("_tpot", 1)[1]) for path in DATA_DIR.glob(f"{stem}_tpot*.json"))


def default_profile_paths(model: str = "llama2-7b", include_estimated: bool = False) -> list[Path]:
    try:
        measured, estimated = PROFILE_FILES[model]
    except KeyError:
        raise InvalidInput(f"no shipped profile for model {model!r}; known: {', '.join(PROFILE_FILES)}") from None
    paths = [DATA_DIR / measured]
    if include_estimated:
        if not (DATA_DIR / estimated).is_file():
            raise FileNotFoundError(f"no estimated profile {DATA_DIR / estimated} for {model}")
        paths.append(DATA_DIR / estimated)
    return paths


def load_default_book(
    model: str = "llama2-7b",
    price_set: str = "melange",
    include_estimated: bool = False,
    slo_tpot_ms: float | None = None,
    quantile: float | None = None,
) -> ProfileBook:
    """The shipped profile of `model` (measured tables; with `include_estimated`, plus estimated ones for
    hardware that was not measured) under a named price set.

    At a `slo_tpot_ms` other than the measured tables' own, the tables are the engine model's at that
    SLO (`python -m ricardo.emulator.slo_tables`), for the measured hardware only unless `include_estimated`.
    With a `quantile` (0.99), always the engine model's tables judged on that quantile of the latency per token
    instead of its mean: the capacity at which 99% of requests meet the SLO (a reference, not for routing).
    """
    if model not in PROFILE_FILES:  # nothing measured: only the engine model's tables, every type estimated
        return _modelled_book(model, price_set, slo_tpot_ms, quantile)
    paths = default_profile_paths(model, include_estimated)
    measured = read_profile_file(paths[0])
    slo_tpot_ms = measured.slo_tpot_ms if slo_tpot_ms is None else slo_tpot_ms
    if quantile is None and abs(slo_tpot_ms - measured.slo_tpot_ms) < 1e-9:
        return with_shipped_engines(load_book(*paths, price_set=price_set, model=model), model)
    path = modelled_profile_path(model, slo_tpot_ms, quantile)
    if not path.is_file():
        judged = "" if quantile is None else f" --quantile {quantile:g}"
        raise InvalidInput(
            f"no capacity tables of {model} at a {slo_tpot_ms:g} ms TPOT SLO{judged and ' (' + judged.strip() + ')'} "
            f"(the measured ones are at {measured.slo_tpot_ms:g} ms); build them with "
            f"`python -m ricardo.emulator.slo_tables --slo-tpot-ms {slo_tpot_ms:g}{judged}`"
        )
    modelled = read_profile_file(path)
    if not include_estimated:
        modelled.gpus = {name: table for name, table in modelled.gpus.items() if name in measured.gpus}
    modelled.price_per_hour_usd = {**measured.price_per_hour_usd, **modelled.price_per_hour_usd}
    modelled.workloads = {**measured.workloads, **modelled.workloads}
    return with_shipped_engines(book_from_profiles([modelled], price_set=price_set, model=model), model)


def _modelled_book(model: str, price_set: str, slo_tpot_ms: float | None, quantile: float | None) -> ProfileBook:
    """The book of a model nothing was measured for: the engine model's tables at `slo_tpot_ms` (default: the
    loosest shipped SLO, 120 ms like the measured Llama-2-7B tables)."""
    slos = modelled_slos(model)
    if not slos:
        known = sorted(set(PROFILE_FILES) | set(MODELLED_STEMS))
        raise InvalidInput(f"no shipped profile for model {model!r}; known: {', '.join(known)}")
    path = modelled_profile_path(model, max(slos) if slo_tpot_ms is None else slo_tpot_ms, quantile)
    if not path.is_file():
        raise InvalidInput(f"no capacity tables of {model} at {path.name}; shipped TPOT SLOs: {slos}")
    book = book_from_profiles([read_profile_file(path)], price_set=price_set, model=model)
    return with_shipped_engines(book, model)


def shipped_models() -> list[str]:
    """Models with a shipped profile book (measured or the engine model's)."""
    return [m for m in dict.fromkeys([*PROFILE_FILES, *MODELLED_STEMS]) if m in PROFILE_FILES or modelled_slos(m)]


def with_shipped_engines(book: ProfileBook, model: str = "llama2-7b") -> ProfileBook:
    """The shipped book knows the step costs calibrated for its hardware (profiles/data/engine_params_*.json),
    with `model`'s sizes (`engine_catalog`)."""
    catalog = engine_catalog(model)
    engines = {hw: catalog[ALIASES.get(hw, hw)] for hw in book.hardware_names() if ALIASES.get(hw, hw) in catalog}
    return book.with_engines(engines)
