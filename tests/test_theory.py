"""The paper's bounds against exact values, brute force and Monte Carlo."""

import itertools
import math
import statistics

import pytest
import torch

from signvote import theory


@pytest.mark.parametrize("noise", theory.NOISES, ids=lambda n: n.name)
def test_each_noise_has_mean_0_variance_1_and_its_exact_tail(noise):
    gen = torch.Generator().manual_seed(11)
    xi = noise.sample(400_000, gen)
    assert abs(float(xi.mean())) < 0.02 and abs(float(xi.var()) - 1) < 0.05
    for s in (0.0, 0.3, 1.0, 1.5):
        # binomial standard error of a frequency from 400k draws: at most 0.0008
        assert abs(float((xi <= -s).double().mean()) - noise.left_tail(s)) < 0.004


def brute_force_failure(workers, p, adversaries, mode):
    """Sum over every right/wrong pattern of the workers (2^M terms)."""
    total = 0.0
    for pattern in itertools.product((0, 1), repeat=workers):
        prob = 1.0
        for i, right in enumerate(pattern):
            if i < adversaries and mode == "byzantine":
                prob *= 1.0 if right == 0 else 0.0  # always wrong
                continue
            q = (1 - p) if i < adversaries else p  # blind: inverted
            prob *= q if right else 1 - q
        if 2 * sum(pattern) <= workers:
            total += prob
    return total


@pytest.mark.parametrize("mode", theory.MODES)
@pytest.mark.parametrize("workers, adversaries", [(1, 0), (4, 1), (5, 2), (7, 3), (8, 0)])
@pytest.mark.parametrize("p", [0.3, 0.6, 0.9])
def test_the_exact_vote_failure_equals_a_brute_force(mode, workers, adversaries, p):
    assert theory.vote_failure_exact(workers, p, adversaries, mode) == pytest.approx(
        brute_force_failure(workers, p, adversaries, mode), abs=1e-12)


@pytest.mark.parametrize("mode", theory.MODES)
@pytest.mark.parametrize("workers, adversaries, p", [(11, 3, 0.7), (31, 10, 0.8),
                                                     (10, 4, 0.65)])
def test_the_exact_vote_failure_matches_monte_carlo(mode, workers, adversaries, p):
    gen = torch.Generator().manual_seed(5)
    trials = 200_000
    exact = theory.vote_failure_exact(workers, p, adversaries, mode)
    drawn = theory.vote_failure_monte_carlo(workers, p, adversaries, mode, trials, gen)
    assert abs(drawn - exact) < 5 * math.sqrt(exact * (1 - exact) / trials) + 1e-4


def test_every_bound_is_above_the_exact_value_where_its_assumptions_hold():
    checks = theory.check_all()
    assert len(checks) == 2 * len(theory.NOISES) + 2 * 4 * 5
    for check in checks:
        if check.assumptions_hold:
            assert check.holds, (check.bound, check.case, check.violations[:3])
            assert 0 < check.tightest_ratio <= 1 + 1e-9


def test_lemma_1_fails_on_an_asymmetric_noise_outside_its_assumptions():
    (check,) = [c for c in theory.check_all() if c.bound == "Lemma 1"
                and c.case.startswith("exponential - 1")]
    assert not check.assumptions_hold and not check.holds
    s, exact, bound = check.violations[0]
    assert s == 0 and exact == pytest.approx(1 - math.exp(-1)) and bound == 0.5


def test_the_checker_reports_a_bound_that_is_too_small():
    gaussian = theory.NOISES[0]
    check = theory.check_bound(lambda s: 0.9 * gaussian.left_tail(s), gaussian.left_tail,
                               theory.SNR_GRID, "too small", "gaussian")
    assert not check.holds
    assert len(check.violations) == sum(gaussian.left_tail(s) > 0 for s in theory.SNR_GRID)


def test_lemma_bounds_at_known_points():
    assert theory.lemma1_sign_error(0.0) == 0.5
    assert theory.lemma1_sign_error(2.0) == pytest.approx(2 / 36)
    assert theory.lemma1bis_sign_error(1.0) == 0.5


def test_the_tolerable_fraction_is_where_the_exact_vote_turns():
    p = 0.8  # limit 1 - 1/(2p) = 0.375
    assert theory.tolerable_fraction(p) == pytest.approx(0.375)
    m = 400
    below = theory.vote_failure_exact(m, p, int(0.30 * m), "byzantine")
    above = theory.vote_failure_exact(m, p, int(0.45 * m), "byzantine")
    assert below < 0.01 and above > 0.99
    f = theory.tolerable_byzantine(m, p)
    assert abs(f / m - 0.375) < 0.02
    assert theory.vote_failure_exact(m, p, f, "byzantine") < 0.5
    assert theory.vote_failure_exact(m, p, f + 1, "byzantine") >= 0.5
    assert theory.tolerable_fraction(0.4) == 0.0


@pytest.mark.slow
def test_the_theory_command_writes_figures_and_a_report(tmp_path, capsys):
    import json

    from signvote.cli import main

    assert main(["theory", "--out", str(tmp_path), "--rate-repeats", "2", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "statements checked, 2 fail within their assumptions: Lemma 1bis: 1/(2S^2); " \
           "step 5: Lemma 1bis in step 4" in out
    assert "52 bounds checked, 1 fail somewhere" in out
    assert "(0 within their assumptions)" in out
    for name in ("sign_error", "lemma1bis", "vote_failure", "tolerance", "rates"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
        assert (tmp_path / f"{name}.svg").stat().st_size > 0
    report = (tmp_path / "THEORY.md").read_text()
    assert "| Lemma 1 | exponential - 1 (asymmetric) | no | NO | 31 of 251 |" in report
    assert "| Lemma 1bis: 1/(2S^2) | Akoun & Meyer 2022 | NO: 15 of 19 cases |" in report
    assert "### Theorem 2bis's rate with one p" in report
    assert "## Step 1" not in report  # --quick leaves the coalition section out
    written = json.loads((tmp_path / "checks.json").read_text())
    assert sum(not c["holds"] for c in written["checks"]) == 1
    # every rate case and panel point, once per bound; only Theorem 2 on Byzantine fails
    assert len(written["rates"]) == 3 * (len(theory.RATE_CASES) + 4 * 4)
    failed = [r for r in written["rates"] if not r["holds"]]
    assert failed and all(r["bound"] == "Theorem 2" and r["mode"] == "byzantine"
                          and not r["assumptions_hold"] for r in failed)
    assert "## Convergence rates" in report and "| quadratic, gaussian, sigma=10" in report
    assert not (tmp_path / "vote_wrong.png").exists()  # only with --sweep


def test_the_theory_command_refuses_one_rate_repeat(tmp_path, capsys):
    from signvote.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["theory", "--out", str(tmp_path), "--rate-repeats", "1"])
    assert stop.value.code != 0
    assert "--rate-repeats 1: valid: 2 (a standard error needs two runs) to 1000" in (
        capsys.readouterr().err)


def test_measure_step_against_a_loop():
    gen = torch.Generator().manual_seed(2)
    d, h = 40, 5
    full = torch.randn(d, generator=gen)
    full[3] = 0.0  # not counted
    grads = full + torch.randn(h, d, generator=gen)
    messages = torch.sign(grads)
    messages[0, 5] = 0.0
    vote = torch.sign(messages.sum(0))
    got = theory.measure_step(full, grads, messages, vote)
    live = [j for j in range(d) if full[j] != 0]
    agree = sum(float(torch.sign(messages[i, j]) == torch.sign(full[j]))
                for i in range(h) for j in live) / (h * len(live))
    wrong = sum(float(torch.sign(vote[j]) != torch.sign(full[j])) for j in live) / len(live)
    snr = sorted(abs(float(grads[:, j].double().mean())) / float(grads[:, j].double().std())
                 for j in live)
    assert got["theory_p"] == pytest.approx(agree)
    assert got["theory_vote_wrong"] == pytest.approx(wrong)
    last = len(snr) - 1
    assert got["theory_snr_median"] == pytest.approx(snr[last // 2])  # lower median
    assert got["theory_snr_q10"] == pytest.approx(snr[int(0.1 * last)])
    assert got["theory_snr_q90"] == pytest.approx(snr[int(0.9 * last)])
    assert got["theory_snr_above_critical"] == pytest.approx(
        sum(s > 2 / math.sqrt(3) for s in snr) / len(snr))
    assert set(got) == set(theory.MEASURE_STEP_COLUMNS)


def test_the_metrics_writer_knows_the_theory_columns():
    from signvote.experiment import runs

    assert runs.THEORY_COLUMNS == theory.MEASURE_COLUMNS


@pytest.mark.slow
def test_training_records_the_measurements_and_the_vote_fails_more_under_attack(tmp_path):
    from signvote.engine.sim import train
    from signvote.experiment.config import TrainConfig

    clean = train(TrainConfig(workers=10, epochs=2, measure_theory=True, seed=3,
                              out=str(tmp_path / "a")), progress=False)
    attacked = train(TrainConfig(workers=10, epochs=2, measure_theory=True, seed=3,
                                 byzantine=4, out=str(tmp_path / "b")), progress=False)
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",".join(theory.MEASURE_COLUMNS))
    for result in (clean, attacked):
        for row in result.metrics:
            assert 0.5 < row["theory_p"] < 1 and 0 <= row["theory_vote_wrong"] < 0.5
            assert 0 < row["theory_snr_q10"] <= row["theory_snr_median"] <= row[
                "theory_snr_q90"]
            assert 0 <= row["theory_snr_above_critical"] <= 1
    assert attacked.metrics[-1]["theory_vote_wrong"] > clean.metrics[-1]["theory_vote_wrong"]
    # the binomial at each coordinate's own p predicts the measured wrong-vote fraction
    for row in attacked.metrics:
        assert abs(row["theory_vote_wrong_predicted"] - row["theory_vote_wrong"]) < 0.05


def test_measuring_is_the_simulators():
    from signvote.experiment.config import ConfigError, TrainConfig, resolve

    with pytest.raises(ConfigError, match="--measure-theory is measured by the simulator"):
        resolve(TrainConfig(engine="dist", measure_theory=True))


def test_observed_breakdown_is_the_smallest_fraction_where_the_vote_is_mostly_wrong():
    from signvote.experiment.theory_report import observed_breakdowns

    rows = []
    wrong = {0: 0.1, 1: 0.2, 2: 0.55, 3: 0.45, 4: 0.9}  # non-monotone on purpose
    for byz, w in wrong.items():
        for epoch, scale in ((1, 0.0), (2, 1.0)):  # only the last epoch counts
            rows.append({"run": f"s{byz}", "rule": "signsgd", "workers": 10,
                         "byzantine": byz, "epoch": epoch, "theory_p": 0.8 if byz == 0
                         else 0.6, "theory_vote_wrong": w * scale})
    rows.append({"run": "m0", "rule": "signum", "workers": 10, "byzantine": 0, "epoch": 1,
                 "theory_p": 0.9, "theory_vote_wrong": 0.0})
    got = {o["rule"]: o for o in observed_breakdowns(rows)}
    assert got["signsgd"]["breakdown"] == 0.2 and got["signsgd"]["p"] == 0.8
    assert got["signsgd"]["predicted"] == pytest.approx(1 - 1 / 1.6)
    assert got["signum"]["breakdown"] is None and got["signum"]["largest_tested"] == 0.0


@pytest.mark.slow
def test_the_theory_command_marks_a_sweeps_breakdown(tmp_path, capsys):
    from signvote.cli import main

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('rule = "signsgd"\nworkers = 4\nbyzantine = [0, 2]\nepochs = 1\n'
                          "measure_theory = true\n")
    assert main(["sweep", str(sweep_file), "--out", str(tmp_path / "s"), "--jobs", "1",
                 "--quiet"]) == 0
    assert main(["theory", "--out", str(tmp_path / "t"), "--sweep", str(tmp_path / "s"),
                 "--rate-repeats", "2", "--quick"]) == 0
    report = (tmp_path / "t" / "THEORY.md").read_text()
    assert (tmp_path / "t" / "vote_wrong.png").stat().st_size > 0
    # 2 Byzantine of 4: the 2 honest votes can at best tie, so the vote is never right
    (row,) = [line for line in report.splitlines() if line.startswith("| signsgd |")]
    assert row.endswith("| 0.50 |")  # the observed breakdown
    assert "| 0.50 | 1.000 | 1.000 |" in report  # measured and predicted: always wrong


@pytest.mark.parametrize("workers, blind, byzantine", [(5, 0, 0), (6, 2, 0), (7, 0, 3),
                                                       (8, 2, 2), (4, 1, 1)])
def test_the_per_coordinate_failure_equals_the_scalar_one_and_a_brute_force(
        workers, blind, byzantine):
    ps = torch.tensor([0.2, 0.55, 0.7, 0.95])
    got = theory.vote_failure_per_coordinate(workers, ps, blind, byzantine)
    for p, value in zip(ps.tolist(), got.tolist(), strict=True):
        # brute force over every right/wrong pattern of the non-Byzantine voters
        voters = [p] * (workers - blind - byzantine) + [1 - p] * blind
        want = 0.0
        for pattern in itertools.product((0, 1), repeat=len(voters)):
            prob = math.prod(q if r else 1 - q for q, r in zip(voters, pattern, strict=True))
            if 2 * sum(pattern) <= workers:
                want += prob
        assert value == pytest.approx(want, abs=1e-12)
        if blind == 0:
            assert value == pytest.approx(
                theory.vote_failure_exact(workers, p, byzantine, "byzantine"), abs=1e-12)
        if byzantine == 0:
            assert value == pytest.approx(
                theory.vote_failure_exact(workers, p, blind, "blind"), abs=1e-12)


def test_the_prediction_averages_the_failure_over_coordinates():
    agree = torch.tensor([9, 5, 0, 3])
    live = torch.tensor([10, 10, 0, 4])  # the third coordinate was never counted
    want = statistics.fmean(theory.vote_failure_exact(5, p, 1, "byzantine")
                            for p in (0.9, 0.5, 0.75))
    assert theory.predicted_vote_wrong(agree, live, 5, 0, 1) == pytest.approx(want)


def test_the_coalition_section_tabulates_the_gaps_and_the_tightest_bounds():
    from signvote.experiment import theory_report

    lines = theory_report._coalition_lines()
    assert "## Step 1: the coalition's worst case, and the tightest bound" in lines
    gaps = [line for line in lines if line.startswith("| cancel-to-zero |")]
    assert len(gaps) == 2 and all("| 0.000 |" in line for line in gaps)
    (header,) = [line for line in lines if line.startswith("| M | points |")]
    assert "tightest: report step 4" in header
    rows = [line.split(" | ") for line in lines if line.startswith("| 101 |")]
    assert rows and rows[0][2] == "0"  # the report's step 4 is never the tightest
