"""The spread of the per-coordinate p that ``--measure-theory`` records, and
:mod:`signvote.experiment.theory_training` (Theorem 2bis at one p against training)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from signvote import theory

# --- the per-coordinate p spread ----------------------------------------------------------


def _spread_by_loop(agree: list[int], live: list[int]) -> dict[str, float]:
    """The reference: a loop over coordinates, the lower order statistic by index."""
    ps = sorted(a / n for a, n in zip(agree, live, strict=True) if n > 0)
    last = len(ps) - 1
    return {"theory_p_coord_min": ps[0], "theory_p_coord_q10": ps[int(0.1 * last)],
            "theory_p_coord_median": ps[last // 2],
            "theory_p_coord_mean": sum(ps) / len(ps),
            "theory_p_coord_q90": ps[int(0.9 * last)]}


def test_the_p_spread_matches_a_loop_over_coordinates():
    agree = [9, 0, 5, 7, 3, 10, 0, 8, 6, 4, 2, 12]
    live = [10, 0, 10, 10, 5, 10, 10, 8, 12, 8, 4, 20]  # coordinate 1 never counted
    got = theory.p_coordinate_spread(torch.tensor(agree), torch.tensor(live))
    want = _spread_by_loop(agree, live)
    assert set(got) == set(theory.MEASURE_P_SPREAD_COLUMNS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-15), key
    # by hand: the 11 counted p sorted are 0, .5, .5, .5, .5, .6, .6, .7, .9, 1, 1
    assert got["theory_p_coord_min"] == 0.0
    assert got["theory_p_coord_q10"] == 0.5  # index int(0.1 * 10) = 1
    assert got["theory_p_coord_median"] == 0.6  # index 5
    assert got["theory_p_coord_q90"] == 1.0  # index 9
    assert got["theory_p_coord_mean"] == pytest.approx(6.8 / 11)


def test_the_p_spread_of_random_counts_matches_the_loop():
    gen = torch.Generator().manual_seed(4)
    live = torch.randint(0, 30, (257,), generator=gen)
    agree = (torch.rand(257, generator=gen) * (live + 1)).floor().long().clamp(max=live)
    got = theory.p_coordinate_spread(agree, live)
    for key, value in _spread_by_loop(agree.tolist(), live.tolist()).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_the_p_spread_of_no_counted_coordinate_is_nan():
    got = theory.p_coordinate_spread(torch.zeros(3, dtype=torch.long),
                                     torch.zeros(3, dtype=torch.long))
    assert all(math.isnan(v) for v in got.values())


def test_the_columns_agree_everywhere():
    from signvote.experiment import runs

    assert runs.THEORY_COLUMNS == theory.MEASURE_COLUMNS
    assert theory.MEASURE_COLUMNS[-5:] == theory.MEASURE_P_SPREAD_COLUMNS


def test_a_run_with_measure_theory_writes_the_p_spread(tmp_path):
    from signvote.engine.sim import train
    from signvote.experiment.config import TrainConfig

    result = train(TrainConfig(workers=5, epochs=1, measure_theory=True, seed=3, byzantine=1,
                               out=str(tmp_path / "a")), progress=False)
    with open(tmp_path / "a" / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    for key in theory.MEASURE_P_SPREAD_COLUMNS:
        assert float(row[key]) == pytest.approx(result.metrics[0][key])
    low, q10, med, q90 = (float(row[f"theory_p_coord_{k}"]) for k in ("min", "q10", "median",
                                                                      "q90"))
    assert 0 <= low <= q10 <= med <= q90 <= 1
    assert low <= float(row["theory_p_coord_mean"]) <= 1


# --- Theorem 2bis at one p against hand-made tidy rows ---------------------------------------


def _row(run: str, byzantine: int, epoch: int, wrong: float, spread: tuple[float, ...],
         seed: int = 1, attack: str = "vote-cancel", rule: str = "signsgd") -> dict:
    """A tidy row as results.tidy_rows gives it (metrics as text, as read from the CSV)."""
    row = {"run": run, "dataset": "logreg", "model": "logregnet", "rule": rule,
           "attack": attack, "workers": 10, "byzantine": byzantine, "seed": seed,
           "epoch": str(epoch), "theory_p": repr(spread[3]), "theory_vote_wrong": repr(wrong),
           "theory_vote_wrong_predicted": repr(wrong / 2)}
    for name, value in zip(("min", "q10", "median", "mean", "q90"), spread, strict=True):
        row[f"theory_p_coord_{name}"] = repr(value)
    return row


CLEAN = (0.8, 0.85, 0.9, 0.88, 0.95)


def _rows() -> list[dict]:
    return [
        _row("c", 0, 1, 0.3, (0.5, 0.55, 0.6, 0.6, 0.7)),  # an early epoch, not the last
        _row("c", 0, 2, 0.02, CLEAN),
        _row("a1", 1, 2, 0.1, (0.7, 0.8, 0.85, 0.84, 0.9), seed=1),
        _row("a2", 1, 2, 0.2, (0.72, 0.8, 0.87, 0.86, 0.9), seed=2),
        _row("b", 3, 2, 0.4, (0.6, 0.7, 0.8, 0.78, 0.9)),
        _row("d", 5, 2, 0.6, (0.5, 0.6, 0.7, 0.7, 0.8)),
        {"run": "x", "epoch": "2", "rule": "signsgd", "theory_vote_wrong": ""},  # no theory
    ]


def _step4(m: int, p: float, alpha: float) -> float:
    margin = p * (1 - alpha) - 0.5
    return math.inf if margin <= 0 else 0.5 * math.sqrt(1 - p) / margin / math.sqrt(m)


def _binomial_by_loop(m: int, p: float, f: int) -> float:
    """P[honest right votes <= M / 2] with the f Byzantine always wrong, summed by a loop."""
    h = m - f
    return sum(math.comb(h, k) * p ** k * (1 - p) ** (h - k) for k in range(h + 1)
               if 2 * k <= m)


def test_the_records_against_values_computed_by_hand():
    from signvote.experiment import theory_training as tt

    records = tt.single_p_records(_rows())
    assert [(r["byzantine"], r["seeds"]) for r in records] == [(0, 1), (1, 2), (3, 1), (5, 1)]
    one = records[1]
    assert one["task"] == "logreg/logregnet" and one["alpha"] == 0.1
    assert one["vote_wrong"] == pytest.approx(0.15)  # the mean over the two seeds
    assert one["vote_wrong_predicted"] == pytest.approx(0.075)
    assert one["p_own_median"] == pytest.approx(0.86)
    assert one["p_clean_median"] == 0.9 and one["p_clean_min"] == 0.8  # the last epoch's
    # step 4 at p = 0.9, alpha = 0.1, M = 10: 0.5 sqrt(0.1) / 0.31 / sqrt(10) = 0.05 / 0.31
    assert one["bound_clean_median"] == pytest.approx(0.05 / 0.31)
    assert one["bound_clean_min"] == pytest.approx(_step4(10, 0.8, 0.1))
    assert one["bound_own_mean"] == pytest.approx(_step4(10, 0.85, 0.1))
    assert one["exact_clean_median"] == pytest.approx(_binomial_by_loop(10, 0.9, 1))
    assert one["exact_own_min"] == pytest.approx(_binomial_by_loop(10, 0.71, 1))
    assert one["tolerable_clean_median"] == pytest.approx(1 - 1 / 1.8)
    assert records[3]["bound_clean_median"] == math.inf  # alpha 0.5 >= 1 - 1/(2 * 0.9)


def test_the_last_k_epochs_are_averaged():
    from signvote.experiment import theory_training as tt

    (clean,) = [v for v in tt.run_values(_rows(), last_epochs=2).values()
                if v["byzantine"] == 0]
    assert clean["epochs_averaged"] == 2
    assert clean["theory_vote_wrong"] == pytest.approx(0.16)
    assert clean["theory_p_coord_median"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="last_epochs 0"):
        tt.run_values(_rows(), last_epochs=0)


def test_the_breakdown_is_the_smallest_fraction_wrong_on_half_the_coordinates():
    from signvote.experiment import theory_training as tt

    (item,) = tt.breakdowns(tt.single_p_records(_rows()))
    assert item["breakdown"] == 0.5 and item["largest_tested"] == 0.5
    assert item["tolerable_median"] == pytest.approx(1 - 1 / 1.8)
    assert item["tolerable_min"] == pytest.approx(1 - 1 / 1.6)
    # exact: the most f with P[vote wrong] < 1/2 at p = 0.9 of 10 workers, by the loop
    best = max(f for f in range(10) if _binomial_by_loop(10, 0.9, f) < 0.5)
    assert item["tolerable_exact_median"] == best / 10
    low = tt.breakdowns(tt.single_p_records([_row("c", 0, 2, 0.6, (0.4, 0.5, 0.5, 0.5, 0.6)),
                                             _row("d", 5, 2, 0.9, CLEAN)]))
    assert low[0]["tolerable_exact_min"] == -0.1  # p = 0.4: even f = 0 fails
    assert low[0]["tolerable_min"] == 0.0
    assert "| f = 0 fails |" in tt.breakdown_table(low)
    zero = tt.single_p_records([_row("c", 0, 2, 0.6, (0.0, 0.5, 0.6, 0.6, 0.7))])
    assert zero[0]["tolerable_clean_min"] == 0.0  # p = 0: no division by 2p
    assert zero[0]["bound_clean_min"] == math.inf and zero[0]["exact_clean_min"] == 1.0


def test_the_verdicts_hold_where_measured_is_below_the_bound_and_no_further():
    from signvote.experiment import theory_training as tt

    verdicts = tt.single_p_verdicts(tt.single_p_records(_rows()))
    assert len(verdicts) == 6  # one task and rule, 2 sources, 3 statistics
    by = {(v.statement, v.case): v for v in verdicts}
    median = by[("Theorem 2bis step 4 at the median p",
                 "logreg/logregnet, signsgd, p of the runs without adversary")]
    # alpha 0: 0.02 <= 0.05/0.4; alpha 0.1: 0.15 <= 0.05/0.31; alpha 0.3: 0.4 > 0.05/0.13;
    # alpha 0.5 is outside the condition (no point)
    assert (median.points, median.failures) == (3, 1)
    assert median.worst["alpha"] == 0.3
    assert median.ratio == pytest.approx(0.4 / (0.05 / 0.13))
    assert not median.assumptions_hold
    informative = tt.informative_points(tt.single_p_records(_rows()))
    assert informative[verdicts.index(median)] == 3  # 0.125, 0.161, 0.385 all below 1
    low = tt.single_p_records([_row("c", 0, 2, 0.6, (0.4, 0.5, 0.5, 0.5, 0.6))])
    (at_min, *_) = tt.single_p_verdicts(low)
    assert at_min.points == 0  # p = 0.4 <= 1/2: the theorem claims nothing
    assert "| no claim | 0 | 0 | 0 |" in tt.verdict_table([at_min], [0])


@pytest.mark.parametrize("factor, failures", [(0.9, 2), (1.0, 1), (1.1, 0)])
def test_a_weakened_or_strengthened_bound_changes_the_verdict(monkeypatch, factor, failures):
    from signvote.experiment import theory_training as tt
    from signvote.theory import as_printed

    true_bound = as_printed.theorem2bis_failure_in_p
    monkeypatch.setattr(as_printed, "theorem2bis_failure_in_p",
                        lambda m, p, a: factor * true_bound(m, p, a))
    (median,) = [v for v in tt.single_p_verdicts(tt.single_p_records(_rows()))
                 if v.statement.endswith("median p") and "without adversary" in v.case]
    assert median.failures == failures


def test_the_tables_show_the_numbers():
    from signvote.experiment import theory_training as tt

    records = tt.single_p_records(_rows())
    text = tt.markdown_tables(records)
    assert "| logreg/logregnet | signsgd | 0.800 | 0.850 | 0.900 | 0.880 | 0.950 |" in text
    assert f"{0.05 / 0.31:.3f}" in tt.markdown_table(records)
    assert "none" in tt.markdown_table(records)  # alpha 0.5 at p 0.9: no bound
    with pytest.raises(ValueError, match="source 'x'; valid: clean, own"):
        tt.markdown_table(records, "x")


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path, capsys):
    from signvote.experiment import theory_training as tt

    assert tt.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("signvote: error:")
    assert tt.main([str(tmp_path), "--last", "0"]) == 2
    assert "last_epochs 0; valid: an integer >= 1" in capsys.readouterr().err
