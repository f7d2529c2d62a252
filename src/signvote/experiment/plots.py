"""Figures of a sweep's tidy table: the paper's layout, and aggregator x attack heatmaps.

- :func:`paper_figure`: the layout of the paper's Figures 2-5. One column per optimizer
  with runs (DistSGD, SignSGD, Signum, then any other rule by its name), the test loss on
  the top row and the test accuracy below (no accuracy row for a regression), against the
  epoch. One curve per number of adversaries, the mean over seeds with a band from the
  lowest to the highest seed.
- :func:`heatmap`: the final test accuracy (the final test loss for a regression; mean
  over seeds) of every rule / aggregator against every attack. Each row's worst attack
  is boxed, and a last column repeats it.

A curve or a cell pools runs that differ only in their seed (:func:`varying_fields` finds
what else differs): the paper's layout refuses a table whose runs of one rule differ in
anything but the adversary count and the seed (:class:`PlotError`, naming the fields and
their values); the heatmap adds every other field that differs to its row labels. A run
that diverged ends its curve with an x ("diverged" in the legend) and shows as "div." in
its cell; a cell without a run says "no run" and is never a row's worst attack.

Figures are saved as PNG and SVG, each written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from signvote.data import REGRESSION
from signvote.experiment import config, results, runs
from signvote.experiment.config import ConfigError

OPTIMIZERS = (("DistSGD", "sgd"), ("SignSGD", "signsgd"), ("Signum", "signum"))
ADVERSARIES = ("byzantine", "blind")
RULE_SETTINGS = ("aggregator", "lr", "momentum", "sign_bound")
"""The fields that are part of what an optimizer is (the paper's DistSGD sums, its sign
rules vote, each at its own lr): the paper layout's columns may differ in them."""
NO_RUN = None
"""A heatmap cell without a run (a diverged cell is NaN)."""


class PlotError(ConfigError):
    """The rows cannot be drawn as asked; the message names what differs and what to do."""


def plain(text: str) -> str:
    """``text`` drawn as it is: matplotlib reads ``$...$`` as math (and fails on a ``$``
    it cannot parse, such as a title ``$x^$``), so every ``$`` is escaped."""
    return text.replace("$", r"\$")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no screen)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    return plt


def _number(value: Any) -> float:
    return float("nan") if value in (None, "") else float(value)


# --- what differs between runs ------------------------------------------------------------

_DEFAULT = object()  # a field at the default the other fields give it (trajectory_key)
IDENTITY_FIELDS = tuple(k for k, s in config.FIELDS.items()
                        if s.metadata["section"] in config.KEY_SECTIONS)
"""The config fields of a run's identity: the ones :func:`varying_fields` compares."""


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers, then text, then None: an order for a column's mixed values."""
    if value is None:
        return (2, 0)
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value))


def _identity(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row's run-identity fields (the :data:`config.KEY_SECTIONS`) twice: as the run had
    them (a field the row lacks or holds as None at its default, derived ones filled in)
    and as :func:`config.trajectory_key` reads them (a field at the default the others
    give it, such as ``aggregator_f = byzantine + blind``, as ``_DEFAULT``)."""
    fields = IDENTITY_FIELDS
    given = {k: row[k] for k in fields if row.get(k) is not None}
    try:  # out (no part of the identity) given, so that nothing derives it
        c = config.from_dict({**given, "out": "-"})
        filled, key = config.fill_defaults(c), config.trajectory_key(c)
    except (KeyError, ValueError, TypeError):  # values no run has: compare them as they are
        raw = {k: _hashable(row.get(k)) for k in fields}
        return raw, dict(raw)
    return ({k: _hashable(getattr(filled, k)) for k in fields},
            {k: _hashable(key.get(k, _DEFAULT)) for k in fields})


def _hashable(value: Any) -> Any:
    """``value``, or its text when it cannot be hashed (a list no config holds)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def varying_fields(rows: Iterable[dict[str, Any]], ignore: Collection[str] = ()
                   ) -> dict[str, list[Any]]:
    """The config fields of a run's identity (sections trajectory and recorded; never
    ``out``, ``data_dir`` or a metric) in which the runs of ``rows`` differ, each with its
    values sorted, in :data:`config.FIELDS` order; fields in ``ignore`` are left out.

    Two runs differ in a field when they hold different values of it *and* their
    :func:`config.trajectory_key` differ in it: ``aggregator_f`` left at its default,
    ``byzantine + blind``, or ``lr`` at each rule's default, is no difference of its own.
    A field a row lacks, or holds as None, is at its default (a row of an older sweep).
    """
    seen: dict[str, set[tuple[Any, Any]]] = {}
    distinct: set[Any] = set()
    for row in rows:
        # a run is its id where the rows have one: its first row (epoch 1) holds the
        # config's lr, and the later ones the decayed lr of their epoch under the same key
        marker = row.get("run") or tuple(_hashable(row.get(k)) for k in IDENTITY_FIELDS)
        if marker in distinct:  # the same run's other epochs
            continue
        distinct.add(marker)
        literal, key = _identity(row)
        for name in literal:
            if name not in ignore:
                seen.setdefault(name, set()).add((literal[name], key[name]))
    out = {}
    for name, pairs in seen.items():
        if any(a[0] != b[0] and a[1] != b[1] for a in pairs for b in pairs):
            out[name] = sorted({v for v, _ in pairs}, key=_sort_key)
    return out


def describe(fields: dict[str, list[Any]], limit: int = 8) -> str:
    """``aggregator (krum, median), attack (alie, none)``: fields and their values, at most
    ``limit`` values each."""
    parts = []
    for name, values in fields.items():
        shown = ", ".join(str(v) for v in values[:limit])
        if len(values) > limit:
            shown += f", ... ({len(values)} values)"
        parts.append(f"{name} ({shown})")
    return ", ".join(parts)


def is_regression(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether the rows are a regression's (no accuracy: the loss is the metric): every
    row's dataset is a regression one, or rows naming no dataset have no accuracy at all.
    A table mixing regression and classification is refused (:class:`PlotError`)."""
    datasets = {row.get("dataset") for row in rows} - {None}
    if not datasets:
        return all(row.get("test_acc") is None for row in rows)
    regression = datasets & set(REGRESSION)
    if regression and regression != datasets:
        raise PlotError(
            f"the runs mix regression and classification: dataset "
            f"({', '.join(sorted(datasets))}); a figure shows one metric (the accuracy, or "
            f"the loss of a regression); valid: a sweep of one kind of dataset")
    return bool(regression)


# --- the paper's layout --------------------------------------------------------------------


class Curve(NamedTuple):
    """One adversary count's curve: the epochs and the mean, lowest and highest value over
    its seeds, up to the last epoch at which every seed has a finite value; ``diverged``:
    one of its runs diverged (its status, or a value that is not finite)."""

    epochs: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    diverged: bool
    diverged_at: int | None  # the first epoch without a finite value from every seed


def curves(rows: Sequence[dict[str, Any]], rule: str, adversary: str, metric: str
           ) -> dict[int, Curve]:
    """For each adversary count: the :class:`Curve` of ``metric`` over the seeds of the
    runs of ``rule`` (a curve ends where one of its runs diverged: past that point the
    mean would be over fewer seeds)."""
    series: dict[int, dict[int, dict[Any, float]]] = {}
    status: dict[int, bool] = {}
    for row in rows:
        if row["rule"] != rule:
            continue
        count = int(row[adversary])
        run = row.get("run", row.get("seed"))
        series.setdefault(count, {}).setdefault(int(row["epoch"]), {})[run] = _number(
            row[metric])
        status[count] = status.get(count, False) or row.get("status") == "diverged"
    out = {}
    for count, by_epoch in sorted(series.items()):
        seeds = set().union(*by_epoch.values())
        epochs, mean, low, high = [], [], [], []
        end = None
        for epoch in sorted(by_epoch):
            values = by_epoch[epoch]
            if set(values) != seeds or not all(math.isfinite(v) for v in values.values()):
                end = epoch
                break
            epochs.append(epoch)
            mean.append(math.fsum(values.values()) / len(values))
            low.append(min(values.values()))
            high.append(max(values.values()))
        out[count] = Curve(epochs, mean, low, high, status[count] or end is not None, end)
    return out


def _columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, rule) of each rule with runs: the paper's three in its order, then others."""
    present = {row["rule"] for row in rows}
    known = [(label, rule) for label, rule in OPTIMIZERS if rule in present]
    named = {rule for _, rule in OPTIMIZERS}
    return known + [(rule, rule) for rule in sorted(present - named)]


def check_paper_rows(rows: Sequence[dict[str, Any]], adversary: str) -> None:
    """Refuse (:class:`PlotError`) rows the paper's layout would pool wrongly: the other
    adversary count varies; runs of one rule differ in more than ``adversary`` and the
    seed; the rules' runs differ in more than the rules' own settings
    (:data:`RULE_SETTINGS`)."""
    if adversary not in ADVERSARIES:
        raise PlotError(f"--adversary {adversary!r}: unknown; valid: {', '.join(ADVERSARIES)}")
    other = next(a for a in ADVERSARIES if a != adversary)
    everything = varying_fields(rows, ("seed",))
    if other in everything:
        way_out = (f"--adversary {other}, " if adversary not in everything else "")
        differs = describe({other: everything[other]})
        raise PlotError(
            f"--adversary {adversary}: the runs also differ in {differs}, "
            f"and a curve pools only seeds; valid: {way_out}--kind heatmap, or a sweep "
            f"with one {other} count")
    within: dict[str, set[Any]] = {}
    for _, rule in _columns(rows):
        rule_rows = [row for row in rows if row["rule"] == rule]
        for name, values in varying_fields(rule_rows, ("rule", adversary, "seed")).items():
            within.setdefault(name, set()).update(values)
    if within:
        fields = {k: sorted(v, key=_sort_key) for k, v in within.items()}
        raise PlotError(
            f"the paper layout pools only seeds into a curve, but runs of the same rule "
            f"also differ in {describe(fields)}; valid: --kind heatmap, or a sweep whose "
            f"runs of each rule differ only in {adversary} and seed")
    across = varying_fields(rows, ("rule", adversary, "seed", *RULE_SETTINGS))
    if across:
        raise PlotError(
            f"the paper layout compares rules in one setting, but the rules' runs also "
            f"differ in {describe(across)}; valid: a sweep whose rules differ only in "
            f"their own settings ({', '.join(RULE_SETTINGS)})")


def paper_figure(rows: Sequence[dict[str, Any]], adversary: str = "byzantine",
                 title: str = "", note: str = ""):
    """The paper's layout for the runs of ``rows`` (a tidy table); returns the Figure.

    Raises :class:`PlotError` (:func:`check_paper_rows`) when a curve would pool runs that
    differ in more than their seed, and when ``rows`` is empty."""
    if not rows:
        raise PlotError("no finished run to draw")
    check_paper_rows(rows, adversary)
    metrics = [("test_loss", "test loss")]
    if not is_regression(rows):
        metrics.append(("test_acc", "test accuracy"))
    columns = _columns(rows)
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(len(metrics), len(columns),
                             figsize=(1.0 + 4.0 * len(columns), 0.5 + 3.25 * len(metrics)),
                             sharex=True, squeeze=False)
    workers = {int(r["workers"]) for r in rows if r.get("workers") is not None}
    n = workers.pop() if len(workers) == 1 else None
    counts = sorted({int(r[adversary]) for r in rows})
    legend: dict[int, Any] = {}
    for col, (label, rule) in enumerate(columns):
        for row_index, (metric, name) in enumerate(metrics):
            ax = axes[row_index][col]
            for count, curve in curves(rows, rule, adversary, metric).items():
                share = f"{100 * count / n:.0f}%" if n else str(count)
                (line,) = ax.plot(curve.epochs, curve.mean, label=f"{share} {adversary}",
                                  color=f"C{counts.index(count) % 10}")  # as in the legend
                legend.setdefault(count, line)
                ax.fill_between(curve.epochs, curve.low, curve.high, color=line.get_color(),
                                alpha=0.2, linewidth=0)
                if curve.diverged:
                    _mark_diverged(ax, curve, line.get_color())
            if row_index == 0:
                ax.set_title(label)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            if row_index == len(metrics) - 1:
                ax.set_xlabel("epoch")
    handles = [legend[k] for k in sorted(legend)]
    if any(ln.get_marker() == "x" for ax in fig.axes for ln in ax.lines):
        handles.append(Line2D([], [], marker="x", color="black", linestyle="none",
                              label="diverged"))
    axes[0][0].legend(handles=handles, fontsize=8)
    fig.suptitle(plain(title) + (f"\n{plain(note)}" if note else ""), fontsize=11)
    fig.tight_layout()
    return fig


def _mark_diverged(ax, curve: Curve, color: str) -> None:
    """An x where ``curve`` ends because one of its runs diverged: at its last point, or at
    the foot of the axes at the first epoch when it has no point."""
    if curve.epochs:
        ax.plot([curve.epochs[-1]], [curve.mean[-1]], marker="x", color=color,
                linestyle="none", markersize=8, label="_diverged")
    elif curve.diverged_at is not None:
        ax.plot([curve.diverged_at], [0.02], marker="x", color=color, linestyle="none",
                markersize=8, label="_diverged", transform=ax.get_xaxis_transform())


# --- the heatmap ---------------------------------------------------------------------------


class Grid(NamedTuple):
    """The heatmap's table: row names (``rule / aggregator``, then every other field that
    differs), attacks, and per cell the mean final ``metric`` over seeds (NaN where a run
    diverged, None where there is no run), with the cell's run and diverged counts."""

    names: list[str]
    attacks: list[str]
    values: list[list[float | None]]
    runs: list[list[int]]
    diverged: list[list[int]]
    metric: str  # "test_acc", or "test_loss" for a regression


def final_grid(rows: Sequence[dict[str, Any]]) -> Grid:
    """Every rule / aggregator (with the other fields that differ, :func:`varying_fields`,
    in its name) against every attack: the final test accuracy, or the final test loss of
    a regression, averaged over the seeds of the cell. A run diverged when its status says
    so or its final value is not finite; a cell with one is NaN."""
    metric = "test_loss" if is_regression(rows) else "test_acc"
    extra = varying_fields(rows, ("rule", "aggregator", "attack", "seed"))
    last = results.last_rows(rows)
    cells: dict[tuple[tuple[Any, ...], Any], list[float]] = {}
    failed: dict[tuple[tuple[Any, ...], Any], int] = {}
    labels: dict[tuple[Any, ...], str] = {}
    for row in last.values():
        literal = _identity(row)[0]
        group = (row["rule"], row["aggregator"], *(literal[k] for k in extra))
        labels[group] = f"{row['rule']} / {row['aggregator']}" + "".join(
            f", {k}={literal[k]}" for k in extra)
        value = _number(row[metric])
        bad = row.get("status") == "diverged" or not math.isfinite(value)
        cells.setdefault((group, row["attack"]), []).append(value)
        failed[group, row["attack"]] = failed.get((group, row["attack"]), 0) + bad
    groups = sorted(labels, key=lambda g: tuple(_sort_key(v) for v in g))
    attack_names = sorted({b for _, b in cells}, key=_sort_key)
    values: list[list[float | None]] = []
    for g in groups:
        line: list[float | None] = []
        for b in attack_names:
            if (g, b) not in cells:
                line.append(NO_RUN)
            elif failed[g, b]:
                line.append(float("nan"))
            else:
                line.append(math.fsum(cells[g, b]) / len(cells[g, b]))
        values.append(line)
    return Grid([labels[g] for g in groups], attack_names, values,
                [[len(cells.get((g, b), [])) for b in attack_names] for g in groups],
                [[failed.get((g, b), 0) for b in attack_names] for g in groups], metric)


def final_accuracy_grid(rows: Sequence[dict[str, Any]]
                        ) -> tuple[list[str], list[str], list[list[float | None]]]:
    """:func:`final_grid`'s names, attacks and values (the accuracy, or a regression's
    loss)."""
    grid = final_grid(rows)
    return grid.names, grid.attacks, grid.values


def worst_attacks(grid: Sequence[Sequence[float | None]], higher_is_better: bool = True
                  ) -> list[int | None]:
    """The column of each row's worst value: the lowest (the highest when not
    ``higher_is_better``, a loss), a NaN (a diverged run) worst of all, a cell without a
    run (None) never; None for a row with no run."""
    sign = 1 if higher_is_better else -1
    worst = []
    for values in grid:
        ranked = [(-math.inf if math.isnan(v) else sign * v, j)
                  for j, v in enumerate(values) if v is not None]
        worst.append(min(ranked)[1] if ranked else None)
    return worst


def _cell_text(value: float | None, runs_: int, diverged: int, metric: str) -> str:
    if value is None:
        return "no run"
    if math.isnan(value):
        return "div." if diverged == runs_ else f"div. {diverged}/{runs_}"
    return f"{100 * value:.0f}" if metric == "test_acc" else f"{value:.3g}"


def heatmap(rows: Sequence[dict[str, Any]], title: str = ""):
    """The final test accuracy (a regression: the final test loss) of every rule /
    aggregator x attack, each row's worst attack boxed and repeated in a last column;
    diverged cells grey with "div.", cells without a run "no run"; returns the Figure."""
    if not rows:
        raise PlotError("no finished run to draw")
    plt = pyplot()
    grid = final_grid(rows)
    accuracy = grid.metric == "test_acc"
    worst = worst_attacks(grid.values, higher_is_better=accuracy)
    columns = [*grid.attacks, "worst"]

    def with_worst(line: Sequence[Any], w: int | None, missing: Any) -> list[Any]:
        return [*line, line[w] if w is not None else missing]

    values = [with_worst(r, w, NO_RUN) for r, w in zip(grid.values, worst, strict=True)]
    counts = [with_worst(r, w, 0) for r, w in zip(grid.runs, worst, strict=True)]
    failed = [with_worst(r, w, 0) for r, w in zip(grid.diverged, worst, strict=True)]
    scale = 100 if accuracy else 1
    shown = [[float("nan") if v is None else scale * v for v in r] for r in values]
    finite = [v for r in shown for v in r if math.isfinite(v)]
    if accuracy:
        vmin, vmax = 0.0, 100.0
    else:
        vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
        vmax = vmax if vmax > vmin else vmin + 1.0
    # diverged and missing cells grey; their text says which
    cmap = plt.get_cmap("viridis" if accuracy else "viridis_r").with_extremes(bad="lightgrey")
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(columns) + 0.06 * max(
        (len(n) for n in grid.names), default=0), 1.2 + 0.45 * len(grid.names)))
    image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(grid.names)), grid.names)
    for i, r in enumerate(values):
        for j, v in enumerate(r):
            text = _cell_text(v, counts[i][j], failed[i][j], grid.metric)
            good = (None if v is None or math.isnan(v) else
                    (shown[i][j] - vmin) / (vmax - vmin) if accuracy else
                    (vmax - shown[i][j]) / (vmax - vmin))
            color = "dimgrey" if good is None else "white" if good < 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        if worst[i] is not None:
            ax.add_patch(plt.Rectangle((worst[i] - 0.5, i - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2))
    what = ("final test accuracy %" if accuracy
            else "final test loss (regression: no accuracy)")
    fig.colorbar(image, ax=ax, label=what)
    ax.set_title(plain(title) or f"{what.split(' (')[0]} (worst attack boxed)")
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
