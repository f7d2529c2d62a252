"""Election Coding (signvote.election): the codes, the encoder, the brute-force tolerance
check against a plain loop, the simulator's defence, its config refusals."""

import itertools
import math

import pytest
import torch

from signvote import election
from signvote.engine import run as run_module
from signvote.engine.gradients import worker_gradients
from signvote.engine.run import prepare
from signvote.engine.sim import data_path, train
from signvote.experiment.config import ConfigError, TrainConfig, resolve, trajectory_key

RELEASED = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 1, 0]] + [[1] * 5] * 3)
"""The authors' n = 5, b = 1 matrix (r = 3.8), github.com/jysohn1108/Election-Coding."""


def loop_vote_wrong(g, byz, signs, messages):
    """The reference: one coordinate, by hand. Honest worker i sends the sign of the sum
    of its assigned partitions' signs; Byzantine workers send ``messages``; the server's
    vote is the sign of the sum; wrong when it is not the sign of the partitions' sum."""
    n = len(signs)
    total = 0
    sent = iter(messages)
    for i in range(n):
        if i in byz:
            total += next(sent)
        else:
            s = sum(signs[j] for j in range(n) if g[i][j])
            total += (s > 0) - (s < 0)
    mu = sum(signs)
    return ((total > 0) - (total < 0)) != ((mu > 0) - (mu < 0))


def loop_failures(g, attackers, values=(-1, 0, 1), partitions=(-1, 1)):
    g = g.tolist()
    n = len(g)
    count = 0
    for signs in itertools.product(partitions, repeat=n):
        for byz in itertools.combinations(range(n), attackers):
            for msgs in itertools.product(values, repeat=attackers):
                count += loop_vote_wrong(g, set(byz), signs, msgs)
    return count


# --- the codes ---------------------------------------------------------------------------------


def test_the_deterministic_code_for_5_and_1_is_the_released_matrix():
    g = election.deterministic_allocation(5, 1)
    assert torch.equal(g, RELEASED)
    assert election.redundancy(g) == pytest.approx(3.8)


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9, 11])
def test_the_redundancy_formula_counts_the_matrix(n):
    for b in range((n - 1) // 2 + 1):
        g = election.deterministic_allocation(n, b)
        assert election.redundancy(g) == pytest.approx(election.deterministic_redundancy(n, b))
        assert int(g[n - 2 * b - 1:].sum()) == (2 * b + 1) * n  # the full rows


@pytest.mark.parametrize("n, b", [(4, 1), (5, 3), (5, -1), (0, 0)])
def test_a_deterministic_code_that_cannot_be_built_is_refused(n, b):
    with pytest.raises(ValueError, match="deterministic code"):
        election.deterministic_allocation(n, b)


def test_the_bernoulli_code_is_seeded_has_no_empty_row_and_density_q():
    a = election.bernoulli_allocation(9, 0.3, torch.Generator().manual_seed(1))
    b = election.bernoulli_allocation(9, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and bool((a.sum(1) > 0).all())
    gen = torch.Generator().manual_seed(2)
    density = torch.stack([election.bernoulli_allocation(9, 0.3, gen) for _ in range(400)]
                          ).double().mean()
    # an empty row (probability 0.7^9 = 0.04 a row) is drawn again: the density is a bit
    # above q; 400 * 81 entries give a standard error of about 0.0025
    p_row = 1 - 0.7 ** 9
    expected = 0.3 / p_row  # E[entry | row nonempty]
    assert abs(float(density) - expected) < 0.01
    with pytest.raises(ValueError, match="q must be in"):
        election.bernoulli_allocation(5, 0.0, gen)


# --- encoder -----------------------------------------------------------------------------------


def test_the_encoder_is_each_workers_majority_with_ties_at_zero():
    gen = torch.Generator().manual_seed(0)
    g = (torch.rand(6, 6, generator=gen) < 0.5).to(torch.int64)
    signs = torch.randint(-1, 2, (6, 40), generator=gen).float()
    got = election.encode(g, signs)
    for i in range(6):
        for k in range(40):
            s = sum(float(signs[j, k]) for j in range(6) if g[i, j])
            assert float(got[i, k]) == (s > 0) - (s < 0)
    assert torch.equal(election.encode(torch.eye(6, dtype=torch.int64), signs), signs)


# --- the tolerance check -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_the_brute_force_check_counts_what_a_plain_loop_counts(seed):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(5, 5, generator=gen) < 0.6).to(torch.int64)
    for attackers in range(3):
        assert election.tolerance_check(g, attackers).failures == loop_failures(g, attackers)
        assert (election.tolerance_check(g, attackers, messages=(-1, 1)).failures
                == loop_failures(g, attackers, (-1, 1)))
    d = election.deterministic_allocation(5, 1)
    assert election.tolerance_check(d, 2).failures == loop_failures(d, 2) > 0
    for attackers in range(2):  # partition signs that may be 0
        assert (election.tolerance_check(d, attackers, partitions=(-1, 0, 1)).failures
                == loop_failures(d, attackers, partitions=(-1, 0, 1)))


def test_with_zero_partition_signs_the_code_fails_only_at_a_tied_majority():
    for n, b in [(3, 1), (5, 1), (5, 2), (7, 2)]:
        g = election.deterministic_allocation(n, b)
        for k in range(b + 1):
            ternary = election.tolerance_check(g, k, partitions=(-1, 0, 1))
            assert election.tolerance_check(g, k, partitions=(-1, 0, 1),
                                            skip_ties=True).failures == 0
            if ternary.failures:
                assert ternary.example["majority"] == 0
    # one worker with a tie of its own is enough, without any attacker (n = 5, b = 1)
    assert election.tolerance_check(election.deterministic_allocation(5, 1), 0,
                                    partitions=(-1, 0, 1)).failures > 0


@pytest.mark.parametrize("n", [3, 5, 7])
def test_the_deterministic_code_tolerates_b_and_not_b_plus_1(n):
    for b in range((n - 1) // 2 + 1):
        g = election.deterministic_allocation(n, b)
        assert election.tolerates(g, b)
        if b + 1 < n:
            t = election.tolerance_check(g, b + 1)
            assert t.failures > 0 and t.example["vote"] != t.example["majority"]


def test_weakening_the_code_breaks_the_check():
    # a full row replaced by a single partition: b = 1 is no longer tolerated (n = 5)
    g = RELEASED.clone()
    g[4] = torch.tensor([0, 0, 0, 0, 1])
    assert not election.tolerates(g, 1)
    # and every single 1 of the released matrix is needed
    for i, j in torch.nonzero(RELEASED).tolist():
        h = RELEASED.clone()
        h[i, j] = 0
        assert not election.tolerates(h, 1), (i, j)
    # the plain vote (G = I) tolerates no Byzantine at all
    assert not election.tolerates(torch.eye(5, dtype=torch.int64), 1)


@pytest.mark.parametrize("seed", range(6))
def test_the_worst_case_shortcut_agrees_with_the_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    for q in (0.4, 0.7, 0.9):
        g = (torch.rand(5, 5, generator=gen) < q).to(torch.int64)
        for b in range(3):
            assert election.worst_case_tolerates(g, b) == election.tolerates(g, b)


def test_the_minimum_redundancy_for_5_and_1():
    r, g = election.minimum_redundancy(5, 1)
    assert r == pytest.approx(3.8) and election.tolerates(g, 1)  # the released code's r
    r_idle, g_idle = election.minimum_redundancy(5, 1, nonempty=False)
    assert r_idle == pytest.approx(3.0) and election.tolerates(g_idle, 1)  # 2b + 1 full rows


def test_the_bernoulli_error_is_a_probability_and_full_rows_never_err():
    gen = torch.Generator().manual_seed(0)
    mean, se = election.bernoulli_error(5, 1.0, 2, 20, gen)  # q = 1: all rows full
    assert mean == 0.0 and se == 0.0
    mean, se = election.bernoulli_error(5, 0.5, 1, 200, gen)
    assert 0.0 < mean < 1.0 and se < 0.05
    # the plain vote's tight patterns (3 against 2): one Byzantine turns the vote exactly
    # when it holds a partition of the majority, 3 of 5
    assert election.uncoded_error(5, 1) == pytest.approx(3 / 5)


def test_the_verdicts():
    verdicts = {v.statement: v for v in election.election_verdicts(draws=50)}
    assert verdicts["deterministic code tolerates b Byzantines"].holds
    assert not verdicts["deterministic code at b + 1 Byzantines"].holds
    assert verdicts["released n=5 matrix (r = 3.8) tolerates 1 Byzantine(s)"].holds
    assert not verdicts["released n=5 matrix (r = 3.8) tolerates 2 Byzantine(s)"].holds
    assert verdicts["deterministic code's redundancy is the minimum (every worker computes)"
                    ].ratio == pytest.approx(1.0)
    idle = verdicts["deterministic code's redundancy is the minimum (idle workers)"]
    assert not idle.holds and idle.ratio == pytest.approx(3.8 / 3.0)
    assert math.isfinite(verdicts["Bernoulli code error <= uncoded vote error"].ratio)


# --- the simulator -----------------------------------------------------------------------------


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "workers": 5, "byzantine": 1, **overrides})


def test_the_code_off_adds_nothing_to_a_runs_identity():
    assert trajectory_key(TrainConfig(election_code="none")) == trajectory_key(TrainConfig())
    assert not any(k.startswith("election") for k in trajectory_key(TrainConfig()))
    assert resolve(TrainConfig()).election_tolerance is None


@pytest.mark.parametrize("rule", ["signsgd", "signum"])
def test_the_identity_allocation_is_the_plain_run_bit_for_bit(monkeypatch, rule):
    config = quick(rule=rule, attack="vote-cancel")
    plain = train(config, progress=False, write=False)
    monkeypatch.setattr(run_module, "election_allocation",
                        lambda c: torch.eye(c.workers, dtype=torch.int64))
    coded = train(config, progress=False, write=False)
    assert coded.summary["gradient_computations_per_step"] == 5
    assert torch.equal(plain.params, coded.params)
    for a, b in zip(plain.metrics, coded.metrics, strict=True):
        a.pop("wall_s"), b.pop("wall_s")
        assert a == b


@pytest.mark.parametrize("code, extra", [("deterministic", {}),
                                         ("bernoulli", {"election_redundancy": 2.0})])
def test_a_steps_messages_are_the_loop_over_partition_gradients(code, extra):
    config = resolve(quick(rule="signsgd", election_code=code, **extra))
    setup = prepare(config)
    g = setup.allocation
    path = data_path(setup)
    inputs, targets = setup.walk(0)
    xb, yb = inputs[:, :config.batch_size], targets[:, :config.batch_size]
    _, _, _, seen = path.step_observed(setup.x, path.initial_state(), xb, yb, 1e-3, 0)
    # the reference: each partition's gradient on its own, then each worker's vote by hand
    partition_signs = []
    for j in range(config.workers):
        grad = worker_gradients(setup.batched, setup.x, xb[j:j + 1], yb[j:j + 1],
                                setup.data.task).grads[0]
        partition_signs.append(torch.sign(grad))
    for i in range(config.workers):
        total = sum(partition_signs[j] for j in range(config.workers) if g[i, j])
        assert torch.equal(seen.own[i], torch.sign(total))
    if code == "deterministic":
        assert torch.equal(g.cpu(), election.deterministic_allocation(5, 1))


@pytest.mark.parametrize("rule", ["signsgd", "signum"])
@pytest.mark.parametrize("byzantine, attack", [(1, "vote-cancel"), (2, "optimal-vote")])
def test_within_its_bound_the_code_runs_the_attack_free_trajectory(rule, byzantine, attack):
    # every step's vote is the partitions' majority, which is the attack-free plain vote
    # (on the logistic task no partition's gradient coordinate is exactly 0)
    clean = train(quick(rule=rule, byzantine=0), progress=False, write=False)
    plain = train(quick(rule=rule, byzantine=byzantine, attack=attack), progress=False,
                  write=False)
    coded = train(quick(rule=rule, byzantine=byzantine, attack=attack,
                        election_code="deterministic"), progress=False, write=False)
    assert torch.equal(coded.params, clean.params)
    assert not torch.equal(plain.params, clean.params)


def test_a_coded_run_records_its_cost_and_is_reproducible(tmp_path):
    config = quick(election_code="bernoulli", election_redundancy=2.5, epochs=1)
    a = train(config, progress=False, write=False)
    b = train(config, progress=False, write=False)
    assert torch.equal(a.params, b.params)
    assert a.summary["election_code"] == "bernoulli"
    assert a.summary["gradient_computations_per_step"] == sum(
        row.count("1") for row in a.summary["allocation"])
    assert a.summary["redundancy"] == a.summary["gradient_computations_per_step"] / 5
    assert "election_code" in trajectory_key(config)


@pytest.mark.parametrize("overrides, message", [
    ({"rule": "sgd", "election_code": "deterministic"}, "--rule sgd sends no signs"),
    ({"engine": "dist", "election_code": "deterministic"}, "valid: --engine sim"),
    ({"workers": 6, "election_code": "deterministic"}, "odd number of workers"),
    ({"election_code": "deterministic", "election_tolerance": 3}, "at most b = 2"),
    ({"election_code": "bernoulli"}, "needs --election-redundancy"),
    ({"election_code": "bernoulli", "election_redundancy": 6.0}, "valid: \\(0, 5\\]"),
    ({"election_code": "bernoulli", "election_redundancy": -1.0}, "must be a finite"),
    ({"election_redundancy": 2.0}, "--election-code none has none"),
    ({"election_code": "bernoulli", "election_redundancy": 2.0, "election_tolerance": 1},
     "--election-tolerance is the deterministic code's b"),
    ({"election_code": "deterministic", "attack": "label-flip"}, "poisons a Byzantine"),
    ({"election_code": "hamming"}, "deterministic"),
])
def test_config_refusals(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(quick(**overrides))
