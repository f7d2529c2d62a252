"""Per-worker gradients of all n workers from one forward and one backward pass.

All workers share the parameters ``x[d]`` (the simulator's invariant: every worker starts a
step from the server's parameters) and differ only in their batches ``inputs[n, b, ...]``.
So the forward pass is, layer by layer, the ordinary forward on the workers' samples, and
only the weight gradients must stay per worker. An ``nn.Sequential`` is compiled once
(:class:`BatchedModel`) into layer calls on activations ``[n, b, ...]``:

- large ``Linear`` layers and ``Conv2d``: autograd functions whose forward uses the shared
  weights on the big batch (one matmul or convolution; the weights are never broadcast)
  and whose backward returns the usual input gradient and writes each worker's weight
  gradient, summed over that worker's samples only, into its columns of ``G[n, d]`` (a
  :class:`GradientSink`): ``dW_i = sum_{s in worker i} dy_s h_s^T`` as one ``bmm`` over the
  workers for ``Linear``, ``convolution_backward`` on each worker's slice for ``Conv2d``;
- small ``Linear`` layers: one ``baddbmm`` on the broadcast weights ``x.expand(n, d)`` (a
  view, no copy), autograd's own backward giving ``[n, o, i]``; the least Python per step;
- parameter-free layers unchanged, elementwise ones on ``[n, b, ...]``, others (pooling)
  on ``[n * b, ...]``: dropout draws an independent mask for every sample, hence for every
  worker, as in training;
- any other layer with parameters, any model that is not an ``nn.Sequential`` and any
  model with tied parameters: ``torch.func.vmap(functional_call(...),
  randomness="different")`` over ``[n, b, ...]``; correct for every module, slower.

The cost is about one big-batch step plus the writing of ``n * d`` gradient numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


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


NATIVE_LINEAR_MAX = 1 << 16
"""``Linear`` layers with at most this many weights run as one ``baddbmm`` on the
broadcast weights ``[n, o, i]`` (autograd's own per-worker gradient; the least Python per
call, best for small layers); larger ones through :class:`_WorkerLinear` (one big-batch
matmul forward, so the weights are never broadcast)."""


class GradientSink:
    """The ``[n, d]`` gradient matrix being filled by one backward pass, one slot per
    parameter: ``slot(k)`` is the ``[n, *shape_k]`` view of parameter k's columns.

    The matrix starts uninitialised (no pass over ``[n, d]`` that the backward overwrites
    anyway); every slot handed out by :meth:`slot` is written, and :meth:`finish` zeroes
    the slots of parameters that nothing wrote (a parameter no layer uses: its gradient
    is zero)."""

    def __init__(self, layout: ParamLayout, n: int, like: Tensor) -> None:
        self.grads = torch.empty(n, layout.dim, dtype=like.dtype, device=like.device)
        self._slots = [
            chunk.view(n, *shape) for chunk, shape in zip(
                self.grads.split(layout.sizes, dim=1), layout.shapes, strict=True)
        ]
        self._written: set[int] = set()

    @property
    def n(self) -> int:
        return self.grads.shape[0]

    def slot(self, index: int) -> Tensor:
        """Parameter ``index``'s columns, to be written by the caller."""
        self._written.add(index)
        return self._slots[index]

    def finish(self) -> Tensor:
        """The gradient matrix, the slots nobody wrote set to zero."""
        for index, view in enumerate(self._slots):
            if index not in self._written:
                view.zero_()
        return self.grads


class _WorkerLinear(torch.autograd.Function):
    """``y = h W^T + b`` with the shared weights on ``h[n, b, ..., i]``; the backward writes each
    worker's ``dW_i = sum_{s in worker i} dy_s h_s^T`` (one ``bmm``) and ``db_i`` into the
    sink and returns the input gradient ``dy W``."""

    @staticmethod
    def forward(h, carrier, weight, bias, sink, slots):
        return nn.functional.linear(h, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h, _, weight, _, sink, slots = inputs
        ctx.save_for_backward(h, weight)
        ctx.sink, ctx.slots = sink, slots

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        sink, (w_slot, b_slot) = ctx.sink, ctx.slots
        grad_h = grad_out @ weight if ctx.needs_input_grad[0] else None
        per_worker = grad_out.reshape(sink.n, -1, weight.shape[0])
        torch.bmm(per_worker.transpose(1, 2), h.reshape(sink.n, -1, weight.shape[1]),
                  out=sink.slot(w_slot))
        if b_slot is not None:
            sink.slot(b_slot).copy_(per_worker.sum(dim=1))
        return grad_h, None, None, None, None, None


class _WorkerConv2d(torch.autograd.Function):
    """``conv2d(h, W, b)`` on the big batch ``h[n * b, C, H, W]``; the backward writes each
    worker's weight gradient (``convolution_backward`` on the worker's slice of the batch)
    and bias gradient into the sink and returns the input gradient."""

    @staticmethod
    def forward(h, carrier, weight, bias, sink, slots, conv):
        return nn.functional.conv2d(h, weight, bias, conv.stride, conv.padding, conv.dilation,
                                    conv.groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h, _, weight, _, sink, slots, conv = inputs
        ctx.save_for_backward(h, weight)
        ctx.sink, ctx.slots, ctx.conv = sink, slots, conv

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        sink, (w_slot, b_slot), conv = ctx.sink, ctx.slots, ctx.conv
        args = (conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups)
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.convolution_backward(
                grad_out, h, weight, None, *args, [True, False, False])[0]
        w_grads = sink.slot(w_slot)
        for i, (dy, hi) in enumerate(zip(grad_out.chunk(sink.n), h.chunk(sink.n), strict=True)):
            w_grads[i].copy_(torch.ops.aten.convolution_backward(
                dy, hi, weight, None, *args, [False, True, False])[1])
        if b_slot is not None:
            sink.slot(b_slot).copy_(grad_out.reshape(sink.n, -1, *grad_out.shape[1:])
                                    .sum(dim=(1, 3, 4)))
        return grad_h, None, None, None, None, None, None


@dataclass
class _Pass:
    """What one layer call sees: the shared parameters, the number of workers, the sink,
    the carrier that makes the fast layers' outputs require grad, and the per-worker
    parameter leaves of the autograd-native layers (their gradients are copied into the
    sink after the backward pass)."""

    params: list[Tensor]
    n: int
    sink: GradientSink | None
    carrier: Tensor | None
    leaves: dict[int, Tensor]

    def leaf(self, index: int) -> Tensor:
        """Parameter ``index`` broadcast to ``[n, ...]`` (no copy), requiring grad."""
        if index not in self.leaves:
            shared = self.params[index]
            self.leaves[index] = shared.expand(self.n, *shared.shape).requires_grad_(True)
        return self.leaves[index]


ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Identity,
               nn.Dropout, nn.SiLU)
"""Parameter-free layers that act on each number alone: they run on ``[n, b, ...]`` as is."""


def _on_big_batch(layer: Callable[[Tensor], Tensor], h: Tensor) -> Tensor:
    """``layer`` applied to the workers' samples as one batch: ``[n, b, ...]`` is folded to
    ``[n * b, ...]`` for the call and unfolded after."""
    out = layer(h.reshape(-1, *h.shape[2:]))
    return out.reshape(*h.shape[:2], *out.shape[1:])


def _batched_linear(weight: Tensor, bias: Tensor | None, h: Tensor) -> Tensor:
    """``h @ weight^T + bias`` per worker: ``h[n, b, i]``, ``weight[n, o, i]``, ``bias[n, o]``."""
    if h.dim() != 3:  # extra sample dimensions: fold them into b
        folded = _batched_linear(weight, bias, h.reshape(h.shape[0], -1, h.shape[-1]))
        return folded.view(*h.shape[:-1], weight.shape[1])
    if bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


Layer = Callable[[_Pass, Tensor], Tensor]
"""A compiled layer: ``(pass, activations [n, b, ...]) -> activations [n, b, ...]``."""


class BatchedModel:
    """``module`` compiled once into layer calls that yield per-worker gradients.

    ``gradients(x, inputs, targets, task)`` runs every worker with the shared parameters
    ``x[d]`` on its own batch ``inputs[i]`` and returns each worker's gradient.
    """

    def __init__(self, module: nn.Module, layout: ParamLayout) -> None:
        self.layout = layout
        canonical = {id(p): i for i, (_, p) in enumerate(module.named_parameters())}
        every_name = list(module.named_parameters(remove_duplicate=False))
        self._index = {name: canonical[id(p)] for name, p in every_name}
        tied = len(every_name) > len(canonical)  # a parameter used under several names
        self.uses_sink = False  # set by _compile when a layer writes into a GradientSink
        if tied:  # functional_call under vmap leaves a tied module's parameters batched:
            module = copy.deepcopy(module)  # work on a copy, never on the caller's module
        self.layers = (self._compile(module, "") if isinstance(module, nn.Sequential)
                       and not tied else [self._vmapped(module, "")])

    def _own(self, module: nn.Module, prefix: str) -> dict[str, int]:
        """``module``'s parameter names (the first name of a tied one) -> layout index."""
        return {name: self._index[prefix + name] for name, _ in module.named_parameters()}

    def _compile(self, module: nn.Module, prefix: str) -> list[Layer]:
        if isinstance(module, nn.Sequential):
            # _modules, not named_children(): a module used twice must run twice
            return [call for name, child in module._modules.items() if child is not None
                    for call in self._compile(child, f"{prefix}{name}.")]
        own = self._own(module, prefix)
        if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            return [lambda run, h: h.flatten(2)]
        if not own and isinstance(module, ELEMENTWISE):  # any shape: on [n, b, ...] as is
            return [lambda run, h: module(h)]
        if not own:  # parameter-free (pooling, ...): the module on the big batch [n * b, ...]
            return [lambda run, h: _on_big_batch(module, h)]
        w, b = own["weight"] if "weight" in own else None, own.get("bias")
        slots = (w, b)
        if type(module) is nn.Linear and module.weight.numel() <= NATIVE_LINEAR_MAX:
            return [lambda run, h: _batched_linear(
                run.leaf(w), None if b is None else run.leaf(b), h)]
        if type(module) is nn.Linear:
            self.uses_sink = True
            return [lambda run, h: _WorkerLinear.apply(
                h, run.carrier, run.params[w], None if b is None else run.params[b],
                run.sink, slots)]
        if (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            self.uses_sink = True
            return [lambda run, h: _on_big_batch(
                lambda big: _WorkerConv2d.apply(
                    big, run.carrier, run.params[w], None if b is None else run.params[b],
                    run.sink, slots, module), h)]
        return [self._vmapped(module, prefix)]

    def _vmapped(self, module: nn.Module, prefix: str) -> Layer:
        own = self._own(module, prefix)

        def one(params: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(module, params, (xb,))  # ties follow the first name

        batched = vmap(one, randomness="different")

        def call(run: _Pass, h: Tensor) -> Tensor:
            return batched({name: run.leaf(i) for name, i in own.items()}, h)

        return call

    def gradients(self, x: Tensor, inputs: Tensor, targets: Tensor, task: str) -> WorkerStep:
        """Each worker's gradient of its mean batch loss at the shared parameters ``x[d]``.

        Args:
            inputs: ``[n, b, ...]`` (worker i's batch is ``inputs[i]``).
            targets: ``[n, b]``.
        """
        n = inputs.shape[0]
        if self.uses_sink:
            run = _Pass(params=list(self.layout.unflatten(x.detach()).values()), n=n,
                        sink=GradientSink(self.layout, n, x),
                        carrier=x.new_zeros((), requires_grad=True), leaves={})
        else:  # every layer autograd-native: differentiate the broadcast [n, d] directly
            stacked = x.detach().requires_grad_(True).expand(n, -1)
            views = [chunk.view(n, *shape) for chunk, shape in zip(
                stacked.split(self.layout.sizes, dim=1), self.layout.shapes, strict=True)]
            run = _Pass(params=[], n=n, sink=None, carrier=None, leaves=dict(enumerate(views)))
        outputs = inputs
        for layer in self.layers:
            outputs = layer(run, outputs)
        losses = per_sample_loss(outputs, targets, task).mean(dim=1)
        if run.sink is None:
            (grads,) = torch.autograd.grad(losses.sum(), stacked)
        else:
            indices = list(run.leaves)
            leaf_grads = torch.autograd.grad(
                losses.sum(), [run.carrier, *run.leaves.values()], allow_unused=True)[1:]
            for i, grad in zip(indices, leaf_grads, strict=True):
                if grad is not None:  # None: the parameter was not used (left at zero)
                    run.sink.slot(i).copy_(grad)
            grads = run.sink.finish()
        correct = None
        if task == "classification":
            correct = (outputs.detach().argmax(dim=-1) == targets).sum(dim=1)
        return WorkerStep(grads, losses.detach(), correct)


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
    """Each worker's gradient of its mean batch loss at the shared parameters ``x[d]``
    (``inputs[n, b, ...]``, ``targets[n, b]``); see :meth:`BatchedModel.gradients`."""
    return model.gradients(x, inputs, targets, task)


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
