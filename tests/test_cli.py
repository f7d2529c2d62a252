import json
import subprocess
import sys

import pytest

from signvote.cli import main


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("args", "message"), [
    (["--byzantine", "6", "--blind", "5"], "exceed --workers 10"),
    (["--lr", "-1"], "--lr must be a finite number >= 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number >= 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number >= 0"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
    (["--momentum", "-0.5"], "--momentum must be in [0, 1)"),
    (["--dataset", "imagenet"], "unknown value 'imagenet'; valid: linreg, logreg"),
    (["--rule", "adam"], "valid: sgd, signsgd, signum"),
    (["--attack", "meteor"], "valid: alie, blind-inversion"),
    (["--aggregator", "best"], "valid: bulyan, caf"),
    (["--workers", "2.5"], "--workers: expected a whole number, got '2.5'"),
    (["--byzantine", "x"], "expected a whole number, got 'x'"),
    (["--byzantine", "10"], "at least one of the 10 workers must not be Byzantine"),
    (["--blind", "-1"], "--blind must be 0 or more"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "5000"], "exceeds the 800 samples per worker"),
    (["--rule", "signsgd", "--momentum", "0.9"], "signsgd takes no momentum"),
    (["--model", "linregnet"], "does not fit --dataset logreg"),
    (["--dataset", "digits", "--model", "mnistnet"], "does not fit --dataset digits; valid: "
                                                     "torchnet, smallcnn"),
    (["--partition", "dirichlet", "--dataset", "linreg"], "needs class labels"),
    (["--partition", "shards", "--partition-shards", "0"], "--partition-shards must be at"),
    (["--partition", "gamma", "--partition-gamma", "2"], "--partition-gamma must be in [0, 1]"),
    (["--partition-alpha", "0"], "--partition-alpha must be a finite number > 0"),
    (["--partition", "shards", "--partition-shards", "900"], "= 9000 shards for the 8000"),
    (["--partition", "zipf"], "valid: iid, dirichlet, shards, gamma"),
    (["--aggregator", "nnm"], "'nnm' is a pre-aggregator, it needs an aggregator after it"),
    (["--aggregator", "krum(tau=2)"], "aggregator 'krum' takes no parameter tau; valid: f, "
                                      "neighbours"),
    (["--aggregator", "bulyan", "-b", "3"], "bulyan with f=3 needs at least 15 workers, got 10"),
    (["--aggregator", "krum", "--aggregator-f", "-1"], "--aggregator-f must be 0 or more"),
    (["--attack", "alie(z=oops)"], "alie: z must be a number, got 'oops'"),
    (["--attack", "ipm(epsilon"], "cannot read 'ipm(epsilon'"),
    (["--attack", "mimic(target=6)", "-b", "4"], "target 6 but only 6 honest workers; "
                                                 "valid: 0 to 5"),
    (["--rule", "signum", "--sign-bound", "2"], "--sign-bound is the bound of --rule "
                                                "stochastic-sign"),
    (["--rule", "stochastic-sign", "--sign-bound", "0"], "--sign-bound must be a finite number"),
    (["--engine", "mpi"], "--engine: unknown value 'mpi'; valid: sim, dist"),
    (["--engine", "dist", "--layout", "ring"], "--layout: unknown value 'ring'; valid: server"),
    (["--engine", "dist", "--dist-timeout", "0"], "--dist-timeout must be a number of seconds"),
    (["--engine", "dist", "--max-restarts", "-1"], "--max-restarts must be 0 or more"),
    (["--engine", "dist", "--checkpoint-every", "-5"], "--checkpoint-every must be 0 or more"),
    (["--engine", "dist", "--batch-size", "5000"], "exceeds the 800 samples per worker"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, _stdout, stderr = run_cli(["train", "--quiet", "--out", str(out), *args], capsys)
    assert code == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr
    assert not out.exists()


def test_train_writes_the_run_folder_and_prints_a_summary(tmp_path, capsys):
    code, stdout, _ = run_cli(["train", "--quiet", "-b", "2", "-e", "2", "--out",
                               str(tmp_path)], capsys)
    assert code == 0
    assert "final test accuracy" in stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and len(summary["byzantine_workers"]) == 2


def test_diverged_run_exits_0_with_a_message(tmp_path, capsys):
    code, _, stderr = run_cli(["train", "--quiet", "--rule", "sgd", "--attack", "nan", "-b", "1",
                               "-e", "2", "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "diverged at epoch 1" in stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_config_file_with_command_line_override(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('rule = "signsgd"\nweight_decay = 1e-4\nepochs = 5\nbyzantine = 1\n')
    out = tmp_path / "run"
    code, _, _ = run_cli(["train", "--quiet", "--config", str(cfg), "--epochs", "1",
                          "--out", str(out)], capsys)
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["rule"] == "signsgd" and config["weight_decay"] == 1e-4
    assert config["epochs"] == 1 and config["byzantine"] == 1


@pytest.mark.parametrize(("text", "message"), [
    ("epochz = 3\n", "unknown key 'epochz'"),
    ('epochs = "3"\n', "key 'epochs': expected a whole number, got '3'"),
    ("lr = true\n", "key 'lr': expected float"),
    ("epochs = [\n", "cannot be read"),
    ("tensorboard = 1\n", "key 'tensorboard': expected true or false, got 1"),
])
def test_bad_config_files(text, message, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    code, _, stderr = run_cli(["train", "--quiet", "--config", str(cfg), "--out",
                               str(tmp_path / "run")], capsys)
    assert code == 2 and message in stderr and not (tmp_path / "run").exists()


def test_help_lists_every_option_with_its_default(capsys):
    code, stdout, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    for option in ("--dataset", "--model", "--workers", "--rule", "--momentum",
                   "--weight-decay", "--lr", "--lr-decay-step", "--lr-decay-rate", "--epochs",
                   "--batch-size", "--aggregator", "--attack", "--byzantine", "--blind",
                   "--partition", "--data-dir", "--seed", "--out", "--engine", "--config"):
        assert option in stdout
    assert "(default: 8005)" in stdout


@pytest.mark.slow
@pytest.mark.dist
def test_the_installed_entry_point_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "signvote", "train", "--workers", "ten"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("signvote train: error: argument --workers: expected a whole "
                                   "number, got 'ten' (see signvote train --help)")


def test_train_takes_aggregator_and_attack_specs(tmp_path, capsys):
    code, _, stderr = run_cli(["train", "--quiet", "-e", "1", "--rule", "sgd", "--workers",
                               "11", "-b", "2", "--attack", "alie(z=1.0)", "--aggregator",
                               "nnm+krum", "--out", str(tmp_path)], capsys)
    assert code == 0, stderr
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["aggregator"] == "nnm+krum" and config["aggregator_f"] == 2
    assert config["attack"] == "alie(z=1.0)"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_tensorboard_without_its_package_is_refused_in_one_line(tmp_path, capsys,
                                                                 monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code, _, stderr = run_cli(["train", "--quiet", "--tensorboard", "--out",
                               str(tmp_path / "run")], capsys)
    assert code == 2 and "--tensorboard needs the tensorboard package" in stderr


def test_help_never_breaks_a_name_at_its_hyphens(capsys):
    """Every attack, aggregator and model name stands whole in `train --help` (argparse
    would wrap `cancel-to-zero` as `cancel-` / `to-zero`)."""
    from signvote import aggregators, attacks, models

    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    words = set(out.replace(",", " ").replace(";", " ").replace(")", " ").split())
    for name in [*attacks.names(), *aggregators.names(), *models.names()]:
        assert name in words, name
