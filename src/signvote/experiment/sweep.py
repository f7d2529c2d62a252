"""Run a grid of training runs in parallel, resumably.

Every run of a sweep has its own folder ``SWEEP/runs/ID``, ``ID`` the
:func:`~signvote.experiment.config.trajectory_id` of its config: a hash of the fields of
the run's identity that differ from the default they take given the other fields (the
folder is the same whichever order or sweep file produced it, and a field added to the
schema later, with a default that keeps the old behaviour, leaves every existing ID as it
was). A run is done when its ``summary.json`` exists, the simulator's last file, written
atomically after ``metrics.csv`` and ``params.pt``, the files agree with each other
(:func:`signvote.experiment.runs.read_run`: a damaged run is run again), and the
``config.json`` beside it has this run's
:func:`~signvote.experiment.config.trajectory_key` (a field it lacks read at its default):
a changed default never reuses a run made under the old one, and a field outside the
identity (``tensorboard``, ``data_dir``) reuses it. A finished run of the sweep found in
a folder of another name (made by a signvote whose IDs were computed otherwise) is renamed
to its ID, not run again. A sweep started again (after Ctrl-C, a crash, or ``kill -9``)
runs only the runs that are not done; a run that was cut short is started over from
nothing, so no half-written run is ever kept or read. ``SWEEP/sweep.json`` lists the runs;
the tidy tables ``results.csv`` and ``results.parquet`` are written at the end
(:mod:`signvote.experiment.results`).
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from signvote.experiment import runs
from signvote.experiment.config import (
    FIELDS,
    ConfigError,
    TrainConfig,
    coerce,
    command_line,
    from_dict,
    resolve,
    trajectory_id,
    trajectory_key,
)

LOCK = ".lock"
"""The sweep folder's lock file: one sweep writes a folder at a time (:func:`locked`)."""


class SweepLockedError(ConfigError):
    """Another sweep is writing the folder; the message says who (pid, host, since when)."""


def _holder_text(text: str) -> str:
    """Who holds a lock, from its file's text (written by :func:`locked`)."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, TypeError, KeyError):
        return "a process that has not yet said who it is"


@contextlib.contextmanager
def locked(sweep_dir: str | Path) -> Iterator[None]:
    """Hold the sweep folder's exclusive lock for the block: ``fcntl.flock`` on
    ``SWEEP/.lock``, which then holds this process's pid, host and start time (JSON).
    The lock goes with its process, however it ends (the kernel releases a flock when its
    file is closed), so a killed sweep leaves no stale lock; the file itself stays (removing
    it would let two processes lock two different files). Raises :class:`SweepLockedError`
    saying who holds it when another process does."""
    import fcntl

    path = Path(sweep_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepLockedError(
                f"{sweep_dir} is being written by another sweep "
                f"({_holder_text(path.read_text(errors='replace'))}); valid: wait for it to "
                f"finish or stop it, or another --out") from None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": since}).encode() + b"\n", 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def lock_holder(sweep_dir: str | Path) -> str | None:
    """Who holds the sweep folder's lock (``pid P on HOST since TIME``) when another
    process does, else None (no lock file, nobody holding it, or this very process)."""
    import fcntl

    path = Path(sweep_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text(errors="replace")
            with contextlib.suppress(ValueError, TypeError, KeyError):
                if json.loads(text)["pid"] == os.getpid():
                    return None
            return _holder_text(text)
        return None
    finally:
        os.close(fd)


def run_id(config: TrainConfig) -> str:
    """The run's folder name in a sweep: its :func:`trajectory_id`."""
    return trajectory_id(config)


BACKENDS = ("pool", "ray")
"""Where a sweep's runs execute: ``pool``, processes of this machine (:func:`run_pool`);
``ray``, tasks of a Ray cluster (:mod:`signvote.experiment.ray_backend`)."""

ENGINES = {"pool": ("sim",), "ray": ("sim", "dist")}
"""The engines each backend runs: a pool process cannot start the ranks of a distributed
run (it is a daemon of its pool); a Ray task can, on its node."""


def place(configs: list[TrainConfig], sweep_dir: str | Path,
          backend: str = "pool") -> list[TrainConfig]:
    """The configs with ``out`` set to their folder in the sweep and ``overwrite`` on (the
    sweep runs only the runs that are not done, so what it replaces is a damaged run or one
    of another identity; ``overwrite`` is not part of a run's identity); duplicates
    dropped. A run of an engine that ``backend`` does not run (:data:`ENGINES`) is refused
    (:class:`ConfigError`)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: valid: {', '.join(BACKENDS)}")
    seen, placed = set(), []
    for c in configs:
        if c.engine not in ENGINES[backend]:
            raise ConfigError(f"--engine {c.engine}: the sweep's {backend} backend runs "
                              f"{' and '.join(ENGINES[backend])} runs (a pool process cannot "
                              f"start a distributed run's ranks); valid: --engine sim, or "
                              f"--backend ray, whose task starts them on its node")
        rid = run_id(c)
        if rid not in seen:
            seen.add(rid)
            placed.append(dataclasses.replace(c, out=str(Path(sweep_dir) / "runs" / rid),
                                              overwrite=True))
    return placed


def read_finished(folder: str | Path) -> runs.FinishedRun:
    """The finished run in ``folder``: :func:`signvote.experiment.runs.read_run` (files
    that agree), and a ``config.json`` whose every field of the schema is null or of the
    field's type (``coerce``). Raises :class:`~signvote.experiment.runs.UnfinishedRunError`
    saying what is wrong. The one test of "finished" for the sweep and its results."""
    run = runs.read_run(folder)
    for name, value in run.config.items():
        if name in FIELDS and value is not None:
            try:
                coerce(name, value, f"config.json field {name}")
            except ConfigError as exc:
                raise runs.UnfinishedRunError(run.folder, str(exc)) from None
    return run


def _finished(folder: Path) -> tuple[dict[str, Any], str] | None:
    """The stored ``config.json`` of the finished run in ``folder`` and its trajectory key
    as JSON text, or None when the folder holds no finished run (:func:`read_finished`:
    its files missing, damaged, or not in agreement) or its config cannot be read as one."""
    try:
        stored = read_finished(folder).config
        return stored, _key_text(from_dict(stored))
    except (ValueError, TypeError, KeyError, ArithmeticError):
        return None


def _key_text(config: TrainConfig) -> str:
    return json.dumps(trajectory_key(config), sort_keys=True)


def is_done(config: TrainConfig) -> bool:
    """True when the run's folder holds a finished run
    (:func:`signvote.experiment.runs.read_run`: summary, config, metrics and parameters
    that agree) of this very run: its ``config.json``, with the fields it lacks at their
    defaults, has the same :func:`trajectory_key` as ``config``. A damaged run is not
    done, so the sweep runs it again from the start."""
    found = _finished(Path(config.out))
    return found is not None and found[1] == _key_text(config)


def find_renamed(placed: list[TrainConfig], sweep_dir: str | Path) -> dict[str, Path]:
    """The runs of ``placed`` (by ``out``) that are not done in their folder but finished
    in another folder of ``SWEEP/runs`` with the same trajectory key: runs made when run
    IDs were computed otherwise. A folder that is some run's current ID is not looked at."""
    folder = Path(sweep_dir) / "runs"
    wanted = {_key_text(c): c.out for c in placed if not is_done(c)}
    if not wanted or not folder.is_dir():
        return {}
    current = {Path(c.out).name for c in placed}
    found = {}
    for old in sorted(folder.iterdir()):
        if old.name in current or not old.is_dir():
            continue
        finished = _finished(old)
        if finished is not None and finished[1] in wanted:
            found[wanted.pop(finished[1])] = old
    return found


def adopt_renamed(placed: list[TrainConfig], sweep_dir: str | Path) -> int:
    """Rename each run found by :func:`find_renamed` to its current folder (when that does
    not exist yet), its ``config.json`` pointing there; returns how many were renamed."""
    renamed = 0
    for out, old in find_renamed(placed, sweep_dir).items():
        new = Path(out)
        if new.exists():
            continue  # a cut-short run of the new ID: it is run again, the old folder kept
        os.rename(old, new)
        stored = json.loads((new / "config.json").read_text())
        runs.write_json(new / "config.json", {**stored, "out": str(new)})
        renamed += 1
    return renamed


BUILD_FIELDS = ("dataset", "data_dir", "image_size", "model", "workers", "partition",
                "partition_alpha", "partition_shards", "partition_gamma", "batch_size",
                "augment", "imbalance", "imbalance_ratio", "imbalance_split", "byzantine",
                "blind")
"""The fields on which whether a run can be built on its data depends."""


def check_datasets(configs: list[TrainConfig]) -> None:
    """Load each dataset the runs need once, here, and check that every run can be built
    on it (:func:`signvote.engine.run.check_buildable`: the model fits, the partition can
    be made, the batch is not too large; once per combination of :data:`BUILD_FIELDS`,
    on the data of its first seed), so that a missing dataset or a run that cannot start
    is reported before anything is written (raises :class:`signvote.data.DatasetError` or
    :class:`ConfigError`)."""
    from signvote.engine.run import check_buildable, load_data

    loaded: dict[tuple, Any] = {}
    checked = set()
    for c in map(resolve, configs):
        build = tuple(getattr(c, f) for f in BUILD_FIELDS)
        if build in checked:
            continue
        checked.add(build)
        key = (c.dataset, c.data_dir, c.image_size)
        if key not in loaded:
            loaded[key] = load_data(c)
        check_buildable(c, loaded[key])


def _start_worker(threads: int, parent: int) -> None:
    """Set up a pool process the sweep owns: it ends with the sweep process ``parent``
    (:func:`die_with_parent`), leaves Ctrl-C to it (a terminal sends SIGINT to the whole
    process group; the sweep stops its workers itself), and sets its threads and its
    allocator policy."""
    import torch

    from signvote.engine.memory import keep_freed_memory

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    keep_freed_memory()


PARENT_POLL_S = 0.5
"""How often a pool process checks that its sweep process is still there."""


def die_with_parent(parent: int) -> None:
    """End this process when the process ``parent`` ends, however it ends (``kill -9``
    included): on Linux the kernel sends it SIGKILL (``prctl(PR_SET_PDEATHSIG)``); on any
    system a daemon thread checks ``os.getppid()`` every :data:`PARENT_POLL_S` seconds and
    exits the process once its parent has changed. A parent already gone exits at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="signvote-parent-watch",
                     daemon=True).start()


PR_SET_PDEATHSIG = 1
"""Linux's prctl option: the signal this process gets when its parent ends."""


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # the sweep is gone: nobody would read what this process writes


FAILED = "failed"
"""The status :func:`train_run` returns for a run that raised (beside ``runs.STATUSES``)."""


def train_run(config: TrainConfig) -> str:
    """Train one run of a sweep in this process and return its status: the run's own
    (``completed``, ``diverged``), or :data:`FAILED` when it raised an ``Exception``, which
    is then recorded in its folder (:func:`record_failure`) instead of stopping the sweep.
    A run of ``--engine dist`` starts its ranks as local processes
    (:func:`signvote.engine.dist.launch`, under torch's elastic agent)."""
    try:
        if config.engine == "dist":
            from signvote.engine import dist

            return dist.launch(config, ["train", "--quiet", *command_line(config)])["status"]
        from signvote.engine.sim import train

        return train(config, progress=False).status
    except Exception as exc:  # any failure of one run is that run's, recorded in it
        return record_failure(config, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def record_failure(config: TrainConfig, error: str, detail: str = "") -> str:
    """Write ``OUT/failed.json`` (``error``: one line; ``detail``: the traceback or the
    executor's account; ``when``) for a run that failed, atomically, and return
    :data:`FAILED`. The run is not done: the next sweep runs it again, and its start
    removes the file (:func:`signvote.engine.run.start_run_folder`)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / runs.FAILED_FILE, {
        "error": error, "detail": detail,
        "when": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    return FAILED


def failure(folder: str | Path) -> str | None:
    """The one-line error of the failed run recorded in ``folder`` (:func:`record_failure`),
    or None when none is recorded (or its file cannot be read as one)."""
    try:
        error = json.loads((Path(folder) / runs.FAILED_FILE).read_text())["error"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return error if isinstance(error, str) else None


STOP_WAIT_S = 5.0
"""How long a stopped pool process has to end after SIGTERM before it gets SIGKILL."""


def run_pool(todo: list[TrainConfig], jobs: int, threads: int,
             finished_one: Callable[[str], None]) -> None:
    """Train ``todo`` in ``jobs`` pool processes (``spawn``, ``threads`` torch threads
    each), calling ``finished_one(status)`` as each run ends.

    On KeyboardInterrupt (Ctrl-C) or SIGTERM (turned into KeyboardInterrupt meanwhile), the
    queued runs are cancelled at once, the pool's processes are terminated (SIGTERM, then
    SIGKILL after :data:`STOP_WAIT_S`), and the interruption is raised again: a run cut
    short has no ``summary.json``, so the next sweep runs it again. On another error the
    queued runs are cancelled, the running ones finish, and the error is raised."""
    pool = futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(threads, os.getpid()))
    submitted: list[futures.Future] = []
    try:
        with _sigterm_as_interrupt():
            with _sigint_blocked():  # the processes start here, and inherit the mask
                submitted.extend(pool.submit(train_run, c) for c in todo)
            for future in futures.as_completed(submitted):
                finished_one(future.result())
    except (KeyboardInterrupt, SystemExit):
        stop_pool(pool, submitted)
        raise
    except BaseException:
        for future in submitted:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def stop_pool(pool: futures.ProcessPoolExecutor, submitted: list[futures.Future]) -> None:
    """Cancel every queued call of ``pool`` and end its processes now (SIGTERM, then
    SIGKILL for one still alive after :data:`STOP_WAIT_S`)."""
    # ProcessPoolExecutor has no public way to end its processes before Python 3.14's
    # terminate_workers(): its own table of them is read, and an absent one ends nothing
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for future in submitted:
        future.cancel()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread for the block. The pool's processes are started in it,
    and a process inherits its signal mask, so a Ctrl-C that reaches their whole process
    group while they are still importing (before :func:`_start_worker` ignores SIGINT)
    does not end them with a traceback; the sweep stops them itself. A SIGINT to this
    process is delivered when the block ends (or meanwhile to another of its threads, which
    interrupts this one as usual)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (in the main thread only, where
    Python runs signal handlers), so that a terminated sweep stops its pool as Ctrl-C does;
    the previous handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(configs: list[TrainConfig], sweep_dir: str | Path, jobs: int | None = None,
              progress: bool = True, backend: str = "pool",
              ray: RayOptions | None = None) -> dict[str, Any]:
    """Run every config of the grid that is not done, then write the tidy tables; returns
    counts of what happened, and ``failed``: the folder and error of each run that failed
    (:func:`train_run`; the others went on). ``backend`` ``pool`` runs ``jobs`` at a time
    (default: one per core) on this machine; ``ray`` runs each as a Ray task
    (:func:`signvote.experiment.ray_backend.run_ray`, with ``ray``'s options, ``jobs`` at
    most at a time). The sweep holds the folder's lock throughout (:func:`locked`): a second
    sweep of the same folder raises :class:`SweepLockedError`."""
    sweep_dir = Path(sweep_dir)
    placed = place(configs, sweep_dir, backend)
    ray = ray or RayOptions()
    pending = [c for c in placed if not is_done(c)]
    if backend == "ray":
        from signvote.experiment.ray_backend import import_ray

        import_ray()  # Ray missing: said before anything is written
    check_datasets(pending)  # before anything is written
    with contextlib.ExitStack() as stack:
        if backend == "ray" and pending:  # an unreachable cluster: said before writing
            from signvote.experiment.ray_backend import connected

            stack.enter_context(connected(ray, jobs))
        with locked(sweep_dir):
            return _run_locked(placed, sweep_dir, jobs, progress, backend, ray)


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How a sweep runs on Ray (``--address``, ``--cpus-per-run``, ``--gpus-per-run``,
    ``--retries``): the cluster to join (None: start a local instance, and stop it at the
    end; ``auto``: the running cluster of this machine), the resources each run's task
    declares (Ray places it on a node that has them), and how many times a task whose
    worker process died is run again."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    retries: int = 3

    def __post_init__(self) -> None:
        import math

        bad = []
        if not (math.isfinite(self.cpus_per_run) and self.cpus_per_run > 0):
            bad.append(f"--cpus-per-run {self.cpus_per_run} (valid: more than 0)")
        if not (math.isfinite(self.gpus_per_run) and self.gpus_per_run >= 0):
            bad.append(f"--gpus-per-run {self.gpus_per_run} (valid: at least 0)")
        if self.retries < 0:
            bad.append(f"--retries {self.retries} (valid: at least 0)")
        if self.address is not None and not self.address.strip():
            bad.append("--address '' (valid: auto, or HOST:PORT)")
        if bad:
            raise ConfigError("; ".join(bad))


def _run_locked(placed: list[TrainConfig], sweep_dir: Path, jobs: int | None,
                progress: bool, backend: str, ray: RayOptions) -> dict[str, Any]:
    """:func:`run_sweep`'s work, under the sweep folder's lock."""
    from signvote.experiment import results

    renamed = adopt_renamed(placed, sweep_dir)
    runs.write_json(sweep_dir / "sweep.json", {
        "runs": [{"id": Path(c.out).name, "config": c.to_dict()} for c in placed]})
    todo = [c for c in placed if not is_done(c)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(placed), initial=len(placed) - len(todo), desc="runs",
                   unit="run", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10.0)
    statuses: dict[str, int] = {}

    def finished_one(status: str) -> None:
        statuses[status] = statuses.get(status, 0) + 1
        if bar is not None:
            bar.update(1)

    try:
        if todo and backend == "ray":
            from signvote.experiment.ray_backend import run_ray

            run_ray(todo, finished_one, ray, jobs)
        elif todo:
            jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
            run_pool(todo, jobs, max(1, (os.cpu_count() or 1) // jobs), finished_one)
    finally:
        if bar is not None:
            bar.close()
    table = results.write_tables(sweep_dir)
    failed = [(c.out, failure(c.out) or "") for c in todo if not is_done(c)]
    return {"runs": len(placed), "ran": len(todo), "skipped": len(placed) - len(todo),
            "renamed": renamed, "statuses": statuses, "rows": table, "failed": failed}
