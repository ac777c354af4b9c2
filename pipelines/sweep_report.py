"""A sweep's comparison for its MLflow parent run: a table (CSV + Markdown) and a parallel-coordinates PNG of
each trial's parameters against its validation hmean (matplotlib, headless)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.tracking import VAL_HMEAN


def write_comparison(
    rows: Sequence[Mapping[str, Any]], params: Sequence[str], folder: Path, metric: str = VAL_HMEAN
) -> list[Path]:
    """rows: one per trial with `trial_id`, `epochs`, every name in `params`, and `metric` (the task's primary
    validation metric: val/hmean for a detector, val/accuracy for a recogniser); best first.
    Writes trials.csv, trials.md and parallel_coordinates.png into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["trial_id", *params, "epochs", metric]
    table = folder / "trials.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    markdown = folder / "trials.md"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    markdown.write_text("\n".join(lines) + "\n")
    png = folder / "parallel_coordinates.png"
    plot_parallel_coordinates(rows, [*params, metric], png)
    return [table, markdown, png]


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_parallel_coordinates(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], out: Path) -> None:
    """One vertical axis per name (each scaled to its own min..max, log for ranges over a decade), one line per
    trial coloured by its last axis (the hmean)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.9 * len(axes) + 1.5, 4.2), dpi=110)
    spans = [_span([float(r[a]) for r in rows]) for a in axes]
    cmap = plt.get_cmap("viridis")
    lo, hi = spans[-1][0], spans[-1][1]
    for r in sorted(rows, key=lambda r: float(r[axes[-1]])):  # best drawn last, on top
        ys = [_scaled(float(r[a]), span) for a, span in zip(axes, spans, strict=True)]
        shade = (float(r[axes[-1]]) - lo) / (hi - lo) if hi > lo else 1.0
        ax.plot(range(len(axes)), ys, color=cmap(shade), linewidth=2, marker="o", alpha=0.9)
    for i, (a, b, log) in enumerate(spans):
        ax.axvline(i, color="0.6", linewidth=0.8)
        ax.annotate(_cell(a), (i, 0), xytext=(4, -2), textcoords="offset points", fontsize=8, va="top")
        ax.annotate(_cell(b), (i, 1), xytext=(4, 2), textcoords="offset points", fontsize=8, va="bottom")
        if log:
            ax.annotate("log", (i, 0.5), xytext=(4, 0), textcoords="offset points", fontsize=7, color="0.4")
    ax.set_xticks(range(len(axes)), list(axes), fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"sweep trials: parameters against {axes[-1]} ({len(rows)} trials)", fontsize=10)
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi)), ax=ax, label=axes[-1])
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _span(values: list[float]) -> tuple[float, float, bool]:
    """(min, max, log scale?) of one axis."""
    a, b = min(values), max(values)
    return a, b, a > 0 and b / a > 10


def _scaled(value: float, span: tuple[float, float, bool]) -> float:
    a, b, log = span
    if b <= a:
        return 0.5  # one value on this axis: the middle
    if log:
        return (math.log(value) - math.log(a)) / (math.log(b) - math.log(a))
    return (value - a) / (b - a)
