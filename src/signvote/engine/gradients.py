"""Per-worker gradients of all n workers from one batched forward and one backward.

The parameters live in one flat vector ``x[d]``. The workers' parameters are the
broadcast view ``P = x.expand(n, d)`` (no copy); the model runs on the stacked batches
``[n, b, ...]`` with ``P`` cut into per-layer ``[n, ...]`` views, and one call of
``torch.autograd.grad(sum_i loss_i, P)`` returns ``G[n, d]``: since worker i's loss
depends only on row i of P, the gradient of the sum is each worker's own gradient.

``nn.Sequential`` models run layer by layer with batched kernels (``Linear`` as one
``baddbmm``, elementwise layers directly on ``[n, b, ...]``); any other layer or model
runs under ``torch.func.vmap(functional_call(...), randomness="different")``, so dropout
draws its own mask per worker. The layer-wise path avoids vmap's per-operator overhead,
which dominates for the paper's small models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Identity,
               nn.Dropout, nn.SiLU)


@dataclass(frozen=True)
class ParamLayout:
    """Where each named parameter of a module sits in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        return cls(
            tuple(n for n, _ in named), tuple(p.shape for _, p in named),
            tuple(p.numel() for _, p in named),
        )

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, module: nn.Module) -> Tensor:
        """The module's parameters as one flat float32 vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Views of ``x[d]`` shaped as the named parameters."""
        return {
            name: chunk.view(shape)
            for name, chunk, shape in zip(self.names, x.split(self.sizes), self.shapes, strict=True)
        }


def _linear(weight: Tensor, bias: Tensor | None, h: Tensor) -> Tensor:
    """``h @ weight^T + bias`` per worker: ``h[n, b, i]``, ``weight[n, o, i]``, ``bias[n, o]``."""
    if h.dim() != 3:  # extra batch dimensions: fold them into b
        folded = _linear(weight, bias, h.reshape(h.shape[0], -1, h.shape[-1]))
        return folded.view(*h.shape[:-1], weight.shape[1])
    if bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


class BatchedModel:
    """``module`` compiled once into a list of batched layer calls.

    ``forward(stacked, inputs)`` runs worker i with parameters ``stacked[i]`` (a row of the
    flat ``[n, d]`` parameters) on ``inputs[i]`` and returns ``[n, b, ...]``.
    """

    def __init__(self, module: nn.Module, layout: ParamLayout) -> None:
        self.layout = layout
        self._index = {name: i for i, name in enumerate(layout.names)}
        self.layers = self._compile(module, "")

    def _compile(self, module: nn.Module, prefix: str) -> list:
        if isinstance(module, nn.Sequential):
            return [call for name, child in module.named_children()
                    for call in self._compile(child, f"{prefix}{name}.")]
        own = {name: self._index[prefix + name] for name, _ in module.named_parameters()}
        if isinstance(module, nn.Linear):
            w, b = own["weight"], own.get("bias")
            return [lambda p, h: _linear(p[w], None if b is None else p[b], h)]
        if isinstance(module, ELEMENTWISE) and not own:
            return [lambda p, h: module(h)]
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return [lambda p, h: h if h.dim() == 3 else h.flatten(2)]

        def one(params: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(module, params, (xb,))

        batched = vmap(one, randomness="different")
        return [lambda p, h: batched({k: p[i] for k, i in own.items()}, h)]

    def forward(self, stacked: Tensor, inputs: Tensor) -> Tensor:
        n = stacked.shape[0]
        params = [chunk.view(n, *shape) for chunk, shape in zip(
            stacked.split(self.layout.sizes, dim=1), self.layout.shapes, strict=True)]
        h = inputs
        for layer in self.layers:
            h = layer(params, h)
        return h


def per_sample_loss(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """Loss of every sample, shaped like ``targets``: cross-entropy for classification
    (outputs ``[..., C]``), squared error for regression (outputs ``[..., 1]``)."""
    if task == "classification":
        flat = nn.functional.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="none"
        )
        return flat.view(targets.shape)
    return (outputs.squeeze(-1) - targets).square()


@dataclass(frozen=True)
class WorkerStep:
    """One step's honest gradients and each worker's batch statistics."""

    grads: Tensor  # [n, d]
    losses: Tensor  # [n] mean batch loss per worker
    correct: Tensor | None  # [n] correctly classified samples per worker (classification)


def worker_gradients(
    model: BatchedModel, x: Tensor, inputs: Tensor, targets: Tensor, task: str
) -> WorkerStep:
    """Each worker's gradient of its mean batch loss at the shared parameters ``x[d]``.

    Args:
        inputs: ``[n, b, ...]`` (worker i's batch is ``inputs[i]``).
        targets: ``[n, b]``.
    """
    leaf = x.detach().requires_grad_(True)
    stacked = leaf.expand(inputs.shape[0], -1)
    outputs = model.forward(stacked, inputs)
    losses = per_sample_loss(outputs, targets, task).mean(dim=1)
    (grads,) = torch.autograd.grad(losses.sum(), stacked)
    correct = None
    if task == "classification":
        correct = (outputs.detach().argmax(dim=-1) == targets).sum(dim=1)
    return WorkerStep(grads, losses.detach(), correct)


@torch.no_grad()
def evaluate(
    module: nn.Module, layout: ParamLayout, x: Tensor, inputs: Tensor, targets: Tensor,
    task: str, batch_size: int = 4096,
) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) of parameters ``x`` on a whole set."""
    was_training = module.training
    module.eval()
    params = layout.unflatten(x)
    total_loss, total_correct = 0.0, 0
    for start in range(0, inputs.shape[0], batch_size):
        xb, yb = inputs[start:start + batch_size], targets[start:start + batch_size]
        out = functional_call(module, params, (xb,))
        total_loss += float(per_sample_loss(out, yb, task).sum())
        if task == "classification":
            total_correct += int((out.argmax(dim=-1) == yb).sum())
    module.train(was_training)
    n = inputs.shape[0]
    return total_loss / n, (total_correct / n if task == "classification" else None)
