"""The report's theory as printed (theory.as_printed): its Lemma 1bis and Theorem 2bis against
hand values, brute-force enumerations and the worst noise, step by step."""

import itertools
import math

import pytest
import torch

from signvote import theory
from signvote.theory import as_printed as ap


def test_the_printed_formulas_at_hand_computed_points():
    assert ap.report_lemma1bis_sign_error(2.0) == pytest.approx(1 / 8)
    assert ap.report_lemma1bis_sign_error(0.0) == math.inf
    assert theory.cantelli_sign_error(2.0) == pytest.approx(1 / 5)
    assert theory.lemma1bis_sign_error is theory.cantelli_sign_error  # the old name
    assert ap.report_tolerable_fraction(0.8) == pytest.approx(0.375)
    assert ap.report_tolerable_fraction(0.4) == 0.0
    # M = 16, p = 0.9, alpha = 0.25: margin 0.9 * 0.75 - 0.5 = 0.175
    assert ap.theorem2bis_failure_in_p(16, 0.9, 0.25) == pytest.approx(
        0.5 * math.sqrt(0.1) / 0.175 / 4)
    assert ap.theorem2bis_failure(16, 0.9, 0.25, 2.0) == pytest.approx(
        1 / (2 * math.sqrt(2)) / 0.175 / (2.0 * 4))
    assert ap.theorem2bis_failure_in_p(16, 0.6, 0.25) == math.inf  # 0.45 < 1/2: no bound
    rate = ap.theorem2bis_rate(l1_smoothness=4.0, sigma_l1=3.0, f_gap=2.0, workers=16,
                               alpha=0.25, p=0.9, steps=100)
    inner = 3.0 / (2 * math.sqrt(2) * 0.175 * 4) + math.sqrt(8.0)
    assert rate == pytest.approx(4 / math.sqrt(100 ** 2) * inner ** 2)


def _support(noise_name):
    """The exact distribution (values, probabilities) of a discrete noise, by hand."""
    negated = noise_name.startswith("-")
    kind, rest = noise_name.lstrip("-").split("(")
    parameter = float(rest.split(")")[0])
    if kind == "bernoulli":
        q = parameter
        values = [(1 - q) / math.sqrt(q * (1 - q)), -q / math.sqrt(q * (1 - q))]
        probs = [q, 1 - q]
    else:
        lam = parameter
        ks = range(80)
        values = [(k - lam) / math.sqrt(lam) for k in ks]
        probs = [math.exp(-lam) * lam ** k / math.factorial(k) for k in ks]
    if negated:
        values = [-v for v in values]
    return values, probs


@pytest.mark.parametrize("noise", ap.DISCRETE_NOISES, ids=lambda n: n.name)
def test_each_discrete_noise_has_mean_0_variance_1_and_its_exact_tail(noise, gen):
    values, probs = _support(noise.name)
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
    assert math.fsum(v * w for v, w in zip(values, probs, strict=True)) == pytest.approx(
        0.0, abs=1e-9)
    assert math.fsum(v * v * w for v, w in zip(values, probs, strict=True)) == pytest.approx(
        1.0, abs=1e-9)
    for s in [0.05 * i for i in range(1, 101)]:
        by_hand = math.fsum(w for v, w in zip(values, probs, strict=True) if v <= -s + 1e-12)
        assert noise.left_tail(s) == pytest.approx(by_hand, abs=1e-9), s
    draws = noise.sample(200_000, gen)
    for s in (0.5, 1.0, 2.0):
        assert float((draws <= -s).double().mean()) == pytest.approx(
            noise.left_tail(s), abs=4e-3)


def test_the_two_point_noise_reaches_the_worst_sign_error_and_no_noise_exceeds_it():
    for s in (0.5, 1.0, 2.0, 4.0):
        # -S with probability 1/(1+S^2), 1/S otherwise: mean 0, variance 1
        w = 1 / (1 + s * s)
        assert -s * w + (1 / s) * (1 - w) == pytest.approx(0.0, abs=1e-12)
        assert s * s * w + (1 - w) / (s * s) == pytest.approx(1.0)
        assert ap.worst_sign_error(s) == pytest.approx(w)
    for noise in ap.CLAIM_NOISES:
        assert all(noise.left_tail(s) <= ap.worst_sign_error(s) + 1e-12 for s in ap.LEMMA_GRID)


def _verdicts(statement):
    return {v.case: v for v in ap.lemma_verdicts() if v.statement == statement}


def test_the_reports_lemma_1bis_fails_exactly_where_the_rare_negative_value_is_too_likely():
    report = _verdicts("Lemma 1bis: 1/(2S^2)")
    for noise in ap.CLAIM_NOISES:
        brute = sum(noise.left_tail(s) > 1 / (2 * s * s) + 1e-12 for s in ap.LEMMA_GRID)
        assert report[noise.name].failures == brute, noise.name
    for noise in theory.NOISES:
        if noise.symmetric_unimodal:
            assert report[noise.name].holds
    # -bernoulli(0.1): the value -3 with probability 0.1, so wrong 0.1 > 1/(2 S^2) on
    # sqrt(5) < S <= 3
    failing = report["-bernoulli(0.1), standardised"]
    assert failing.failures == sum(math.sqrt(5) < s <= 3 for s in ap.LEMMA_GRID) > 0
    assert failing.ratio == pytest.approx(0.1 / (1 / 18))  # at S = 3: 1.8
    # over every noise, it fails for every S > 1, by 2 S^2 / (1 + S^2) < 2
    worst = report[ap.WORST_CASE]
    assert worst.failures == sum(s > 1 for s in ap.LEMMA_GRID)
    assert worst.ratio == pytest.approx(2 * 25 / 26)


def test_the_fixes_hold_where_they_say_and_cantelli_is_reached():
    symmetric = _verdicts("fix: Lemma 1bis + symmetric noise")
    assert all(v.holds for v in symmetric.values() if v.assumptions_hold)
    assert not all(v.holds for v in symmetric.values())  # asymmetric noises break it
    assert all(v.holds for v in _verdicts("fix: 1/S^2 (Chebyshev, constant 1)").values())
    cantelli = _verdicts("Cantelli: 1/(1+S^2)")
    assert all(v.holds for v in cantelli.values())
    assert cantelli[ap.WORST_CASE].ratio == pytest.approx(1.0)


def test_a_bound_weakened_or_strengthened_is_caught():
    points = [({"S": s}, ap.worst_sign_error(s), theory.cantelli_sign_error(s))
              for s in ap.LEMMA_GRID]
    assert ap.verdict("tight", "t", "c", points).holds
    shrunk = [(w, lhs, 0.99 * rhs) for w, lhs, rhs in points]
    assert ap.verdict("too small", "t", "c", shrunk).failures == len(points)
    grown = [(w, lhs, 1.01 * rhs) for w, lhs, rhs in points]
    verdict = ap.verdict("loose", "t", "c", grown)
    assert verdict.holds and verdict.ratio == pytest.approx(1 / 1.01)
    # infinite bounds count as held, and never as the worst point
    assert ap.verdict("none", "t", "c", [({}, 0.7, math.inf)]).holds


def _brute_failure(honest, byzantine, p):
    """P[vote wrong or tied] with every Byzantine against, over all 2^H honest votes."""
    total = 0.0
    for votes in itertools.product((1, -1), repeat=honest):
        right = votes.count(1)
        weight = p ** right * (1 - p) ** (honest - right)
        if sum(votes) - byzantine <= 0:
            total += weight
    return total


@pytest.mark.parametrize(("workers", "byzantine"), [(1, 0), (3, 1), (5, 2), (8, 1), (10, 3)])
@pytest.mark.parametrize("p", [0.55, 0.8, 0.97])
def test_each_proof_step_is_the_inequality_it_prints(workers, byzantine, p):
    honest = workers - byzantine
    exact = _brute_failure(honest, byzantine, p)
    ps = torch.tensor([p], dtype=torch.float64)
    assert ap._exact_byzantine(workers, byzantine, ps)[0] == pytest.approx(exact)
    mean, var = honest * p, honest * p * (1 - p)
    if mean <= workers / 2:
        assert ap.step2_cantelli(workers, byzantine, p) == math.inf
        return
    x = (mean - workers / 2) / math.sqrt(var)
    assert ap.step2_cantelli(workers, byzantine, p) == pytest.approx(1 / (1 + x * x))
    assert ap.step3_am_gm(workers, byzantine, p) == pytest.approx(1 / (2 * x))
    assert exact <= ap.step2_cantelli(workers, byzantine, p) <= ap.step3_am_gm(
        workers, byzantine, p) <= ap.theorem2bis_failure_in_p(workers, p, byzantine / workers)


def test_the_proof_holds_to_step_4_breaks_at_step_5_and_its_bound_still_holds():
    verdicts = ap.proof_step_verdicts(workers=(3, 11, 31), snrs=ap.LEMMA_GRID[::5])
    by = {}
    for v in verdicts:
        by.setdefault(v.statement, []).append(v)
    for step in ("step 2: Cantelli on Z", "step 3: 1 + x^2 >= 2x", "step 4: p (1 - alpha) <= 1"):
        assert all(v.holds for v in by[step]), step
    step5 = {v.case: v for v in by["step 5: Lemma 1bis in step 4"]}
    assert not step5[ap.WORST_CASE].holds and not step5["-bernoulli(0.1), standardised"].holds
    assert step5["gaussian"].holds  # Lemma 1bis holds on symmetric noise
    for name in ("Theorem 2bis's vote bound (step 5)", "fix: step 5 with 1/S^2 (Chebyshev)",
                 "fix: step 5 with 1/(1+S^2) (Cantelli)"):
        assert all(v.holds for v in by[name]), name


def test_theorem_2bis_rate_at_one_p_on_a_small_simulation():
    case = theory.RateCase("quadratic", "gaussian", "byzantine", 10, 1, 16)
    checks, summary = ap.theorem2bis_rate_checks(case, 3, torch.Generator().manual_seed(0))
    assert 0.5 <= summary["min"] <= summary["median"] <= 1.0
    assert summary["min"] <= summary["mean"] <= 1.0
    assert [c.bound for c in checks] == [f"Theorem 2bis, p = {w}" for w in ap.SINGLE_P]
    for check, where in zip(checks, ap.SINGLE_P, strict=True):
        assert check.value == pytest.approx(ap.theorem2bis_rate(
            l1_smoothness=10.0, sigma_l1=10.0, f_gap=45.0, workers=10, alpha=0.1,
            p=summary[where], steps=16))
    with pytest.raises(ValueError, match="valid: gaussian"):
        ap.theorem2bis_rate_checks(theory.RateCase("quadratic", "laplace", "byzantine", 10,
                                                   1, 16), 3, torch.Generator())


def test_p_summary_uses_the_lower_middle_value():
    assert ap.p_summary(torch.tensor([0.9, 0.6, 0.7, 0.8])) == {
        "min": pytest.approx(0.6), "median": pytest.approx(0.7), "mean": pytest.approx(0.75)}


def test_step_4_is_nearly_tight_so_a_tenth_less_would_fail():
    grid = [(m, f, p) for m in (11, 31) for f in range(m) for p in ap.STEP_GRID_P]
    points = [({"M": m, "f": f, "p": p}, ap.step3_am_gm(m, f, p),
               0.9 * ap.theorem2bis_failure_in_p(m, p, f / m)) for m, f, p in grid]
    assert not ap.verdict("step 4, strengthened", "t", "c", points).holds
