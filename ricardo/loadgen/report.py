"""Run report: DIR/requests.jsonl (one record per request), DIR/summary.json and a printed table.

requests.jsonl holds the fields of `replay.RequestRecord` (see replay.py for the definitions of
ttft_ms, tpot_ms, latency_per_token_ms, e2e_ms, chunk_ms, lag_ms).

summary.json (keys are stable; add, never rename):

    {
      "schema": "ricardo.loadgen.summary/1",
      "run": {...},          # what was run, as given by the caller (cli.py): url, endpoint, model, trace,
                             # start_s (trace s), duration_s (wall-clock s or null), speed, max_requests,
                             # length_mode, length_header, max_concurrency, seed, slo_headers_sent,
                             # started_at, wall_s, scheduled, interrupted; added here: sent,
                             # lag_ms {p50, p90, p99, max} (scheduling lag of the sent requests)
      "slo": {"ttft_ms": float, "tpot_ms": float},   # thresholds used for slo_attainment
      "overall": GROUP,
      "pools": {pool_name: GROUP, ...}  # grouped by the x-ricardo-pool response header, "-" if absent
    }

    GROUP = {
      "count": int,        # requests that ended: ok + errors (cancelled by Ctrl-C are left out)
      "ok": int, "errors": int, "cancelled": int,
      "ttft_ms": STATS, "tpot_ms": STATS, "latency_per_token_ms": STATS, "e2e_ms": STATS,
      "itl_ms": STATS,     # gaps between consecutive content chunks, all requests pooled
      "slo_attainment": float | null,  # share of `count` with ttft_ms <= slo.ttft_ms and
                                       # tpot_ms <= slo.tpot_ms (tpot not checked below 2 tokens);
                                       # errors are misses; null when count == 0
      "req_per_s": float, "output_tok_per_s": float,   # ok requests / run.wall_s, their completion tokens / wall_s
      "prompt_tokens": int, "completion_tokens": int,  # sums over ok requests
      "tokens_estimated": int,   # ok requests whose token counts were not in a usage chunk
      "cost_usd": float | null,  # sum over ok requests of the cost the server reported after each answer
                                 # (usage.ricardo_cost_usd: what the gateway's /metrics and key spend count);
                                 # null when none reported one
      "expected_cost_usd": float | null,  # sum over ok requests of x-ricardo-expected-cost-usd, the estimate
                                          # each pool was chosen on; null when none carried it
      "usd_per_million_tokens": float | null,         # cost / (prompt + completion tokens of those requests)
      "usd_per_million_output_tokens": float | null   # cost / their completion tokens
    }
    STATS = {"p50": float | null, "p90": ..., "p99": ..., "mean": ...}   # over ok requests with a value

Percentiles are numpy's (linear interpolation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "ricardo.loadgen.summary/1"
NO_POOL = "-"
PERCENTILES = (50, 90, 99)


def stats(values: Iterable[float]) -> dict[str, float | None]:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    if array.size == 0:
        return {**{f"p{q}": None for q in PERCENTILES}, "mean": None}
    return {
        **{f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True)},
        "mean": float(array.mean()),
    }


def meets_slo(record: Mapping, slo_ttft_ms: float, slo_tpot_ms: float) -> bool:
    if record["outcome"] != "ok" or record["ttft_ms"] is None or record["ttft_ms"] > slo_ttft_ms:
        return False
    return record["tpot_ms"] is None or record["tpot_ms"] <= slo_tpot_ms


def group_summary(
    records: Sequence[Mapping[str, Any]], *, wall_s: float, slo_ttft_ms: float, slo_tpot_ms: float
) -> dict:
    ended = [r for r in records if r["outcome"] != "cancelled"]
    ok = [r for r in ended if r["outcome"] == "ok"]
    completion_tokens = sum(r["completion_tokens"] for r in ok)
    gaps = np.concatenate([np.diff(r["chunk_ms"]) for r in ok if len(r["chunk_ms"]) > 1] or [np.empty(0)])
    # what failed was not billed by the gateway (it bills clean answers), so only ok requests are added up
    priced = [r for r in ok if r["cost_usd"] is not None]
    cost = sum(r["cost_usd"] for r in priced) if priced else None
    estimated = [r["expected_cost_usd"] for r in ok if r.get("expected_cost_usd") is not None]
    priced_output = sum(r["completion_tokens"] or 0 for r in priced)
    priced_total = priced_output + sum(r["prompt_tokens"] or 0 for r in priced)
    return {
        "count": len(ended),
        "ok": len(ok),
        "errors": len(ended) - len(ok),
        "cancelled": len(records) - len(ended),
        "ttft_ms": stats(r["ttft_ms"] for r in ok),
        "tpot_ms": stats(r["tpot_ms"] for r in ok),
        "latency_per_token_ms": stats(r["latency_per_token_ms"] for r in ok),
        "e2e_ms": stats(r["e2e_ms"] for r in ok),
        "itl_ms": stats(gaps),
        "slo_attainment": (sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in ended) / len(ended) if ended else None),
        "req_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "output_tok_per_s": completion_tokens / wall_s if wall_s > 0 else 0.0,
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
        "completion_tokens": completion_tokens,
        "tokens_estimated": sum(r["prompt_tokens_estimated"] or r["completion_tokens_estimated"] for r in ok),
        "cost_usd": cost,
        "expected_cost_usd": sum(estimated) if estimated else None,
        "usd_per_million_tokens": cost / priced_total * 1e6 if cost is not None and priced_total else None,
        "usd_per_million_output_tokens": cost / priced_output * 1e6 if cost is not None and priced_output else None,
    }


def summarize(
    records: Sequence[Mapping[str, Any]], *, run: Mapping[str, Any], slo_ttft_ms: float, slo_tpot_ms: float
) -> dict:
    """The summary.json document; `run` must hold wall_s (seconds the replay lasted)."""
    lags = [r["lag_ms"] for r in records if r["lag_ms"] is not None]
    by_pool: dict[str, list[Mapping]] = {}
    for record in records:
        by_pool.setdefault(record["pool"] or NO_POOL, []).append(record)
    limits = {"wall_s": run["wall_s"], "slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms}
    return {
        "schema": SCHEMA,
        "run": {
            **run,
            "sent": len(lags),
            "lag_ms": {**{k: v for k, v in stats(lags).items() if k != "mean"}, "max": max(lags) if lags else None},
        },
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms},
        "overall": group_summary(records, **limits),
        "pools": {pool: group_summary(group, **limits) for pool, group in sorted(by_pool.items())},
    }


def write_report(out_dir: Path, records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "requests.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _triple(s: Mapping, scale: float = 1.0, digits: int = 0) -> str:
    values = [s[f"p{q}"] for q in PERCENTILES]
    return "/".join("-" if v is None else f"{v * scale:.{digits}f}" for v in values)


def format_summary(summary: Mapping) -> str:
    """A readable table: one row for all requests, one per pool."""
    slo = summary["slo"]
    header = (
        f"{'pool':<14}{'reqs':>7}{'errors':>7}{'SLO ok':>8}  {'TTFT ms p50/p90/p99':>22}"
        f"  {'TPOT ms p50/p90/p99':>20}  {'E2E s p50/p90/p99':>20}{'req/s':>8}{'out tok/s':>10}"
        f"{'cost $':>10}{'expected $':>11}{'$/1M tok':>10}"
    )
    rows = [("all", summary["overall"]), *summary["pools"].items()]
    lines = [header]
    for name, g in rows:
        attainment = "-" if g["slo_attainment"] is None else f"{g['slo_attainment']:.1%}"
        cost = "-" if g["cost_usd"] is None else f"{g['cost_usd']:.4f}"
        expected = "-" if g.get("expected_cost_usd") is None else f"{g['expected_cost_usd']:.4f}"
        per_million = "-" if g["usd_per_million_tokens"] is None else f"{g['usd_per_million_tokens']:.3f}"
        lines.append(
            f"{name:<14}{g['count']:>7}{g['errors']:>7}{attainment:>8}  {_triple(g['ttft_ms']):>22}"
            f"  {_triple(g['tpot_ms'], digits=1):>20}  {_triple(g['e2e_ms'], 1e-3, 2):>20}"
            f"{g['req_per_s']:>8.2f}{g['output_tok_per_s']:>10.1f}{cost:>10}{expected:>11}{per_million:>10}"
        )
    run = summary["run"]
    lag = run["lag_ms"]
    lag_text = "-" if lag["p99"] is None else f"p50 {lag['p50']:.1f} / p99 {lag['p99']:.1f} / max {lag['max']:.1f} ms"
    lines.append(
        f"SLO: TTFT <= {slo['ttft_ms']:g} ms and TPOT <= {slo['tpot_ms']:g} ms (errors miss). Cost: as billed "
        "after each answer; expected: the estimate before it. "
        f"Sent {run['sent']} of {run['scheduled']} in {run['wall_s']:.1f} s; scheduling lag {lag_text}"
        + ("; INTERRUPTED" if run.get("interrupted") else "")
    )
    return "\n".join(lines)
