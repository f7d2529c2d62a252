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
