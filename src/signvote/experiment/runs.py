"""The run folder: ``config.json``, ``metrics.csv``, ``summary.json`` and the final
parameters ``params.pt``, each written atomically.

A file is written to a temporary name in the same folder, flushed to disk, then renamed
over its final name (``os.replace`` is atomic on POSIX): a run killed at any moment leaves
either the previous complete file or the new complete one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

METRIC_COLUMNS = ("epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr",
                  "wall_s")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file + fsync + rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
                  "theory_vote_wrong_predicted")
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


class TensorBoardLog:
    """Every epoch's metrics as TensorBoard scalars in ``FOLDER`` (``--tensorboard``), one
    tag per metric column, the epoch as the step."""

    def __init__(self, folder: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, row: Mapping[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, int | float):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
