"""Every script in benchmarks/ runs, in its smallest mode, as a subprocess with a time limit,
and what it prints or writes parses; the names the scripts import from signvote exist (also
those imported only inside a function, such as bench_dist.py's netns worker).

The smoke runs write into the test's temporary folder, never into benchmarks/results/. They
are checks that the scripts still work, not measurements: they run with one thread. Each
starts Python and torch (seconds), so all are ``slow``; the import check is not.
"""

import ast
import importlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))
REAL_HOME = os.path.expanduser("~")  # read at collection, before the private home is set
SMOKE_ENV = {"OMP_NUM_THREADS": "1"}  # no measurement here, and 2 threads thrash a busy machine
LIMIT_S = 300  # a hang guard: a smoke run takes seconds on an idle machine


@pytest.fixture
def results_untouched():
    """benchmarks/results/ is the same after the test as before it."""
    def snapshot():
        folder = BENCHMARKS / "results"
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}

    before = snapshot()
    yield
    assert snapshot() == before, "a smoke run wrote into benchmarks/results/"


def smoke(run_bounded, tmp_path, script, *args):
    """``python benchmarks/SCRIPT ARGS`` run in ``tmp_path``; its stdout, after checking that
    it exited 0."""
    result = run_bounded([sys.executable, str(BENCHMARKS / script), *args], env=SMOKE_ENV,
                         limit_s=LIMIT_S, cwd=tmp_path)
    assert result.returncode == 0, f"{script} {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def table_rows(stdout, first_cell):
    """The cells of the Markdown table rows whose first cell matches ``first_cell``."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def test_every_benchmark_script_has_a_smoke_test():
    tested = {"bench_aggregators.py", "bench_cnn.py", "bench_compile.py", "bench_dist.py",
              "bench_ray.py", "bench_sim.py", "bench_threads.py", "gpu.py", "paper_logreg_grid.py",
              "weighted_vote_coalition.py", "zoo_logreg_grid.py"}
    assert set(SCRIPTS) == tested, "a script in benchmarks/ without a smoke test here"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_names_a_benchmark_imports_from_signvote_exist(script):
    tree = ast.parse((BENCHMARKS / script).read_text())
    missing = []
    for node in ast.walk(tree):  # every import, also those inside functions
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("signvote"):
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names
                        if not hasattr(module, a.name)
                        and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("signvote"):
                    importlib.import_module(alias.name)
    assert not missing, f"{script} imports names that do not exist: {', '.join(missing)}"


@pytest.mark.dist
def test_tests_and_their_processes_see_a_private_home(run_bounded, tmp_path_factory):
    from signvote.data.images import default_data_dir

    here = default_data_dir()
    assert here.is_relative_to(tmp_path_factory.getbasetemp())
    assert not here.is_relative_to(REAL_HOME)
    result = run_bounded([sys.executable, "-c", "import os\nprint(os.environ['SIGNVOTE_DATA'])"
                          "\nprint(os.path.expanduser('~'))"], limit_s=60)
    assert result.returncode == 0, result.stderr
    data_dir, home = result.stdout.split()
    assert Path(data_dir) == here and home == os.environ["HOME"] != REAL_HOME


@pytest.mark.slow
@pytest.mark.dist
def test_bench_dist_bytes_smoke(run_bounded, tmp_path, results_untouched):
    out = tmp_path / "dist.json"
    stdout = smoke(run_bounded, tmp_path, "bench_dist.py", "--results", str(out), "bytes",
                   "--smoke")
    rows = json.loads(out.read_text())["bytes"]
    assert [(r["params"], r["processes"]) for r in rows] == [(1000, 2), (1000, 4)]
    for row in rows:
        assert row["packed_server_sent_per_worker"] < row["fp32_server_sent_per_worker"]
        assert row["ratio_fp32_allreduce_to_packed_peer"] > 1
    assert [json.loads(line) for line in stdout.splitlines()] == rows


@pytest.mark.slow
@pytest.mark.dist
def test_bench_sim_smoke(run_bounded, tmp_path, results_untouched):
    stdout = smoke(run_bounded, tmp_path, "bench_sim.py", "--smoke")
    number = r"[\d.]+"
    for label in ("train(): Signum, 4/10 Byzantine, 1 epochs", "`signvote train --byzantine 4 "
                  "--epochs 1` (whole command)", "simulator step (10 workers x 12 samples)",
                  "plain SGD step (120 samples, one process)",
                  "ratio simulator / plain (per repeat)"):
        [row] = table_rows(stdout, re.escape(label))
        assert re.fullmatch(rf"{number}( s| us)?", row[1]), row


@pytest.mark.slow
@pytest.mark.dist
def test_bench_cnn_smoke(run_bounded, tmp_path, results_untouched):
    out = tmp_path / "cnn.json"
    stdout = smoke(run_bounded, tmp_path, "bench_cnn.py", "--smoke", "--out", str(out))
    models = ["smallcnn", "torchnet", "mnistnet", "resnet20"]
    rows = [r for r in table_rows(stdout, "|".join(models)) if len(r) == 10]
    assert [(r[0], r[2]) for r in rows] == [(m, b) for m in models for b in ("2", "4")]
    for row in rows:
        assert all(re.fullmatch(r"[\d.]+ ms", row[k]) for k in (4, 5, 8))
        assert re.fullmatch(r"[\d.]+ \([\d.]+\)", row[6]), row
    layers = [r for r in table_rows(stdout, "|".join(models)) if len(r) == 8]
    assert {r[0] for r in layers} == set(models)
    assert all(r[7] in ("loop", "grouped") for r in layers)
    written = json.loads(out.read_text())
    assert [(r["model"], r["b"]) for r in written["steps"]] == [(r[0], int(r[2])) for r in rows]
    assert len(written["layers"]) == len(layers) and written["repeats"] == 1
    assert re.search(r"^digits, smallcnn, Signum, 10 workers, 1 epoch .*test accuracy "
                     r"[\d.]+%$", stdout, re.M)


@pytest.mark.slow
@pytest.mark.dist
def test_bench_threads_smoke(run_bounded, tmp_path, results_untouched):
    out = tmp_path / "threads.json"
    stdout = smoke(run_bounded, tmp_path, "bench_threads.py", "--smoke", "--out", str(out))
    written = json.loads(out.read_text())
    assert written["metrics_identical"] is True and written["repeats"] == 1
    assert len(written["median_s"]) == 2 and all(t > 0 for t in written["median_s"].values())
    assert re.search(r"^ratio \(before / default\): [\d.]+x; metrics identical: yes$", stdout,
                     re.M)


@pytest.mark.slow
@pytest.mark.dist
def test_bench_ray_smoke_runs_the_pool_and_a_local_ray_instance_to_the_same_rows(
        run_bounded, tmp_path, results_untouched):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'signvote[ray]'")
    out = tmp_path / "ray.json"
    stdout = smoke(run_bounded, tmp_path, "bench_ray.py", "--smoke", "--out", str(out))
    written = json.loads(out.read_text())
    assert written["rows_identical"] is True and written["runs"] == 4
    assert len(written["times_s"]["pool"]) == len(written["times_s"]["ray"]) == 1
    assert re.search(r"^4 runs, 1 epochs, \d+ CPUs: pool [\d.]+ s, ray [\d.]+ s .*rows "
                     r"identical$", stdout, re.M)


@pytest.mark.slow
@pytest.mark.dist
def test_paper_logreg_grid_smoke(run_bounded, tmp_path, results_untouched):
    stdout = smoke(run_bounded, tmp_path, "paper_logreg_grid.py", "--smoke")
    assert re.findall(r"^(\w+): final test accuracy", stdout, re.M) == ["blind", "byzantine"]
    rows = table_rows(stdout, "DistSGD|SignSGD|Signum")
    assert [r[0] for r in rows] == ["DistSGD", "SignSGD", "Signum"] * 2
    for row in rows:
        assert len(row) == 6 and all(re.fullmatch(r"\d+\.\d \(\d+\.\d{3}\)", c) for c in row[1:])
    assert re.search(r"^30 runs in [\d.]+ s$", stdout, re.M)


@pytest.mark.slow
@pytest.mark.dist
def test_zoo_logreg_grid_smoke(run_bounded, tmp_path, results_untouched):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        zoo = importlib.import_module("zoo_logreg_grid")
    finally:
        sys.path.remove(str(BENCHMARKS))
    stdout = smoke(run_bounded, tmp_path, "zoo_logreg_grid.py", "--smoke")
    [header] = table_rows(stdout, "rule / aggregator")
    assert header[1:] == [*zoo.ATTACKS, "worst"]
    rows = table_rows(stdout, r"(sgd|signum) / .*")
    assert [r[0] for r in rows] == ([f"sgd / {a}" for a in zoo.SGD_AGGREGATORS]
                                    + [f"signum / {a}" for a in zoo.SIGN_AGGREGATORS])
    for row in rows:
        assert len(row) == len(zoo.ATTACKS) + 2
        assert all(re.fullmatch(r"\d+\.\d|diverged", c) for c in row[1:])
    assert re.search(rf"^{len(rows) * len(zoo.ATTACKS)} runs in [\d.]+ s$", stdout, re.M)


@pytest.mark.slow
@pytest.mark.dist
def test_bench_aggregators_smoke(run_bounded, tmp_path, results_untouched):
    """bench_aggregators.py at its smallest options (one repeat, 10 workers, 1,000
    coordinates), against ByzFL where ``make bench-byzfl`` installed it, else ours alone
    (``--without-byzfl``)."""
    byzfl = BENCHMARKS / ".byzfl"
    against = (["--byzfl-dir", str(byzfl)] if (byzfl / "byzfl" / "aggregators").is_dir()
               else ["--without-byzfl"])
    out = tmp_path / "aggregators.json"
    stdout = smoke(run_bounded, tmp_path, "bench_aggregators.py", "--repeats", "1",
                   "--workers", "10", "--dims", "1000", *against, "--out", str(out))
    written = json.loads(out.read_text())
    assert {"torch", "threads", "repeats", "rows"} <= set(written) and written["repeats"] == 1
    rows = written["rows"]
    names = [r["aggregator"] for r in rows]
    assert {"mean", "median", "krum", "majority-vote"} <= set(names)
    for row in rows:
        assert (row["d"], row["n"], row["f"]) == (1000, 10, 1)
        assert row["ours_ms"] > 0
    assert f"wrote {out}" in stdout


@pytest.mark.slow
@pytest.mark.dist
def test_bench_compile_smoke(run_bounded, tmp_path, results_untouched):
    out = tmp_path / "compile.json"
    stdout = smoke(run_bounded, tmp_path, "bench_compile.py", "--smoke", "--out", str(out))
    rows = table_rows(stdout, r"(logregnet|smallcnn) \(.*\)")
    stages = [(r[0].split()[0], r[3]) for r in rows]
    assert stages == [(m, s) for m in ("logregnet", "smallcnn")
                      for s in ("rule+vote+update", "wire+vote", "sim step")]
    for row in rows:
        assert all(re.fullmatch(r"[\d.]+", c) for c in row[4:8]), row
        assert row[8] == "yes", row  # every compiled result equal to eager
    written = json.loads(out.read_text())
    assert [r["d"] for r in written["rows"]] == [922, 6090] and written["repeats"] == 1


@pytest.mark.slow
@pytest.mark.dist
def test_gpu_script_smoke_on_the_cpu(run_bounded, tmp_path, results_untouched):
    """benchmarks/gpu.py --smoke --device cpu: every part ran (none errored), the goals
    close the table, the JSON went to $OUT; --device cuda without CUDA is refused."""
    result = run_bounded([sys.executable, str(BENCHMARKS / "gpu.py"), "--smoke", "--device",
                          "cpu"], env={**SMOKE_ENV, "OUT": str(tmp_path / "out")},
                         limit_s=LIMIT_S, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "a|b|c|d|e|goal")
    assert {r[0] for r in rows} == {"a", "b", "c", "d", "e", "goal"}
    assert not [r for r in rows if r[2] in ("error", "failed", "-") and r[0] != "goal"], rows
    assert re.fullmatch(r"\d+ skipped, \d+ deselected in [\d.]+s", rows[0][2]), rows[0]
    assert [r[1] for r in rows if r[0] == "goal"] == [
        "resnet18 sim/plain step (10x64)", "MNIST Byzantine grid, minutes",
        "packed vote / copy bandwidth (best)"]
    assert result.stdout.rstrip().splitlines()[-1].startswith("total ")
    written = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert len(written["rows"]) == len(rows)
    if not __import__("torch").cuda.is_available():
        refused = run_bounded([sys.executable, str(BENCHMARKS / "gpu.py")], env=SMOKE_ENV,
                              limit_s=60, cwd=tmp_path)
        assert refused.returncode == 2
        assert "no CUDA device is visible; valid: --device cpu" in refused.stdout
