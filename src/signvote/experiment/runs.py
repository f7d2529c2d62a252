"""The run folder: ``config.json``, ``metrics.csv``, ``summary.json`` and the final
parameters ``params.pt``, each written atomically.

A file is written to a temporary name in the same folder, flushed to disk, then renamed
over its final name (``os.replace`` is atomic on POSIX): a run killed at any moment leaves
either the previous complete file or the new complete one, never half of one.

A folder holds a *finished* run when its files agree with each other
(:func:`read_run`, :func:`run_problem`): every reader that judges a folder done or reads
its numbers (the sweep, ``results``, the plots, a new run refusing to overwrite one) asks
this one function.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRIC_COLUMNS = ("epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr",
                  "wall_s")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file + fsync + rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it
    (``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename). The file
    gets the mode a plain ``open(path, "w")`` gives a new file, ``0o666 & ~umask``
    (``mkstemp`` alone makes it 0600 whatever the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_params(path: str | Path, params: Mapping[str, Any]) -> None:
    """Write named parameter tensors with ``torch.save``, atomically (loadable with
    ``module.load_state_dict(torch.load(path))``)."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(params), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def format_cell(value: Any) -> str:
    """A CSV cell: empty for None, ``repr`` precision for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: str | Path, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]
              ) -> None:
    """Write ``rows`` as CSV with a header of ``columns`` (missing cells empty), atomically."""
    columns = list(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


TRAFFIC_COLUMNS = ("bytes_sent_per_worker", "bytes_received_per_worker")
"""Extra columns of the distributed engine: the payload bytes a worker sent and received
in the epoch (mean over the workers)."""


THEORY_COLUMNS = ("theory_p", "theory_vote_wrong", "theory_snr_median", "theory_snr_q10",
                  "theory_snr_q90", "theory_snr_above_critical",
                  "theory_vote_wrong_predicted", "theory_p_coord_min", "theory_p_coord_q10",
                  "theory_p_coord_median", "theory_p_coord_mean", "theory_p_coord_q90")
"""Extra columns of ``--measure-theory``: :data:`signvote.theory.MEASURE_COLUMNS`, spelt
out here so that this module does not import torch (a test checks they agree)."""


def write_metrics(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write all metric rows as CSV, atomically: columns :data:`METRIC_COLUMNS`, then
    :data:`TRAFFIC_COLUMNS` and :data:`THEORY_COLUMNS` when the rows have them."""
    rows = list(rows)
    extra = tuple(c for c in TRAFFIC_COLUMNS + THEORY_COLUMNS if rows and c in rows[0])
    write_csv(path, METRIC_COLUMNS + extra, rows)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dictionaries of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- a finished run ----------------------------------------------------------------------

SUMMARY_KEYS = ("status", "epochs_completed", "steps")
"""Keys every finished run's ``summary.json`` has."""

STATUSES = ("completed", "diverged")
"""The statuses of a finished run."""

FAILED_FILE = "failed.json"
"""A sweep's record of a run that raised (:func:`signvote.experiment.sweep.record_failure`);
never part of a finished run."""

INTEGER_COLUMNS = ("epoch", "step")
"""The metric columns that hold whole numbers; every other cell is a float or empty."""


class UnfinishedRunError(ValueError):
    """A folder that does not hold a finished run; the message says why. ``damaged`` is
    False when the run simply has no ``summary.json`` (it is running, or was cut short:
    nothing to warn about), True when its files are there but do not agree."""

    def __init__(self, folder: Path, reason: str, damaged: bool = True) -> None:
        super().__init__(f"{folder}: {reason}")
        self.folder, self.reason, self.damaged = folder, reason, damaged


@dataclass(frozen=True)
class FinishedRun:
    """The files of a finished run, read and checked: ``config.json`` and ``summary.json``
    as objects, ``metrics.csv`` as one dict per epoch (``epoch`` and ``step`` ints, the other
    cells floats, None where empty)."""

    folder: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


def _read_text(folder: Path, name: str) -> str:
    try:
        return (folder / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnfinishedRunError(folder, f"{name} is missing") from None
    except UnicodeDecodeError:
        raise UnfinishedRunError(folder, f"{name} is not UTF-8 text") from None
    except OSError as exc:
        raise UnfinishedRunError(folder, f"{name} cannot be read ({exc.strerror})") from None


def _read_object(folder: Path, name: str) -> dict[str, Any]:
    text = _read_text(folder, name)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UnfinishedRunError(folder, f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UnfinishedRunError(folder, f"{name} holds a {type(value).__name__}, not an object")
    return value


def parse_metrics(text: str, stepped: bool = False) -> list[dict[str, Any]]:
    """The rows of a complete ``metrics.csv`` text, cells parsed (:class:`FinishedRun`).

    Raises ValueError saying what is wrong unless: the text ends with a newline (the
    writer ends every row with one, so a file cut anywhere in its last row is caught), the
    header names every column of :data:`METRIC_COLUMNS`, every row has exactly the
    header's cells, ``epoch`` and ``step`` are whole numbers and every other cell is empty
    or a number, and the epochs are 1, 2, ... in order; for a run scheduled by steps
    (``stepped``: ``--steps`` or ``--eval-every``, one row per evaluation) instead the
    steps rise and the epochs, from 1, never fall."""
    if not text:
        raise ValueError("it is empty")
    if not text.endswith("\n"):
        raise ValueError("it is cut in mid-line (its last row has no line end)")
    try:
        table = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ValueError(f"it is not CSV ({exc})") from None
    header, body = table[0], table[1:]
    missing = [c for c in METRIC_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"its header lacks the column(s) {', '.join(missing)}")
    rows = []
    for line, cells in enumerate(body, start=2):
        if len(cells) != len(header):
            raise ValueError(f"line {line} has {len(cells)} cells; the header has "
                             f"{len(header)}")
        row: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=True):
            try:
                row[name] = (int(cell) if name in INTEGER_COLUMNS
                             else None if cell == "" else float(cell))
            except ValueError:
                raise ValueError(f"line {line}, column {name}: {cell!r} is not a "
                                 f"{'whole number' if name in INTEGER_COLUMNS else 'number'}"
                                 ) from None
        if stepped:
            before = rows[-1] if rows else {"epoch": 1, "step": 0}
            if row["step"] <= before["step"] or row["epoch"] < before["epoch"]:
                raise ValueError(f"line {line} is epoch {row['epoch']}, step {row['step']}; "
                                 f"expected a step after {before['step']} in epoch "
                                 f"{before['epoch']} or later")
        elif row["epoch"] != len(rows) + 1:
            raise ValueError(f"line {line} is epoch {row['epoch']}; expected "
                             f"{len(rows) + 1}")
        rows.append(row)
    return rows


def _same_number(a: Any, b: Any) -> bool:
    """Whether a summary's value ``a`` records the metric cell ``b`` (NaN is null in JSON)."""
    if b is None or (isinstance(b, float) and not math.isfinite(b)):
        return a is None or (isinstance(a, float) and not math.isfinite(a))
    return isinstance(a, int | float) and not isinstance(a, bool) and float(a) == b


def read_run(folder: str | Path) -> FinishedRun:
    """The finished run in ``folder``, its files read and checked against each other.

    A run is finished when ``summary.json`` is a JSON object with the keys of
    :data:`SUMMARY_KEYS` and a status of :data:`STATUSES`; ``config.json`` is a JSON
    object; ``metrics.csv`` parses completely (:func:`parse_metrics`), has
    ``summary["epochs_completed"]`` rows (all of the config's ``epochs`` for a completed
    run) and its last row has the summary's ``final_test_loss``; and ``params.pt`` is a
    file that is not empty. Raises :class:`UnfinishedRunError` saying which of these fails
    (not ``damaged`` when there is no ``summary.json`` at all)."""
    folder = Path(folder)
    if not (folder / "summary.json").exists():
        raise UnfinishedRunError(folder, "summary.json is missing (the run is not finished: "
                                     "it is running, or was cut short)", damaged=False)
    summary = _read_object(folder, "summary.json")
    lacking = [k for k in SUMMARY_KEYS if k not in summary]
    if lacking:
        raise UnfinishedRunError(folder, f"summary.json lacks {', '.join(lacking)}")
    if summary["status"] not in STATUSES:
        raise UnfinishedRunError(folder, f"summary.json has status {summary['status']!r}; "
                                     f"valid: {', '.join(STATUSES)}")
    completed = summary["epochs_completed"]
    if not isinstance(completed, int) or isinstance(completed, bool) or completed < 1:
        raise UnfinishedRunError(folder, f"summary.json has epochs_completed {completed!r}; "
                                     f"valid: a whole number of at least 1")
    config = _read_object(folder, "config.json")
    stepped = config.get("steps") is not None or config.get("eval_every") is not None
    try:
        metrics = parse_metrics(_read_text(folder, "metrics.csv"), stepped)
    except ValueError as exc:
        if isinstance(exc, UnfinishedRunError):
            raise
        raise UnfinishedRunError(folder, f"metrics.csv is damaged: {exc}") from None
    if stepped:
        evaluations = summary.get("evaluations")
        if (not isinstance(evaluations, int) or isinstance(evaluations, bool)
                or evaluations < 1 or len(metrics) != evaluations):
            raise UnfinishedRunError(folder, f"metrics.csv has {len(metrics)} "
                                         f"evaluation(s); summary.json says {evaluations!r}")
        steps = config.get("steps")
        if summary["status"] == "completed" and steps is not None and (
                summary["steps"] != steps or metrics[-1]["step"] != steps):
            raise UnfinishedRunError(folder, f"summary.json says completed after "
                                         f"{summary['steps']!r} step(s), its last row after "
                                         f"{metrics[-1]['step']}; config.json asks for "
                                         f"{steps!r}")
    elif len(metrics) != completed:
        raise UnfinishedRunError(folder, f"metrics.csv has {len(metrics)} epoch(s); "
                                     f"summary.json says {completed} were completed")
    epochs = config.get("epochs")
    if (summary["status"] == "completed" and isinstance(epochs, int)
            and not isinstance(epochs, bool) and epochs != completed):
        raise UnfinishedRunError(folder, f"summary.json says completed after {completed} "
                                     f"epoch(s); config.json asks for {epochs}")
    if "final_test_loss" in summary and not _same_number(summary["final_test_loss"],
                                                         metrics[-1]["test_loss"]):
        raise UnfinishedRunError(folder, f"summary.json's final_test_loss "
                                     f"{summary['final_test_loss']!r} is not the last "
                                     f"epoch's test_loss {metrics[-1]['test_loss']!r}")
    params = folder / "params.pt"
    if not params.is_file() or params.stat().st_size == 0:
        raise UnfinishedRunError(folder, "params.pt is missing" if not params.exists()
                             else "params.pt is empty or not a file")
    return FinishedRun(folder, config, summary, metrics)


def run_problem(folder: str | Path) -> str | None:
    """Why ``folder`` does not hold a finished run (:func:`read_run`), or None when it
    does."""
    try:
        read_run(folder)
    except UnfinishedRunError as exc:
        return exc.reason
    return None


class TensorBoardLog:
    """Every epoch's metrics as TensorBoard scalars in ``FOLDER`` (``--tensorboard``), one
    tag per metric column, the epoch as the step."""

    def __init__(self, folder: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, row: Mapping[str, Any], x: str = "epoch") -> None:
        """One row's scalars at ``row[x]``: the epoch, or the step for a run scheduled by
        steps (``--steps``, ``--eval-every``)."""
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, int | float):
                self.writer.add_scalar(key, value, row[x])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
