"""Run folders that are finished, damaged, refused, locked; the modes of their files; the
sweep's processes on Ctrl-C and SIGKILL (issue 15)."""

import concurrent.futures as futures
import contextlib
import json
import re
import shutil
from pathlib import Path

import pytest

from signvote.experiment import grid, results, runs, sweep

EPOCHS = 40
SWEEP_FILE = f"workers = 2\nepochs = {EPOCHS}\nbatch_size = 4000\n"
"""One run of 40 epochs of the logistic task, two workers, one step an epoch (~2 s)."""


class InlinePool:
    """A stand-in for the sweep's ProcessPoolExecutor that runs every submitted call at
    once in this process (so a test can watch which runs a sweep starts)."""

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=()):
        pass

    def submit(self, fn, *args):
        future = futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def sweep_configs(tmp_path: Path, text: str = SWEEP_FILE):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path, grid.load_grid(path)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A sweep folder holding one finished run of 40 epochs (made once for the module),
    and the sweep file."""
    from signvote.engine.sim import train

    base = tmp_path_factory.mktemp("finished")
    path, configs = sweep_configs(base)
    out = base / "sweep"
    (placed,) = sweep.place(configs, out)
    train(placed, progress=False)
    runs.write_json(out / "sweep.json", {"runs": [{"id": Path(placed.out).name,
                                                    "config": placed.to_dict()}]})
    return path, out


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path):
    """A copy of the finished sweep for one test: (sweep file, sweep folder, the run's
    placed config)."""
    path, out = finished_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)
    (placed,) = sweep.place(grid.load_grid(path), copy)
    return path, copy, placed


def cut_summary(folder: Path) -> None:
    text = (folder / "summary.json").read_text()
    (folder / "summary.json").write_text(text[:len(text) // 2])


def cut_metrics_mid_line(folder: Path) -> None:
    text = (folder / "metrics.csv").read_text()
    (folder / "metrics.csv").write_text(text[:-7])


def cut_metrics_to_three_rows(folder: Path) -> None:
    lines = (folder / "metrics.csv").read_text().splitlines(keepends=True)
    assert len(lines) == EPOCHS + 1
    (folder / "metrics.csv").write_text("".join(lines[:4]))


DAMAGE = {
    "summary.json not JSON": (cut_summary, "summary.json is not valid JSON"),
    "metrics.csv cut mid-line": (cut_metrics_mid_line, "metrics.csv is damaged: it is cut "
                                                       "in mid-line"),
    "metrics.csv cut to 3 of 40 rows": (cut_metrics_to_three_rows,
                                        "metrics.csv has 3 epoch(s); summary.json says 40"),
}


def test_the_intact_run_is_finished_done_and_read(sweep_copy):
    _, out, placed = sweep_copy
    assert runs.run_problem(placed.out) is None
    assert sweep.is_done(placed)
    warnings = []
    rows = results.tidy_rows(out, warnings.append)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)) and not warnings
    assert results.finished_runs(out) == [Path(placed.out)]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_is_not_done_and_results_skip_it_with_one_warning(damage, sweep_copy,
                                                                       capsys):
    from signvote.cli import main

    path, out, placed = sweep_copy
    spoil, reason = DAMAGE[damage]
    spoil(Path(placed.out))
    assert reason in runs.run_problem(placed.out)
    assert not sweep.is_done(placed)
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert f"{placed.out}\tto run\t" in listing
    warnings = []
    assert results.tidy_rows(out, warnings.append) == []
    assert results.finished_runs(out) == []
    assert len(warnings) == 1 and placed.out in warnings[0] and reason in warnings[0]
    with pytest.raises(results.NoFinishedRunError) as caught:
        results.tidy_rows(out, warnings.append, require=True)
    assert len(warnings) == 1  # nothing more: the error says it all, in one line
    assert placed.out in str(caught.value) and reason in str(caught.value)
    assert "\n" not in str(caught.value)
    # the command: one line on stderr naming the run and what is wrong, no traceback
    try:
        code = main(["results", str(out)])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and placed.out in lines[0] and reason in lines[0], lines
    assert (code, "(no finished runs)" in captured.out) in ((0, True), (2, False))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_sweep_runs_a_damaged_run_again_and_not_an_intact_one(damage, sweep_copy,
                                                              monkeypatch):
    path, out, placed = sweep_copy
    started = []
    monkeypatch.setattr(sweep.futures, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(sweep, "train_run", lambda c: started.append(c.out) or "completed")
    outcome = sweep.run_sweep(grid.load_grid(path), out, jobs=1, progress=False)
    assert started == [] and outcome["ran"] == 0 and outcome["rows"] == EPOCHS
    DAMAGE[damage][0](Path(placed.out))
    outcome = sweep.run_sweep(grid.load_grid(path), out, jobs=1, progress=False)
    assert started == [placed.out] and outcome["ran"] == 1


@pytest.mark.slow
def test_a_damaged_run_is_run_again_from_the_start(sweep_copy, monkeypatch):
    path, out, placed = sweep_copy
    before = runs.read_run(placed.out).metrics
    cut_metrics_to_three_rows(Path(placed.out))
    monkeypatch.setattr(sweep.futures, "ProcessPoolExecutor", InlinePool)
    outcome = sweep.run_sweep(grid.load_grid(path), out, jobs=1, progress=False)
    assert outcome["ran"] == 1 and outcome["rows"] == EPOCHS
    after = runs.read_run(placed.out).metrics
    assert [{**r, "wall_s": 0} for r in after] == [{**r, "wall_s": 0} for r in before]


# --- what a finished run is, file by file -------------------------------------------------


def _edit_json(name, **changes):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        for key, value in changes.items():
            if value is KeyError:
                del data[key]
            else:
                data[key] = value
        (folder / name).write_text(json.dumps(data))
    return edit


def _write(name, text):
    return lambda folder: (folder / name).write_text(text)


def _replace_in_metrics(old, new, count=1):
    def edit(folder: Path) -> None:
        text = (folder / "metrics.csv").read_text()
        assert old in text
        (folder / "metrics.csv").write_text(text.replace(old, new, count))
    return edit


FOLDER_CASES = [
    (lambda f: (f / "summary.json").unlink(), "summary.json is missing"),
    (_write("summary.json", "[1, 2]"), "summary.json holds a list, not an object"),
    (_write("summary.json", ""), "summary.json is not valid JSON"),
    (lambda f: (f / "summary.json").write_bytes(b"\xff\xfe{}"), "summary.json is not UTF-8"),
    (_edit_json("summary.json", status="running"), "status 'running'; valid: completed"),
    (_edit_json("summary.json", epochs_completed=KeyError), "summary.json lacks "
                                                            "epochs_completed"),
    (_edit_json("summary.json", epochs_completed="40"), "epochs_completed '40'"),
    (_edit_json("summary.json", epochs_completed=41), "metrics.csv has 40 epoch(s); "
                                                      "summary.json says 41"),
    (_edit_json("summary.json", final_test_loss=0.5), "final_test_loss 0.5 is not the last"),
    (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    (_write("config.json", "{"), "config.json is not valid JSON"),
    (lambda f: (f / "metrics.csv").unlink(), "metrics.csv is missing"),
    (_write("metrics.csv", ""), "metrics.csv is damaged: it is empty"),
    (_write("metrics.csv", "epoch,step\n1,2\n"), "its header lacks the column(s) train_loss"),
    (_replace_in_metrics("\n2,", "\n2,3,"), "line 3 has 9 cells; the header has 8"),
    (_replace_in_metrics("\n2,", "\n2.5,"), "line 3, column epoch: '2.5' is not a whole"),
    (_replace_in_metrics(",0.0001,", ",fast,"), "column lr: 'fast' is not a number"),
    (_replace_in_metrics("\n2,", "\n3,"), "line 3 is epoch 3; expected 2"),
    (lambda f: (f / "params.pt").unlink(), "params.pt is missing"),
    (_write("params.pt", ""), "params.pt is empty"),
]


@pytest.mark.parametrize(("spoil", "reason"), FOLDER_CASES, ids=[r for _, r in FOLDER_CASES])
def test_read_run_says_what_disagrees(spoil, reason, sweep_copy):
    _, _, placed = sweep_copy
    folder = Path(placed.out)
    spoil(folder)
    with pytest.raises(runs.UnfinishedRunError) as caught:
        runs.read_run(folder)
    assert reason in caught.value.reason and str(folder) in str(caught.value)
    assert caught.value.damaged == (reason != "summary.json is missing")
    assert not sweep.is_done(placed)


def test_a_completed_run_must_have_every_epoch_of_its_config(sweep_copy):
    _, _, placed = sweep_copy
    _edit_json("config.json", epochs=50)(Path(placed.out))
    assert "config.json asks for 50" in runs.run_problem(placed.out)


def test_parse_metrics_reads_empty_cells_as_none_and_nan_as_nan():
    text = ("epoch,step,train_loss,test_loss,train_acc,test_acc,lr,wall_s\n"
            "1,5,0.5,0.25,,0.75,0.0001,0.1\n2,10,nan,nan,,,0.0001,0.2\n")
    first, second = runs.parse_metrics(text)
    assert first == {"epoch": 1, "step": 5, "train_loss": 0.5, "test_loss": 0.25,
                     "train_acc": None, "test_acc": 0.75, "lr": 1e-4, "wall_s": 0.1}
    assert second["test_acc"] is None and second["test_loss"] != second["test_loss"]


def test_an_unreadable_sweep_listing_is_said_and_the_folders_are_read(sweep_copy):
    _, out, _ = sweep_copy
    (out / "sweep.json").write_text("{not json")
    warnings = []
    assert len(results.tidy_rows(out, warnings.append)) == EPOCHS
    assert len(warnings) == 1 and "sweep.json cannot be read" in warnings[0]


# --- a finished run is never overwritten without being asked -----------------------------


def small_run(out: Path, **options):
    from signvote.experiment.config import TrainConfig

    return TrainConfig(**{"workers": 2, "epochs": 2, "batch_size": 4000, "out": str(out),
                          **options})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_training_twice_into_one_folder_is_refused_and_the_first_run_kept(tmp_path):
    from signvote.engine.sim import train
    from signvote.experiment.config import ConfigError

    out = tmp_path / "run"
    train(small_run(out), progress=False)
    before = folder_bytes(out)
    with pytest.raises(ConfigError, match=rf"--out {out} holds a finished run; valid: "
                                          r"--overwrite to replace it, or another --out"):
        train(small_run(out, seed=3), progress=False)
    assert folder_bytes(out) == before
    result = train(small_run(out, seed=3, overwrite=True), progress=False)
    assert runs.read_run(out).config["seed"] == 3 == result.config.seed


def test_a_folder_with_a_cut_short_or_damaged_run_is_reused(tmp_path):
    from signvote.engine.sim import train

    out = tmp_path / "run"
    train(small_run(out), progress=False)
    cut_metrics_mid_line(out)
    train(small_run(out, seed=3), progress=False)  # damaged: reused without --overwrite
    (out / "summary.json").unlink()
    train(small_run(out, seed=4), progress=False)  # cut short: reused
    assert runs.read_run(out).config["seed"] == 4


def test_the_command_refuses_in_one_line(tmp_path, capsys):
    from signvote.cli import main

    out = tmp_path / "run"
    args = ["train", "--workers", "2", "--epochs", "1", "--batch-size", "4000", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    before = folder_bytes(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert str(out) in line and "--overwrite" in line
    assert folder_bytes(out) == before
    assert main([*args, "--overwrite"]) == 0


def test_the_distributed_launcher_refuses_before_starting_a_process(tmp_path, monkeypatch):
    from signvote.engine import dist
    from signvote.engine.sim import train
    from signvote.experiment.config import ConfigError

    out = tmp_path / "run"
    train(small_run(out), progress=False)

    def no_launch(*args, **kwargs):
        raise AssertionError("the launcher started its processes")

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", no_launch)
    with pytest.raises(ConfigError, match="holds a finished run"):
        dist.launch(small_run(out, engine="dist", layout="peer"), [])


@pytest.fixture
def one_rank(monkeypatch):
    """The environment of rank 0 of a world of one (``--layout peer --workers 1``), so
    that the distributed engine's rank runs in this process."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "localhost", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)


def dist_run(out: Path, **options):
    from signvote.experiment.config import TrainConfig

    return TrainConfig(**{"workers": 1, "epochs": 3, "batch_size": 1000, "engine": "dist",
                          "layout": "peer", "checkpoint_every": 2, "out": str(out),
                          **options})


@pytest.mark.slow
@pytest.mark.dist
def test_a_rank_refuses_a_finished_run_and_resumes_a_cut_short_one(tmp_path, one_rank,
                                                                   monkeypatch):
    import torch

    from signvote.engine import dist
    from signvote.experiment.config import ConfigError

    whole = dist.train(dist_run(tmp_path / "whole"), progress=False)
    with pytest.raises(ConfigError, match="holds a finished run"):
        dist.train(dist_run(tmp_path / "whole"), progress=False)

    class CutError(Exception):
        pass

    def cut_at_step_9(self, step):
        if step == 9:
            raise CutError

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(dist._Rank, "_maybe_fault", cut_at_step_9)
        with pytest.raises(CutError):
            dist.train(dist_run(out), progress=False)
    assert (out / dist.CHECKPOINT).exists() and not (out / "summary.json").exists()
    resumed = dist.train(dist_run(out), progress=False)  # no --overwrite needed
    assert resumed.summary["resumed_from_step"] == 8
    assert torch.equal(resumed.params, whole.params)
    assert [r["test_loss"] for r in resumed.metrics] == [r["test_loss"] for r in whole.metrics]
    assert dist.train(dist_run(out, overwrite=True), progress=False).summary[
        "resumed_from_step"] == 0


# --- one sweep writes a folder at a time ----------------------------------------------------


def test_a_second_sweep_of_a_folder_is_refused_saying_who_holds_it(sweep_copy, monkeypatch,
                                                                 capsys):
    import os
    import socket

    from signvote.cli import main

    path, out, _ = sweep_copy
    monkeypatch.setattr(sweep.futures, "ProcessPoolExecutor", InlinePool)
    with sweep.locked(out):
        holder = json.loads((out / sweep.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        who = f"pid {os.getpid()} on {socket.gethostname()} since {holder['since']}"
        with pytest.raises(sweep.SweepLockedError,
                           match=re.escape(f"being written by another sweep ({who})")):
            sweep.run_sweep(grid.load_grid(path), out, jobs=1, progress=False)
        capsys.readouterr()
        with pytest.raises(SystemExit) as caught:
            main(["sweep", str(path), "--out", str(out), "--quiet"])
        assert caught.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert who in line
    assert sweep.run_sweep(grid.load_grid(path), out, jobs=1, progress=False)["rows"] == EPOCHS


def test_results_of_a_running_sweep_read_its_finished_runs_and_say_it_runs(
        sweep_copy, monkeypatch):
    from signvote.experiment import config

    _, out, placed = sweep_copy
    running = out / "runs" / "000000000000"  # a run being written: no summary.json yet
    shutil.copytree(placed.out, running)
    (running / "summary.json").unlink()
    listing = json.loads((out / "sweep.json").read_text())
    listing["runs"].append({"id": running.name, "config": config.TrainConfig().to_dict()})
    (out / "sweep.json").write_text(json.dumps(listing))
    monkeypatch.setattr(sweep.os, "getpid", lambda: 1)  # the lock is another process's
    with sweep.locked(out):
        monkeypatch.undo()
        assert sweep.lock_holder(out).startswith("pid 1 on ")
        warnings = []
        rows = results.tidy_rows(out, warnings.append)
    assert {r["run"] for r in rows} == {Path(placed.out).name}
    (warning,) = warnings
    assert f"the sweep in {out} is still running (pid 1 on " in warning
    assert sweep.lock_holder(out) is None
    warnings.clear()
    results.tidy_rows(out, warnings.append)
    assert warnings == []


def test_a_run_being_started_is_not_finished_from_its_first_file_operation(sweep_copy,
                                                                          monkeypatch):
    from signvote.engine import run

    _, _, placed = sweep_copy
    folder = Path(placed.out)
    seen = []
    unlink = Path.unlink

    def watch(self, missing_ok=False):
        seen.append((self.name, runs.run_problem(folder)))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", watch)
    setup = run.prepare(placed)
    run.start_run_folder(setup)
    assert seen[0] == ("summary.json", None)  # the first thing removed is the summary
    assert all(problem is not None for _, problem in seen[1:])


@pytest.mark.slow
@pytest.mark.dist
def test_the_lock_dies_with_its_process(sweep_copy, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    _, out, _ = sweep_copy
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom signvote.experiment import sweep\n"
        f"with sweep.locked({str(out)!r}):\n    print('locked', flush=True)\n"
        "    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert sweep.lock_holder(out).startswith(f"pid {holder.pid} on ")
        with pytest.raises(sweep.SweepLockedError, match=f"pid {holder.pid} on "):
            with sweep.locked(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while sweep.lock_holder(out) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with sweep.locked(out):
        pass


# --- a diverged epoch ------------------------------------------------------------------------


def test_an_epoch_with_a_non_finite_loss_has_no_train_accuracy(tmp_path):
    import math

    import torch

    from signvote.engine import run
    from signvote.engine.sim import train

    setup = run.prepare(small_run(tmp_path / "unused"))
    for loss, want_acc in ((float("nan"), None), (float("inf"), None), (0.5, 3 / 8)):
        stats = run.EpochStats()
        stats.add(torch.tensor([0.25, loss]), torch.tensor([1, 2]), 8)
        row, finite = run.epoch_row(0, 1, stats, setup.x, setup, 1e-3, 0.0)
        assert row["train_acc"] == want_acc and finite == math.isfinite(loss)
    result = train(small_run(tmp_path / "run", rule="sgd", byzantine=1, attack="nan",
                             epochs=3, batch_size=100), progress=False)
    (last,) = [r for r in result.metrics if not math.isfinite(r["train_loss"])]
    assert result.status == "diverged" and last["train_acc"] is None
    (row,) = [r for r in runs.read_run(tmp_path / "run").metrics if r["epoch"] == last["epoch"]]
    assert row["train_acc"] is None and row["test_acc"] is None


# --- one truth for the frame size ----------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 922, 1_000_001])
def test_the_summary_counts_the_wire_frame(dim):
    from signvote.engine import protocol, run

    assert run.message_bytes(dim, sends_signs=True) == protocol.frame_bytes(dim)
    assert protocol.frame_bytes(dim) == protocol.HEADER + -(-dim // 8)
    assert run.message_bytes(dim, sends_signs=False) == 4 * dim


def test_the_simulators_summary_says_the_distributed_engines_frame(tmp_path):
    """The distributed engine sends ``frame_bytes(d)`` a step for a row without zeros
    (tests/test_dist.py::test_bytes_per_step_are_the_protocol_sizes measures it)."""
    from signvote.engine import protocol
    from signvote.engine.sim import train

    sim = train(small_run(tmp_path / "sim", epochs=1), progress=False, write=False)
    d = sim.summary["params"]
    assert d == 922 and sim.summary["bytes_sent_per_worker_per_step"] == 120
    assert protocol.frame_bytes(d) == 120
    sgd = train(small_run(tmp_path / "sgd", epochs=1, rule="sgd"), progress=False, write=False)
    assert sgd.summary["bytes_sent_per_worker_per_step"] == 4 * d


# --- the sweep's processes: Ctrl-C, SIGTERM, SIGKILL -----------------------------------------

SLOW_SWEEP = "seed = [1, 2, 3, 4, 5, 6]\nepochs = 400\n"
"""Six runs of minutes each: a sweep that is surely still running when it is stopped."""


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc/PID/status)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def wait_until(condition, limit_s: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds that took (fails after ``limit_s``)."""
    import time

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit_s:
            pytest.fail(f"{what} not within {limit_s} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def running_sweep(tmp_path):
    """``signvote sweep`` of :data:`SLOW_SWEEP` with 2 jobs in its own session, once its
    first run has started: (process, sweep folder, its child processes). Whatever is left
    of the session is killed at the end."""
    import os
    import signal
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to find the sweep's processes")
    path = tmp_path / "slow.toml"
    path.write_text(SLOW_SWEEP)
    out = tmp_path / "out"
    stderr = tmp_path / "stderr.txt"  # a file: a pipe would wait for orphaned workers
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "signvote", "sweep", str(path),
                                 "--out", str(out), "--jobs", "2", "--quiet"],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    proc.stderr_path = stderr
    try:
        wait_until(lambda: list(out.glob("runs/*/metrics.csv")) or proc.poll() is not None,
                   180, "a first epoch")
        assert proc.poll() is None, stderr.read_text()
        kids = children_of(proc.pid)
        assert len(kids) >= 2  # the two pool processes (and multiprocessing's tracker)
        yield proc, out, kids
    finally:
        with contextlib.suppress(ProcessLookupError):  # the session's processes, if any
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize(("signal_name", "to_group"), [("SIGINT", True), ("SIGTERM", False)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stopped_sweep_ends_within_seconds_with_its_workers(running_sweep, signal_name,
                                                              to_group):
    import os
    import signal

    proc, out, kids = running_sweep
    sig = getattr(signal, signal_name)
    if to_group:  # what a terminal's Ctrl-C does: the whole foreground process group
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    wait_until(lambda: proc.poll() is not None, 10, "the sweep's exit")
    assert proc.returncode == 130
    assert proc.stderr_path.read_text().strip().splitlines() == [
        "signvote sweep: interrupted; run the same command again to finish"]
    wait_until(lambda: not any(is_alive(k) for k in kids), 5, "the workers' end")
    assert not list(out.glob("runs/*/summary.json"))  # the cut runs are run next time


@pytest.mark.slow
@pytest.mark.dist
def test_the_workers_of_a_killed_sweep_end_with_it(running_sweep):
    import os
    import signal

    proc, _, kids = running_sweep
    os.kill(proc.pid, signal.SIGKILL)  # the sweep alone, not its process group
    proc.wait()
    wait_until(lambda: not any(is_alive(k) for k in kids), 5, "the workers' end")


@pytest.mark.slow
@pytest.mark.dist
def test_a_worker_without_prctl_ends_with_its_parent_by_polling(tmp_path):
    """The portable fallback of die_with_parent: the thread that watches os.getppid()."""
    import os
    import signal
    import subprocess
    import sys

    child = ("import ctypes, os, time\nfrom signvote.experiment import sweep\n"
             "def no_libc(*args, **kwargs):\n    raise OSError('no prctl here')\n"
             "ctypes.CDLL = no_libc  # the thread alone\n"
             "sweep.die_with_parent(os.getppid())\n"
             "print('watching', flush=True)\ntime.sleep(600)\n")
    parent = (f"import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', "
              f"{child!r}])\nprint(child.pid, flush=True)\nchild.wait()\n"
              f"print('the child ended', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        pid = int(proc.stdout.readline())
        assert proc.stdout.readline() == "watching\n"
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone
        proc.wait()
        wait_until(lambda: not is_alive(pid), 5, "the orphan's end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)



# --- a stored config of the wrong types --------------------------------------------------


@pytest.mark.parametrize("value", [[], "40", {"a": 1}, 2.5, True])
def test_a_run_whose_config_has_a_field_of_another_type_is_damaged(value, sweep_copy):
    _, out, placed = sweep_copy
    _edit_json("config.json", epochs=value)(Path(placed.out))
    with pytest.raises(runs.UnfinishedRunError, match=re.escape(
            "config.json field epochs: expected a whole number")):
        sweep.read_finished(placed.out)
    assert not sweep.is_done(placed)
    warnings = []
    assert results.tidy_rows(out, warnings.append) == []
    assert len(warnings) == 1 and "config.json field epochs" in warnings[0]


def test_the_tables_hold_any_stored_value(sweep_copy):
    import pyarrow.parquet as pq

    _, out, placed = sweep_copy
    second = out / "runs" / "000000000000"
    shutil.copytree(placed.out, second)
    _edit_json("config.json", seed=2 ** 70)(second)  # a whole number beyond 64 bits
    listing = json.loads((out / "sweep.json").read_text())
    listing["runs"].append({"id": second.name, "config": {}})
    (out / "sweep.json").write_text(json.dumps(listing))
    assert results.write_tables(out) == 2 * EPOCHS
    seeds = {r["seed"] for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert seeds == {str(placed.seed), str(2 ** 70)}
    assert {r["seed"] for r in results.read_table(out / "results.csv")} == seeds


def test_no_finished_run_is_one_line_that_says_why(sweep_copy, monkeypatch):
    _, out, placed = sweep_copy
    (Path(placed.out) / "summary.json").unlink()
    with pytest.raises(results.NoFinishedRunError, match=r"has no finished run yet$"):
        results.tidy_rows(out, require=True)
    monkeypatch.setattr(sweep.os, "getpid", lambda: 1)
    with sweep.locked(out):
        monkeypatch.undo()
        with pytest.raises(results.NoFinishedRunError,
                           match=r"no finished run yet \(its sweep is still running \(pid 1 "):
            results.tidy_rows(out, require=True)
    assert results.tidy_rows(out) == []  # without require: no row, nothing to say
