"""Training by steps (``--steps``) and evaluation every K steps (``--eval-every``).

The references are independent: the evaluation schedule against a set built from its
definition (multiples of K up to N, and N), an interval's training statistics against the
mean of the one-step rows of a run that evaluates after every step, a steps run's
trajectory against the prefix of an epochs run's, and the run identity of a config
without the new options against hashes computed by the code before they existed.
"""

import json
import math
import sys

import pytest
import torch

from signvote.cli import main
from signvote.engine import dist as dist_engine
from signvote.engine.run import (
    by_steps,
    evaluation_due,
    evaluation_steps,
    samples_per_epoch,
    total_steps,
)
from signvote.engine.sim import train
from signvote.experiment import runs
from signvote.experiment.config import (
    DEFAULT_EPOCHS,
    ConfigError,
    TrainConfig,
    resolve,
    trajectory_id,
    trajectory_key,
)

# logreg (8,000 training samples), 4 workers: 2,000 samples a worker and epoch
EXACT = dict(workers=4, batch_size=250)  # 8 steps an epoch, every batch full
RAGGED = dict(workers=4, batch_size=300)  # 7 steps an epoch, the last of 200 samples


def brute_schedule(total: int, every: int) -> list[int]:
    """The step counts of the evaluations, from the definition: the multiples of
    ``every`` up to ``total``, and ``total``."""
    return sorted(set(range(every, total + 1, every)) | {total})


@pytest.mark.parametrize("per_epoch", [1, 3, 7, 8])
@pytest.mark.parametrize("steps", [None, 1, 5, 8, 19, 24])
@pytest.mark.parametrize("eval_every", [None, 1, 4, 5, 30])
def test_the_evaluation_schedule_is_its_definition(per_epoch, steps, eval_every):
    c = resolve(TrainConfig(epochs=None if steps else 3, steps=steps, eval_every=eval_every))
    total = steps if steps else 3 * per_epoch
    assert total_steps(c, per_epoch) == total
    every = per_epoch if eval_every is None else eval_every
    assert evaluation_steps(c, per_epoch) == brute_schedule(total, every)
    assert by_steps(c) == (steps is not None or eval_every is not None)


def test_a_stronger_or_weaker_schedule_is_caught():
    """The check above can fail: a schedule that skips the last step, or evaluates at
    every epoch end too, is not the definition."""
    c = resolve(TrainConfig(steps=19, eval_every=5))
    assert evaluation_steps(c, 8) == [5, 10, 15, 19]
    assert [t for t in range(1, 19) if evaluation_due(c, t, 8, 19)] != brute_schedule(19, 5)
    assert sorted({*evaluation_steps(c, 8), 8, 16}) != brute_schedule(19, 5)


def test_the_default_is_80_epochs_and_the_run_identity_is_the_old_one():
    assert resolve(TrainConfig()).epochs == DEFAULT_EPOCHS == 80
    assert resolve(TrainConfig()).steps is None and resolve(TrainConfig()).eval_every is None
    # computed by signvote 3425b1d, before --steps and --eval-every existed
    assert trajectory_id(TrainConfig()) == "bf21a9e8fbc5"
    assert trajectory_id(TrainConfig(epochs=80)) == "bf21a9e8fbc5"
    assert trajectory_id(TrainConfig(epochs=2, byzantine=3)) == "9f300c2d99e2"
    assert trajectory_id(TrainConfig(dataset="digits", epochs=5, rule="sgd",
                                     aggregator="median", lr=0.01)) == "674fca1a67fb"
    assert trajectory_key(TrainConfig(steps=600)) == {"steps": 600}
    assert trajectory_key(TrainConfig(eval_every=30)) == {"eval_every": 30}


def test_steps_alone_has_no_epochs_and_resolving_again_keeps_it():
    c = resolve(TrainConfig(steps=600))
    assert c.epochs is None and c.steps == 600
    assert resolve(c) == c


@pytest.mark.parametrize("values, message", [
    (dict(steps=600, epochs=3), "--steps 600 and --epochs 3 both set the run's length; "
                                "valid: --steps N alone"),
    (dict(steps=600, epochs=80), "--steps 600 and --epochs 80 both set"),
    (dict(steps=0), "--steps must be at least 1, got 0"),
    (dict(eval_every=0), "--eval-every must be at least 1, got 0"),
    (dict(eval_every=2.5), "--eval-every: expected a whole number, got 2.5"),
])
def test_a_contradictory_or_bad_length_is_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as info:
        resolve(TrainConfig(**values))
    assert "\n" not in str(info.value)


def test_the_command_line_refuses_steps_with_epochs(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", "--steps", "10", "--epochs", "2", "--out", str(tmp_path / "r")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["signvote train: error: --steps 10 and --epochs 2 both set the run's "
                   "length; valid: --steps N alone (it runs into as many epochs as it "
                   "needs) or --epochs E alone"]


def _rows(**values) -> list[dict]:
    return train(TrainConfig(**values), progress=False, write=False).metrics


def test_whole_epochs_of_steps_are_the_epochs_run_bit_for_bit():
    """--steps 16 (two epochs of 8) and --eval-every 8 on --epochs 2 evaluate after every
    epoch as --epochs 2 does: the same rows and parameters, bit for bit."""
    base = train(TrainConfig(epochs=2, byzantine=1, **EXACT), progress=False, write=False)
    for other in (dict(steps=16), dict(epochs=2, eval_every=8)):
        result = train(TrainConfig(byzantine=1, **EXACT, **other), progress=False,
                       write=False)
        assert torch.equal(result.params, base.params)
        strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in result.metrics]
        assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in base.metrics]
        assert result.summary["evaluations"] == 2 and "evaluations" not in base.summary
        assert result.summary["epochs_completed"] == base.summary["epochs_completed"] == 2


def test_an_interval_row_is_the_mean_of_its_one_step_rows_and_evaluating_changes_nothing():
    """19 steps (two epochs and 3 steps), evaluated every 5 steps, against the same run
    evaluated after every step: the same parameters, the same test metrics at the steps
    both evaluate, the interval's train loss the mean of its steps' (every step has the
    same count of losses) and its train accuracy the mean of theirs (full batches)."""
    coarse = train(TrainConfig(steps=19, eval_every=5, byzantine=1, **EXACT),
                   progress=False, write=False)
    fine = train(TrainConfig(steps=19, eval_every=1, byzantine=1, **EXACT), progress=False,
                 write=False)
    assert torch.equal(coarse.params, fine.params)
    assert [r["step"] for r in fine.metrics] == list(range(1, 20))
    assert [r["step"] for r in coarse.metrics] == [5, 10, 15, 19]
    by_step = {r["step"]: r for r in fine.metrics}
    start = 0
    for row in coarse.metrics:
        steps = range(start + 1, row["step"] + 1)
        assert row["test_acc"] == by_step[row["step"]]["test_acc"]
        assert row["test_loss"] == by_step[row["step"]]["test_loss"]
        assert row["epoch"] == math.ceil(row["step"] / 8)
        assert row["train_loss"] == pytest.approx(
            math.fsum(by_step[t]["train_loss"] for t in steps) / len(steps), rel=1e-6)
        assert row["train_acc"] == pytest.approx(
            math.fsum(by_step[t]["train_acc"] for t in steps) / len(steps), rel=1e-9)
        start = row["step"]


def test_a_steps_run_follows_the_epochs_data_order_into_the_next_epochs():
    """--steps 17 on 7 steps an epoch (a short last batch) is the first 17 steps of the
    --epochs 3 run: the same test metrics after every one of them, and then it stops."""
    steps = _rows(steps=17, eval_every=1, **RAGGED)
    epochs = _rows(epochs=3, eval_every=1, **RAGGED)
    assert len(steps) == 17 and len(epochs) == 21
    strip = ("wall_s",)
    assert ([{k: v for k, v in r.items() if k not in strip} for r in steps]
            == [{k: v for k, v in r.items() if k not in strip} for r in epochs[:17]])
    assert [r["epoch"] for r in steps] == [1] * 7 + [2] * 7 + [3] * 3


def test_the_learning_rate_decays_by_the_epoch_a_step_falls_in():
    rows = _rows(steps=17, eval_every=2, lr=0.01, lr_decay_step=1, lr_decay_rate=0.5,
                 **RAGGED)
    assert [r["lr"] for r in rows] == [0.01 * 0.5 ** ((r["step"] - 1) // 7) for r in rows]


def test_a_steps_run_folder_is_a_finished_run_and_its_summary_counts_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--workers", "4", "--batch-size", "300", "--steps", "17",
                 "--eval-every", "5", "--out", str(out), "--quiet"]) == 0
    assert "| 17 steps (4 evaluations) in " in capsys.readouterr().out
    run = runs.read_run(out)
    assert [r["step"] for r in run.metrics] == [5, 10, 15, 17]
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3, 3]
    s = run.summary
    assert s["steps"] == 17 and s["evaluations"] == 4 and s["epochs_completed"] == 3
    best = max(run.metrics, key=lambda r: r["test_acc"])
    assert (s["best_test_acc"], s["best_test_acc_step"]) == (best["test_acc"], best["step"])
    assert json.loads((out / "config.json").read_text())["epochs"] is None


def test_a_stepped_metrics_file_with_steps_out_of_order_is_damaged(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(steps=10, eval_every=5, out=str(out), **RAGGED), progress=False)
    text = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join([text[0], text[2], text[1]]) + "\n")
    assert "expected a step after 10" in runs.run_problem(out)
    (out / "metrics.csv").write_text("\n".join(text[:2]) + "\n")
    assert "metrics.csv has 1 evaluation(s); summary.json says 2" in runs.run_problem(out)


def test_a_diverged_steps_run_says_at_which_step(tmp_path):
    result = train(TrainConfig(steps=12, eval_every=3, workers=4, byzantine=1,
                               attack="nan", rule="sgd", aggregator="mean",
                               out=str(tmp_path / "r")), progress=False)
    assert result.status == "diverged"
    assert result.summary["diverged_at_step"] == 3 == result.metrics[-1]["step"]
    assert result.summary["evaluations"] == 1
    assert runs.run_problem(tmp_path / "r") is None


def test_the_progress_bar_counts_steps(capsys):
    train(TrainConfig(steps=17, eval_every=5, **RAGGED), progress=True, write=False)
    err = capsys.readouterr().err
    assert "steps" in err and "17/17" in err


def test_steps_per_epoch_of_the_test_settings():
    """The settings above are what their comments say."""
    from signvote import data

    c = resolve(TrainConfig(**RAGGED))
    d = data.load(c.dataset, c.seed, None)
    assert samples_per_epoch(c, d) == 2000
    assert len(range(0, 2000, 300)) == 7 and len(range(0, 2000, 250)) == 8


@pytest.mark.slow
@pytest.mark.dist
def test_a_killed_steps_run_resumes_and_equals_the_simulator(tmp_path, run_bounded):
    """The distributed engine by steps: 40 steps (an epoch is 64 here), evaluated every
    15, a checkpoint every 10, a worker killed at step 25: it resumes from step 20 and
    ends with the simulator's parameters and rows. The aggregator keeps state across
    steps (bucketing's generator, centered clipping's last aggregate), which must come back
    from the checkpoint too: test_dist's killed-worker test leaves this case to this run."""
    args = dict(workers=3, byzantine=1, attack="vote-cancel", steps=40, eval_every=15,
                aggregator="bucketing(s=2)+centered-clipping(f=0)")
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    out = tmp_path / "dist"
    result = run_bounded([sys.executable, "-m", "signvote", "train", "--engine", "dist",
                          "--quiet", "--out", str(out), *argv, "--checkpoint-every", "10",
                          "--max-restarts", "1"], {dist_engine.FAULT_ENV: "kill:2:25"}, 120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"] == 1 and summary["resumed_from_step"] == 20
    assert summary["steps"] == 40 and summary["evaluations"] == 3
    sim = train(TrainConfig(out=str(tmp_path / "sim"), **args), progress=False)
    dist_params = torch.load(out / "params.pt")
    sim_params = torch.load(tmp_path / "sim" / "params.pt")
    assert all(torch.equal(dist_params[k], sim_params[k]) for k in sim_params)
    dist_rows, sim_rows = runs.read_run(out).metrics, sim.metrics
    keys = ("epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr")
    assert ([[r[k] for k in keys] for r in dist_rows]
            == [[r[k] for k in keys] for r in sim_rows])
    assert [r["step"] for r in sim_rows] == [15, 30, 40]
