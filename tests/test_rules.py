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


def test_stochastic_sign_probabilities_match_the_formula(gen):
    g = torch.tensor([[-1.0, -0.5, 0.0, 0.25, 1.0, 3.0]]).repeat(20000, 1)
    rule = rules.get("stochastic-sign", bound=1.0)
    m, state = rule.step(g, None, torch.Generator().manual_seed(3))
    assert state is None and bool(((m == 1) | (m == -1)).all())
    expected = torch.tensor([0.0, 0.25, 0.5, 0.625, 1.0, 1.0])  # (1 + clamp(g / B)) / 2
    assert torch.allclose((m == 1).double().mean(0), expected.double(), atol=0.01)


def test_stochastic_sign_default_bound_is_each_workers_largest_entry(gen):
    g = torch.tensor([[2.0, -2.0, 1.0], [0.0, 0.0, 0.0]]).repeat(10000, 1)
    m, _ = rules.get("stochastic-sign").step(g, None, torch.Generator().manual_seed(4))
    rows = m.view(10000, 2, 3)
    assert torch.equal(rows[:, 0, 0], torch.ones(10000))  # g = B: always +1
    assert torch.equal(rows[:, 0, 1], -torch.ones(10000))
    assert abs(float((rows[:, 0, 2] == 1).double().mean()) - 0.75) < 0.02
    assert abs(float((rows[:, 1] == 1).double().mean()) - 0.5) < 0.02  # a zero row: fair coins


def test_stochastic_sign_is_unbiased_for_the_scaled_gradient(gen):
    g = torch.randn(1, 50, generator=gen, dtype=torch.float64) * 0.3
    many = g.repeat(40000, 1)
    m, _ = rules.get("stochastic-sign", bound=1.0).step(many, None,
                                                         torch.Generator().manual_seed(5))
    assert torch.allclose(m.mean(0), g[0], atol=0.02)


def test_stochastic_sign_rejects_a_bad_bound():
    with pytest.raises(ValueError, match="bound B must be a finite number > 0, got -1"):
        rules.get("stochastic-sign", bound=-1.0)


def test_stochastic_sign_with_a_generator_per_row_draws_each_row_from_its_own():
    values = torch.linspace(-1, 1, 12).reshape(3, 4)
    seeds = [5, 6, 7]
    together = rules.stochastic_sign(values, 2.0, [torch.Generator().manual_seed(s)
                                                   for s in seeds])
    for i, s in enumerate(seeds):  # each row alone, from its own generator
        alone = rules.stochastic_sign(values[i:i + 1], 2.0, torch.Generator().manual_seed(s))
        assert torch.equal(together[i:i + 1], alone)
    with pytest.raises(ValueError, match="one per row"):
        rules.stochastic_sign(values, 2.0, [torch.Generator()])
