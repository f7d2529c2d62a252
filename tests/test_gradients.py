import pytest
import torch
from torch import nn

from signvote.engine.gradients import BatchedModel, ParamLayout, evaluate, worker_gradients


class TwoBranch(nn.Module):
    """Not a Sequential: runs through the vmap fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.a(x)) * self.b(x))


def tied():
    """One Linear used twice (its gradient sums both uses): runs through one whole-model vmap."""
    shared = nn.Linear(6, 6)
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(6, 3))


MODELS = {
    "cnn": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False), nn.Tanh(),
        nn.Conv2d(6, 3, 1, dilation=2), nn.Flatten(), nn.Linear(3 * 2 * 2, 3)),
    "tied-weights": tied,
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)),
    "layernorm-fallback": lambda: nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.GELU(),
                                                nn.Linear(5, 3, bias=False)),
    "non-sequential": TwoBranch,
    "image-flatten": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 3)),
}


def loop_gradients(module, x, inputs, targets, task):
    """Each worker's gradient from its own ordinary forward/backward."""
    layout = ParamLayout.of(module)
    rows, losses = [], []
    for i in range(inputs.shape[0]):
        with torch.no_grad():
            for p, v in zip(module.parameters(), layout.unflatten(x).values(), strict=True):
                p.copy_(v)
        module.zero_grad()
        out = module(inputs[i])
        if task == "classification":
            loss = nn.functional.cross_entropy(out, targets[i])
        else:
            loss = (out.squeeze(-1) - targets[i]).square().mean()
        loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in module.parameters()]))
        losses.append(loss.detach())
    return torch.stack(rows), torch.stack(losses)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_gradients_equal_a_loop_over_workers(name, gen):
    torch.manual_seed(0)
    module = MODELS[name]()
    layout = ParamLayout.of(module)
    x = layout.flatten(module) + 0.1 * torch.randn(layout.dim, generator=gen)
    shape = {"image-flatten": (5, 7, 2, 3), "cnn": (5, 7, 2, 8, 8)}.get(name, (5, 7, 6))
    inputs = torch.randn(*shape, generator=gen)
    targets = torch.randint(0, 3, (5, 7), generator=gen)
    model = BatchedModel(module, layout)
    step = worker_gradients(model, x, inputs, targets, "classification")
    grads, losses = loop_gradients(module, x, inputs, targets, "classification")
    again = worker_gradients(model, x, inputs, targets, "classification")  # reusable
    assert torch.equal(again.grads, step.grads)
    assert step.grads.shape == (5, layout.dim)
    assert torch.allclose(step.grads, grads, atol=1e-6, rtol=1e-5)
    assert torch.allclose(step.losses, losses, atol=1e-6)


def test_regression_gradients_equal_a_loop(gen):
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    inputs, targets = torch.randn(3, 9, 4, generator=gen), torch.randn(3, 9, generator=gen)
    step = worker_gradients(BatchedModel(module, layout), x, inputs, targets, "regression")
    grads, losses = loop_gradients(module, x, inputs, targets, "regression")
    assert step.correct is None
    assert torch.allclose(step.grads, grads, atol=1e-6)
    assert torch.allclose(step.losses, losses, atol=1e-6)


def test_evaluate_counts_correct_predictions():
    module = nn.Sequential(nn.Linear(2, 2, bias=False))
    layout = ParamLayout.of(module)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])  # identity: predicts argmax of the input
    inputs = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 0])
    loss, acc = evaluate(module, layout, x, inputs, targets, "classification", batch_size=3)
    assert acc == 0.75
    expected = nn.functional.cross_entropy(inputs, targets).item()
    assert loss == pytest.approx(expected, rel=1e-6)


def test_dropout_draws_its_own_mask_for_every_worker(gen):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 3))
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    batch = torch.randn(1, 1, 6, generator=gen).expand(4, 1, 6)  # one sample, everywhere
    targets = torch.randint(0, 3, (1, 1), generator=gen).expand(4, 1)
    model = BatchedModel(module, layout)
    grads = worker_gradients(model, x, batch, targets, "classification").grads
    assert all(not torch.allclose(grads[0], grads[i]) for i in range(1, 4))
    # about half of the hidden units are dropped for each worker: their fc2 columns get 0
    fc2 = grads[:, -(32 * 3 + 3):-3].view(4, 3, 32)
    dropped = (fc2 == 0).all(dim=1).float().mean(dim=1)
    assert ((dropped > 0.2) & (dropped < 0.8)).all()
    module.eval()  # no dropout: identical batches give identical gradients
    grads = worker_gradients(BatchedModel(module, layout), x, batch, targets,
                             "classification").grads
    assert all(torch.allclose(grads[0], grads[i]) for i in range(1, 4))


class Unused(nn.Module):
    """A layer with a parameter its forward never reads (runs under vmap)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def loop_gradients_or_zero(module, x, inputs, targets):
    """:func:`loop_gradients` with a parameter that gets no gradient read as zero."""
    layout = ParamLayout.of(module)
    rows = []
    for i in range(inputs.shape[0]):
        with torch.no_grad():
            for p, v in zip(module.parameters(), layout.unflatten(x).values(), strict=True):
                p.copy_(v)
        module.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(module(inputs[i]), targets[i]).backward()
        rows.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                               for p in module.parameters()]))
    return torch.stack(rows)


def test_a_parameter_no_layer_uses_gets_a_zero_gradient(gen):
    # a large Linear (written straight into the gradient matrix) beside a parameter that
    # no layer reads: its columns must be zero, not whatever memory held, and a layer's
    # unused parameter (autograd's None gradient) must not crash the step
    big = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 3), Unused())
    big.register_parameter("orphan", nn.Parameter(torch.ones(5)))
    layout = ParamLayout.of(big)
    x = layout.flatten(big)
    inputs = torch.randn(4, 6, 300, generator=gen)
    targets = torch.randint(0, 3, (4, 6), generator=gen)
    model = BatchedModel(big, layout)
    for _ in range(3):  # freed memory full of NaN is what the next matrix would start from
        junk = torch.full((4, layout.dim), float("nan"))
        del junk
        grads = worker_gradients(model, x, inputs, targets, "classification").grads
        assert torch.isfinite(grads).all()
        assert torch.allclose(grads, loop_gradients_or_zero(big, x, inputs, targets),
                              atol=1e-5, rtol=1e-4)
