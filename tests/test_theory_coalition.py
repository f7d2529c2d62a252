"""signvote.theory.coalition against brute force: every honest sign vector enumerated, the
attack classes called on the enumerated matrices, the outcomes counted."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from signvote import attacks
from signvote.attacks import AttackContext
from signvote.attacks.basic import cancelling_votes
from signvote.theory import coalition as co
from signvote.theory import vote_failure_bound, vote_failure_exact
from signvote.theory.as_printed import theorem2bis_failure_in_p, verdict

CASES = [(h, f) for h in (1, 2, 3, 4, 5, 8) for f in (0, 1, 2, 3, 4) if f <= h + 1]
PS = (0.5, 0.55, 0.7, 0.93)


def ctx() -> AttackContext:
    return AttackContext(step=0, generator=torch.Generator(), sign_messages=True)


def all_honest(h: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[h, 2^h]`` every honest vote vector (columns), and each column's right votes."""
    cols = torch.tensor(list(itertools.product((1.0, -1.0), repeat=h))).T.double()
    cols = cols * t
    return cols, (cols * t > 0).sum(0)


def brute_votes(strategy: str, honest: torch.Tensor, f: int, t: int) -> torch.Tensor:
    """The vote of each column, the coalition's messages from the attack itself (or, for
    the omniscient best response, a search over every message in {-1, 0, 1}^f)."""
    h, d = honest.shape
    if strategy == "all-against":
        return honest.sum(0) - t * f
    if strategy == "mengoli-optimal":
        options = [sum(m) for m in itertools.product((-1, 0, 1), repeat=f)]
        return torch.tensor([min(float(s) + c for c in options) if t > 0 else
                             max(float(s) + c for c in options) for s in honest.sum(0)])
    if strategy == "vote-cancel-fn":  # the function the attack calls, called directly
        return honest.sum(0) + cancelling_votes(torch.sign(honest).sum(0), f).sum(0)
    messages = torch.cat([honest, torch.full((f, d), 7.0, dtype=honest.dtype)])
    mask = torch.zeros(h + f, dtype=torch.bool)
    mask[h:] = True
    out = attacks.get(strategy)(messages, mask, ctx())
    assert torch.equal(out[:h], honest)  # honest rows untouched
    assert bool(((out[h:] == 0) | (out[h:].abs() == 1)).all())  # ternary votes
    return out.sum(0)


def brute_outcome(strategy: str, h: int, f: int, p: float, t: int) -> tuple[float, ...]:
    honest, right = all_honest(h, t)
    weights = [p ** int(k) * (1 - p) ** (h - int(k)) for k in right]
    signed = (t * brute_votes(strategy, honest, f, t)).tolist()
    return (math.fsum(w for w, v in zip(weights, signed, strict=True) if v <= 0),
            math.fsum(w for w, v in zip(weights, signed, strict=True) if v < 0),
            math.fsum(w * (v > 0) - w * (v < 0) for w, v in zip(weights, signed, strict=True)))


@pytest.mark.parametrize("h,f", CASES)
@pytest.mark.parametrize("strategy", co.STRATEGIES)
def test_outcome_matches_enumeration(strategy: str, h: int, f: int) -> None:
    for p in PS:
        for t in (1, -1):
            o = co.coalition_outcome(strategy, h, f, p, t)
            ref = brute_outcome("vote-cancel-fn" if strategy == "vote-cancel" and f else
                                strategy, h, f, p, t) if f else brute_outcome(
                                    "all-against", h, 0, p, t)
            assert (o.failure, o.wrong, o.progress) == pytest.approx(ref, abs=1e-12), \
                (strategy, h, f, p, t)
            if strategy in ("vote-cancel", "optimal-vote", "cancel-to-zero") and f:
                # the registered class, run on the enumerated matrix, gives the same
                assert (o.failure, o.wrong, o.progress) == pytest.approx(
                    brute_outcome(strategy, h, f, p, t), abs=1e-12)


def test_all_against_is_vote_failure_exact() -> None:
    for m in (3, 6, 11, 20):
        for f in range(m):
            for p in (0.55, 0.8, 0.99):
                assert co.coalition_failure("all-against", m - f, f, p) == pytest.approx(
                    vote_failure_exact(m, p, f, "byzantine"), abs=1e-13)


def test_gap_of_optimal_vote_is_the_corrected_mass() -> None:
    # P[0 < -t s < f] from a loop over the honest right votes, written out
    for h, f, p in [(4, 3, 0.7), (9, 4, 0.6), (8, 4, 0.6), (7, 3, 0.7), (30, 2, 0.9)]:
        mass = sum(math.comb(h, k) * p ** k * (1 - p) ** (h - k)
                   for k in range(h + 1) if 0 < h - 2 * k < f)
        assert co.failure_gap("optimal-vote", h, f, p) == pytest.approx(mass, abs=1e-13)
        assert co.corrected_mass(h, f, p) == pytest.approx(mass, abs=1e-13)


def test_cancel_to_zero_fails_as_often_as_all_against_and_is_rarely_wrong() -> None:
    for m, f, p in co.grid_points((6, 11), (0.55, 0.8, 0.99)):
        for t in (1, -1):
            mine = co.coalition_outcome("cancel-to-zero", m - f, f, p, t)
            worst = co.coalition_outcome("all-against", m - f, f, p, t)
            assert mine.failure == pytest.approx(worst.failure, abs=1e-13)
            assert mine.wrong <= worst.wrong + 1e-15


def test_vote_cancel_parity() -> None:
    # M odd: vote-cancel's failure (true sign +1) is optimal-vote's less the honest tie
    # s = 0, where the seed's mirror rule totals f mod 2 = +1 and the vote is right while
    # optimal-vote abstains; M even: all-against's
    for h, f in [(4, 3), (8, 3), (6, 1)]:
        tie = math.comb(h, h // 2) * 0.7 ** (h // 2) * 0.3 ** (h // 2)
        assert co.coalition_failure("vote-cancel", h, f, 0.7, 1) == pytest.approx(
            co.coalition_failure("optimal-vote", h, f, 0.7, 1) - tie)
    for h, f in [(5, 3), (8, 4), (7, 1)]:
        assert co.coalition_failure("vote-cancel", h, f, 0.7, 1) == pytest.approx(
            co.coalition_failure("all-against", h, f, 0.7, 1))


def test_cancel_to_zero_is_the_best_honest_sum_response() -> None:
    """Brute force over every coalition message in {-1, 0, 1}^f for each honest sum: a
    failure whatever the true sign is reachable exactly where |s| <= f, and
    cancel-to-zero reaches it there; elsewhere it votes all against the honest sum."""
    for f in range(1, 5):
        for h in range(1, 7):
            sums = torch.arange(-h, h + 1, 2, dtype=torch.float64)
            honest = torch.stack([torch.where(torch.arange(h) < (h + s) / 2, 1.0, -1.0)
                                  for s in sums.tolist()], dim=1).double()
            votes = brute_votes("cancel-to-zero", honest, f, 1)
            for j, s in enumerate(sums.tolist()):
                reach = any(s + sum(m) == 0 for m in itertools.product((-1, 0, 1), repeat=f))
                assert reach == (abs(s) <= f)
                assert votes[j] == (0.0 if abs(s) <= f else s - math.copysign(f, s))


def test_worst_case_verdicts_hold_and_a_reversed_claim_is_caught() -> None:
    points = co.grid_points((5, 6, 11), (0.55, 0.7, 0.95))
    for v in co.worst_case_verdicts(points):
        assert v.holds, v
    # reversed: all-against fails no more than optimal-vote -- false where it corrects
    reversed_points = [(w, worst, mine) for w, mine, worst in
                       co.worst_case_points("optimal-vote", points)]
    assert not verdict("reversed", "test", "optimal-vote", reversed_points).holds
    # strengthened: failure(strategy) <= 0.9 failure(all-against) -- false (f = 0 equal)
    stronger = [(w, mine, 0.9 * worst) for w, mine, worst in
                co.worst_case_points("vote-cancel", points)]
    assert not verdict("x0.9", "test", "vote-cancel", stronger).holds


def test_bounds_hold_and_weakened_ones_are_caught() -> None:
    table = co.tightest_bounds(co.grid_points((5, 11, 31), co.P_GRID[::4]))
    for v in co.bound_verdicts(table, list(co.BOUNDS)):
        assert v.holds, v
    for name in ("Hoeffding (reference)", "ours (Cantelli)"):
        pts = [({"M": pt.workers}, pt.exact, 0.9 * pt.bounds[name]) for pt in table]
        assert not verdict("x0.9", "test", name, pts).holds, name


def test_tightest_picks_the_smallest_valid_bound() -> None:
    def exact(m: int, p: float, a: float) -> float:
        return vote_failure_exact(m, p, round(a * m), "byzantine")

    bounds = {"just above": lambda m, p, a: exact(m, p, a) * 1.01,
              "below (invalid)": lambda m, p, a: exact(m, p, a) * 0.99,
              "Cantelli": lambda m, p, a: vote_failure_bound(m, p, a, "byzantine")}
    table = co.tightest_bounds([(11, 2, 0.8), (31, 5, 0.7)], bounds)
    assert [pt.tightest for pt in table] == ["just above", "just above"]
    table = co.tightest_bounds([(11, 2, 0.8)], {"step 4": theorem2bis_failure_in_p,
                                                "Cantelli": bounds["Cantelli"]})
    # 1/(1 + x^2) <= 1/(2x): Cantelli (step 2) never looser than step 4
    assert table[0].tightest == "Cantelli"
    assert table[0].bounds["Cantelli"] <= table[0].bounds["step 4"]
    rows = co.tightest_summary(table)
    assert rows[0]["points"] == 1 and rows[0]["tightest: Cantelli"] == 1


def test_hoeffding_closed_form() -> None:
    m, p, a = 31, 0.8, 5 / 31
    h = m * (1 - a)
    assert co.hoeffding_failure_bound(m, p, a) == pytest.approx(
        math.exp(-2 * (h * p - m / 2) ** 2 / h))
    assert co.hoeffding_failure_bound(11, 0.55, 5 / 11) == 1.0  # H p <= M/2: no bound


def test_bad_input_names_valid_values() -> None:
    with pytest.raises(ValueError, match="strategy 'nope'; valid: all-against"):
        co.coalition_outcome("nope", 3, 1, 0.7)
    with pytest.raises(ValueError, match="true_sign 0; valid: 1, -1"):
        co.coalition_outcome("all-against", 3, 1, 0.7, 0)
    with pytest.raises(ValueError, match=r"p 1\.5"):
        co.coalition_outcome("all-against", 3, 1, 1.5)
    with pytest.raises(ValueError, match="measure 'x'"):
        co.worst_case_points("vote-cancel", [(5, 1, 0.7)], 1, "x")


def test_cancel_to_zero_real_messages_and_no_byzantine() -> None:
    m = torch.tensor([[0.3, -2.0, 0.0], [1.0, -1.0, 5.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([False, False, True])
    out = attacks.get("cancel-to-zero")(m, mask, ctx())
    assert out[2].tolist() == [-1.0, 1.0, -1.0]  # honest sums 2, -2, 1 clipped to f = 1
    assert torch.equal(out[:2], m[:2]) and m[2, 0] == 9.0  # input not mutated
    none = torch.zeros(3, dtype=torch.bool)
    assert attacks.get("cancel-to-zero")(m, none, ctx()) is m


def brute_best_response(h: int, f: int, p: float, measure: str) -> float:
    """Over every honest vote vector (not its sum) and every coalition message in
    {-1, 0, 1}^f: the attacker's best expected damage when the true sign is +-1 with
    probability 1/2 (the choice per vector is independent, so the best policy is the
    best message per vector)."""
    def damage(x: float) -> float:
        if measure == "failure":
            return float(x <= 0)
        if measure == "wrong":
            return float(x < 0)
        return float(x < 0) - float(x > 0)

    total = 0.0
    for votes in itertools.product((1, -1), repeat=h):
        up = sum(v > 0 for v in votes)
        given_plus = p ** up * (1 - p) ** (h - up)      # P[votes | t = +1]
        given_minus = p ** (h - up) * (1 - p) ** up     # P[votes | t = -1]
        total += max(0.5 * given_plus * damage(sum(votes) + sum(m))
                     + 0.5 * given_minus * damage(-(sum(votes) + sum(m)))
                     for m in itertools.product((-1, 0, 1), repeat=f))
    return -total if measure == "progress" else total


@pytest.mark.parametrize("measure", co.MEASURES)
def test_honest_sum_best_response_matches_brute_force(measure: str) -> None:
    for h in range(1, 6):
        for f in range(0, 4):
            for p in (0.55, 0.8):
                assert co.honest_sum_best_response(h, f, p, measure) == pytest.approx(
                    brute_best_response(h, f, p, measure), abs=1e-12), (h, f, p)


def test_best_response_verdicts() -> None:
    points = co.grid_points((5, 6, 11, 12), (0.55, 0.8, 0.97))
    held = {(v.case, v.statement.rsplit(", ", 1)[1]): v.holds
            for v in co.best_response_verdicts(points)}
    # cancel-to-zero: best for P[fail]; optimal-vote: best for progress, not for P[wrong]
    # (it abstains where the honest sum is 0) nor P[fail] (it flips instead of zeroing)
    assert held[("cancel-to-zero", "failure")] and held[("optimal-vote", "progress")]
    assert not held[("optimal-vote", "wrong")] and not held[("optimal-vote", "failure")]
    assert not held[("vote-cancel", "failure")] and not held[("cancel-to-zero", "wrong")]
