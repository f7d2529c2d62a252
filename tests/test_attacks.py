import itertools

import pytest
import torch

from signvote import attacks
from signvote.attacks.basic import cancelling_votes
from signvote.contracts import Preview
from signvote.engine.step import AdversaryPlan


def ctx(sign: bool = True, seed: int = 0) -> attacks.AttackContext:
    return attacks.AttackContext(step=0, generator=torch.Generator().manual_seed(seed),
                                 sign_messages=sign)


def expected_votes(s: int, f: int) -> list[int]:
    """The paper's strategy for one coordinate, as shared/paper/THEORY.md states the seed
    code: at s = 0 the mirror rule (the one the code applies last)."""
    if s > f:
        return [-1] * f
    if s < -f:
        return [1] * f
    if s > 0:
        votes = [-1] * s
        start = -1
    else:
        votes = [1] * (-s)
        start = 1
    while len(votes) < f:
        votes.append(start)
        start = -start
    return votes


@pytest.mark.parametrize("f", [1, 2, 3, 4, 5])
def test_cancelling_votes_follow_the_strategy_for_every_honest_sum(f):
    sums = torch.arange(-f - 3, f + 4)
    got = cancelling_votes(sums.float(), f)
    assert got.shape == (f, len(sums))
    for j, s in enumerate(sums.tolist()):
        assert got[:, j].tolist() == expected_votes(s, f), (s, f)


@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_cancelling_total_matches_the_seed_formula(f):
    for s in range(1, f + 1):
        total = cancelling_votes(torch.tensor([float(s)]), f).sum().item()
        assert total == -s - ((f - s) % 2)
    for s in range(-f, 1):
        total = cancelling_votes(torch.tensor([float(s)]), f).sum().item()
        assert total == -s + ((f + s) % 2)


def test_vote_cancel_on_crafted_sign_messages():
    # 6 honest workers, 3 Byzantine (rows 1, 4, 8); honest sums chosen per column.
    mask = torch.zeros(9, dtype=torch.bool)
    mask[[1, 4, 8]] = True
    honest = torch.tensor([
        # S = 6, 2, 0, -1, -4, 1
        [1, 1, 1, -1, -1, 1],
        [1, 1, -1, -1, -1, 1],
        [1, 1, 1, 1, -1, -1],
        [1, -1, -1, 1, -1, 1],
        [1, 0, 0, -1, 0, 0],
        [1, 0, 0, 0, 0, -1],
    ], dtype=torch.float32)
    messages = torch.zeros(9, 6)
    messages[~mask] = honest
    messages[mask] = 1.0  # what the Byzantine workers would honestly have sent: ignored
    out = attacks.get("vote-cancel")(messages, mask, ctx())
    assert torch.equal(out[~mask], honest)
    for j, s in enumerate([6, 2, 0, -1, -4, 1]):
        assert out[mask][:, j].tolist() == expected_votes(s, 3)
    vote = torch.sign(out.sum(0))
    # S=6 stays, S=2 flips (odd remainder), S=0 goes to +1 (the mirror rule's odd
    # remainder), S=-1 and S=1 cancel, S=-4 holds
    assert vote.tolist() == [1, -1, 1, 0, -1, 0]


def test_vote_cancel_on_real_messages_zeroes_the_sum(gen):
    messages = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 7]] = True
    out = attacks.get("vote-cancel")(messages, mask, ctx(sign=False))
    assert torch.allclose(out.sum(0), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    assert torch.equal(out[~mask], messages[~mask])
    assert torch.equal(out[7], messages[7])  # only the first Byzantine worker acts (seed)


def test_blind_inversion_negates_only_its_rows(gen):
    messages = torch.randn(5, 8, generator=gen)
    mask = torch.tensor([False, True, False, False, True])
    out = attacks.get("blind-inversion")(messages, mask, ctx())
    assert torch.equal(out[mask], -messages[mask])
    assert torch.equal(out[~mask], messages[~mask])


@pytest.mark.parametrize(("name", "check"), [
    ("crash", lambda rows: bool((rows == 0).all())),
    ("nan", lambda rows: bool(rows.isnan().all())),
    ("inf", lambda rows: bool((rows == float("inf")).all())),
    ("random-sign", lambda rows: bool(((rows == 1) | (rows == -1)).all())
     and 0.4 < (rows == 1).float().mean() < 0.6),
    ("gaussian", lambda rows: abs(float(rows.std()) - 1.0) < 0.1),
])
def test_fault_attacks_send_what_they_say(name, check, gen):
    messages = torch.randn(6, 500, generator=gen)
    mask = torch.tensor([True, False, True, False, False, False])
    out = attacks.get(name)(messages, mask, ctx())
    assert check(out[mask])
    assert torch.equal(out[~mask], messages[~mask])


@pytest.mark.parametrize("name", attacks.names())
@pytest.mark.parametrize("sign", [True, False])
def test_no_attack_mutates_its_input(name, sign, gen):
    messages = torch.randn(6, 20, generator=gen)
    if sign:
        messages = messages.sign()
    mask = torch.tensor([False, True, False, True, False, False])
    before, mask_before = messages.clone(), mask.clone()
    attacks.get(name)(messages, mask, ctx(sign))
    assert torch.equal(messages, before)
    assert torch.equal(mask, mask_before)


@pytest.mark.parametrize("name", sorted(set(attacks.names()) - {"none", "label-flip"}))
def test_every_attack_changes_its_rows(name, gen):
    messages = torch.randn(6, 20, generator=gen).sign()
    mask = torch.tensor([False, True, False, True, False, False])
    out = attacks.get(name)(messages, mask, ctx(True))
    assert not torch.equal(out.nan_to_num(7.0), messages)


def test_apply_all_runs_blind_before_byzantine():
    # the Byzantine coalition sees the blind worker's inverted vote in its honest sum
    messages = torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    blind = torch.tensor([True, False, False, False])
    byz = torch.tensor([False, False, False, True])
    plan = [(attacks.get("blind-inversion"), blind), (attacks.get("vote-cancel"), byz)]
    out = attacks.apply_all(plan, messages, ctx())
    # honest sum after inversion: -1 + 1 + 1 = 1 <= f = 1: the Byzantine votes -1
    assert out.flatten().tolist() == [-1.0, 1.0, 1.0, -1.0]
    # the engines' typed plan runs the same stages in the same order
    typed = AdversaryPlan(blind, byz, plan[0][0], plan[1][0])
    assert torch.equal(typed.apply(messages, ctx()), out)


# ---------------------------------------------------------------- the literature's attacks

from statistics import NormalDist  # noqa: E402

from signvote import aggregators  # noqa: E402
from signvote.attacks.basic import VoteCancel  # noqa: E402
from signvote.attacks.omniscient import alie_z, largest_gamma, line_search  # noqa: E402

MESSAGE_ATTACKS = sorted(set(attacks.names()) - {"none", "label-flip"})


def byzantine(n, rows):
    mask = torch.zeros(n, dtype=torch.bool)
    mask[list(rows)] = True
    return mask


def test_sign_flip_sends_minus_the_honest_mean(gen):
    m = torch.randn(8, 30, generator=gen, dtype=torch.float64)
    mask = byzantine(8, [1, 5])
    out = attacks.get("sign-flip")(m, mask, ctx(False))
    honest_mean = sum(m[i] for i in range(8) if not mask[i]) / 6
    for b in (1, 5):
        assert torch.allclose(out[b], -honest_mean)
    assert torch.equal(out[~mask], m[~mask])


@pytest.mark.parametrize(("n", "f", "z"), [(10, 2, NormalDist().inv_cdf(0.6)),
                                           (50, 12, NormalDist().inv_cdf(0.72)),
                                           (10, 4, NormalDist().inv_cdf(0.8))])
def test_alie_z_is_the_papers_formula(n, f, z):
    assert alie_z(n, f) == pytest.approx(z)


def test_alie_sends_mean_minus_z_std_and_moves_median_and_trimmed_mean(gen):
    n, f = 10, 4
    m = torch.randn(n, 400, generator=gen, dtype=torch.float64)
    mask = byzantine(n, range(f))
    out = attacks.get("alie")(m, mask, ctx(False))
    honest = m[~mask]
    z = alie_z(n, f)
    sigma = torch.tensor([statistics_std(honest[:, j].tolist()) for j in range(400)],
                         dtype=torch.float64)
    assert torch.allclose(out[0], honest.mean(0) - z * sigma)
    for name in ("median", "trimmed-mean"):
        agg = aggregators.build(name, f=f)
        shift = (agg(out) - agg(m)) / sigma
        assert float(shift.mean()) < -0.3  # every coordinate pushed the same way
        assert float((shift < 0).float().mean()) > 0.9


def statistics_std(values):
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def test_ipm_makes_the_mean_point_against_the_honest_mean_at_its_default_scale(gen):
    m = torch.randn(10, 50, generator=gen, dtype=torch.float64) + 0.5
    mask = byzantine(10, [0, 3, 6, 9])
    out = attacks.get("ipm")(m, mask, ctx(False))
    honest_mean = m[~mask].mean(0)
    assert torch.allclose(out[0], -2.0 * honest_mean)
    assert float(out.mean(0) @ honest_mean) < 0
    assert float(m.mean(0) @ honest_mean) > 0


def test_mimic_copies_an_honest_worker_and_checks_its_target(gen):
    m = torch.randn(6, 10, generator=gen)
    mask = byzantine(6, [0, 2])
    out = attacks.get("mimic", target=1)(m, mask, ctx(False))
    assert torch.equal(out[0], m[3]) and torch.equal(out[2], m[3])  # honest rows 1, 3, 4, 5
    with pytest.raises(ValueError, match="target 4 but only 4 honest workers; valid: 0 to 3"):
        attacks.get("mimic", target=4)(m, mask, ctx(False))


def bisect_gamma(ok, hi=1e6, steps=200):
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize("direction", ["std", "unit", "sign"])
def test_min_max_and_min_sum_take_the_largest_gamma_their_condition_allows(direction, gen):
    m = torch.randn(9, 15, generator=gen, dtype=torch.float64)
    mask = byzantine(9, [2, 7])
    honest = m[~mask]
    pair = torch.cdist(honest, honest)
    for name in ("min-max", "min-sum"):
        out = attacks.get(name, direction=direction)(m, mask, ctx(False))
        row = out[2]
        p = {"std": -honest.std(0), "unit": -honest.mean(0) / honest.mean(0).norm(),
             "sign": -honest.mean(0).sign()}[direction]
        if name == "min-max":
            def ok(g, p=p):
                return float(((honest.mean(0) + g * p) - honest).norm(dim=1).max()) <= float(
                    pair.max())
        else:
            def ok(g, p=p):
                return float((((honest.mean(0) + g * p) - honest) ** 2).sum()) <= float(
                    (pair ** 2).sum(1).max())
        gamma = bisect_gamma(ok)  # the paper's search, run to convergence
        assert torch.allclose(row, honest.mean(0) + gamma * p, atol=1e-6)
        assert largest_gamma(honest, p, name) == pytest.approx(gamma, rel=1e-6)
        assert gamma > 0


def test_line_search_finds_the_peak_and_optimal_attacks_beat_their_fixed_versions(gen):
    assert line_search(lambda x: -(x - 37.0) ** 2, 0.0, 10.0, 60, 0.8) == pytest.approx(
        37.0, abs=0.5)
    m = torch.randn(11, 40, generator=gen, dtype=torch.float64) + 0.3
    mask = byzantine(11, [0, 1, 2])
    honest_mean = m[~mask].mean(0)
    for name, fixed in (("optimal-alie", "alie"), ("optimal-ipm", "ipm")):
        for spec in ("trimmed-mean", "median", "centered-clipping"):
            agg = aggregators.build(spec, f=3)
            # a stateful rule at a state of its own (centered clipping's last aggregate)
            state = agg.apply(m, agg.init_state())[1]
            kept = None if state is None else state.clone()
            server = Preview(agg, state)
            c = attacks.AttackContext(0, torch.Generator(), False, server)
            damage = [float(server(attacks.get(a)(m, mask, c)).sub(honest_mean).norm())
                      for a in (name, fixed)]
            assert damage[0] >= damage[1]
            if kept is not None:  # tuned without touching the state
                assert torch.equal(state, kept)


def best_flips(honest_sum: int, f: int) -> int:
    """Brute force over every ternary vote of f workers: can the outcome flip?"""
    start = (honest_sum > 0) - (honest_sum < 0)
    return int(start != 0 and any(
        ((honest_sum + sum(v) > 0) - (honest_sum + sum(v) < 0)) == -start
        for v in itertools.product((-1, 0, 1), repeat=f)))


@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_optimal_vote_flips_every_flippable_coordinate_and_at_least_vote_cancel(f, gen):
    n = 9
    m = torch.randint(-1, 2, (n, 400), generator=gen).float()
    mask = byzantine(n, range(f))
    honest_sum = m[~mask].sum(0)
    vote = aggregators.get("majority-vote")
    def flips(out):
        return int(((vote(out) == -honest_sum.sign()) & (honest_sum != 0)).sum())
    optimal = flips(attacks.get("optimal-vote")(m, mask, ctx()))
    assert optimal == sum(best_flips(int(s), f) for s in honest_sum.tolist())
    assert optimal >= flips(VoteCancel()(m, mask, ctx()))
    assert optimal > 0 or f == 1  # one vote can only zero a margin of 1, never flip it


def test_label_flip_flips_only_the_byzantine_targets():
    targets = torch.tensor([[0, 1, 9], [3, 4, 5], [9, 9, 0]])
    mask = byzantine(3, [1])
    attack = attacks.get("label-flip")
    assert attack.poison_targets(targets, mask, 10).tolist() == [[0, 1, 9], [6, 5, 4], [9, 9, 0]]
    real = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    assert attack.poison_targets(real, byzantine(2, [0]), None).tolist() == [[-0.5, 1.0],
                                                                           [2.0, 3.0]]
    plan = AdversaryPlan(byzantine(3, [0]), mask, attacks.get("blind-inversion"), attack)
    assert torch.equal(plan.poison(targets, 10), attack.poison_targets(targets, mask, 10))
    # one worker's rows, as a distributed rank poisons its own batch
    for w in range(3):
        assert torch.equal(plan.poison(targets[[w]], 10, [w]),
                           attack.poison_targets(targets, mask, 10)[[w]])
    assert plan.message_attack is None and plan.data_attack is attack


@pytest.mark.parametrize("name", MESSAGE_ATTACKS)
@pytest.mark.parametrize("sign", [True, False])
def test_every_message_attack_changes_the_aggregate_it_targets(name, sign, gen):
    m = torch.randn(11, 30, generator=gen) + 0.2
    if sign:
        m = m.sign()
    mask = byzantine(11, [1, 4, 8])
    agg = aggregators.get("majority-vote" if sign else "mean")
    c = attacks.AttackContext(0, torch.Generator().manual_seed(1), sign, agg)
    out = attacks.get(name)(m, mask, c)
    assert not torch.equal(agg(out).nan_to_num(7.0), agg(m))


def test_attack_specs_take_parameters_and_name_bad_ones():
    assert attacks.build("alie(z=1.5)").z == 1.5
    with pytest.raises(ValueError, match="attack 'alie' takes no parameter tau; valid: z"):
        attacks.build("alie(tau=1)")
    with pytest.raises(ValueError, match="unknown direction 'up'; valid: std, unit, sign"):
        attacks.build("min-max(direction=up)")
    with pytest.raises(ValueError, match="one attack per spec"):
        attacks.build("alie+ipm")
