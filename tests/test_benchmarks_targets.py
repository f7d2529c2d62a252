"""The benchmark targets of ``signvote reproduce`` (signvote.experiment.benchmarks): their
grids against the published settings, the reported numbers against hand-made rows and
plain loops, the claims' verdicts at their thresholds, and one tiny target end to end."""

import itertools
import json
import math
import random

import pytest

from signvote.experiment import benchmarks as bm
from signvote.experiment.config import ConfigError, TrainConfig, resolve


def cells_of(name, scale):
    target = bm.TARGETS[name]
    plan = target.plans[scale]
    base = bm._base(target, plan, "mnist", None, None, "auto")
    return bm.byzfl_cells(plan, base) if name == "byzfl" else bm.khj_cells(name, plan, base)


# --- the grids ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, scale, count", [
    # experiments 1 and 2: 5 aggregators x (iid, non-iid) x (s=0, s=2), + 2 votes x 2 splits
    ("karimireddy-exp1", "full", 5 * 2 * 2 + 2 * 2),
    ("karimireddy-exp2", "full", 5 * 2 * 2 + 2 * 2),
    # experiment 3: 2 momenta x 4 aggregators x 2 bucketings x 5 attacks, + 2 votes x 5
    ("karimireddy-exp3", "full", 2 * 4 * 2 * 5 + 2 * 5),
    ("karimireddy-exp3", "reduced", 1 * 4 * 2 * 5 + 2 * 5),
    # ByzFL: (2 aggregators + 2 votes) x 4 gammas x 4 f x 3 attacks
    ("byzfl", "full", 4 * 4 * 4 * 3),
    ("byzfl", "reduced", 4 * 2 * 2 * 3),
])
def test_each_grid_has_the_published_number_of_cells(name, scale, count):
    cells = cells_of(name, scale)
    assert len(cells) == count
    assert len({c for c, _ in cells}) == count  # every cell once
    assert bm.TARGETS[name].plans["full"].seeds == (0, 1, 2)


def test_a_cell_of_each_experiment_has_the_published_settings():
    exp2 = dict(cells_of("karimireddy-exp2", "full"))
    krum = resolve(TrainConfig(**exp2[bm.Cell("SGD", "Krum", "non-iid s=2")]))
    # Karimireddy et al.'s utils.py and exp2.py: n 25, f 5, batch 32, lr 0.01, momentum 0,
    # 20 epochs of 30 batches evaluated after each, mimic with warm-up 1, Krum(m=1) behind
    # bucketing s = 2, the label-sorted split among the honest workers
    assert (krum.workers, krum.byzantine, krum.batch_size, krum.lr, krum.momentum) == (
        25, 5, 32, 0.01, 0.0)
    assert (krum.steps, krum.eval_every, krum.lr_decay_rate) == (600, 30, 1.0)
    assert (krum.aggregator, krum.attack, krum.partition, krum.model) == (
        "bucketing(s=2)+krum(power=4)", "mimic(warmup=1)", "honest-sorted",
        "karimireddy-cnn")
    assert krum.aggregator_f == 5
    iid = exp2[bm.Cell("SGD", "RFA", "iid")]
    assert iid["partition"] == "honest-strided"
    assert iid["aggregator"] == "geometric-median(iterations=8, nu=0.1, tol=0, start=zero)"
    exp1 = dict(cells_of("karimireddy-exp1", "full"))[bm.Cell("SGD", "mean", "non-iid")]
    assert (exp1["workers"], exp1["byzantine"], exp1["steps"]) == (24, 0, 4500)
    assert (exp1["imbalance"], exp1["imbalance_ratio"], exp1["imbalance_split"]) == (
        "long-tail", 0.5, "both")
    exp3 = dict(cells_of("karimireddy-exp3", "full"))
    cclip = exp3[bm.Cell("SGD, momentum 0.9", "CClip", "BF")]
    # their m = 0.9 m + g is 10x ours: lr x 10, tau x 0.1 (khj_scaled)
    assert math.isclose(cclip["lr"], 0.1)
    assert cclip["aggregator"] == "centered-clipping(tau=1, iterations=3)"
    assert cclip["attack"] == "blind-inversion"
    assert exp3[bm.Cell("SGD, momentum 0", "CClip", "ALIE")]["aggregator"] == (
        "centered-clipping(tau=10, iterations=3)")
    assert exp3[bm.Cell("SGD, momentum 0.9", "RFA s=2", "IPM")]["aggregator"] == (
        "bucketing(s=2)+geometric-median(iterations=8, nu=0.01, tol=0, start=zero)")
    vote = exp3[bm.Cell("vote", "Signum + WMV", "LF")]
    assert (vote["rule"], vote["aggregator"], vote["attack"]) == (
        "signum", "weighted-majority-vote", "label-flip")
    byzfl = dict(cells_of("byzfl", "full"))
    gm = resolve(TrainConfig(**byzfl[bm.Cell("GM", "gamma 0.33", "f=3", "opt-ALIE")]))
    # ByzFL's default configuration: 10 honest + f, batch 25, lr 0.1, momentum 0.9,
    # weight decay 1e-4, 800 steps evaluated every 50, Clipping + NNM + GM(nu 0.1, T 3)
    assert (gm.workers, gm.byzantine, gm.aggregator_f, gm.batch_size) == (13, 3, 3, 25)
    assert (gm.lr, gm.momentum, gm.weight_decay, gm.steps, gm.eval_every) == (
        0.1, 0.9, 1e-4, 800, 50)
    assert (gm.partition, gm.partition_gamma, gm.model) == ("gamma-byzfl", 0.33, "byzfl-cnn")
    assert gm.aggregator == ("clipping(c=2)+nnm+geometric-median(iterations=3, nu=0.1, "
                             "tol=0, start=zero)")
    assert gm.attack == "optimal-alie(search=forward, sign=1)"


def test_the_momentum_scaling_gives_their_honest_steps():
    """Their m_t = beta m_{t-1} + g_t with lr eta, ours m_t = beta m_{t-1} + (1 - beta) g_t
    with lr eta / (1 - beta) (khj_scaled): the same step at every t, by a plain loop."""
    gen = random.Random(3)
    beta, eta = 0.9, 0.01
    theirs = ours = 0.0
    for _ in range(50):
        g = gen.gauss(0, 1)
        theirs = beta * theirs + g
        ours = beta * ours + bm.khj_scaled(beta) * g
        assert math.isclose(eta * theirs, eta / bm.khj_scaled(beta) * ours, rel_tol=1e-9)
    assert bm.khj_scaled(0.0) == 1.0


def test_the_published_tables_agree_with_each_other_and_the_issue():
    exp2 = bm.KHJ_PUBLISHED["karimireddy-exp2"]
    issue = {"mean": (93.20, 92.73, 92.67), "Krum": (90.36, 37.33, 53.15),
             "median": (90.80, 64.27, 78.60), "RFA": (92.92, 78.93, 91.17),
             "CClip": (93.16, 91.53, 92.56)}
    for agg, (iid, non_iid, bucketed) in issue.items():
        assert (exp2[(agg, "iid")], exp2[(agg, "non-iid")], exp2[(agg, "non-iid s=2")]) == (
            iid, non_iid, bucketed)
    assert len(bm.EXP3_PUBLISHED) == 2 * 4 * 2 * 5
    # experiment 3's momentum-0 mimic runs are experiment 2's non-iid runs
    for agg in ("Krum", "median", "RFA", "CClip"):
        assert bm.EXP3_PUBLISHED[(0.0, agg, "mimic")] == exp2[(agg, "non-iid")]
        assert bm.EXP3_PUBLISHED[(0.0, f"{agg} s=2", "mimic")] == exp2[(agg, "non-iid s=2")]
    assert bm.published("karimireddy-exp3", "SGD, momentum 0.9", "RFA s=2", "IPM") == 95.90
    assert bm.published("karimireddy-exp2", "vote", "Signum + MV", "iid") is None
    assert bm.published("byzfl", "GM", "gamma 1", "f=1") is None


# --- the reported numbers ---------------------------------------------------------------


def test_khj_number_is_the_mean_over_seeds_of_the_mean_of_the_last_k():
    assert bm.khj_number([[0.1, 0.5, 0.7, 0.9], [0.2, 0.4, 0.6, 0.8]], 2) == pytest.approx(
        ((0.7 + 0.9) / 2 + (0.6 + 0.8) / 2) / 2)
    assert bm.khj_number([[0.1, 0.5]], 5) == pytest.approx(0.3)  # fewer than k: all
    assert math.isnan(bm.khj_number([[0.5, float("nan")], [0.5, 0.5]], 1))
    assert bm.khj_number([], 5) is None
    gen = random.Random(7)
    for _ in range(50):
        seeds, length, k = gen.randint(1, 4), gen.randint(1, 9), gen.randint(1, 6)
        series = [[gen.random() for _ in range(length)] for _ in range(seeds)]
        total = 0.0
        for s in series:  # the loop of their exp2.py, then the mean over seeds
            last = s[-k:]
            total += sum(last) / len(last)
        assert bm.khj_number(series, k) == pytest.approx(total / seeds)


def test_byzfl_number_is_the_min_over_attacks_of_the_max_over_steps_of_seed_means():
    curves = {"A": [{50: 0.5, 100: 0.7}, {50: 0.7, 100: 0.5}],   # means 0.6, 0.6
              "B": [{50: 0.9, 100: 0.2}, {50: 0.1, 100: 0.8}]}   # means 0.5, 0.5
    # each run's best, then the mean, would be 0.8 for B and rank A as the worst
    assert bm.byzfl_number(curves) == (pytest.approx(0.5), "B")
    assert bm.byzfl_number({"A": [{50: 0.5}], "B": [{50: float("nan")}]}) == (None, "B")
    gen = random.Random(11)
    for _ in range(50):
        steps = [50 * (i + 1) for i in range(gen.randint(1, 5))]
        attacks = {a: [{t: gen.random() for t in steps} for _ in range(gen.randint(1, 3))]
                   for a in ("SF", "opt-IPM", "opt-ALIE")}
        brute = min((max(sum(r[t] for r in runs) / len(runs) for t in steps), a)
                    for a, runs in attacks.items())
        value, attack = bm.byzfl_number(attacks)
        assert value == pytest.approx(brute[0]) and attack == brute[1]


def fake_series(cells, value):
    """A run series for every config of ``cells``: evaluations at steps 30, 60, 90 of
    ``value(cell, seed, step)``."""
    from signvote.experiment import sweep

    return {sweep.run_id(c): [(t, value(cell, c.seed, t)) for t in (30, 60, 90)]
            for cell, c in cells}


def test_tables_place_each_runs_number_in_its_cell():
    cells = bm.grid("byzfl", "reduced", seeds=[0, 1], dataset="digits", model="smallcnn")
    attacks = list(bm.BYZFL_ATTACKS)

    def value(cell, seed, step):  # a seed-dependent, attack-dependent curve
        return 0.1 * (attacks.index(cell.attack) + 1) + 0.01 * seed + step / 1000

    out = bm.tables("byzfl", cells, fake_series(cells, value), 1)
    assert set(out) == {"TrMean", "GM", "Signum + MV", "Signum + WMV"}
    table = out["GM"]
    assert table["rows"] == ["gamma 1", "gamma 0"] and table["columns"] == ["f=1", "f=4"]
    # min over attacks (SF, the first) of max over steps (90) of the mean over seeds
    assert table["ours"]["gamma 0|f=4"] == pytest.approx(100 * (0.1 + 0.005 + 0.09))
    assert table["worst"]["gamma 0|f=4"] == "SF"
    khj = bm.grid("karimireddy-exp2", "reduced", dataset="digits")
    out = bm.tables("karimireddy-exp2", khj, fake_series(khj, lambda c, s, t: t / 100), 2)
    assert out["SGD"]["ours"]["Krum|non-iid s=2"] == pytest.approx(100 * (0.6 + 0.9) / 2)
    assert out["vote"]["rows"] == ["Signum + MV", "Signum + WMV"]
    assert out["vote"]["columns"] == ["iid", "non-iid"]
    missing = bm.tables("karimireddy-exp2", khj, {}, 2)
    assert missing["SGD"]["ours"]["mean|iid"] is None


# --- the claims ----------------------------------------------------------------------------


def exp2_tables(**cells):
    ours = {f"{a}|{c}": v for (a, c), v in bm.KHJ_PUBLISHED["karimireddy-exp2"].items()}
    ours.update(cells)
    return {"SGD": {"rows": list(bm.KHJ_AGGREGATORS), "columns": list(bm.KHJ_COLUMNS),
                    "ours": ours, "worst": {}}}


def verdicts(tables_, name="karimireddy-exp2"):
    return {text.split(" ")[0]: v for text, v in bm.claims(name, tables_)}


def test_the_published_numbers_hold_the_papers_claims():
    for text, v in bm.claims("karimireddy-exp2", {}, "published"):
        assert v.failures == 0, text
    for text, v in bm.claims("karimireddy-exp1", {}, "published"):
        if text.startswith("bucketing"):
            assert v.failures == 0, text


def test_each_claim_fails_just_past_its_threshold():
    """CClip's gap of exactly 2 points holds, 2.01 fails; Krum bucketed equal to
    unbucketed holds, 0.01 below fails; Krum's non-iid loss of exactly 2 holds, 1.99
    fails."""
    ok = verdicts(exp2_tables(**{"CClip|non-iid": 93.16 - 2.0}))
    assert ok["CClip"].failures == 0
    bad = verdicts(exp2_tables(**{"CClip|non-iid": 93.16 - 2.01}))
    assert bad["CClip"].failures == 1
    assert verdicts(exp2_tables(**{"Krum|non-iid s=2": 37.33}))["bucketing"].failures == 0
    assert verdicts(exp2_tables(**{"Krum|non-iid s=2": 37.32}))["bucketing"].failures == 1
    assert verdicts(exp2_tables(**{"Krum|non-iid": 88.36}))["non-iid"].failures == 0
    assert verdicts(exp2_tables(**{"Krum|non-iid": 88.37}))["non-iid"].failures == 1
    lines = bm.claim_lines("karimireddy-exp2", exp2_tables(**{"Krum|non-iid s=2": 30.0}))
    assert lines[0].startswith("- DOES NOT HOLD on ours (2 of 3 cells)")
    assert "published: holds, 3 of 3" in lines[0]


def test_the_byzfl_claim_compares_gamma_0_with_gamma_1_at_each_f():
    table = {"rows": ["gamma 1", "gamma 0"], "columns": ["f=1", "f=4"], "worst": {},
             "ours": {"gamma 1|f=1": 90.0, "gamma 0|f=1": 80.0, "gamma 1|f=4": 70.0,
                      "gamma 0|f=4": 70.5}}
    found = dict(bm.claims("byzfl", {"TrMean": table}))
    (v,) = found.values()
    assert (v.points, v.failures) == (2, 1) and v.worst["f"] == "f=4"


# --- inputs and the command --------------------------------------------------------------


def test_bad_targets_and_scales_are_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown target 'exp9'; valid: karimireddy-exp1"):
        bm.choose_inputs("exp9", "reduced")
    with pytest.raises(ConfigError, match=r"--scale 'tiny'; valid: full, reduced"):
        bm.choose_inputs("byzfl", "tiny")
    with pytest.raises(ConfigError, match=r"--model byzfl-cnn does not take digits's "
                                          r"1x8x8 inputs; valid: a 28x28 dataset"):
        bm.choose_inputs("byzfl", "full", dataset="digits")


def test_the_reduced_scale_runs_smallcnn_and_says_so(monkeypatch):
    for name, target in bm.TARGETS.items():
        assert target.plans["reduced"].model == "smallcnn", name
        assert "smallcnn" in target.plans["reduced"].note
        assert target.plans["full"].model is None
    dataset, model, note, folder = bm.choose_inputs("byzfl", "reduced", dataset="digits")
    assert (dataset, model, folder, note) == ("digits", "smallcnn", None,
                                              "dataset digits (the benchmark: mnist)")
    # a reduced plan of the benchmark's model on images it cannot take: smallcnn, said
    target = bm.TARGETS["byzfl"]
    plans = {**target.plans, "reduced": bm.Plan(2, 1, 1, (0,), model=None)}
    monkeypatch.setitem(bm.TARGETS, "byzfl", bm.Target(
        target.name, target.title, target.source, target.model, plans, target.number))
    dataset, model, note, _ = bm.choose_inputs("byzfl", "reduced", dataset="digits")
    assert model == "smallcnn" and "byzfl-cnn does not take 1x8x8 inputs" in note


def test_without_mnist_the_reduced_scale_falls_back_and_the_full_one_refuses(monkeypatch):
    from types import SimpleNamespace

    from signvote import data

    asked = []

    def load(name, seed, folder=None, **kwargs):
        asked.append((name, folder))
        if name == "mnist":
            raise data.DatasetError("dataset mnist: IDX files not found")
        return SimpleNamespace(input_shape=(1, 28, 28), n_classes=10)

    monkeypatch.setattr(data, "load", load)
    chosen = bm.choose_inputs("karimireddy-exp1", "reduced", data_dir="/my/mnist")
    assert chosen == ("fashion-mnist", "smallcnn",
                      "dataset fashion-mnist (the benchmark: mnist, not found here)", None)
    assert [n for n, _ in asked] == ["mnist", "fashion-mnist"]
    assert str(asked[0][1]) == "/my/mnist" and asked[1][1] is None
    with pytest.raises(data.DatasetError, match="mnist"):
        bm.choose_inputs("karimireddy-exp1", "full")


def test_the_vote_lines_set_the_votes_beside_the_best_sgd_rule():
    cells = bm.grid("byzfl", "reduced", dataset="digits", model="smallcnn")
    table_index = {"TrMean": 0.5, "GM": 0.7, "Signum + MV": 0.6, "Signum + WMV": 0.4}
    out = bm.tables("byzfl", cells, fake_series(cells, lambda c, s, t: table_index[c.table]),
                    1)
    lines = bm.vote_lines(out)
    assert len(lines) == 4  # 2 gammas x 2 f
    assert lines[0] == ("- gamma 1, f=1: best of the field: GM 70.0%; Signum + MV 60.0%; "
                        "Signum + WMV 40.0%")


def test_the_command_lists_the_targets(capsys):
    from signvote import cli

    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in bm.TARGETS:
        assert name in text
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "karimireddy-exp9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in bm.TARGETS) and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "1", "-5"], "--seeds: -5 is out of range"),
    (["--device", "gpu7"], "--device 'gpu7' is no device; valid: auto, cpu, cuda, cuda:N"),
    (["--scale", "full"], "--model byzfl-cnn does not take digits's 1x8x8 inputs"),
])
def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys,
                                                                      extra, message):
    from signvote import cli

    out = tmp_path / "out"
    args = ["reproduce", "byzfl" if "full" in extra else "karimireddy-exp2", "--out",
            str(out), "--dataset", "digits", "--quiet", *extra]
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert message in err
    assert not out.exists()


def test_a_tiny_target_runs_end_to_end_and_writes_its_report(tmp_path, monkeypatch, capsys):
    """karimireddy-exp2 cut to Krum with and without bucketing on the non-iid split, 2
    steps evaluated after each, digits: 2 SGD runs and the 2 vote runs."""
    from signvote import cli

    tiny = bm.Plan(2, 1, 1, (0,), aggregators=("Krum",), attacks=("mimic",),
                   columns=("non-iid", "non-iid s=2"), note="tiny: 2 steps")
    target = bm.TARGETS["karimireddy-exp2"]
    monkeypatch.setitem(bm.TARGETS, "karimireddy-exp2", bm.Target(
        target.name, target.title, target.source, target.model, {"reduced": tiny},
        target.number))
    assert cli.main(["reproduce", "karimireddy-exp2", "--out", str(tmp_path), "--dataset",
                     "digits", "--jobs", "1", "--quiet", "--device", "cpu"]) == 0
    section = json.loads((tmp_path / "karimireddy-exp2" / "report.json").read_text())
    assert section["runs"] == 4 and section["dataset"] == "digits"
    assert section["wall_s"] > 0
    ours = section["tables"]["SGD"]["ours"]
    assert set(ours) == {"Krum|non-iid", "Krum|non-iid s=2"}
    assert all(0 <= v <= 100 for v in ours.values())
    assert set(section["tables"]["vote"]["ours"]) == {"Signum + MV|non-iid",
                                                      "Signum + WMV|non-iid"}
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "(`karimireddy-exp2`)" in report and "tiny: 2 steps" in report
    assert ("Each number: mean of each run's last 1 evaluations (every 1 iterations), then "
            "over seeds.") in report
    assert "(37.33)" in report  # Krum's published non-iid number beside ours
    assert "dataset digits (the benchmark: mnist)" in report
    assert (tmp_path / "karimireddy-exp2.png").stat().st_size > 0
    metrics = next((tmp_path / "karimireddy-exp2" / "runs").glob("*/metrics.csv"))
    assert len(metrics.read_text().splitlines()) == 1 + 2  # header, steps 1 and 2
    assert "BENCHMARKS.md" in capsys.readouterr().out


def test_reproduce_refuses_a_missing_dataset_at_full_scale(tmp_path, monkeypatch):
    from signvote import data

    def missing(name, seed, folder=None, **kwargs):
        raise data.DatasetError(f"dataset {name}: IDX files not found")

    monkeypatch.setattr(data, "load", missing)
    with pytest.raises(data.DatasetError, match="mnist"):
        bm.reproduce("karimireddy-exp2", tmp_path / "out", "full")
    assert not (tmp_path / "out").exists()


def test_every_target_name_and_table_is_in_the_cli_choices():
    from signvote.experiment import reproduce

    assert not set(bm.TARGETS) & set(reproduce.FIGURES)
    assert list(itertools.chain(bm.TARGETS)) == ["karimireddy-exp1", "karimireddy-exp2",
                                                 "karimireddy-exp3", "byzfl"]
