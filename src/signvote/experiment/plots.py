"""Figures of a sweep's tidy table: the paper's layout, and aggregator x attack heatmaps.

- :func:`paper_figure`: the layout of the paper's Figures 2-5. One column per optimizer
  (DistSGD, SignSGD, Signum), the test loss on the top row and the test accuracy below,
  against the epoch. One curve per number of adversaries, the mean over seeds with a band
  from the lowest to the highest seed.
- :func:`heatmap`: the final test accuracy (mean over seeds) of every aggregator against
  every attack. Each aggregator's worst attack is boxed, and a last column repeats it.

Figures are saved as PNG and SVG, each written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from signvote.experiment import results, runs

OPTIMIZERS = (("DistSGD", "sgd"), ("SignSGD", "signsgd"), ("Signum", "signum"))


def pyplot():
    """matplotlib's pyplot on the Agg backend (no screen)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    return plt


def _number(value: Any) -> float:
    return float("nan") if value in (None, "") else float(value)


def curves(rows: Sequence[dict[str, Any]], rule: str, adversary: str, metric: str
           ) -> dict[int, tuple[list[int], list[float], list[float], list[float]]]:
    """For each adversary count: the epochs and the mean, lowest and highest ``metric``
    over seeds, for the runs of ``rule``."""
    series: dict[int, dict[int, list[float]]] = {}
    for row in rows:
        if row["rule"] != rule:
            continue
        count = int(row[adversary])
        series.setdefault(count, {}).setdefault(int(row["epoch"]), []).append(
            _number(row[metric]))
    out = {}
    for count, by_epoch in sorted(series.items()):
        epochs = sorted(by_epoch)
        values = [by_epoch[e] for e in epochs]
        out[count] = (epochs, [math.fsum(v) / len(v) for v in values],
                      [min(v) for v in values], [max(v) for v in values])
    return out


def paper_figure(rows: Sequence[dict[str, Any]], adversary: str = "byzantine",
                 title: str = "", note: str = ""):
    """The paper's layout for the runs of ``rows`` (a tidy table); returns the Figure."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True, squeeze=False)
    workers = {int(r["workers"]) for r in rows}
    n = workers.pop() if len(workers) == 1 else None
    for col, (label, rule) in enumerate(OPTIMIZERS):
        for row_index, (metric, name) in enumerate((("test_loss", "test loss"),
                                                    ("test_acc", "test accuracy"))):
            ax = axes[row_index][col]
            for count, (epochs, mean, low, high) in curves(rows, rule, adversary,
                                                           metric).items():
                share = f"{100 * count / n:.0f}%" if n else str(count)
                (line,) = ax.plot(epochs, mean, label=f"{share} {adversary}")
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2,
                                linewidth=0)
            if row_index == 0:
                ax.set_title(label)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            if row_index == 1:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout()
    return fig


def final_accuracy_grid(rows: Sequence[dict[str, Any]]
                        ) -> tuple[list[str], list[str], list[list[float]]]:
    """Aggregators (rows), attacks (columns) and the mean final test accuracy over seeds
    (NaN where a run diverged or is missing)."""
    last = results.last_rows(rows)
    cells: dict[tuple[str, str], list[float]] = {}
    for row in last.values():
        name = f"{row['rule']} / {row['aggregator']}"
        cells.setdefault((name, row["attack"]), []).append(_number(row["test_acc"]))
    aggregators = sorted({a for a, _ in cells})
    attack_names = sorted({b for _, b in cells})
    grid = [[(math.fsum(cells[a, b]) / len(cells[a, b])) if (a, b) in cells else float("nan")
             for b in attack_names] for a in aggregators]
    return aggregators, attack_names, grid


def worst_attacks(grid: Sequence[Sequence[float]]) -> list[int | None]:
    """The column of each row's lowest accuracy (a NaN, a diverged run, counts as the
    lowest); None for a row with no value."""
    worst = []
    for values in grid:
        ranked = [(-math.inf if math.isnan(v) else v, j) for j, v in enumerate(values)]
        worst.append(min(ranked)[1] if ranked else None)
    return worst


def heatmap(rows: Sequence[dict[str, Any]], title: str = ""):
    """Final test accuracy of every aggregator x attack; returns the Figure."""
    plt = pyplot()
    aggregators, attack_names, grid = final_accuracy_grid(rows)
    worst = worst_attacks(grid)
    columns = [*attack_names, "worst"]
    values = [[*r, r[w] if w is not None else float("nan")] for r, w in zip(grid, worst,
                                                                          strict=True)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(columns), 1.2 + 0.45 * len(aggregators)))
    image = ax.imshow([[100 * v for v in r] for r in values], cmap="viridis", vmin=0,
                      vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(aggregators)), aggregators)
    for i, r in enumerate(values):
        for j, v in enumerate(r):
            text = "div" if math.isnan(v) else f"{100 * v:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if math.isnan(v) or v < 0.6 else "black")
        if worst[i] is not None:
            ax.add_patch(plt.Rectangle((worst[i] - 0.5, i - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax, label="final test accuracy %")
    ax.set_title(title or "final test accuracy % (worst attack boxed)")
    fig.tight_layout()
    return fig


def save(fig, stem: str | Path) -> list[Path]:
    """Write ``fig`` as ``STEM.png`` and ``STEM.svg`` (atomically); returns the paths."""
    paths = []
    for suffix in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix, dpi=120)
        path = Path(f"{stem}.{suffix}")
        runs.atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    pyplot().close(fig)
    return paths
