"""Tables and the plot of bench/economics/run.py's results (also: `python bench/economics/report.py results.json`)."""

from __future__ import annotations

import json
import sys
from itertools import groupby
from pathlib import Path

PER_TYPE_COLUMNS_UP_TO = 4  # a catalogue with more types shows only its best single type


def singles(result: dict) -> dict[str, dict | None]:
    return {name.removesuffix(" only"): a for name, a in result["approaches"].items() if name.endswith(" only")}


def best_single(result: dict) -> tuple[str, dict] | None:
    found = [(hw, a) for hw, a in singles(result).items() if a is not None]
    return min(found, key=lambda item: item[1]["cost_per_hour"]) if found else None


def _money(approach: dict | None) -> str:
    return "–" if approach is None else f"{approach['cost_per_hour']:.2f}"


def _money_and_tokens(approach: dict | None) -> str:
    if approach is None:
        return "none ≤ 64x"
    return f"{approach['cost_per_hour']:.2f} ({approach['usd_per_million_tokens']:.3f})"


def _ratio(a: dict | None, b: dict | float | None) -> str:
    if a is None or b is None:
        return "–"
    denominator = b if isinstance(b, float) else b["cost_per_hour"]
    return f"{a['cost_per_hour'] / denominator:.2f}" if denominator else "–"


def _fleet(fleet: dict[str, int]) -> str:
    return " + ".join(f"{n} {hw}" for hw, n in fleet.items())


def table(rows: list[dict]) -> str:
    types = list(singles(rows[0]))
    per_type = len(types) <= PER_TYPE_COLUMNS_UP_TO
    header = ["rate req/s", "TPOT SLO", "judged", "bound $/h", "Mélange ILP $/h"]
    header += [f"{hw} only" for hw in types] if per_type else []
    header += ["best single $/h ($/1M tok)", "Mélange $/h ($/1M)", "ricardo $/h ($/1M)", "ricardo fleet",
               "ricardo / bound", "ricardo / Mélange", "ricardo / best single"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        best = best_single(r)
        ricardo, melange = r["approaches"]["ricardo"], r["approaches"]["melange"]
        cells = [f"{r['rate']:.1f}", f"{r['slo_tpot_ms']:g} ms", f"{r['judged_share']:.1%}",
                 f"{r['bound']['cost_per_hour']:.2f}", f"{r['melange_ilp']['cost_per_hour']:.2f}"]
        cells += [_money(a) for a in singles(r).values()] if per_type else []
        cells += [("–" if best is None else f"{_money_and_tokens(best[1])} {best[0]}"), _money_and_tokens(melange),
                  _money_and_tokens(ricardo), _fleet(ricardo["fleet"]) if ricardo else "–",
                  _ratio(ricardo, float(r["bound"]["cost_per_hour"])), _ratio(ricardo, melange),
                  _ratio(ricardo, best[1] if best else None)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(results: list[dict]) -> str:
    out = []
    for (catalog, price_set, trace), rows in groupby(results, key=lambda r: (r["catalog"], r["price_set"], r["trace"])):
        rows = list(rows)
        out.append(f"### {trace}: {catalog} catalogue, {price_set} prices ({rows[0]['requests']} requests a trial)\n")
        out.append(table(rows) + "\n")
    return "\n".join(out)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(key, list(rows)) for key, rows in groupby(results, key=lambda r: (r["catalog"], r["trace"]))]
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 2.6 * len(groups)), squeeze=False)
    for row, ((catalog, trace), rows) in enumerate(groups):
        for col, slo in enumerate(sorted({r["slo_tpot_ms"] for r in rows})):
            ax = axes[row][col]
            at = [r for r in rows if r["slo_tpot_ms"] == slo]
            rates = [r["rate"] for r in at]
            series = {"bound": [r["bound"]["cost_per_hour"] for r in at],
                      "best single": [(best_single(r) or (None, None))[1] for r in at],
                      "Mélange": [r["approaches"]["melange"] for r in at],
                      "ricardo": [r["approaches"]["ricardo"] for r in at]}
            for name, values in series.items():
                ys = [v if isinstance(v, float) else (v["cost_per_hour"] if v else float("nan")) for v in values]
                ax.plot(rates, [y / x for y, x in zip(ys, rates)], marker="o", label=name,
                        linestyle="--" if name == "bound" else "-")
            ax.set_xscale("log")
            ax.set_title(f"{trace}, {catalog} catalogue, TPOT {slo:g} ms", fontsize=9)
            ax.set_xlabel("mean rate (req/s)", fontsize=8)
            ax.set_ylabel("$/h per req/s", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    results = json.loads(Path(sys.argv[1]).read_text())
    print(tables(results))
    if len(sys.argv) > 2:
        plot(results, Path(sys.argv[2]))
