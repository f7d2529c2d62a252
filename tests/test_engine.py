"""The engine's shared parts: the step's stages, the run's lifecycle, the DDP hook's state,
and the bugs an outside review found in them."""

import dataclasses
import os

import pytest
import torch

from signvote import attacks
from signvote.engine import ddp_hook, dist
from signvote.engine.gradients import worker_gradients
from signvote.engine.run import prepare
from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig, resolve, trajectory_key


class FakeBucket:
    """The part of ``dist.GradBucket`` the momentum bookkeeping reads."""

    def __init__(self, params):
        self._params = params

    def parameters(self):
        return self._params


def test_the_hooks_momentum_follows_parameters_not_bucket_positions():
    state = ddp_hook.SignumVoteState(momentum=0.5)
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    first = FakeBucket([a, b])
    momentum = torch.arange(6.0).reshape(1, 6)
    ddp_hook.store_momentum(state, first, momentum)
    # after DDP's rebuild, a bucket of the same size holding other parameters starts at 0
    other = FakeBucket([c, torch.nn.Parameter(torch.zeros(3))])
    assert torch.equal(ddp_hook.bucket_momentum(state, other, momentum), torch.zeros(1, 6))
    # and a regrouped bucket finds each parameter's own momentum, in its order
    regrouped = FakeBucket([b, c, a])
    assert ddp_hook.bucket_momentum(state, regrouped, momentum).tolist() == [
        [3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0]]


def test_every_byzantine_rank_of_the_hook_draws_its_own_random_rows():
    state = ddp_hook.SignumVoteState(attack="random-sign", byzantine_ranks={1, 2}, seed=3)
    rows = []
    for rank in (1, 2):
        ctx = attacks.AttackContext(0, state.generator(rank), sign_messages=True)
        rows.append(state.plan(3).blind(torch.ones(1, 64), ctx, [rank]))
    assert not torch.equal(rows[0], rows[1])
    # a rank's stream is its own and reproducible
    again = ddp_hook.SignumVoteState(attack="random-sign", byzantine_ranks={1, 2}, seed=3)
    ctx = attacks.AttackContext(0, again.generator(1), sign_messages=True)
    assert torch.equal(again.plan(3).blind(torch.ones(1, 64), ctx, [1]), rows[0])


@pytest.mark.parametrize(("error", "communication"), [
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                  "peer [127.0.0.1]:1234"), True),
    (RuntimeError("Timed out waiting 3000ms for recv operation to complete"), True),
    (dist.dist.DistNetworkError("anything"), True),
    (RuntimeError("The size of tensor a (3) must match the size of tensor b (4) at "
                  "non-singleton dimension 0"), False),
    (RuntimeError("expected scalar type Float but found Double"), False),
])
def test_only_communication_errors_become_a_communication_failure(error, communication):
    assert dist.is_communication_failure(error) is communication


def test_the_environment_of_launched_processes_is_restored(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with dist.scoped_environment(OMP_NUM_THREADS="3"):
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_run_leaves_the_callers_random_state_and_allocator_alone(monkeypatch):
    from signvote.engine import memory

    monkeypatch.setattr(memory, "keep_freed_memory",
                        lambda: pytest.fail("a library call changed malloc's policy"))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    result = train(TrainConfig(epochs=1, workers=4), progress=False, write=False)
    assert torch.equal(torch.get_rng_state(), before)
    # and the run is the same whatever the caller's global generator holds
    torch.manual_seed(999)
    again = train(TrainConfig(epochs=1, workers=4), progress=False, write=False)
    assert torch.equal(result.params, again.params)


def test_train_metrics_score_the_workers_that_are_not_byzantine():
    # lr = 0: the parameters stay at x0, so every step's losses are those of x0 on each
    # worker's true batch; a label-flipping worker must not be scored on flipped labels
    config = TrainConfig(epochs=1, workers=5, byzantine=2, attack="label-flip", lr=0.0,
                         dataset="digits", batch_size=40)
    got = train(config, progress=False, write=False).metrics[0]
    setup = prepare(config)
    c = setup.config
    keep = ~setup.plan.byzantine_mask
    inputs, targets = setup.walk(0)
    losses, correct, seen = [], 0, 0
    for start in setup.starts:
        xb, yb = inputs[:, start:start + c.batch_size], targets[:, start:start + c.batch_size]
        step = worker_gradients(setup.batched, setup.x, xb, yb, setup.data.task)
        for w in torch.nonzero(keep).flatten().tolist():
            losses.append(float(step.losses[w]))
            correct += int(step.correct[w])
            seen += yb[w].numel()
    assert got["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert got["train_acc"] == pytest.approx(correct / seen)


def test_the_checkpoint_key_ignores_outputs_and_restart_options():
    c = TrainConfig(workers=4)
    key = trajectory_key(c)
    for change in ({"tensorboard": True}, {"out": "elsewhere"}, {"max_restarts": 3},
                   {"dist_timeout": 9.0}, {"checkpoint_every": 5}):
        assert trajectory_key(dataclasses.replace(c, **change)) == key, change
    for change in ({"seed": 1}, {"lr": 0.5}, {"aggregator": "median"}):
        assert trajectory_key(dataclasses.replace(c, **change)) != key, change


@pytest.fixture
def documented_extensions():
    """Run docs/design.md's "Adding an aggregator, an attack, a rule" example (so the
    example cannot rot), and unregister what it registered afterwards."""
    import pathlib
    import re

    from signvote import aggregators, rules

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    section = text.split("### Adding an aggregator, an attack, a rule", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/design.md", "exec"), {})
    yield
    aggregators.REGISTRY.unregister("clipped-mean")
    attacks.REGISTRY.unregister("scaled-inversion")
    rules.REGISTRY.unregister("scaled-sign")


def test_the_documented_aggregator_attack_and_rule_train(documented_extensions):
    from signvote import aggregators, rules

    m = torch.tensor([[3.0, -0.2], [0.1, 0.4], [-5.0, 0.0]])
    assert torch.allclose(aggregators.build("clipped-mean(c=0.5)")(m),
                          m.clamp(-0.5, 0.5).mean(0))
    assert rules.get("scaled-sign").capabilities.sends_signs
    config = TrainConfig(epochs=2, workers=5, byzantine=1, rule="scaled-sign",
                         aggregator="clipped-mean(c=0.5)", attack="scaled-inversion(s=3)")
    assert resolve(config).lr == 1e-4  # the rule's declared default
    result = train(dataclasses.replace(config, lr=1e-3), progress=False, write=False)
    assert result.summary["final_test_acc"] > 0.7  # it learned: chance is 0.5
