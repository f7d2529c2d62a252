"""The sweep's backends without Ray running: the refusals of ``--backend`` and its options,
Ray missing, and the command line that carries a config to a distributed run's ranks."""

from __future__ import annotations

import sys

import pytest

from signvote import cli
from signvote.experiment import grid, sweep
from signvote.experiment.config import ConfigError, TrainConfig, command_line, resolve


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def test_without_ray_the_backend_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "sweep.toml", 'dataset = "logreg"\nepochs = 1\n')
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--backend", "ray"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "pip install 'signvote[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (["--address", "auto"], "--address: only with --backend ray"),
    (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run 0.0 (valid: more than 0)"),
    (["--backend", "ray", "--gpus-per-run", "-1"], "--gpus-per-run -1.0 (valid: at least 0)"),
    (["--backend", "ray", "--retries", "-2"], "--retries -2 (valid: at least 0)"),
])
def test_bad_ray_options_are_refused_in_one_line(options, message, tmp_path, capsys):
    path = write(tmp_path, "sweep.toml", 'dataset = "logreg"\nepochs = 1\n')
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), *options])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_pool_refuses_a_distributed_run_and_names_the_backend_that_runs_it(tmp_path):
    configs = grid.load_grid(write(tmp_path, "s.toml", 'engine = "dist"\n'))
    with pytest.raises(ConfigError, match="--backend ray, whose task starts them"):
        sweep.place(configs, tmp_path / "out")
    assert sweep.place(configs, tmp_path / "out", "ray")[0].engine == "dist"
    with pytest.raises(ConfigError, match="--backend slurm: valid: pool, ray"):
        sweep.place(configs, tmp_path / "out", "slurm")


@pytest.mark.parametrize("values", [
    {},
    {"dataset": "digits", "lr": 1e-3, "weight_decay": 1, "measure_theory": True},
    {"attack": "alie(z=1.5)", "aggregator": "nnm+krum", "byzantine": 2,
     "partition_alpha": 0.1 + 0.2, "out": "runs/x y", "steps": 7, "eval_every": 3,
     "engine": "dist", "workers": 9},
])
def test_a_config_survives_its_command_line(values):
    config = TrainConfig(**values)
    args = cli.build_parser().parse_args(["train", *command_line(config)])
    assert cli.config_from_args(args) == resolve(config)


def test_a_field_no_option_can_set_is_refused():
    with pytest.raises(ConfigError, match="--dataset: None cannot be given"):
        command_line(TrainConfig(dataset=None))


def test_a_run_started_again_drops_the_failure_a_sweep_recorded(tmp_path):
    from signvote.engine.sim import train

    path = write(tmp_path, "s.toml", 'dataset = "logreg"\nepochs = 1\n')
    (config,) = sweep.place(grid.load_grid(path), tmp_path / "out")
    assert sweep.record_failure(config, "RuntimeError: an earlier try", "detail") == "failed"
    assert sweep.failure(config.out) == "RuntimeError: an earlier try"
    assert not sweep.is_done(config)
    train(config, progress=False)
    assert sweep.failure(config.out) is None and sweep.is_done(config)


def test_a_failure_record_that_cannot_be_read_is_no_failure(tmp_path):
    (tmp_path / "failed.json").write_text('{"error": 3}')
    assert sweep.failure(tmp_path) is None
    (tmp_path / "failed.json").write_text("{not json")
    assert sweep.failure(tmp_path) is None
    assert sweep.failure(tmp_path / "missing") is None


def test_a_cluster_address_where_nothing_answers_is_refused_at_once(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'signvote[ray]'")
    import socket

    with socket.socket() as s:  # a port of this machine with nobody listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write(tmp_path, "sweep.toml", 'dataset = "logreg"\nepochs = 1\n')
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--backend", "ray",
                  "--address", f"127.0.0.1:{port}", "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"could not join the Ray cluster at 127.0.0.1:{port}: nothing answers" in err
    assert not (tmp_path / "out").exists()


BOOM = '''def boom(messages, byzantine_mask, ctx):
    raise RuntimeError("boom: this attack always fails")
'''


def test_a_failing_run_of_the_pool_is_recorded_and_the_others_go_on(tmp_path, monkeypatch,
                                                                     capsys):
    from test_run_folders import InlinePool

    from signvote.experiment import results

    write(tmp_path, "boom_attack_pool.py", BOOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sweep.futures, "ProcessPoolExecutor", InlinePool)
    path = write(tmp_path, "s.toml", 'dataset = "logreg"\nworkers = 5\nbyzantine = 1\n'
                 'epochs = 2\nattack = ["vote-cancel", "boom_attack_pool:boom", "random-sign"]\n')
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--jobs", "1", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "3 runs: 2 run now, 0 already done, 1 failed" in captured.out
    (failed,) = [p.parent for p in out.glob("runs/*/failed.json")]
    error = sweep.failure(failed)
    assert error.endswith("it failed: RuntimeError: boom: this attack always fails")
    assert f"signvote sweep: failed: {failed}: {error}" in captured.err
    assert not (failed / "summary.json").exists()
    assert {r["attack"] for r in results.read_table(out / "results.csv")} == {
        "vote-cancel", "random-sign"}
    assert cli.main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    assert f"to run again (failed: {error})" in capsys.readouterr().out
