"""A sweep's results: one tidy table, and a summary over seeds.

The tidy table has one row per run and evaluation (epoch): the run's id and status, every
config field as a column, then the metrics of ``metrics.csv``. It is written as
``SWEEP/results.csv`` and ``SWEEP/results.parquet``, atomically::

    pandas.read_csv("sweep/results.csv")   # or pandas.read_parquet("sweep/results.parquet")

Only finished runs are read: those whose files agree with each other
(:func:`signvote.experiment.runs.read_run`); a damaged one is skipped with a warning line
naming its folder and what is wrong. :func:`summarize` groups the runs
that differ only in their seed and reports, for the final epoch and for the best one
separately (the best alone flatters), the mean over seeds and the half-width of its 95%
confidence interval (Student's t); on request also the mean of each run's last ``k``
evaluations (:func:`mean_of_last`, the figure of Karimireddy, He & Jaggi, ICLR 2022) and
the best evaluation of the mean over seeds (:func:`peak_of_mean`, the figure of ByzFL's
benchmark), the order of the mean and the max swapped against ``best``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from signvote.experiment import runs
from signvote.experiment.config import FIELDS, ConfigError

CONFIG_COLUMNS = tuple(k for k in FIELDS if k != "out")


def warn(message: str) -> None:
    """Print ``signvote: warning: MESSAGE`` on stderr (one line)."""
    print(f"signvote: warning: {message}", file=sys.stderr)


def _quiet(message: str) -> None:
    """A ``warn`` that says nothing."""


def run_folders(sweep_dir: str | Path, warn: Callable[[str], None] = warn) -> list[Path]:
    """The run folders of the sweep, in the order of ``sweep.json``; every folder of
    ``SWEEP/runs`` when ``sweep.json`` is missing or cannot be read (said through
    ``warn``)."""
    sweep_dir = Path(sweep_dir)
    listing = sweep_dir / "sweep.json"
    if listing.exists():
        try:
            ids = [r["id"] for r in json.loads(listing.read_text(encoding="utf-8"))["runs"]]
            if all(isinstance(i, str) and i and "/" not in i for i in ids):
                return [sweep_dir / "runs" / i for i in ids]
        except (OSError, ValueError, TypeError, KeyError):
            pass
        warn(f"{listing} cannot be read; reading every folder of {sweep_dir / 'runs'}")
    return sorted(f for f in (sweep_dir / "runs").glob("*") if f.is_dir())


class NoFinishedRunError(ConfigError):
    """A sweep folder with no finished run to read; the message says why (the damaged runs
    and what is wrong with each, a sweep still running)."""


def finished(sweep_dir: str | Path, warn: Callable[[str], None] = warn,
             require: bool = False) -> list[runs.FinishedRun]:
    """The sweep's finished runs (:func:`signvote.experiment.sweep.read_finished`), in the
    order of ``sweep.json``. A damaged run (its files there but not in agreement) is
    skipped with one line through ``warn`` naming its folder and what is wrong; a run
    without ``summary.json`` (running, or cut short) is skipped silently. When another
    process's sweep is writing the folder (:func:`signvote.experiment.sweep.lock_holder`),
    ``warn`` says so: only the runs finished so far are read. With ``require``, a sweep
    with no finished run raises :class:`NoFinishedRunError`, one line that says all of
    this instead of the warnings."""
    from signvote.experiment.sweep import lock_holder, read_finished

    notes: list[str] = []
    holder = lock_holder(sweep_dir)
    if holder is not None:
        notes.append(f"the sweep in {sweep_dir} is still running ({holder}); reading only "
                     f"the runs finished so far")
    found, damaged = [], []
    for folder in run_folders(sweep_dir, notes.append):
        try:
            found.append(read_finished(folder))
        except runs.UnfinishedRunError as exc:
            if exc.damaged:
                damaged.append(f"{folder}: {exc.reason}")
    if require and not found:
        why = [f"{len(damaged)} damaged run(s): " + "; ".join(damaged)] if damaged else []
        if holder is not None:
            why.append(f"its sweep is still running ({holder})")
        raise NoFinishedRunError(f"{sweep_dir} has no finished run yet"
                                 + (" (" + "; ".join(why) + ")" if why else ""))
    for note in [*notes, *(f"skipping {d}" for d in damaged)]:
        warn(note)
    return found


def finished_runs(sweep_dir: str | Path, warn: Callable[[str], None] = _quiet) -> list[Path]:
    """The folders of the sweep's finished runs (:func:`finished`), in the order of
    ``sweep.json``."""
    return [run.folder for run in finished(sweep_dir, warn)]


def tidy_rows(sweep_dir: str | Path, warn: Callable[[str], None] = warn,
              require: bool = False) -> list[dict[str, Any]]:
    """One row per finished run and epoch: ``run``, ``status``, the config, the metrics.
    Damaged runs are skipped, each with a line through ``warn``; with ``require``, no
    finished run raises :class:`NoFinishedRunError` (:func:`finished`)."""
    rows = []
    for run in finished(sweep_dir, warn, require):
        base = {"run": run.folder.name, "status": run.summary["status"],
                **{k: run.config.get(k) for k in CONFIG_COLUMNS}}
        rows.extend({**base, **metric} for metric in run.metrics)
    return rows


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns of ``rows`` in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_tables(sweep_dir: str | Path, rows: Sequence[dict[str, Any]] | None = None) -> int:
    """Write ``results.csv`` and ``results.parquet`` for the sweep (from ``rows``, by default
    :func:`tidy_rows`, read without a warning: the reader that shows the rows warns);
    returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sweep_dir = Path(sweep_dir)
    rows = tidy_rows(sweep_dir, _quiet) if rows is None else rows
    columns = columns_of(rows) or ["run", "status", *CONFIG_COLUMNS, *runs.METRIC_COLUMNS]
    runs.write_csv(sweep_dir / "results.csv", columns, rows)
    table = pa.table({c: _arrow_column([row.get(c) for row in rows]) for c in columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    runs.atomic_write_bytes(sweep_dir / "results.parquet", buffer.getvalue())
    return len(rows)


def _arrow_column(values: list[Any]) -> Any:
    """``values`` as a pyarrow array of their own type, or as text when pyarrow cannot type
    them (mixed types, an integer beyond 64 bits): a stored config may hold anything."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v)
                         for v in values], type=pa.string())


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv``, every cell as text."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _when(row: dict[str, Any]) -> tuple[int, int]:
    """A row's place in its run: its epoch, then its step (cells as numbers or text; a
    row without a step counts as step 0)."""
    step = row.get("step")
    return int(row["epoch"]), int(step) if step not in (None, "") else 0


def last_rows(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each run's row of its last evaluation (its last epoch, or its last step for a run
    that evaluates within epochs), by run id."""
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["run"] not in last or _when(row) > _when(last[row["run"]]):
            last[row["run"]] = row
    return last


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def best_over_evaluations(values: Sequence[float | None], higher_is_better: bool = True
                          ) -> float | None:
    """The best of a run's evaluations, ``max_t v_t`` (``min_t`` for a loss), over its
    finite values only; None when it has none. It is ``summary.json``'s ``best_test_acc``
    (:func:`signvote.engine.run.final_metrics`) for the test accuracy."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return None
    return max(finite) if higher_is_better else min(finite)


def mean_of_last(values: Sequence[float | None], k: int) -> float:
    """The mean of a run's last ``k`` evaluations, ``(1/k') sum_{t > T - k'} v_t`` with
    ``k' = min(k, T)`` for ``T`` evaluations (all of them when there are fewer than
    ``k``); NaN when one of them has no finite value. Karimireddy, He & Jaggi
    ("Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022)
    report the test accuracy so, averaged over the last evaluations of each run; how many
    is theirs to say (``k``)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not values:
        return float("nan")
    tail = list(values)[-k:]
    if not all(_finite(v) for v in tail):
        return float("nan")
    return math.fsum(float(v) for v in tail) / len(tail)


def peak_of_mean(series: Sequence[Mapping[int, float | None]], higher_is_better: bool = True
                 ) -> float | None:
    """The best evaluation of the mean over runs (seeds): ``max_t (1/S) sum_s v_{s,t}``
    (``min_t`` for a loss) over the steps ``t`` at which every run of ``series`` (each a
    map step -> value) has a finite value; None when there is no such step. ByzFL's
    benchmark (LPD-EPFL/byzfl, ``benchmark/``) reports the accuracy so, before its
    minimum over attacks; it is at most the mean over seeds of each run's best."""
    if not series:
        return None
    common = set.intersection(*({t for t, v in run.items() if _finite(v)} for run in series))
    if not common:
        return None
    means = [math.fsum(float(run[t]) for run in series) / len(series) for t in common]
    return max(means) if higher_is_better else min(means)


# --- the summary over seeds --------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the
    CDF, which is a regularized incomplete beta function)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _t_cdf(t: float, df: int) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)
    return 1 - tail if t >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(1 - x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1 - c * d) < 1e-15:
            break
    return front * (f - 1)


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the half-width of its 95% confidence interval (None for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    half = t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(
        len(values))
    return mean, half


def default_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The metric a summary shows when none is asked for: ``test_acc`` when some row has a
    test accuracy, else ``test_loss`` (a regression sweep, where accuracy does not apply,
    or a sweep whose every run diverged at once)."""
    return ("test_acc" if any(r.get("test_acc") not in (None, "") for r in rows)
            else "test_loss")


def summarize(rows: Sequence[dict[str, Any]], metric: str = "test_acc",
              last_k: int | None = None, best_of_mean: bool = False
              ) -> list[dict[str, Any]]:
    """One row per group of runs that differ only in ``seed``: the config fields that vary
    between groups, the number of seeds, how many of them diverged (``status``
    ``diverged``), and the mean and 95% half-width over seeds of the final and of the best
    ``metric`` (best: the highest accuracy, the lowest loss; :func:`best_over_evaluations`).
    The final value is the mean over the seeds that did not diverge (None when all did): a
    diverged run has no final value. The best counts every run's finite evaluations, a
    diverged run's before it diverged.

    ``last_k``: also ``last{k}_{metric}``, the mean and half-width over the seeds that did
    not diverge of each run's :func:`mean_of_last` ``k`` evaluations. ``best_of_mean``:
    also ``bestmean_{metric}``, :func:`peak_of_mean` of the group's runs (no interval: it
    is one number of the seeds together)."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    higher_is_better = not metric.endswith("loss")
    groups: dict[tuple, dict[str, Any]] = {}
    for run_rows in by_run.values():
        run_rows = sorted(run_rows, key=_when)
        first = run_rows[0]
        key = tuple((k, first.get(k)) for k in CONFIG_COLUMNS if k != "seed")
        series = [r.get(metric) for r in run_rows]
        group = groups.setdefault(key, {"final": [], "best": [], "last": [], "curves": [],
                                        "seeds": 0, "diverged": 0})
        group["seeds"] += 1
        if first.get("status") == "diverged":
            group["diverged"] += 1
        else:
            last = run_rows[-1].get(metric)
            group["final"].append(float("nan") if last is None else last)
            if last_k is not None:
                group["last"].append(mean_of_last(series, last_k))
        best = best_over_evaluations(series, higher_is_better)
        if best is not None:
            group["best"].append(best)
        group["curves"].append({_when(r)[1]: v for r, v in zip(run_rows, series, strict=True)})
    varying = [k for k in CONFIG_COLUMNS if k != "seed"
               and len({dict(key)[k] for key in groups}) > 1]
    summary = []
    for key, group in groups.items():
        final_mean, final_half = (mean_ci95(group["final"]) if group["final"]
                                  else (None, None))
        best_mean, best_half = (mean_ci95(group["best"]) if group["best"]
                                else (None, None))
        entry = {**{k: dict(key)[k] for k in varying}, "seeds": group["seeds"],
                 "diverged": group["diverged"],
                 f"final_{metric}": final_mean, "final_ci95": final_half,
                 f"best_{metric}": best_mean, "best_ci95": best_half}
        if last_k is not None:
            entry[f"last{last_k}_{metric}"], entry[f"last{last_k}_ci95"] = (
                mean_ci95(group["last"]) if group["last"] else (None, None))
        if best_of_mean:
            entry[f"bestmean_{metric}"] = peak_of_mean(group["curves"], higher_is_better)
            entry["bestmean_ci95"] = None
        summary.append(entry)
    return summary


def _is_metric_key(key: str) -> bool:
    """Whether a summary key is a metric's column (not a config field's, not an interval):
    ``final_``, ``best_``, ``last{k}_`` or ``bestmean_`` and the metric."""
    return (not key.endswith("ci95")
            and re.match(r"(final|best|last[0-9]+|bestmean)_", key) is not None)


def _value_cell(value: float | None, half: float | None, diverged: int, seeds: int) -> str:
    """A summary cell: the mean (4 significant digits) ± the 95% CI, with how many seeds
    diverged; "diverged (k of n seeds)" where no value is left, "n/a" where the metric has
    no value and nothing diverged."""
    note = f"diverged ({diverged} of {seeds} seeds)"
    if value is None or not math.isfinite(value):
        return note if diverged else "n/a"
    text = f"{value:.4g}" + ("" if half is None else f" ± {half:.2g}")
    return text + (f" ({diverged} of {seeds} seeds diverged)" if diverged else "")


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """``summary`` as a Markdown table (numbers to 4 significant digits, ± the 95% CI); a
    group whose runs diverged says so in its final cell (:func:`_value_cell`)."""
    if not summary:
        return "(no finished runs)"
    metric_keys = [k for k in summary[0] if _is_metric_key(k)]
    config_keys = [k for k in summary[0] if k not in metric_keys and k != "diverged"
                   and not k.endswith("ci95")]
    lines = ["| " + " | ".join(config_keys + metric_keys) + " |",
             "|" + "---|" * (len(config_keys) + len(metric_keys))]
    for row in summary:
        cells = [str(row[k]) for k in config_keys]
        diverged = row.get("diverged", 0)
        for k in metric_keys:  # the best of a group keeps its diverged runs' epochs
            said = diverged if k.startswith(("final_", "last")) or row[k] is None else 0
            cells.append(_value_cell(row[k], row[k.split("_")[0] + "_ci95"], said,
                                     row["seeds"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
