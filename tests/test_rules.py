import pytest
import torch

from signvote import rules


def test_signum_matches_a_loop_over_steps_and_workers(gen):
    beta = 0.9
    rule = rules.get("signum")
    grads = [torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(6)]
    state = None
    reference = torch.zeros(3, 5, dtype=torch.float64)
    for g in grads:
        messages, state = rule.step(g, state)
        for i in range(3):
            for j in range(5):
                reference[i, j] = beta * reference[i, j] + (1 - beta) * g[i, j]
        assert torch.equal(messages, torch.sign(reference))
        assert torch.allclose(state, reference)


def test_signsgd_sends_ternary_signs_and_sgd_sends_gradients(gen):
    g = torch.randn(4, 6, generator=gen)
    g[0, 0] = 0.0
    m, state = rules.get("signsgd").step(g, None)
    assert state is None and m[0, 0] == 0 and torch.equal(m, torch.sign(g))
    m, _ = rules.get("sgd").step(g, None)
    assert torch.equal(m, g)


def test_sgd_momentum_is_the_seed_moving_average(gen):
    rule = rules.get("sgd", 0.5)
    g1, g2 = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    m1, s = rule.step(g1, None)
    m2, _ = rule.step(g2, s)
    assert torch.allclose(m1, 0.5 * g1)
    assert torch.allclose(m2, 0.25 * g1 + 0.5 * g2)


def test_rules_do_not_mutate_inputs(gen):
    g = torch.randn(3, 4, generator=gen)
    state = torch.randn(3, 4, generator=gen)
    g0, s0 = g.clone(), state.clone()
    rules.get("signum").step(g, state)
    assert torch.equal(g, g0) and torch.equal(state, s0)


def test_signsgd_refuses_momentum():
    with pytest.raises(ValueError, match="signum"):
        rules.get("signsgd", 0.5)
