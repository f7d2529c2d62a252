import pytest
import torch

from signvote import attacks
from signvote.attacks.basic import cancelling_votes


def ctx(sign: bool = True, seed: int = 0) -> attacks.AttackContext:
    return attacks.AttackContext(step=0, generator=torch.Generator().manual_seed(seed),
                                 sign_messages=sign)


def expected_votes(s: int, f: int) -> list[int]:
    """The paper's strategy for one coordinate, written as the issue states it."""
    if s > f:
        return [-1] * f
    if s < -f:
        return [1] * f
    if s >= 0:
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
    for s in range(0, f + 1):
        total = cancelling_votes(torch.tensor([float(s)]), f).sum().item()
        assert total == -s - ((f - s) % 2)
    for s in range(-f, 0):
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
    # S=6 stays, S=2 and S=0 flip (odd remainder), S=-1 and S=1 cancel, S=-4 holds
    assert vote.tolist() == [1, -1, -1, 0, -1, 0]


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


@pytest.mark.parametrize("name", sorted(set(attacks.names()) - {"none"}))
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
