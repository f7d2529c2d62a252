"""Normalisation layers per worker, the folded path, buffers and the loss parameter.

The reference everywhere is a loop of n separate copies of the model, each in an ordinary
forward/backward on its own batch with the shared parameters, keeping its own running
statistics, as n machines would (float64, so that only a wrong rule can differ).
"""

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from signvote.engine.gradients import (
    BatchedModel,
    BufferLayout,
    ParamLayout,
    WorkerBuffers,
    default_loss,
    evaluate,
    per_sample_loss,
    worker_gradients,
)
from signvote.engine.run import evaluated_buffers
from signvote.engine.step import AdversaryPlan


class TinyResidual(nn.Module):
    """Not a Sequential: a bias-free conv, BatchNorm, a residual GroupNorm branch, global
    average pooling, a Linear head (the ResNets' pieces)."""

    def __init__(self, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, momentum=momentum)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        h = F.relu(self.gn(self.conv2(h)) + h)
        return self.fc(h.mean(dim=(2, 3)))


class CalledTwice(nn.Module):
    """One BatchNorm'd block applied twice in the forward: its gradients add up."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = torch.tanh(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


def conv_bn(**bn) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, **bn), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3))


IMAGES = (2, 8, 8)
MODELS = {
    # name: (factory, sample shape, independent_samples, expected path)
    "sequential-batchnorm2d": (conv_bn, IMAGES, False, "sequential"),
    "sequential-momentum-none": (lambda: conv_bn(momentum=None), IMAGES, False, "sequential"),
    "sequential-no-affine": (lambda: conv_bn(affine=False), IMAGES, False, "sequential"),
    "sequential-untracked": (lambda: conv_bn(track_running_stats=False), IMAGES, False,
                             "sequential"),
    "sequential-bare": (lambda: conv_bn(affine=False, track_running_stats=False), IMAGES,
                        False, "sequential"),
    "sequential-batchnorm1d": (lambda: nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)), (6,), False,
        "sequential"),
    "sequential-groupnorm": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3)), IMAGES, False, "sequential"),
    "sequential-layernorm": (lambda: nn.Sequential(
        nn.Linear(6, 5), nn.LayerNorm(5), nn.GELU(), nn.Linear(5, 3)), (6,), False,
        "sequential"),
    "residual-folded": (TinyResidual, IMAGES, True, "folded"),
    "residual-momentum-none-folded": (lambda: TinyResidual(None), IMAGES, True, "folded"),
    "residual-vmap": (TinyResidual, IMAGES, False, "vmap"),
    "called-twice-folded": (CalledTwice, IMAGES, True, "folded"),
    "sequential-of-blocks-folded": (lambda: nn.Sequential(TinyResidual(), nn.Tanh()), IMAGES,
                                    True, "sequential"),
}


def set_params(module: nn.Module, layout: ParamLayout, x: torch.Tensor) -> None:
    with torch.no_grad():
        for p, v in zip(module.parameters(), layout.unflatten(x).values(), strict=True):
            p.copy_(v)


class Copies:
    """n deep copies of a module, one per worker, each keeping its own buffers."""

    def __init__(self, module: nn.Module, n: int, loss=None) -> None:
        self.copies = [copy.deepcopy(module) for _ in range(n)]
        self.layout = ParamLayout.of(module)
        self.loss = loss

    def step(self, x, inputs, targets):
        """Each copy's gradient and batch loss at ``x`` on its own batch."""
        rows, losses = [], []
        for copy_i, xb, yb in zip(self.copies, inputs, targets, strict=True):
            set_params(copy_i, self.layout, x)
            copy_i.zero_grad(set_to_none=True)
            out = copy_i(xb)
            loss = (F.cross_entropy(out, yb) if self.loss is None
                    else self.loss(out, yb).mean())
            loss.backward()
            rows.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad)
                                   .reshape(-1) for p in copy_i.parameters()]))
            losses.append(loss.detach())
        return torch.stack(rows), torch.stack(losses)

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every copy's buffers stacked: ``{name: [n, *shape]}``."""
        names = [name for name, _ in self.copies[0].named_buffers()]
        return {name: torch.stack([dict(c.named_buffers())[name] for c in self.copies])
                for name in names}


def batch(shape, n, b, gen):
    inputs = torch.randn(n, b, *shape, generator=gen, dtype=torch.float64)
    inputs = inputs * 2 + 0.5  # batch statistics far from 0 and 1
    return inputs, torch.randint(0, 3, (n, b), generator=gen)


def assert_buffers_equal(model: BatchedModel, buffers: WorkerBuffers | None, copies: Copies):
    expected = copies.buffers()
    if not expected:
        assert buffers is None
        return
    got = model.buffer_layout.unflatten(buffers)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        if value.dtype.is_floating_point:
            torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12)
        else:
            assert torch.equal(got[name], value), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_gradients_and_running_statistics_equal_n_separate_copies(name, gen):
    make, shape, independent, path = MODELS[name]
    torch.manual_seed(0)
    module = make().double().train()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout, independent_samples=independent)
    assert model.path == path
    copies = Copies(module, 3)
    buffers = None
    for _ in range(3):  # the same parameters each step; the buffers move on
        x = layout.flatten(module) + 0.1 * torch.randn(layout.dim, generator=gen,
                                                       dtype=torch.float64)
        inputs, targets = batch(shape, 3, 5, gen)
        step = worker_gradients(model, x, inputs, targets, "classification", buffers=buffers)
        grads, losses = copies.step(x, inputs, targets)
        torch.testing.assert_close(step.grads, grads, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(step.losses, losses, rtol=1e-10, atol=1e-12)
        assert_buffers_equal(model, step.buffers, copies)
        buffers = step.buffers
    for p, q in zip(module.state_dict().values(), make().double().state_dict().values(),
                    strict=True):  # the caller's module: its buffers never touched
        if not p.dtype.is_floating_point:
            assert torch.equal(p, q)
    assert all(torch.equal(b, module.state_dict()[n]) for n, b in model._initial.items())


def test_shared_batch_statistics_would_fail_the_copies_test(gen):
    # the reference can tell the rule apart: one BatchNorm over all workers' samples
    # (a plain forward of the module on the whole big batch) gives other gradients
    torch.manual_seed(0)
    module = conv_bn().double().train()
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    inputs, targets = batch(IMAGES, 3, 5, gen)
    grads, _ = Copies(module, 3).step(x, inputs, targets)
    shared = copy.deepcopy(module)
    out = shared(inputs.reshape(15, *IMAGES)).view(3, 5, 3)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        F.cross_entropy(out[i], targets[i]), list(shared.parameters()), retain_graph=True)])
        for i in range(3)]
    assert not torch.allclose(torch.stack(rows), grads, rtol=1e-3, atol=1e-5)


def test_an_evaluation_mode_batchnorm_normalises_with_each_workers_running_statistics(gen):
    torch.manual_seed(0)
    for module, independent in ((conv_bn(), False), (TinyResidual(), True)):
        module = module.double().eval()
        layout = ParamLayout.of(module)
        model = BatchedModel(module, layout, independent_samples=independent)
        copies = Copies(module, 3)
        for c in copies.copies:  # each worker's own, distinct running statistics
            for name, b in c.named_buffers():
                if name.endswith("running_mean"):
                    b.copy_(torch.randn(b.shape, generator=gen))
                elif name.endswith("running_var"):
                    b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        buffers = model.buffer_layout.flatten(copies.buffers())
        x = layout.flatten(module)
        inputs, targets = batch(IMAGES, 3, 4, gen)
        step = worker_gradients(model, x, inputs, targets, "classification", buffers=buffers)
        grads, losses = copies.step(x, inputs, targets)
        torch.testing.assert_close(step.grads, grads, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(step.losses, losses)
        assert torch.equal(step.buffers.floats, buffers.floats)  # no update in evaluation


def test_resnet20_with_batchnorm_folded_equals_n_separate_copies(gen):
    from signvote import models

    torch.manual_seed(0)
    module = models.build("resnet20", (3, 8, 8), 10).double().train()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout,
                         independent_samples=models.info("resnet20").independent_samples)
    assert model.path == "folded"
    copies = Copies(module, 3)
    buffers = None
    x = layout.flatten(module)
    for _ in range(2):
        inputs = torch.randn(3, 4, 3, 8, 8, generator=gen, dtype=torch.float64)
        targets = torch.randint(0, 10, (3, 4), generator=gen)
        step = worker_gradients(model, x, inputs, targets, "classification", buffers=buffers)
        grads, losses = copies.step(x, inputs, targets)
        torch.testing.assert_close(step.grads, grads, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(step.losses, losses)
        assert_buffers_equal(model, step.buffers, copies)
        buffers = step.buffers


def test_the_folded_path_equals_the_vmap_fallback_in_float32(gen):
    torch.manual_seed(0)
    module = TinyResidual().train()
    layout = ParamLayout.of(module)
    folded = BatchedModel(module, layout, independent_samples=True)
    vmapped = BatchedModel(module, layout)
    assert (folded.path, vmapped.path) == ("folded", "vmap")
    x = layout.flatten(module)
    inputs = torch.randn(4, 6, *IMAGES, generator=gen)
    targets = torch.randint(0, 3, (4, 6), generator=gen)
    a = worker_gradients(folded, x, inputs, targets, "classification")
    b = worker_gradients(vmapped, x, inputs, targets, "classification")
    torch.testing.assert_close(a.grads, b.grads, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.buffers.floats, b.buffers.floats)
    assert torch.equal(a.buffers.counts, b.buffers.counts)
    assert torch.equal(a.buffers.counts, torch.ones(4, 1, dtype=torch.int64))


class SamplesMixed(nn.Module):
    """Subtracts the batch mean: not independent samples (declared so, it runs under vmap,
    where 'the batch' is each worker's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(dim=0))


def test_a_model_declared_not_independent_runs_under_vmap_and_matches(gen):
    module = SamplesMixed().double()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout, independent_samples=False)
    assert model.path == "vmap" and not model.buffer_layout
    x = layout.flatten(module)
    inputs, targets = batch((6,), 3, 5, gen)
    step = worker_gradients(model, x, inputs, targets, "classification")
    grads, _ = Copies(module, 3).step(x, inputs, targets)
    torch.testing.assert_close(step.grads, grads)
    assert step.buffers is None


class OddLayer(nn.Module):
    """A layer with a parameter of a kind that has no stand-in."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_a_module_with_an_unsupported_layer_falls_back_to_vmap():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.odd = nn.Linear(6, 3), OddLayer()

        def forward(self, x):
            return self.odd(self.fc(x))

    module = Net()
    assert BatchedModel(module, ParamLayout.of(module), independent_samples=True).path == "vmap"


def test_buffers_are_read_never_written(gen):
    module = TinyResidual().train()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout, independent_samples=True)
    start = model.initial_buffers(2)
    before = WorkerBuffers(start.floats.clone(), start.counts.clone())
    inputs = torch.randn(2, 4, *IMAGES, generator=gen)
    targets = torch.randint(0, 3, (2, 4), generator=gen)
    step = model.gradients(layout.flatten(module), inputs, targets, "classification",
                           buffers=start)
    assert torch.equal(start.floats, before.floats) and torch.equal(start.counts, before.counts)
    assert not torch.equal(step.buffers.floats, start.floats)
    with pytest.raises(ValueError, match="buffers of 2 workers for a batch of 3"):
        model.gradients(layout.flatten(module), inputs[[0, 1, 1]], targets[[0, 1, 1]],
                        "classification", buffers=start)


def test_buffer_layout_round_trips_floats_and_integers_exactly():
    module = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    module.register_buffer("flag", torch.tensor([True, False]))
    layout = BufferLayout.of(module)
    assert layout.names == ("flag", "0.running_mean", "0.running_var", "0.num_batches_tracked")
    named = {"0.running_mean": torch.randn(2, 3), "0.running_var": torch.rand(2, 3),
             "0.num_batches_tracked": torch.tensor([2**53 + 1, 7]),
             "flag": torch.tensor([[True, False], [False, True]])}
    flat = layout.flatten(named)
    assert flat.floats.shape == (2, 6) and flat.counts.shape == (2, 3)
    back = layout.unflatten(flat)
    for name, value in named.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name
    one = layout.named(flat.mean(torch.tensor([True, True])))
    assert torch.equal(one["0.running_mean"], named["0.running_mean"].mean(0))
    assert int(one["0.num_batches_tracked"]) == (2**53 + 8) // 2


def fake_setup(model: BatchedModel, blind: list[bool], byzantine: list[bool]):
    from signvote import attacks

    plan = AdversaryPlan(torch.tensor(blind), torch.tensor(byzantine),
                         attacks.get("blind-inversion"))
    return types.SimpleNamespace(plan=plan, batched=model)


def test_evaluation_uses_the_honest_workers_mean_running_statistics(gen):
    torch.manual_seed(0)
    module = conv_bn().double()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout)
    x = layout.flatten(module)
    buffers = None
    for _ in range(2):  # every worker's statistics of its own batches
        inputs, targets = batch(IMAGES, 4, 5, gen)
        inputs = inputs * torch.arange(1, 5, dtype=torch.float64).view(4, 1, 1, 1, 1)
        buffers = worker_gradients(model, x, inputs, targets, "classification",
                                   buffers=buffers).buffers
    setup = fake_setup(model, [False, True, False, False], [False, False, False, True])
    named = evaluated_buffers(setup, buffers)
    per_worker = model.buffer_layout.unflatten(buffers)
    for name, value in named.items():  # workers 0 and 2 are the honest ones
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, (per_worker[name][0] + per_worker[name][2]) / 2)
    assert not torch.allclose(named["1.running_var"], per_worker["1.running_var"].mean(0))
    # every worker blind: the workers that are not Byzantine
    everyone_blind = evaluated_buffers(fake_setup(model, [True] * 4, [False] * 4), buffers)
    torch.testing.assert_close(everyone_blind["1.running_mean"],
                               per_worker["1.running_mean"].mean(0))

    # evaluate() with those statistics is the module holding them, in evaluation mode
    test_x, test_y = batch(IMAGES, 1, 9, gen)
    test_x, test_y = test_x[0], test_y[0]
    loss, acc = evaluate(module, layout, x, test_x, test_y, "classification", batch_size=4,
                         buffers=named)
    reference = copy.deepcopy(module)
    reference.load_state_dict({**layout.unflatten(x), **named})
    reference.eval()
    with torch.no_grad():
        out = reference(test_x)
    assert loss == pytest.approx(F.cross_entropy(out, test_y).item(), rel=1e-12)
    assert acc == (out.argmax(1) == test_y).double().mean().item()
    assert module.training  # evaluate() gives the mode back


def label_smoothed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Label-smoothed cross-entropy (0.1), per sample, written out."""
    logp = outputs.log_softmax(dim=-1)
    nll = -logp.gather(1, targets[:, None])[:, 0]
    return 0.9 * nll - 0.1 * logp.mean(dim=-1)


@pytest.mark.parametrize("name", ["sequential-batchnorm2d", "residual-folded",
                                  "residual-vmap"])
def test_a_custom_loss_equals_autograd_on_the_plain_module(name, gen):
    make, shape, independent, _ = MODELS[name]
    torch.manual_seed(0)
    module = make().double()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout, independent_samples=independent)
    x = layout.flatten(module)
    inputs, targets = batch(shape, 3, 5, gen)
    step = worker_gradients(model, x, inputs, targets, "classification", loss=label_smoothed)
    grads, losses = Copies(module, 3, loss=label_smoothed).step(x, inputs, targets)
    torch.testing.assert_close(step.grads, grads, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(step.losses, losses)
    plain = worker_gradients(model, x, inputs, targets, "classification")
    assert not torch.allclose(plain.losses, step.losses)
    loss, _ = evaluate(module, layout, x, inputs[0], targets[0], "classification",
                       loss=label_smoothed)
    module.eval()
    with torch.no_grad():
        expected = label_smoothed(module(inputs[0]), targets[0]).mean().item()
    assert loss == pytest.approx(expected, rel=1e-12)


def test_the_default_loss_is_the_tasks_and_a_bad_loss_is_refused(gen):
    outputs = torch.randn(7, 3, generator=gen)
    targets = torch.randint(0, 3, (7,), generator=gen)
    assert torch.equal(default_loss("classification")(outputs, targets),
                       F.cross_entropy(outputs, targets, reduction="none"))
    real = torch.randn(7, generator=gen)
    assert torch.equal(default_loss("regression")(outputs[:, :1], real),
                       (outputs[:, 0] - real).square())
    assert torch.equal(per_sample_loss(outputs, targets, "classification"),
                       default_loss("classification")(outputs, targets))
    with pytest.raises(ValueError, match="unknown task 'ranking'; valid: classification"):
        default_loss("ranking")
    module = nn.Sequential(nn.Linear(6, 3))
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout)
    with pytest.raises(ValueError, match=r"returned \[\] for 10 samples; valid: one loss per"):
        model.gradients(layout.flatten(module), torch.randn(2, 5, 6, generator=gen),
                        torch.randint(0, 3, (2, 5), generator=gen), "classification",
                        loss=lambda o, t: F.cross_entropy(o, t))


def test_the_data_path_carries_every_workers_buffers_from_step_to_step(gen):
    from signvote import aggregators, attacks, rules
    from signvote.engine.step import DataPath

    torch.manual_seed(0)
    module = TinyResidual()
    layout = ParamLayout.of(module)
    model = BatchedModel(module, layout, independent_samples=True)
    plan = AdversaryPlan(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool),
                         attacks.get("blind-inversion"))
    path = DataPath(model, rules.get("signum", 0.9, None), plan,
                    aggregators.build("majority-vote", None), "classification", 0.0,
                    torch.Generator().manual_seed(0), loss=label_smoothed)
    state = path.initial_state()
    assert torch.equal(state.buffers.floats, model.initial_buffers(3).floats)
    x, buffers = layout.flatten(module), model.initial_buffers(3)
    for step in range(3):
        inputs = torch.randn(3, 4, *IMAGES, generator=gen)
        targets = torch.randint(0, 3, (3, 4), generator=gen)
        expected = model.gradients(x, inputs, targets, "classification", buffers=buffers,
                                   loss=label_smoothed)
        x_next, state, honest = path.step(x, state, inputs, targets, 0.01, step)
        assert torch.equal(honest.grads, expected.grads)
        assert torch.equal(state.buffers.floats, expected.buffers.floats)
        assert torch.equal(state.buffers.counts, torch.full((3, 1), step + 1))  # one BN
        x, buffers = x_next, expected.buffers


@pytest.mark.slow
def test_a_batchnorm_run_saves_a_model_that_loads_and_scores_its_last_test_loss(tmp_path):
    from signvote import models
    from signvote.data import load
    from signvote.engine.sim import train
    from signvote.experiment.config import TrainConfig

    result = train(TrainConfig(dataset="digits", model="resnet20", workers=3, blind=1,
                               epochs=1, batch_size=32, out=str(tmp_path)), progress=False)
    saved = torch.load(tmp_path / "params.pt")
    assert saved.keys() >= {"bn1.running_mean", "layer3.2.bn2.num_batches_tracked"}
    assert all(torch.equal(saved[k], v) for k, v in result.buffers.items())
    assert int(saved["bn1.num_batches_tracked"]) == result.summary["steps"]
    module = models.build("resnet20", (1, 8, 8), 10)
    module.load_state_dict(saved)  # strict: every parameter and buffer
    module.eval()
    data = load("digits", result.config.seed, None)
    with torch.no_grad():
        loss = F.cross_entropy(module(data.test_x), data.test_y).item()
    assert loss == pytest.approx(result.metrics[-1]["test_loss"], rel=1e-5)


def test_momentum_none_averages_over_each_workers_own_count(gen):
    # workers that have stepped different numbers of times (a state given by the caller):
    # each worker's cumulative average uses its own num_batches_tracked
    torch.manual_seed(0)
    for module, independent in ((conv_bn(momentum=None), False),
                                (TinyResidual(None), True)):
        module = module.double().train()
        layout = ParamLayout.of(module)
        model = BatchedModel(module, layout, independent_samples=independent)
        copies = Copies(module, 3)
        for c, count in zip(copies.copies, (0, 3, 7), strict=True):
            for name, b in c.named_buffers():
                if name.endswith("num_batches_tracked"):
                    b.fill_(count)
        buffers = model.buffer_layout.flatten(copies.buffers())
        x = layout.flatten(module)
        for _ in range(2):
            inputs, targets = batch(IMAGES, 3, 4, gen)
            step = worker_gradients(model, x, inputs, targets, "classification",
                                    buffers=buffers)
            grads, _ = copies.step(x, inputs, targets)
            torch.testing.assert_close(step.grads, grads, rtol=1e-9, atol=1e-11)
            assert_buffers_equal(model, step.buffers, copies)
            buffers = step.buffers


def test_a_cumulative_batchnorm_under_vmap_is_refused_in_one_line():
    module = TinyResidual(momentum=None)
    assert BatchedModel(module, ParamLayout.of(module), independent_samples=True).path == "folded"
    with pytest.raises(ValueError, match=r"^BatchNorm bn with momentum=None .* valid: a "
                                         r"momentum, or a model declared independent_samples"):
        BatchedModel(module, ParamLayout.of(module))


@pytest.mark.parametrize("per_epoch", [6, 7, 9])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_a_batch_that_gives_batchnorm_one_value_per_channel_is_refused_before_the_run(
        per_epoch, batch_size):
    # the reference: torch's own BatchNorm1d in training on each batch of the epoch's walk
    from signvote.data import Dataset
    from signvote.engine.run import check_batch_norm
    from signvote.experiment.config import ConfigError, TrainConfig

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(),
                           nn.Linear(4, 3))
    x = torch.randn(per_epoch, 6)
    data = Dataset("d", x, torch.zeros(per_epoch, dtype=torch.long), x[:2],
                   torch.zeros(2, dtype=torch.long), "classification", 3)
    plain = copy.deepcopy(module).train()
    torch_refuses = False
    for start in range(0, per_epoch, batch_size):
        try:
            plain(x[start:start + batch_size])
        except ValueError:
            torch_refuses = True
    before = copy.deepcopy(module.state_dict())
    module[2].eval()  # a mode of its own, given back
    c = TrainConfig(dataset="digits", model="mine", batch_size=batch_size)
    if torch_refuses:
        with pytest.raises(ConfigError, match=r"--model mine: BatchNorm 2 would see 1 value "
                                              r"per channel"):
            check_batch_norm(c, module, data, per_epoch)
    else:
        check_batch_norm(c, module, data, per_epoch)
    assert module.training and not module[2].training
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert not module[2]._forward_pre_hooks


@pytest.mark.slow
def test_the_command_line_refuses_a_last_batch_of_one_for_batchnorm(tmp_path, capsys):
    from signvote.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "digits", "--model", "resnet18-imagenet", "--workers",
              "2", "--batch-size", "3", "--epochs", "1", "--out", str(tmp_path / "r"),
              "--quiet"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert "an epoch's last batch of 1 (the 718 samples per worker" in err
    assert not (tmp_path / "r").exists()
