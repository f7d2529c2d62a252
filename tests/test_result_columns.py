"""The result columns of the field's benchmarks: the best over a run's evaluations, the mean
of its last k evaluations (Karimireddy et al.'s figure) and the best evaluation of the mean
over seeds (ByzFL's figure), against brute force on a hand-written sweep and on a tiny real
sweep."""

import csv
import itertools
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from signvote.cli import main
from signvote.experiment import results

# Two groups of two seeds, evaluated at steps 30, 60, 90 and 100 (steps 100, eval every
# 30); median's second seed diverged at its second evaluation (no accuracy there).
STEPS = (30, 60, 90, 100)
HAND = {
    ("mean", 1): [0.50, 0.70, 0.90, 0.80],
    ("mean", 2): [0.60, 0.95, 0.70, 0.75],
    ("median", 1): [0.40, 0.55, 0.65, 0.60],
    ("median", 2): [0.30, None],
}


def write_run(folder: Path, aggregator: str, seed: int, accs: list[float | None]) -> None:
    """A finished run by steps, written by hand: config, metrics, summary, parameters."""
    folder.mkdir(parents=True)
    diverged = accs[-1] is None
    config = {"dataset": "logreg", "rule": "sgd", "aggregator": aggregator, "seed": seed,
              "epochs": None, "steps": 100, "eval_every": 30}
    (folder / "config.json").write_text(json.dumps(config))
    lines = ["epoch,step,train_loss,test_loss,train_acc,test_acc,lr,wall_s"]
    for step, acc in zip(STEPS, accs, strict=False):
        loss = "nan" if acc is None else f"{1 - acc}"
        cell = "" if acc is None else f"{acc}"
        lines.append(f"{1 + (step - 1) // 40},{step},{loss},{loss},{cell},{cell},0.1,1.0")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    last = accs[-1]
    summary = {"status": "diverged" if diverged else "completed",
               "epochs_completed": 1 + (STEPS[len(accs) - 1] - 1) // 40,
               "evaluations": len(accs), "steps": STEPS[len(accs) - 1],
               "final_test_loss": None if last is None else 1 - last}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "params.pt").write_bytes(b"not empty")


@pytest.fixture
def hand_sweep(tmp_path) -> Path:
    for (aggregator, seed), accs in HAND.items():
        write_run(tmp_path / "sweep" / "runs" / f"{aggregator}{seed}", aggregator, seed, accs)
    return tmp_path / "sweep"


def brute(aggregator: str, k: int) -> dict[str, float | None]:
    """The group's numbers by loops over the literal table."""
    seeds = [HAND[(aggregator, s)] for s in (1, 2)]
    alive = [a for a in seeds if a[-1] is not None]
    finals = [a[-1] for a in alive]
    bests = [max(v for v in a if v is not None) for a in seeds]
    lasts = [sum(a[-k:]) / len(a[-k:]) for a in alive]
    peak = None
    for t in range(len(STEPS)):
        column = [a[t] if t < len(a) else None for a in seeds]
        if all(v is not None for v in column):
            mean = sum(column) / len(column)
            peak = mean if peak is None else max(peak, mean)
    return {"final": sum(finals) / len(finals), "best": sum(bests) / len(bests),
            "last": sum(lasts) / len(lasts), "peak": peak}


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_the_columns_of_a_hand_written_sweep_are_the_brute_force(hand_sweep, k):
    rows = results.tidy_rows(hand_sweep)
    assert len(rows) == 14
    table = {r["aggregator"]: r for r in results.summarize(rows, "test_acc", k, True)}
    for aggregator in ("mean", "median"):
        want, got = brute(aggregator, k), table[aggregator]
        assert got["final_test_acc"] == pytest.approx(want["final"], abs=1e-12)
        assert got["best_test_acc"] == pytest.approx(want["best"], abs=1e-12)
        assert got[f"last{k}_test_acc"] == pytest.approx(want["last"], abs=1e-12)
        assert got["bestmean_test_acc"] == pytest.approx(want["peak"], abs=1e-12)


def test_the_hand_numbers(hand_sweep):
    """The brute force itself, worked by hand."""
    table = {r["aggregator"]: r for r in results.summarize(results.tidy_rows(hand_sweep),
                                                           "test_acc", 2, True)}
    mean, median = table["mean"], table["median"]
    assert mean["last2_test_acc"] == pytest.approx(((0.9 + 0.8) / 2 + (0.7 + 0.75) / 2) / 2)
    assert mean["bestmean_test_acc"] == pytest.approx((0.70 + 0.95) / 2)  # step 60
    assert mean["best_test_acc"] == pytest.approx((0.90 + 0.95) / 2)
    # the diverged seed: no final nor last value; its best before diverging counts; the
    # mean over seeds exists only at step 30, where both have an accuracy
    assert median["last2_test_acc"] == pytest.approx((0.65 + 0.60) / 2)
    assert median["last2_ci95"] is None and median["diverged"] == 1
    assert median["best_test_acc"] == pytest.approx((0.65 + 0.30) / 2)
    assert median["bestmean_test_acc"] == pytest.approx((0.40 + 0.30) / 2)


def test_the_mean_before_the_max_is_at_most_the_max_before_the_mean(hand_sweep):
    """max_t mean_s v_{s,t} <= mean_s max_t v_{s,t} on random curves (brute force over
    every step), and the hand sweep shows it strict: a check of "equal" would fail."""
    rng = random.Random(7)
    for _ in range(200):
        seeds, steps = rng.randint(1, 4), rng.randint(1, 6)
        curves = [{t: rng.random() for t in range(steps)} for _ in range(seeds)]
        peak = results.peak_of_mean(curves)
        bests = statistics.fmean(max(c.values()) for c in curves)
        assert peak == pytest.approx(max(statistics.fmean(c[t] for c in curves)
                                         for t in range(steps)))
        assert peak <= bests + 1e-12
    mean = {r["aggregator"]: r for r in results.summarize(results.tidy_rows(hand_sweep),
                                                          "test_acc", None, True)}["mean"]
    assert mean["bestmean_test_acc"] < 0.9 * mean["best_test_acc"]


def test_a_loss_takes_the_lowest(hand_sweep):
    table = {r["aggregator"]: r for r in results.summarize(results.tidy_rows(hand_sweep),
                                                           "test_loss", 2, True)}
    assert table["mean"]["best_test_loss"] == pytest.approx(((1 - 0.9) + (1 - 0.95)) / 2)
    assert table["mean"]["bestmean_test_loss"] == pytest.approx(1 - (0.70 + 0.95) / 2)
    assert table["mean"]["last2_test_loss"] == pytest.approx(
        1 - ((0.9 + 0.8) / 2 + (0.7 + 0.75) / 2) / 2)


def test_mean_of_last_and_best_over_evaluations_by_definition():
    values = [0.1, None, 0.5, 0.2, 0.4]
    assert results.mean_of_last(values, 2) == pytest.approx(0.3)
    assert results.mean_of_last(values, 3) == pytest.approx((0.5 + 0.2 + 0.4) / 3)
    assert math.isnan(results.mean_of_last(values, 4))  # a missing value among them
    assert results.mean_of_last([0.2, 0.4], 10) == pytest.approx(0.3)  # all of them
    assert results.best_over_evaluations(values) == 0.5
    assert results.best_over_evaluations(values, higher_is_better=False) == 0.1
    assert results.best_over_evaluations([None, float("nan")]) is None
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        results.mean_of_last(values, 0)


def test_last_rows_is_the_last_step_of_a_run_with_two_rows_an_epoch(hand_sweep):
    last = results.last_rows(results.tidy_rows(hand_sweep))
    assert last["mean1"]["step"] == 100 and last["median2"]["step"] == 60


def test_the_results_command_shows_the_columns(hand_sweep, capsys):
    assert main(["results", str(hand_sweep), "--last-k", "2", "--best-of-mean"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("| aggregator | seeds | final_test_acc | best_test_acc | "
                      "last2_test_acc | bestmean_test_acc |")
    mean = next(line for line in out if line.startswith("| mean |"))
    assert "| 0.7875 ± " in mean and mean.endswith("| 0.825 |")
    median = next(line for line in out if line.startswith("| median |"))
    assert "| 0.625 (1 of 2 seeds diverged) |" in median


def test_the_results_command_without_the_options_is_unchanged(hand_sweep, capsys):
    assert main(["results", str(hand_sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| aggregator | seeds | final_test_acc | best_test_acc |"


@pytest.mark.parametrize("k", ["0", "-3"])
def test_a_bad_last_k_is_refused_in_one_line(hand_sweep, capsys, k):
    with pytest.raises(SystemExit) as info:
        main(["results", str(hand_sweep), "--last-k", k])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"signvote results: error: --last-k {k}: valid: a whole number of at least 1 (the "
        f"evaluations averaged)"]


def test_a_tiny_real_sweep_by_steps(tmp_path, capsys):
    """Two seeds of 10 steps evaluated every 3 (steps 3, 6, 9, 10): the columns against the
    runs' own metrics.csv and summary.json, read with the csv module."""
    spec = tmp_path / "tiny.toml"
    spec.write_text('workers = 4\nbatch_size = 300\nsteps = 10\neval_every = 3\n'
                    'seed = [1, 2]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s"), "--jobs", "1",
                 "--quiet"]) == 0
    folders = sorted((tmp_path / "s" / "runs").iterdir())
    curves, summaries = [], []
    for folder in folders:
        with open(folder / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["step"]) for r in rows] == [3, 6, 9, 10]
        curves.append([float(r["test_acc"]) for r in rows])
        summaries.append(json.loads((folder / "summary.json").read_text()))
    (row,) = results.summarize(results.tidy_rows(tmp_path / "s"), "test_acc", 3, True)
    assert row["best_test_acc"] == pytest.approx(
        statistics.fmean(s["best_test_acc"] for s in summaries), abs=1e-15)
    assert row["best_test_acc"] == pytest.approx(
        statistics.fmean(max(c) for c in curves), abs=1e-15)
    assert row["last3_test_acc"] == pytest.approx(
        statistics.fmean(sum(c[-3:]) / 3 for c in curves), abs=1e-15)
    assert row["bestmean_test_acc"] == pytest.approx(
        max(statistics.fmean(column) for column in zip(*curves, strict=True)), abs=1e-15)
    assert row["final_test_acc"] == pytest.approx(
        statistics.fmean(s["final_test_acc"] for s in summaries), abs=1e-15)
    assert list(itertools.chain(*curves))  # the runs evaluated
