"""``--compile`` (engine/fused.py): the fused vote and update against the eager stages.

The eager reference is the stages of engine/step.py themselves (``rule.step``, the
aggregator, ``apply_update``), so a fused formula that rounds differently fails here. The
tests that compile (tens of seconds each on a 2-core CPU, inductor's C++ build) are slow.
"""

import pytest
import torch

from signvote import aggregators, rules
from signvote.engine import fused
from signvote.engine.sim import train
from signvote.engine.step import apply_update
from signvote.experiment.config import ConfigError, TrainConfig, resolve, trajectory_key


def eager_stages(rule, grads, state, x, lr, weight_decay):
    """The eager path: the rule's messages, the majority vote, the update."""
    messages, new = rule.step(grads, state)
    direction, _ = aggregators.get("majority-vote").apply(messages, None)
    return apply_update(x, direction, lr, weight_decay), new


def assert_identical(got, want):
    """Equal to the bit (NaN where the other has NaN): rtol = atol = 0."""
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def hard_rows(gen, n=7, d=301):
    """Gradients with zeros, NaN and exact ties among the rows."""
    grads = torch.randn(n, d, generator=gen)
    grads[0, :20] = 0.0
    grads[1, 20:30] = float("nan")
    grads[:2, 40:50] = torch.tensor([1.0, -1.0])[:, None]  # two rows that cancel
    grads[2:, 40:50] = 0.0  # ... and no one else votes: a tie
    return grads


@pytest.mark.parametrize("rule", ["signsgd", "signum"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_fused_formula_equals_the_eager_stages_bit_for_bit(gen, rule, weight_decay):
    rule = rules.get(rule)
    state = None if rule.beta == 0 else torch.randn(7, 301, generator=gen)
    grads, x = hard_rows(gen), torch.randn(301, generator=gen)
    want_x, want_state = eager_stages(rule, grads, state, x, 0.3, weight_decay)
    source, got_state = fused.rule_direction(rule, grads, state)
    got_x = fused.vote_update_eager(source, x, fused.lr_tensor(0.3, x), weight_decay)
    assert torch.equal(got_x, want_x)
    assert (got_state is None) == (want_state is None)
    if want_state is not None:
        assert_identical(got_state, want_state)


def test_fused_momentum_starts_from_zero_as_the_rule_does(gen):
    rule = rules.get("signum", momentum=0.9)
    grads = torch.randn(3, 5, generator=gen)
    source, state = fused.rule_direction(rule, grads, None)
    assert_identical(source, rule.step(grads, None)[1])
    assert state is source


def test_fused_step_applies_only_where_it_is_exact_and_pays():
    vote, big = aggregators.get("majority-vote"), torch.zeros(fused.MIN_CPU_DIM)
    assert fused.applies(rules.get("signum"), vote, False, big)
    assert fused.applies(rules.get("signsgd"), vote, False, big)
    assert not fused.applies(rules.get("signum"), vote, True, big)
    assert not fused.applies(rules.get("sgd"), vote, False, big)
    assert not fused.applies(rules.get("stochastic-sign"), vote, False, big)
    for other in ("weighted-majority-vote", "mean", "median"):
        assert not fused.applies(rules.get("signum"), aggregators.get(other), False, big)
    class Scaled(rules.WorkerRule):  # a plugin's rule: its own step
        pass

    assert not fused.applies(Scaled("signum", 0.9, sends_signs=True), vote, False, big)
    small = torch.zeros(fused.MIN_CPU_DIM - 1)
    assert not fused.applies(rules.get("signum"), vote, False, small)  # the CPU, too small
    assert fused.applies(rules.get("signum"), vote, False, small.to("meta"))  # a device


def test_compile_is_not_part_of_the_run_identity():
    plain = resolve(TrainConfig(rule="signum"))
    assert trajectory_key(plain) == trajectory_key(resolve(TrainConfig(rule="signum",
                                                                       compile=True)))


def test_compile_is_refused_by_the_distributed_engine():
    with pytest.raises(ConfigError, match=r"--compile .* valid: --engine sim"):
        resolve(TrainConfig(engine="dist", compile=True))


@pytest.mark.slow
def test_compiled_vote_update_equals_eager_bit_for_bit(gen):
    rule = rules.get("signum")
    state = torch.randn(7, 301, generator=gen)
    for weight_decay in (0.0, 1e-2):
        x = torch.randn(301, generator=gen)
        for _ in range(5):  # a carried momentum: a 1-ulp difference would grow into a sign
            grads = hard_rows(gen)
            want_x, want_state = eager_stages(rule, grads, state, x, 1e-3, weight_decay)
            source, state = fused.rule_direction(rule, grads, state)
            x = fused.vote_update(weight_decay)(source, x, fused.lr_tensor(1e-3, x))
            assert_identical(x, want_x)
            assert_identical(state, want_state)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["signum", "signsgd"])
def test_a_run_with_compile_is_identical_to_eager(rule, monkeypatch):
    """Signum and SignSGD on logreg with weight decay and a learning-rate decay every
    epoch (the compiled call takes lr as a tensor: no recompilation), against eager; the
    fused call made to run at logreg's 922 parameters."""
    monkeypatch.setattr(fused, "MIN_CPU_DIM", 0)
    base = dict(epochs=3, rule=rule, weight_decay=1e-3, lr_decay_step=1, lr_decay_rate=0.5,
                workers=5, blind=0, byzantine=0)
    calls = fused.vote_update.cache_info().misses + fused.vote_update.cache_info().hits
    eager = train(TrainConfig(**base), progress=False, write=False)
    compiled = train(TrainConfig(**base, compile=True), progress=False, write=False)
    info = fused.vote_update.cache_info()
    assert info.misses + info.hits > calls  # the fused path ran
    assert torch.equal(eager.params, compiled.params)
    strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in eager.metrics]
    assert strip == [{k: v for k, v in row.items() if k != "wall_s"}
                     for row in compiled.metrics]


@pytest.mark.slow
def test_compile_under_a_message_attack_runs_the_eager_stages(monkeypatch):
    monkeypatch.setattr(fused, "MIN_CPU_DIM", 0)
    base = dict(epochs=1, rule="signum", workers=5, byzantine=1, attack="vote-cancel")
    before = fused.vote_update.cache_info()
    eager = train(TrainConfig(**base), progress=False, write=False)
    compiled = train(TrainConfig(**base, compile=True), progress=False, write=False)
    assert torch.equal(eager.params, compiled.params)  # the attack acted under --compile
    assert fused.vote_update.cache_info() == before  # and the fused call never ran


@pytest.mark.gpu
def test_compiled_vote_update_on_cuda_equals_eager_cuda():
    """On CUDA inductor emits Triton, which may contract ``v + wd * x`` into a fused
    multiply-add: without weight decay the result must be identical; with it, within one
    rounding of the update (the test says which it is)."""
    gen = torch.Generator().manual_seed(3)
    rule = rules.get("signum")
    grads, state = hard_rows(gen, 10, 100_003).cuda(), torch.randn(10, 100_003,
                                                                  generator=gen).cuda()
    x = torch.randn(100_003, generator=gen).cuda()
    for weight_decay in (0.0, 1e-2):
        want_x, want_state = eager_stages(rule, grads, state, x, 1e-3, weight_decay)
        source, got_state = fused.rule_direction(rule, grads, state)
        got_x = fused.vote_update(weight_decay)(source, x, fused.lr_tensor(1e-3, x))
        assert_identical(got_state, want_state)
        if weight_decay == 0.0:
            assert torch.equal(got_x, want_x)
        else:
            torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-7)


@pytest.mark.gpu
def test_a_cuda_run_with_compile_equals_the_cuda_run():
    """Signum on logreg on CUDA, no weight decay (nothing Triton could contract): the run
    with --compile (the fused call on every step) against the eager run, when two eager
    runs agree with each other (otherwise the GPU's own nondeterminism is measured)."""
    base = dict(epochs=2, rule="signum", workers=5, blind=0, byzantine=0, device="cuda")
    before = fused.vote_update.cache_info()
    eager = [train(TrainConfig(**base), progress=False, write=False) for _ in range(2)]
    if not torch.equal(eager[0].params, eager[1].params):
        pytest.skip("two eager CUDA runs differ: nothing to compare --compile against")
    compiled = train(TrainConfig(**base, compile=True), progress=False, write=False)
    assert fused.vote_update.cache_info() != before  # the fused call ran
    assert torch.equal(compiled.params, eager[0].params)
