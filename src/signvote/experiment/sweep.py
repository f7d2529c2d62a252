"""Run a grid of training runs in parallel, resumably.

Every run of a sweep has its own folder ``SWEEP/runs/ID``, ``ID`` a hash of the fields of
its resolved config that differ from :class:`TrainConfig`'s defaults (the folder is the
same whichever order or sweep file produced it, and a field added to the schema later,
with a default that keeps the old behaviour, leaves every existing ID as it was). A run
is done when its ``summary.json`` exists, the simulator's last file, written atomically
after ``metrics.csv`` and ``params.pt``, and the ``config.json`` beside it is this run's
config (a field it lacks read at its default): a changed default never reuses a run made
under the old one. A sweep started again (after Ctrl-C, a crash, or
``kill -9``) runs only the runs that are not done; a run that was cut short is started
over from nothing, so no half-written run is ever kept or read. ``SWEEP/sweep.json``
lists the runs; the tidy tables ``results.csv`` and ``results.parquet`` are written at the
end (:mod:`signvote.experiment.results`).
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from signvote.experiment import runs
from signvote.experiment.config import ConfigError, TrainConfig


def _differences(config: TrainConfig) -> dict[str, Any]:
    """The config's fields that differ from the defaults, its folder excluded."""
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if k != "out" and v != defaults[k]}


def run_id(config: TrainConfig) -> str:
    """A short hash of the resolved config's fields that differ from the defaults."""
    return hashlib.sha1(json.dumps(_differences(config), sort_keys=True).encode()
                        ).hexdigest()[:12]


def place(configs: list[TrainConfig], sweep_dir: str | Path) -> list[TrainConfig]:
    """The configs with ``out`` set to their folder in the sweep; duplicates dropped."""
    seen, placed = set(), []
    for c in configs:
        if c.engine != "sim":
            raise ConfigError(f"--engine {c.engine}: a sweep runs the simulator, several runs "
                              f"at a time; valid: sim (run the distributed engine with "
                              f"signvote train)")
        rid = run_id(c)
        if rid not in seen:
            seen.add(rid)
            placed.append(dataclasses.replace(c, out=str(Path(sweep_dir) / "runs" / rid)))
    return placed


def is_done(config: TrainConfig) -> bool:
    """True when the run's folder holds a finished run (its ``summary.json``) of this very
    config: its ``config.json``, with the fields it lacks at their defaults, has the same
    fields as ``config`` (the folder aside)."""
    folder = Path(config.out)
    if not (folder / "summary.json").exists():
        return False
    try:
        stored = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict):
        return False
    defaults = TrainConfig().to_dict()
    return all(stored.get(k, defaults[k]) == v
               for k, v in config.to_dict().items() if k != "out")


def check_datasets(configs: list[TrainConfig]) -> None:
    """Load each dataset the runs need once, here, so that a missing one is reported before
    any run starts (raises :class:`signvote.data.DatasetError`)."""
    from signvote.data import REGRESSION
    from signvote.data import load as load_dataset

    seen = set()
    for c in configs:
        key = (c.dataset, c.data_dir)
        if key not in seen and c.dataset not in ("logreg", *REGRESSION):
            seen.add(key)
            load_dataset(c.dataset, c.seed, Path(c.data_dir) if c.data_dir else None)


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train(config: TrainConfig) -> str:
    from signvote.engine.sim import train

    return train(config, progress=False).status


def run_sweep(configs: list[TrainConfig], sweep_dir: str | Path, jobs: int | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run every config of the grid that is not done, ``jobs`` at a time (default: one per
    core), then write the tidy tables; returns counts of what happened."""
    from signvote.experiment import results

    sweep_dir = Path(sweep_dir)
    placed = place(configs, sweep_dir)
    runs.write_json(sweep_dir / "sweep.json", {
        "runs": [{"id": Path(c.out).name, "config": c.to_dict()} for c in placed]})
    todo = [c for c in placed if not is_done(c)]
    check_datasets(todo)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(placed), initial=len(placed) - len(todo), desc="runs",
                   unit="run", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10.0)
    statuses: dict[str, int] = {}
    if todo:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with futures.ProcessPoolExecutor(
                max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(threads,)) as pool:
            for future in futures.as_completed([pool.submit(_train, c) for c in todo]):
                status = future.result()
                statuses[status] = statuses.get(status, 0) + 1
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    table = results.write_tables(sweep_dir)
    return {"runs": len(placed), "ran": len(todo), "skipped": len(placed) - len(todo),
            "statuses": statuses, "rows": table}
