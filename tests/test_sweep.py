"""Sweep files, grids, resumable sweeps and their results."""

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signvote.experiment import grid, results, sweep
from signvote.experiment.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_a_grid_is_the_product_of_its_lists_with_the_seed_fastest(tmp_path):
    path = write(tmp_path, 'rule = ["sgd", "signum"]\nbyzantine = [0, 1, 2]\n'
                           'seed = [7, 8]\nepochs = 2\n')
    runs = grid.load_grid(path)
    want = list(itertools.product(["sgd", "signum"], [0, 1, 2], [7, 8]))
    assert [(r.rule, r.byzantine, r.seed) for r in runs] == want
    assert all(r.epochs == 2 for r in runs)
    assert runs[0].aggregator == "mean" and runs[-1].aggregator == "majority-vote"  # resolved


def test_overrides_replace_keys_with_toml_values(tmp_path):
    path = write(tmp_path, 'rule = ["sgd", "signum"]\nseed = [1, 2]\n')
    runs = grid.load_grid(path, ["rule=signsgd", "seed=[3, 4, 5]", "lr=1e-3"])
    assert [(r.rule, r.seed, r.lr) for r in runs] == [("signsgd", s, 1e-3) for s in (3, 4, 5)]


@pytest.mark.parametrize("text, message", [
    ("lrr = 1\n", "unknown key 'lrr'; valid keys: dataset"),
    ("byzantine = [0, 1.5]\n", "key byzantine[1]: expected a whole number, got 1.5"),
    ("lr = \"fast\"\n", "key lr: expected float, got 'fast'"),
    ("rule = [\"sgd\", 3]\n", "key rule[1]: expected str, got 3"),
    ("seed = []\n", "key 'seed' is an empty list"),
    ("[rule]\nname = \"sgd\"\n", "key 'rule' is a table"),
    ("out = \"x\"\n", "unknown key 'out'"),
    ("byzantine = [0, 12]\n", "grid point byzantine=12: --byzantine 12"),
    ("rule = \"adam\"\n", "grid point (the only one): --rule: unknown value 'adam'"),
    ("rule = [\n", "cannot be read"),
])
def test_schema_errors_name_the_key_path_and_the_expected_type(text, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        grid.load_grid(write(tmp_path, text))


def test_a_bad_override_is_refused():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        grid.parse_override("lr")


def test_a_pool_sweep_refuses_the_distributed_engine(tmp_path):
    runs = grid.load_grid(write(tmp_path, 'engine = "dist"\n'))
    with pytest.raises(ConfigError, match="pool backend runs sim runs"):
        sweep.place(runs, tmp_path / "out")


SWEEP = 'rule = ["signsgd", "signum"]\nbyzantine = [0, 1, 2]\nseed = [1, 2]\nepochs = 10\n'


def sweep_command(path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "signvote", "sweep", str(path), "--out", str(out),
            "--jobs", "2", "--quiet"]


def rows_without_time(out: Path) -> list[dict]:
    rows = results.read_table(out / "results.csv")
    for row in rows:
        row.pop("wall_s")
    return rows


@pytest.mark.slow
@pytest.mark.dist
def test_a_sweep_killed_with_sigkill_resumes_to_the_rows_of_an_uninterrupted_one(
        tmp_path, run_bounded):
    path = write(tmp_path, SWEEP)
    whole = run_bounded(sweep_command(path, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(sweep_command(path, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("runs/*/summary.json"))) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
        proc.wait()
    done = len(list(out.glob("runs/*/summary.json")))
    assert 2 <= done < 12, "the kill came too late to test anything"
    assert not (out / "results.csv").exists()
    resumed = run_bounded(sweep_command(path, out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{12 - done} run now, {done} already done" in resumed.stdout
    rows = rows_without_time(out)
    assert rows == rows_without_time(tmp_path / "whole")
    keys = [(r["run"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 12 * 10
    import pyarrow.parquet as pq

    parquet = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["run"], r["epoch"], r["test_acc"]) for r in parquet] == [
        (r["run"], int(r["epoch"]), float(r["test_acc"])) for r in rows]


def test_t_quantiles_match_the_printed_table():
    # two-sided 95% critical values of Student's t, from any statistics table
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (20, 2.086),
                      (100, 1.984)]:
        assert results.t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_the_summary_is_the_mean_and_t_interval_over_seeds_of_final_and_best():
    accs = {1: [0.5, 0.9, 0.8], 2: [0.6, 0.7, 0.75], 3: [0.4, 0.95, 0.85]}  # seed -> epochs
    rows = [{"run": f"r{seed}", **{k: None for k in results.CONFIG_COLUMNS}, "seed": seed,
             "rule": "signum", "epoch": e + 1, "test_acc": acc}
            for seed, series in accs.items() for e, acc in enumerate(series)]
    (summary,) = results.summarize(rows)
    finals = [s[-1] for s in accs.values()]
    bests = [max(s) for s in accs.values()]
    assert summary["seeds"] == 3
    assert summary["final_test_acc"] == pytest.approx(statistics.fmean(finals))
    assert summary["final_ci95"] == pytest.approx(4.303 * statistics.stdev(finals) / 3 ** 0.5,
                                                  rel=1e-3)
    assert summary["best_test_acc"] == pytest.approx(statistics.fmean(bests))
    assert summary["best_ci95"] == pytest.approx(4.303 * statistics.stdev(bests) / 3 ** 0.5,
                                                 rel=1e-3)


@pytest.mark.slow
def test_results_command_prints_the_summary(tmp_path, capsys):
    from signvote.cli import main

    path = write(tmp_path, 'rule = ["signsgd", "signum"]\nseed = [1, 2]\nepochs = 2\n')
    assert main(["sweep", str(path), "--out", str(tmp_path / "s"), "--jobs", "1",
                 "--quiet"]) == 0
    assert main(["results", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "| rule | momentum | seeds | final_test_acc | best_test_acc |" in out
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"][0]["config"][
        "epochs"] == 2
    with pytest.raises(SystemExit):
        main(["results", str(tmp_path / "nothing")])


def _sweep_over_a_missing_dataset(tmp_path, monkeypatch):
    """A sweep of two MNIST runs on a machine without MNIST: every place the data is looked
    for is pinned under ``tmp_path``, and the process pool is replaced by one that fails
    the test, so no run can start (nor find a real MNIST and train for 80 epochs)."""
    from signvote.data import images

    monkeypatch.setenv("SIGNVOTE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(images, "SYSTEM_DATA_DIR", tmp_path / "system")

    class NoPool:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a run was started before the datasets were checked")

    monkeypatch.setattr(sweep.futures, "ProcessPoolExecutor", NoPool)
    (tmp_path / "none").mkdir()  # an empty --data-dir (a missing one is refused by name)
    runs = grid.load_grid(write(tmp_path, f'dataset = "mnist"\ndata_dir = "{tmp_path}/none"\n'
                                          'seed = [1, 2]\n'))
    return lambda: sweep.run_sweep(runs, tmp_path / "out", jobs=1, progress=False)


def test_a_missing_dataset_is_reported_before_any_run_starts(tmp_path, monkeypatch):
    from signvote.data import DatasetError

    start = _sweep_over_a_missing_dataset(tmp_path, monkeypatch)
    with pytest.raises(DatasetError, match="IDX files not found") as caught:
        start()
    looked_in = str(caught.value).split("looked in: ")[1].split(". To get them")[0]
    assert all(folder.startswith(str(tmp_path)) for folder in looked_in.split(", "))
    assert not (tmp_path / "out").exists()  # nothing written, not even the lock


def test_without_the_dataset_check_the_sweep_would_start_its_runs(tmp_path, monkeypatch):
    # the test above notices a sweep that skips check_datasets
    start = _sweep_over_a_missing_dataset(tmp_path, monkeypatch)
    monkeypatch.setattr(sweep, "check_datasets", lambda configs: None)
    with pytest.raises(AssertionError, match="a run was started before the datasets"):
        start()


def test_run_ids_of_resolved_configs_hash_only_what_differs_from_their_defaults():
    import hashlib

    def sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def rid(**grid_values) -> str:
        (config,) = grid.expand({k: [v] for k, v in grid_values.items()})
        return sweep.run_id(config)

    assert rid() == sha("{}")  # resolve() filled model, lr, momentum, batch size, aggregator
    assert rid(workers=5) == sha('{"workers": 5}')  # and the batch size 128 // 5 with it
    assert rid(rule="sgd") == sha('{"rule": "sgd"}')  # lr, momentum, aggregator of sgd
    assert rid(byzantine=2) == sha('{"byzantine": 2}')  # aggregator_f = byzantine + blind
    # the same run, whatever the file says of the defaults it spelt out
    assert rid(rule="sgd", lr=1e-3, momentum=0.0, aggregator="mean") == rid(rule="sgd")
    assert rid(byzantine=2, aggregator_f=2, model="logregnet") == rid(byzantine=2)
    assert rid(byzantine=2, aggregator_f=0) == sha('{"aggregator_f": 0, "byzantine": 2}')
    # where the run is written, what else it logs and how a dist run recovers are not the run
    assert rid(tensorboard=True) == rid(data_dir="elsewhere") == rid() == rid(max_restarts=3)
    assert rid(dist_timeout=10.0) == rid(checkpoint_every=5) == rid()


def test_a_run_id_is_the_trajectory_id_resolved_or_not():
    from signvote.experiment.config import TrainConfig, resolve, trajectory_id

    for config in (TrainConfig(), TrainConfig(rule="sgd", workers=5),
                   TrainConfig(byzantine=2, aggregator="krum", out="a")):
        assert sweep.run_id(config) == sweep.run_id(resolve(config)) == trajectory_id(config)
    assert sweep.run_id(TrainConfig(out="a")) == sweep.run_id(TrainConfig(out="b"))


DATA = Path(__file__).parent / "data"


def test_a_sweep_folder_of_the_old_run_ids_is_reused_whole_and_still_read(tmp_path, capsys):
    """tests/data/sweep_v0 was written by signvote 828ad32, whose run ids hashed the fields
    that differ from the unresolved defaults (see tests/data/sweep_v0.md)."""
    import shutil

    from signvote.cli import main

    out = tmp_path / "sweep_v0"
    shutil.copytree(DATA / "sweep_v0", out)
    before = {json.loads((f / "config.json").read_text())["byzantine"]:
              (f / "metrics.csv").read_bytes() for f in out.glob("runs/*")}
    assert len(before) == 2
    assert main(["sweep", str(DATA / "sweep_v0.toml"), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("renamed by the next sweep") == 2
    assert main(["sweep", str(DATA / "sweep_v0.toml"), "--out", str(out), "--jobs", "1",
                 "--quiet"]) == 0
    assert "2 runs: 0 run now, 2 already done; 4 rows" in capsys.readouterr().out
    folders = sorted(out.glob("runs/*"))
    placed = sweep.place(grid.load_grid(DATA / "sweep_v0.toml"), out)
    assert sorted(Path(c.out) for c in placed) == folders  # renamed to the current ids
    assert all(sweep.is_done(c) for c in placed)
    for folder in folders:  # nothing lost, nothing rewritten but the folder in config.json
        config = json.loads((folder / "config.json").read_text())
        assert config["out"] == str(folder)
        assert (folder / "metrics.csv").read_bytes() == before[config["byzantine"]]
        assert (folder / "params.pt").exists()
    assert [r["id"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == [
        Path(c.out).name for c in placed]
    assert main(["sweep", str(DATA / "sweep_v0.toml"), "--out", str(out), "--jobs", "1",
                 "--quiet"]) == 0
    assert "0 run now, 2 already done" in capsys.readouterr().out
    assert main(["results", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "| 0 | 0 | 1 | 0.7385 | 0.7385 |" in summary  # the stored runs' numbers
    assert "| 1 | 1 | 1 | 0.7395 | 0.7395 |" in summary
    rows = results.read_table(out / "results.csv")
    assert len(rows) == 4 and {r["byzantine"] for r in rows} == {"0", "1"}


@pytest.mark.slow
def test_an_old_run_folder_is_reused_and_a_run_under_another_default_is_not(
        tmp_path, capsys):
    from signvote.cli import main

    path = write(tmp_path, 'rule = "signsgd"\nworkers = 3\nbyzantine = [0, 1]\nepochs = 1\n')
    out = tmp_path / "s"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    folders = sorted(out.glob("runs/*"))
    assert len(folders) == 2
    # as an older signvote wrote it: without the fields added since (kept at defaults)
    for folder in folders:
        stored = json.loads((folder / "config.json").read_text())
        del stored["measure_theory"], stored["tensorboard"]
        (folder / "config.json").write_text(json.dumps(stored))
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    assert "0 run now, 2 already done" in capsys.readouterr().out
    # a run made when a default was different (here: the learning-rate decay)
    stored = json.loads((folders[0] / "config.json").read_text())
    stored["lr_decay_rate"] = 0.5
    (folders[0] / "config.json").write_text(json.dumps(stored))
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    assert "1 run now, 1 already done" in capsys.readouterr().out
    assert json.loads((folders[0] / "config.json").read_text())["lr_decay_rate"] == 0.1


def tidy(accs: dict[int, list[float | None]], diverged=(), **config) -> list[dict]:
    """Tidy rows of one run per seed, with the epochs' ``test_acc`` and ``test_loss``."""
    return [{"run": f"r{seed}-{config}", **{k: None for k in results.CONFIG_COLUMNS},
             "seed": seed, **config, "status": "diverged" if seed in diverged else "completed",
             "epoch": e + 1, "test_acc": acc,
             "test_loss": float("nan") if acc is None else 1 - acc}
            for seed, series in accs.items() for e, acc in enumerate(series)]


def test_a_group_with_diverged_runs_says_so_instead_of_nan():
    rows = (tidy({1: [0.5, 0.9], 2: [0.6, None], 3: [0.4, 0.8]}, diverged={2}, rule="signum")
            + tidy({1: [0.7, None], 2: [None]}, diverged={1, 2}, rule="sgd")
            + tidy({1: [0.5, 0.6], 2: [0.7, 0.8]}, rule="signsgd"))
    signum, sgd, signsgd = results.summarize(rows)
    assert signum["seeds"] == 3 and signum["diverged"] == 1
    assert signum["final_test_acc"] == pytest.approx((0.9 + 0.8) / 2)  # the two that did not
    assert signum["best_test_acc"] == pytest.approx((0.9 + 0.6 + 0.8) / 3)
    assert sgd["diverged"] == 2 and sgd["final_test_acc"] is None
    assert sgd["best_test_acc"] == pytest.approx(0.7) and signsgd["diverged"] == 0
    table = results.format_summary([signum, sgd, signsgd])
    assert "nan" not in table.lower()
    lines = table.splitlines()
    assert lines[0] == "| rule | seeds | final_test_acc | best_test_acc |"
    assert lines[2].startswith("| signum | 3 | 0.85 ± ") and lines[2].endswith(
        " (1 of 3 seeds diverged) | 0.7667 ± 0.38 |")
    assert lines[3] == "| sgd | 2 | diverged (2 of 2 seeds) | 0.7 |"
    assert lines[4] == "| signsgd | 2 | 0.7 ± 1.3 | 0.7 ± 1.3 |"
    all_at_once = results.summarize(tidy({1: [None]}, diverged={1}, rule="sgd"))
    assert results.format_summary(all_at_once).splitlines()[2] == (
        "| 1 | diverged (1 of 1 seeds) | diverged (1 of 1 seeds) |")


def test_a_regression_sweep_is_summarized_by_its_test_loss():
    rows = [{**r, "test_acc": None} for r in tidy({1: [0.5, 0.9], 2: [0.6, 0.7]},
                                                  rule="sgd")]
    assert results.default_metric(rows) == "test_loss"
    assert results.default_metric(tidy({1: [0.5]})) == "test_acc"
    assert results.default_metric(tidy({1: [None]}, diverged={1})) == "test_loss"
    (summary,) = results.summarize(rows, results.default_metric(rows))
    assert summary["final_test_loss"] == pytest.approx((0.1 + 0.3) / 2)
    assert summary["best_test_loss"] == pytest.approx((0.1 + 0.3) / 2)  # the lowest
    table = results.format_summary([summary])
    assert "| seeds | final_test_loss | best_test_loss |" in table and "nan" not in table


@pytest.mark.parametrize(("text", "message"), [
    ('partition = "shards"\npartition_shards = 100000\n', "--partition shards: "),
    ('dataset = "digits"\nworkers = 2\nbatch_size = 719\n', "--batch-size 719 exceeds the "
                                                           "718 samples"),
])
def test_a_sweep_whose_runs_cannot_be_built_is_refused_before_writing(text, message,
                                                                      tmp_path, monkeypatch):
    class NoPool:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a run was started")

    monkeypatch.setattr(sweep.futures, "ProcessPoolExecutor", NoPool)
    configs = grid.load_grid(write(tmp_path, f"workers = 2\nepochs = 1\nseed = [1, 2]\n{text}"
                                   if "workers" not in text else f"seed = [1, 2]\n{text}"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        sweep.run_sweep(configs, tmp_path / "out", jobs=1, progress=False)
    assert not (tmp_path / "out").exists()
