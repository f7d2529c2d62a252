"""The convergence-rate bounds: Theorem 2 as printed, the derived blind/Byzantine bound,
its one-step inequality against an exact enumeration, and the simulator against a loop."""

import itertools
import math

import pytest
import torch

from signvote import theory


def test_theorem2_rate_at_a_point_worked_by_hand():
    # L1 = 4, sigma1 = 2, f0 - f* = 1, M = 4, alpha = 1/4, K = 16 (N = 256):
    # 4 / 16 * [2 / (1/2 * 2) + sqrt(4 * 1)]^2 = 1/4 * 16 = 4
    assert theory.theorem2_rate(l1_smoothness=4, sigma_l1=2, f_gap=1, workers=4, alpha=0.25,
                                steps=16) == pytest.approx(4.0)
    assert theory.theorem2_rate(l1_smoothness=4, sigma_l1=2, f_gap=1, workers=4, alpha=0.5,
                                steps=16) == math.inf
    assert theory.theorem2_schedule(2.0, 8.0, 4) == (0.25, 4)


def test_the_derived_bound_is_the_best_of_its_thresholds_and_decays_like_one_over_k():
    args = {"l1_smoothness": 10.0, "sigma_l1": 10.0, "f_gap": 45.0, "workers": 10,
            "adversaries": 3, "mode": "byzantine"}
    grid = theory.RATE_SNR_GRID
    best = theory.vote_rate_bound(steps=64, **args)
    each = [theory.vote_rate_bound(steps=64, snr_grid=[s], **args) for s in grid[::20]]
    assert best <= min(each) and math.isfinite(best)
    assert theory.vote_rate_bound(steps=256, **args) == pytest.approx(best / 4)
    # more Byzantine workers never help; half of them or more: no bound
    worse = [theory.vote_rate_bound(steps=64, **{**args, "adversaries": f}) for f in range(5)]
    assert worse == sorted(worse)
    assert theory.vote_rate_bound(steps=64, **{**args, "adversaries": 5}) == math.inf


def exact_descent(g, sd, workers, adversaries, mode):
    """E[g . sign(vote)] by enumerating every right/wrong pattern of the workers, for
    Gaussian noise of standard deviation sd[i] on coordinate i."""
    total = 0.0
    for gi, si in zip(g.tolist(), sd.tolist(), strict=True):
        p = 0.5 * math.erfc(-abs(gi) / si / math.sqrt(2))  # P[a worker's sign is right]
        net = 0.0
        for pattern in itertools.product((0, 1), repeat=workers):
            prob = 1.0
            for m, right in enumerate(pattern):
                if m < adversaries:
                    q = (1 - p) if mode == "blind" else 0.0
                else:
                    q = p
                prob *= q if right else 1 - q
            right = sum(pattern)
            net += prob * ((right > workers - right) - (right < workers - right))
        total += abs(gi) * net
    return total


@pytest.mark.parametrize("mode", theory.MODES)
@pytest.mark.parametrize("workers, adversaries", [(5, 0), (5, 1), (6, 2), (7, 2)])
def test_the_derivations_one_step_inequality_against_an_exact_enumeration(
        mode, workers, adversaries):
    """Step 2 of :func:`theory.vote_rate_bound`: for every threshold S* with P* < 1/2,
    E[g . sign(V)] >= (1 - 2 P*) ||g||_1 - 2 S* ||sd||_1 (sd: a worker's noise)."""
    gen = torch.Generator().manual_seed(workers * 10 + adversaries)
    for _ in range(3):
        g = torch.randn(6, generator=gen, dtype=torch.float64) * torch.tensor(
            [0.01, 0.1, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
        sd = torch.rand(6, generator=gen, dtype=torch.float64) + 0.2
        exact = exact_descent(g, sd, workers, adversaries, mode)
        tested = 0
        for lemma in (theory.lemma1_sign_error, theory.cantelli_sign_error):
            for s in (0.3, 1.0, 2.0, 4.0, 8.0):
                fail = theory.vote_failure_bound(workers, 1 - lemma(s),
                                                 adversaries / workers, mode)
                if fail >= 0.5:
                    continue
                tested += 1
                lower = (1 - 2 * fail) * float(g.abs().sum()) - 2 * s * float(sd.sum())
                assert exact >= lower - 1e-12, (lemma.__name__, s, exact, lower)
        assert tested > 0


def loop_descent(objective, start, steps, workers, adversaries, mode):
    """Noise-free majority vote, one coordinate at a time in plain Python: honest workers
    send sign(g), blind ones -sign(g) (their own estimate, inverted), Byzantine -sign(g)."""
    d = len(start)
    f_gap = float(objective.value(torch.tensor(start, dtype=torch.float64),
                                  torch.ones(d, dtype=torch.float64)))
    lr = math.sqrt(f_gap / (d * steps))
    x, norms = list(start), 0.0
    for _ in range(steps):
        g = objective.gradient(torch.tensor(x, dtype=torch.float64),
                               torch.ones(d, dtype=torch.float64)).tolist()
        norms += sum(abs(v) for v in g)
        for i, gi in enumerate(g):
            s = (gi > 0) - (gi < 0)
            votes = [s] * (workers - adversaries) + [-s] * adversaries
            total = sum(votes)
            x[i] -= lr * ((total > 0) - (total < 0))
    return (norms / steps) ** 2


@pytest.mark.parametrize("objective", theory.OBJECTIVES, ids=lambda o: o.name)
@pytest.mark.parametrize("workers, adversaries, mode", [(5, 0, "blind"), (5, 2, "blind"),
                                                        (4, 2, "byzantine"),
                                                        (5, 3, "byzantine")])
def test_the_simulator_without_noise_equals_a_loop(objective, workers, adversaries, mode):
    start = [0.7, -1.3, 2.0]
    ones = torch.ones(3, dtype=torch.float64)
    run = theory.simulate_vote_descent(
        objective, ones, 0 * ones, torch.tensor(start, dtype=torch.float64),
        theory.NOISES[0], workers=workers, adversaries=adversaries, mode=mode, steps=12,
        repeats=2, gen=torch.Generator().manual_seed(0))
    assert run["lhs"] == pytest.approx(loop_descent(objective, start, 12, workers,
                                                    adversaries, mode), rel=1e-12)
    assert run["lhs_se"] == 0


def test_theorem2_and_the_derived_bounds_hold_on_simulated_votes_within_assumptions():
    gen = torch.Generator().manual_seed(3)
    cases = [theory.RateCase("quadratic", "gaussian", "blind", 10, 4, 64),
             theory.RateCase("soft absolute value", "laplace", "blind", 10, 2, 16,
                             sigma=10.0, start=0.5),
             theory.RateCase("quadratic", "gaussian", "byzantine", 100, 40, 64,
                             sigma=10.0, start=0.5)]
    checked = 0
    for case in cases:
        for check in theory.rate_check(case, 8, gen):
            if check.assumptions_hold:
                checked += 1
                assert check.holds and 0 < check.ratio < 1, (case.label, check.bound)
    assert checked == 8


def test_theorem2_fails_for_byzantine_workers_outside_its_assumptions():
    # Byzantine workers can hold the iterate where S is about 1, whatever M: the
    # sigma / sqrt(M) term of Theorem 2 cannot cover that when M is large
    case = theory.RateCase("quadratic", "gaussian", "byzantine", 1000, 400, 64,
                           sigma=10.0, start=0.5)
    checks = {c.bound: c for c in theory.rate_check(case, 4, torch.Generator().manual_seed(1))}
    assert not checks["Theorem 2"].assumptions_hold and not checks["Theorem 2"].holds
    assert checks["Theorem 2"].ratio > 2
    assert checks["derived, Lemma 1"].holds and checks["derived, Cantelli"].holds


def test_the_rate_checker_reports_a_bound_that_is_too_small():
    case = theory.RateCase("quadratic", "gaussian", "blind", 10, 0, 16)

    def too_small(c, f_gap):
        return {"too small": (theory.rate_bounds(c, f_gap)["Theorem 2"][0] / 1000, True)}

    (check,) = theory.rate_check(case, 4, torch.Generator().manual_seed(2), too_small)
    assert check.bound == "too small" and not check.holds and check.ratio > 1
    # the margin is in standard errors of the measurement
    edge = theory.RateCheck(case, "b", True, measured=10.0, measured_se=1.0, value=6.9)
    assert not edge.holds and theory.RateCheck(case, "b", True, 10.0, 1.0, 7.1).holds


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="valid: quadratic, soft absolute value"):
        theory.rate_check(theory.RateCase("cubic", "gaussian", "blind", 5, 0, 4), 2,
                          torch.Generator())
    with pytest.raises(ValueError, match="repeats 1: need at least 2"):
        theory.rate_check(theory.RateCase("quadratic", "gaussian", "blind", 5, 0, 4), 1,
                          torch.Generator())
    with pytest.raises(ValueError, match="valid: blind, byzantine"):
        theory.vote_rate_bound(l1_smoothness=1, sigma_l1=1, f_gap=1, workers=5,
                               adversaries=0, mode="sleepy", steps=4)
