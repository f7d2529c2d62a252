"""``signvote sweep --backend ray`` on a running cluster: a worker killed mid-task is
retried and the rows are the pool's, a killed driver resumes keeping its finished runs, a
failing run is recorded and the others go on (the pool's: tests/test_sweep_backends.py),
a distributed run is placed on one node.
The cluster is local (one node of 2 CPUs on this machine's own address), started by the
module and stopped at its end, bounded in time. A sweep on a local Ray instance that the
sweep starts and stops, row for row the pool's, is tests/test_benchmarks.py's smoke run of
benchmarks/bench_ray.py."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signvote.engine.sim import train
from signvote.experiment import grid, results, sweep
from signvote.experiment.config import ConfigError

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'signvote[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.dist]

LONG = 'dataset = "digits"\nrule = "signum"\nbyzantine = [0, 1, 2]\nworkers = 5\nepochs = 6\n'
"""Three runs of a few seconds each, to be cut short."""

FAILING = ('dataset = "logreg"\nworkers = 5\nbyzantine = 1\nepochs = 3\n'
           'attack = ["vote-cancel", "boom_attack:boom", "random-sign"]\n')
"""Three runs, the second of which raises at its first step."""

BOOM = '''def boom(messages, byzantine_mask, ctx):
    raise RuntimeError("boom: this attack always fails")
'''

LIMIT_S = 240
"""The bound on each command a test starts."""

TOKEN = secrets.token_hex(32)
"""The cluster's authentication token (Ray's token mode), given to it and to each driver."""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def rows_without_time(out: Path) -> list[dict]:
    rows = results.read_table(out / "results.csv")
    for row in rows:
        row.pop("wall_s")
    return rows


def command(path: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "signvote", "sweep", str(path), "--out", str(out),
            "--quiet", "--backend", "ray", *options]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A folder with the failing attack's module, on PYTHONPATH of every process here."""
    folder = tmp_path_factory.mktemp("plugin")
    write(folder, "boom_attack.py", BOOM)
    return folder


def environment(plugin_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def cluster(plugin_dir, tmp_path_factory):
    """A running Ray cluster of one node with 2 CPUs (``ray start --head --block``, its own
    process group), its address; stopped at the end (SIGTERM to ``ray start``, which stops
    its processes; SIGKILL to the whole group after 30 s)."""
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
         "--port", str(port), "--include-dashboard", "false", "--disable-usage-stats",
         "--object-store-memory", str(128 * 2**20)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=environment(plugin_dir))
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, "the Ray cluster did not start in 90 s"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory) -> list[dict]:
    """The rows of :data:`LONG` run by the process pool."""
    folder = tmp_path_factory.mktemp("long")
    outcome = sweep.run_sweep(grid.load_grid(write(folder, "sweep.toml", LONG)),
                              folder / "out", jobs=2, progress=False)
    assert outcome["ran"] == 3 and not outcome["failed"]
    return rows_without_time(folder / "out")


def task_processes() -> list[int]:
    """The pids of this machine's Ray worker processes running a sweep's run now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::run_task"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_killed_worker_is_retried_and_a_killed_driver_resumes_to_the_pools_rows(
        tmp_path, cluster, plugin_dir, run_bounded, long_rows):
    """One run at a time: the worker process of the first is killed mid-run (Ray runs it
    again, from the start), then the driver is killed once a run has finished; the same
    command resumes, keeping the finished runs, and the rows are the pool's."""
    path = write(tmp_path, "sweep.toml", LONG)
    out = tmp_path / "out"
    proc = subprocess.Popen(command(path, out, "--address", cluster, "--jobs", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=environment(plugin_dir))
    try:
        deadline = time.monotonic() + LIMIT_S
        while not (running := task_processes()) or not list(out.glob("runs/*/config.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no run started"
            time.sleep(0.05)
        (victim,) = running
        (first,) = [p.parent for p in out.glob("runs/*/config.json")]
        os.kill(victim, signal.SIGKILL)
        while len(list(out.glob("runs/*/summary.json"))) < 1:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not Path(f"/proc/{victim}").exists()
    assert (first / "summary.json").exists() and not (first / "failed.json").exists()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert 1 <= len(finished) < 3, "the kill came too late to test anything"
    deadline = time.monotonic() + 60  # the dead driver's tasks end with it
    while task_processes():
        assert time.monotonic() < deadline, "the killed driver's tasks still run"
        time.sleep(0.2)
    resumed = run_bounded(command(path, out, "--address", cluster),
                          env=environment(plugin_dir), limit_s=LIMIT_S)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{3 - len(finished)} run now, {len(finished)} already done" in resumed.stdout
    for run, mtime in finished.items():
        assert (out / "runs" / run / "summary.json").stat().st_mtime_ns == mtime
    assert rows_without_time(out) == long_rows


def test_a_failing_run_is_recorded_with_its_error_and_the_others_go_on(
        tmp_path, cluster, plugin_dir, run_bounded):
    path = write(tmp_path, "sweep.toml", FAILING)
    out = tmp_path / "out"
    argv = command(path, out, "--address", cluster)
    done = run_bounded(argv, env=environment(plugin_dir), limit_s=LIMIT_S)
    assert done.returncode == 1, done.stderr
    assert "3 runs: 2 run now, 0 already done, 1 failed" in done.stdout
    failed = [p.parent for p in out.glob("runs/*/failed.json")]
    assert len(failed) == 1
    record = json.loads((failed[0] / "failed.json").read_text())
    assert record["error"] == ("ConfigError: --attack boom_attack:boom: on messages [5, 922] "
                               "it failed: RuntimeError: boom: this attack always fails")
    assert record["detail"].startswith("Traceback") and "in train_run" in record["detail"]
    assert f"failed: {failed[0]}: {record['error']}" in done.stderr
    assert not (failed[0] / "summary.json").exists()
    table = results.read_table(out / "results.csv")
    assert {r["attack"] for r in table} == {"vote-cancel", "random-sign"}
    listing = run_bounded([*argv, "--dry-run"], env=environment(plugin_dir), limit_s=60)
    assert f"to run again (failed: {record['error']})" in listing.stdout


def test_a_distributed_run_in_a_ray_sweep_equals_the_simulator(tmp_path, cluster,
                                                               plugin_dir, run_bounded):
    text = 'dataset = "logreg"\nworkers = 2\nbyzantine = 1\nepochs = 1\n'
    dist_path = write(tmp_path, "dist.toml", text + 'engine = "dist"\n')
    sim_path = write(tmp_path, "sim.toml", text)
    with pytest.raises(ConfigError, match="--backend ray, whose task starts them"):
        sweep.place(grid.load_grid(dist_path), tmp_path / "pool")
    done = run_bounded(command(dist_path, tmp_path / "dist", "--address", cluster,
                               "--cpus-per-run", "2"),
                       env=environment(plugin_dir), limit_s=LIMIT_S)
    assert done.returncode == 0 and "1 run now" in done.stdout, done.stderr
    (sim,) = sweep.place(grid.load_grid(sim_path), tmp_path / "sim")
    train(sim, progress=False)
    results.write_tables(tmp_path / "sim")
    metrics = ("epoch", "test_acc", "test_loss", "train_loss")
    dist_rows, sim_rows = (
        [{k: r[k] for k in metrics if k in r} for r in rows_without_time(tmp_path / d)]
        for d in ("dist", "sim"))
    assert dist_rows == sim_rows and len(sim_rows) == 1
    assert {r["engine"] for r in results.read_table(tmp_path / "dist" / "results.csv")} == {
        "dist"}
