"""Issue 15's refusals at the command line: each bad input gets one line and exit 2, and
leaves nothing behind; the inputs that are right keep working."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import run_cli  # the in-process command with its exit code and output

from signvote import aggregators, attacks
from signvote.cli import out_problem, varying_keys
from signvote.engine.threads import SMALL_MODEL, run_threads, torch_threads
from signvote.experiment import grid
from signvote.experiment.config import (
    SEED_MAX,
    ConfigError,
    TrainConfig,
    default_out,
    resolve,
    trajectory_id,
)
from signvote.registry import parse_spec, unknown_name


def refused(args, capsys, message, out=None):
    """Run ``signvote ARGS``: exit 2, one line on stderr holding ``message``, no traceback,
    and ``out`` (when given) not made."""
    code, _out, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    if out is not None:
        assert not Path(out).exists()
    return err


# --- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**64 - 1), str(2**32), "-1",
                                  str(-(2**63))])
def test_a_seed_out_of_range_is_refused_with_the_range(seed, tmp_path, capsys):
    out = tmp_path / "run"
    refused(["train", "--quiet", "--seed", seed, "--out", str(out)], capsys,
            f"--seed must be a whole number in [0, {SEED_MAX}], got {seed}", out)


def test_the_ends_of_the_seed_range_are_accepted():
    assert resolve(TrainConfig(seed=0)).seed == 0
    assert resolve(TrainConfig(seed=SEED_MAX)).seed == SEED_MAX
    with pytest.raises(ConfigError):
        resolve(TrainConfig(seed=SEED_MAX + 1))


def test_reproduce_refuses_a_seed_out_of_range_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "rep"
    refused(["reproduce", "logreg-byzantine", "--seeds", "1", "-5", "--out", str(out)],
            capsys, "--seeds: -5 is out of range", out)


# --- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("krum(f=2,f=3)", "parameter 'f' is given twice"),
    ("", "empty"),
    ("   ", "empty"),
    ("krum(f=)", "cannot read parameter 'f='"),
    ("krum(f=2,)", "empty parameter"),
    ("krum((f=2))", "cannot read"),
    ("krum(f=2", "cannot read"),
    ("nnm++krum", "cannot read ''"),
    ("KRUM", "unknown aggregator 'KRUM', did you mean krum?"),
    ("nnm+Median", "unknown aggregator 'Median', did you mean median?"),
    ("centered_clipping", "did you mean centered-clipping?"),
])
def test_a_bad_aggregator_spec_is_refused_naming_the_cause(spec, message):
    with pytest.raises(ValueError, match=None) as info:
        aggregators.build(spec, f=1)
    assert message in str(info.value)


@pytest.mark.parametrize(("spec", "message"), [
    ("gaussian(std=-1)", "std must be a finite number >= 0, got -1"),
    ("gaussian(std=nan)", "std must be a finite number >= 0"),
    ("gaussian(mean=inf)", "mean must be a finite number"),
    ("random-sign(scale=nan)", "scale must be a finite number"),
    ("alie(z=inf)", "z must be a finite number"),
    ("ALIE", "did you mean alie?"),
])
def test_a_bad_attack_parameter_is_refused(spec, message):
    with pytest.raises(ValueError) as info:
        attacks.build(spec)
    assert message in str(info.value)


def test_good_specs_still_build_with_their_parameters():
    assert parse_spec("bucketing(s=2)+centered-clipping(tau=5, iterations=3)", "aggregator") == [
        ("bucketing", {"s": 2}), ("centered-clipping", {"tau": 5, "iterations": 3})]
    assert attacks.build("gaussian(mean=5, std=0)").std == 0.0  # a constant: allowed


def test_unknown_name_suggests_the_closest_known_name_only_when_close():
    known = ["krum", "median", "mean"]
    assert "did you mean krum?" in unknown_name("aggregator", "KRUM", known)
    assert "did you mean median?" in unknown_name("aggregator", "medain", known)
    assert "did you mean" not in unknown_name("aggregator", "zzzzzz", known)


@pytest.mark.parametrize(("args", "message"), [
    (["--aggregator", ""], "--aggregator: empty; valid: bulyan"),
    (["--attack", ""], "--attack: empty"),
    (["--out", ""], "--out: empty"),
    (["--rule", "SIGNUM"], "unknown value 'SIGNUM', did you mean signum?"),
    (["--dataset", "mnsit"], "did you mean mnist?"),
    (["--aggregator", "krum(f=2,f=3)"], "given twice"),
    (["--attack", "gaussian(std=-1)"], "std must be a finite number >= 0"),
    (["--threads", "0"], "--threads must be in [1, 1024], got 0"),
])
def test_bad_train_values_are_refused_in_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--quiet", *args] + ([] if "--out" in args else ["--out", str(out)])
    refused(args, capsys, message, out)


# --- files -------------------------------------------------------------------------------


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_bytes(b'epochs = 1\n\xff\xfe = 2\n')
    out = tmp_path / "run"
    refused(["train", "--quiet", "--config", str(config), "--out", str(out)], capsys,
            f"config file {str(config)!r} is not UTF-8 text", out)


def test_a_sweep_file_that_is_not_utf8_is_refused(tmp_path, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_bytes(b"rule = ['sgd']\n# \xc3\x28\n")
    out = tmp_path / "sw"
    refused(["sweep", str(sweep), "--out", str(out), "--dry-run"], capsys,
            "is not UTF-8 text", out)


@pytest.mark.parametrize(("override", "message"), [
    ("epochs=x", "--set 'epochs=x': key epochs: expected a whole number, got 'x'"),
    ("bogus=1", "--set 'bogus=1': unknown key 'bogus'"),
    ("out=elsewhere", "--set 'out=elsewhere': unknown key 'out'"),
    ("overwrite=true", "unknown key 'overwrite'"),
])
def test_a_bad_set_value_is_blamed_on_the_set_not_the_file(override, message, tmp_path,
                                                           capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text('rule = ["sgd"]\nepochs = 1\n')
    err = refused(["sweep", str(sweep), "--out", str(tmp_path / "sw"), "--dry-run", "--set",
                   override], capsys, message, tmp_path / "sw")
    assert str(sweep) not in err


def test_set_still_overrides_the_file(tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text('rule = ["sgd"]\nepochs = 1\nseed = [1, 2]\n')
    configs = grid.load_grid(sweep, ["seed=[3, 4, 5]", "epochs=2"])
    assert [c.seed for c in configs] == [3, 4, 5] and {c.epochs for c in configs} == {2}


# --- output folders ----------------------------------------------------------------------


def test_out_problem_names_files_virtual_filesystems_and_good_folders(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file" in out_problem(afile)
    assert "lies under" in out_problem(afile / "sub" / "run")
    assert out_problem(tmp_path / "new" / "run") is None
    assert out_problem(tmp_path) is None
    if Path("/proc").is_dir():
        assert "virtual filesystem" in out_problem("/proc/signvote-run")
    assert not (tmp_path / "new").exists()  # nothing made


@pytest.mark.parametrize("command", ["train", "sweep", "theory", "reproduce"])
def test_an_out_that_is_a_file_or_under_proc_is_refused(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    sweep = tmp_path / "s.toml"
    sweep.write_text('rule = ["sgd"]\nepochs = 1\n')
    head = {"train": ["train", "--quiet"], "sweep": ["sweep", str(sweep), "--quiet"],
            "theory": ["theory"], "reproduce": ["reproduce", "logreg-byzantine", "--quiet"]}
    targets = [str(afile), str(afile / "run")]
    if Path("/proc").is_dir():
        targets.append("/proc/signvote-test-out")
    for target in targets:
        refused([*head[command], "--out", target], capsys, f"--out {target!r}")
    assert afile.read_text() == "keep"


def test_default_out_says_what_differs_and_never_joins_two_runs():
    krum = resolve(TrainConfig(aggregator="krum", byzantine=1, epochs=1))
    median = resolve(TrainConfig(aggregator="median", attack="alie", byzantine=1, epochs=1))
    same = resolve(TrainConfig(aggregator="krum", byzantine=1, epochs=1, tensorboard=False))
    other_lr = resolve(TrainConfig(aggregator="krum", byzantine=1, epochs=1, lr=0.5))
    assert "krum" in krum.out and "vote-cancel" in krum.out
    assert "median_alie" in median.out
    assert krum.out != median.out != other_lr.out and krum.out != other_lr.out
    assert krum.out == same.out == default_out(krum)
    assert krum.out.endswith(trajectory_id(krum))
    no_attack = resolve(TrainConfig())
    assert "vote-cancel" not in no_attack.out  # no worker runs the attack
    assert resolve(TrainConfig(out="runs/mine")).out == "runs/mine"


def test_train_help_does_not_write_into_the_demo_folder(capsys):
    code, out, _err = run_cli(["train", "--help"], capsys)
    assert code == 0 and "runs/demo" not in out


def test_results_help_says_95_percent(capsys):
    code, out, _err = run_cli(["results", "--help"], capsys)
    assert code == 0 and "95%" in out and "95%%" not in out


# --- sweeps: listing, finding --------------------------------------------------------------


def test_dry_run_lists_every_key_that_varies(tmp_path, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text('rule = "sgd"\nepochs = 1\nlr = [0.1, 0.2]\npartition = ["iid", '
                     '"dirichlet"]\n')
    code, out, err = run_cli(["sweep", str(sweep), "--out", str(tmp_path / "sw"),
                              "--dry-run"], capsys)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split("\t")[:2] == ["folder", "state"]
    assert {"lr", "partition", "seed"} <= set(header.split("\t"))
    assert len(lines) == 4 and all("lr=" in line and "partition=" in line for line in lines)


def test_varying_keys_against_a_brute_force():
    configs = [resolve(TrainConfig(lr=lr, epochs=e)) for lr in (0.1, 0.2) for e in (1, 1)]
    fields = TrainConfig.__dataclass_fields__
    brute = [k for k in fields if k != "out" and len({str(getattr(c, k)) for c in configs}) > 1]
    assert set(brute) <= set(varying_keys(configs))
    assert "epochs" not in varying_keys(configs) and "lr" in varying_keys(configs)


def make_sweep(folder: Path) -> None:
    (folder / "runs").mkdir(parents=True)


def test_results_finds_the_sweep_one_level_down_or_lists_them(tmp_path, capsys):
    top = tmp_path / "demo"
    sweep = tmp_path / "s.toml"
    sweep.write_text('rule = "sgd"\nepochs = 1\nseed = [1, 2]\n')
    code, _out, err = run_cli(["sweep", str(sweep), "--out", str(top / "logreg-byzantine"),
                               "--quiet", "--jobs", "1"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["results", str(top)], capsys)
    assert code == 0 and err == f"signvote results: read the sweep in {top / 'logreg-byzantine'}\n"
    assert out.startswith("| seeds |")  # the two seeds' group
    make_sweep(top / "logreg-blind")
    err = refused(["results", str(top)], capsys, "holds 2 sweeps")
    assert "logreg-blind" in err and "logreg-byzantine" in err
    refused(["plot", str(tmp_path / "nowhere")], capsys, "does not exist")
    refused(["results", str(tmp_path)], capsys, "is not a sweep folder")


# --- processes and pipes ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.dist
def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text("rule = \"sgd\"\nepochs = 1\nseed = [" + ", ".join(
        str(i) for i in range(400)) + "]\n")
    command = (f"{sys.executable} -m signvote sweep {sweep} --out {tmp_path / 'sw'} "
               f"--dry-run | head -n 2")
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True,
                          text=True, timeout=120, env=os.environ)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 2
    assert done.returncode == 141  # 128 + SIGPIPE, what a shell reports for `ls | head`


def test_threads_follow_the_work_and_are_put_back():
    assert run_threads(None, 922) == 1
    assert run_threads(None, SMALL_MODEL) == torch.get_num_threads()
    assert run_threads(3, 922) == 3
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_training_leaves_the_callers_thread_count_as_it_was(tmp_path):
    from signvote.engine.sim import train

    torch.set_num_threads(2)
    try:
        train(resolve(TrainConfig(epochs=1, threads=1, out=str(tmp_path / "r"))),
              progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_the_dist_timeout_default_is_a_minute():
    assert resolve(TrainConfig()).dist_timeout == 60.0


def test_a_parameter_that_is_no_number_says_what_would_be(capsys):
    with pytest.raises(ValueError, match=r"alie: z must be a number, got 'x'; valid: e\.g\. z="):
        attacks.build("alie(z=x)")


def test_data_load_takes_a_folder_as_text(tmp_path):
    from signvote import data

    with pytest.raises(data.DatasetError, match=str(tmp_path)):
        data.load("mnist", 1, str(tmp_path))  # a str, as from a config: no AttributeError


@pytest.mark.slow
@pytest.mark.dist
def test_ctrl_c_while_the_command_is_still_importing_ends_in_one_line(tmp_path):
    import signal
    import time

    sweep = tmp_path / "s.toml"
    sweep.write_text('rule = "sgd"\nepochs = 1\n')
    proc = subprocess.Popen([sys.executable, "-m", "signvote", "sweep", str(sweep), "--out",
                             str(tmp_path / "sw"), "--dry-run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # torch alone takes longer than this to import
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
