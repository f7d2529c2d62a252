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
- normalisation layers (``BatchNorm1d/2d/3d``, ``GroupNorm``, ``LayerNorm``) on the big
  batch: BatchNorm normalises each worker's samples with that worker's own batch
  statistics (Ioffe & Szegedy 2015, as on its own machine) and updates that worker's own
  running statistics; GroupNorm and LayerNorm normalise each sample alone (Wu & He 2018;
  Ba et al. 2016). Their affine weights get per-worker gradients (one batched computation);
- any other module declared ``independent_samples`` (its forward treats every sample on
  its own except inside normalisation layers, e.g. a ResNet): a deep copy whose
  ``Conv2d``, ``Linear`` and normalisation layers are replaced by the stand-ins above runs
  its own forward on the folded batch ``[n * b, ...]`` (the *folded* path);
- any other layer with parameters, any other model and any model with tied parameters:
  ``torch.func.vmap(functional_call(...), randomness="different")`` over ``[n, b, ...]``,
  the buffers batched too; correct for every module, slower.

Buffers (BatchNorm's running statistics) are explicit state: every worker's, flat
(:class:`WorkerBuffers`, laid out by :class:`BufferLayout`), passed into
:meth:`BatchedModel.gradients` and returned updated in :class:`WorkerStep`, never kept on
an object. The loss is a parameter (:data:`Loss`, a per-sample loss; :func:`default_loss`).

The cost is about one big-batch step plus the writing of ``n * d`` gradient numbers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from signvote.engine.worker_conv import worker_weight_grads


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


@dataclass(frozen=True)
class WorkerBuffers:
    """Every worker's buffers (BatchNorm's running statistics), one row per worker: the
    floating buffers flat in ``floats[n, F]``, the integer ones (``num_batches_tracked``)
    exactly in ``counts[n, K]`` (int64), in :class:`BufferLayout` order."""

    floats: Tensor
    counts: Tensor

    @property
    def n(self) -> int:
        return self.floats.shape[0]

    def mean(self, mask: Tensor) -> WorkerBuffers:
        """One row: the mean over the workers in ``mask[n]`` (the counts' integer mean,
        ``sum // k``, exact when they agree, as every worker's step count does)."""
        k = int(mask.sum())
        return WorkerBuffers(self.floats[mask].mean(dim=0, keepdim=True),
                             self.counts[mask].sum(dim=0, keepdim=True) // k)

    @staticmethod
    def cat(parts: list[WorkerBuffers]) -> WorkerBuffers:
        """The rows of ``parts`` one after another."""
        return WorkerBuffers(torch.cat([p.floats for p in parts]),
                             torch.cat([p.counts for p in parts]))


@dataclass(frozen=True)
class BufferLayout:
    """Where each named buffer of a module sits in :class:`WorkerBuffers`: a floating
    buffer in ``floats``, any other in ``counts`` (as int64, converted back exactly)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, module: nn.Module) -> BufferLayout:
        named = list(module.named_buffers())
        for name, b in named:
            if b.is_complex():
                raise ValueError(f"buffer {name!r} is complex ({b.dtype}); valid: real or "
                                 f"integer buffers")
        return cls(tuple(n for n, _ in named), tuple(b.shape for _, b in named),
                   tuple(b.dtype for _, b in named))

    def __bool__(self) -> bool:
        return bool(self.names)

    @property
    def float_dtype(self) -> torch.dtype:
        """The dtype of ``floats``: the promotion of the floating buffers' (float32 if none)."""
        dtype = None
        for d in self.dtypes:
            if d.is_floating_point:
                dtype = d if dtype is None else torch.promote_types(dtype, d)
        return torch.float32 if dtype is None else dtype

    def _parts(self) -> tuple[list[int], list[int]]:
        floating = [i for i, d in enumerate(self.dtypes) if d.is_floating_point]
        return floating, [i for i in range(len(self.names)) if i not in floating]

    def flatten(self, named: dict[str, Tensor]) -> WorkerBuffers:
        """``{name: [n, *shape]}`` as :class:`WorkerBuffers` (a copy)."""
        floating, integral = self._parts()
        first = named[self.names[0]]
        n, device = first.shape[0], first.device
        floats = [named[self.names[i]].reshape(n, -1).to(self.float_dtype) for i in floating]
        counts = [named[self.names[i]].reshape(n, -1).to(torch.int64) for i in integral]
        return WorkerBuffers(
            torch.cat(floats, dim=1) if floats
            else torch.zeros(n, 0, dtype=self.float_dtype, device=device),
            torch.cat(counts, dim=1) if counts
            else torch.zeros(n, 0, dtype=torch.int64, device=device))

    def unflatten(self, buffers: WorkerBuffers) -> dict[str, Tensor]:
        """``{name: [n, *shape]}`` of every worker, each in its buffer's dtype (views where
        the dtype is the flat one's)."""
        floating, integral = self._parts()
        n, out = buffers.n, {}
        for part, flat in ((floating, buffers.floats), (integral, buffers.counts)):
            sizes = [math.prod(self.shapes[i]) for i in part]
            for i, chunk in zip(part, flat.split(sizes, dim=1), strict=True):
                out[self.names[i]] = chunk.view(n, *self.shapes[i]).to(self.dtypes[i])
        return {name: out[name] for name in self.names}

    def named(self, buffers: WorkerBuffers) -> dict[str, Tensor]:
        """The buffers of a one-row :class:`WorkerBuffers` by name, shaped as the module's
        (copies): what ``module.load_state_dict`` and ``functional_call`` take."""
        if buffers.n != 1:
            raise ValueError(f"named() takes one row of buffers, got {buffers.n}")
        return {name: b[0].clone() for name, b in self.unflatten(buffers).items()}


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
    is zero). A parameter written twice (a layer a model's forward calls twice) gets the
    sum: the second :meth:`slot` call hands out a scratch tensor that :meth:`finish` adds."""

    def __init__(self, layout: ParamLayout, n: int, like: Tensor) -> None:
        self.grads = torch.empty(n, layout.dim, dtype=like.dtype, device=like.device)
        self._slots = [
            chunk.view(n, *shape) for chunk, shape in zip(
                self.grads.split(layout.sizes, dim=1), layout.shapes, strict=True)
        ]
        self._written: set[int] = set()
        self._more: list[tuple[int, Tensor]] = []

    @property
    def n(self) -> int:
        return self.grads.shape[0]

    def slot(self, index: int) -> Tensor:
        """Parameter ``index``'s columns, to be written by the caller (a scratch tensor of
        their shape, added at :meth:`finish`, when they were handed out before)."""
        if index in self._written:
            extra = torch.empty_like(self._slots[index])
            self._more.append((index, extra))
            return extra
        self._written.add(index)
        return self._slots[index]

    def finish(self) -> Tensor:
        """The gradient matrix, the slots nobody wrote set to zero."""
        for index, extra in self._more:
            self._slots[index].add_(extra)
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
        worker_weight_grads(grad_out, h, weight, sink.n, conv.stride, conv.padding,
                            conv.dilation, conv.groups, out=sink.slot(w_slot))
        if b_slot is not None:
            sink.slot(b_slot).copy_(grad_out.reshape(sink.n, -1, *grad_out.shape[1:])
                                    .sum(dim=(1, 3, 4)))
        return grad_h, None, None, None, None, None, None


def _per_worker(h: Tensor, n: int) -> Tensor:
    """``h[n * b, C, *spatial]`` viewed as ``[n, b, C, S]`` (``S`` the spatial size, 1 for
    none): worker i's channel c is ``[i, :, c, :]``."""
    return h.reshape(n, h.shape[0] // n, h.shape[1], -1)


@dataclass
class _Pass:
    """What one layer call sees: the shared parameters, the number of workers, the sink,
    the carrier that makes the fast layers' outputs require grad, the per-worker
    parameter leaves of the autograd-native layers (their gradients are copied into the
    sink after the backward pass), and every worker's buffers ``{name: [n, *shape]}``,
    which the layers replace by their updated values (never written in place)."""

    params: list[Tensor]
    n: int
    sink: GradientSink | None
    carrier: Tensor | None
    leaves: dict[int, Tensor]
    buffers: dict[str, Tensor] | None = None

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

FoldedLayer = Callable[[_Pass, Tensor, bool], Tensor]
"""A layer on the big batch: ``(pass, activations [n * b, ...], training) -> [n * b, ...]``."""

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BATCH_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _batch_norm(run: _Pass, h: Tensor, layer: nn.modules.batchnorm._BatchNorm,
                w: int | None, b: int | None, names: tuple[str | None, ...],
                training: bool) -> Tensor:
    """``layer`` (a BatchNorm) on the big batch ``h[n * b, C, *]``, every worker on its own.

    In training (or without running statistics) worker i normalises with its own batch's
    mean and biased variance over its ``m = b * S`` values of each channel (Ioffe &
    Szegedy 2015, as on its own machine), and its running statistics become, as
    ``nn.BatchNorm*`` updates them, ``r <- (1 - f) r + f s`` with ``s`` the mean and the
    unbiased variance ``var * m / (m - 1)``, ``f`` the momentum (None:
    ``1 / num_batches_tracked``, the cumulative average), ``num_batches_tracked`` counted
    per worker. In evaluation it normalises with its own running statistics.

    One call of torch's own batch norm computes all workers: the workers' channels side by
    side, ``h`` laid out as ``[b, n * C, S]`` (worker i's channel c is channel
    ``i * C + c``), the affine parameters (each worker's leaf, so each gets its own
    gradient) and the running statistics as ``[n * C]``."""
    n, buffers = run.n, run.buffers
    mean_name, var_name, count_name = names
    tracked = mean_name is not None
    hv = _per_worker(h, n)
    per, channels = hv.shape[1], hv.shape[2]
    if training and per * hv.shape[3] == 1:
        raise ValueError(f"BatchNorm in training needs more than 1 value per channel of each "
                         f"worker's batch, got input size {list(hv.shape[1:])} per worker")
    side = hv.transpose(0, 1).reshape(per, n * channels, -1)
    weight = None if w is None else run.leaf(w).reshape(-1)
    bias = None if b is None else run.leaf(b).reshape(-1)
    momentum, factors = 0.0, None
    if training and tracked:
        counts = None
        if count_name is not None:
            counts = buffers[count_name] + 1
            buffers[count_name] = counts
        if layer.momentum is not None:
            momentum = layer.momentum
        elif counts is not None and bool((counts == counts[0]).all()):
            momentum = 1.0 / float(counts[0])  # the workers' counts agree (they step together)
        elif counts is not None:
            factors = (1.0 / counts.double()).to(h.dtype)[:, None]
    if not (training and tracked) or factors is None:
        running = [None, None] if not tracked else [
            buffers[name].reshape(-1).clone() for name in (mean_name, var_name)]
        out = nn.functional.batch_norm(side, *running, weight, bias, training or not tracked,
                                       momentum, layer.eps)
        if training and tracked:  # torch updated the copies in place
            buffers[mean_name], buffers[var_name] = (r.view(n, channels) for r in running)
    else:  # momentum None and workers that have stepped different numbers of times
        out = nn.functional.batch_norm(side, None, None, weight, bias, True, 0.0, layer.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(hv, dim=(1, 3), correction=0)
        m = per * hv.shape[3]
        buffers[mean_name] = factors * mean + (1 - factors) * buffers[mean_name]
        buffers[var_name] = (factors * (var * (m / (m - 1)))
                             + (1 - factors) * buffers[var_name])
    return out.view(per, n, channels, -1).transpose(0, 1).reshape(h.shape)


def _worker_affine(run: _Pass, xv: Tensor, w: int | None, b: int | None,
                   per_worker: tuple[int, ...]) -> Tensor:
    """``xv * w_i + beta_i``: the normalised activations ``xv`` (viewed per worker, ``[n,
    ...]``) with each worker's own leaves of the affine parameters, reshaped to
    ``per_worker`` to broadcast over ``xv``; one batched computation."""

    def leaf(index: int) -> Tensor:
        return run.leaf(index).reshape(per_worker)

    if w is None:
        return xv if b is None else xv + leaf(b)
    return xv * leaf(w) if b is None else torch.addcmul(leaf(b), xv, leaf(w))


def _group_norm(run: _Pass, h: Tensor, layer: nn.GroupNorm, w: int | None,
                b: int | None) -> Tensor:
    """GroupNorm (Wu & He 2018): each sample of ``h[n * b, C, *]`` normalised over each of
    its groups of channels, then worker i's affine ``w_i[C]``, ``beta_i[C]``."""
    xhat = nn.functional.group_norm(h, layer.num_groups, None, None, layer.eps)
    return _worker_affine(run, _per_worker(xhat, run.n), w, b,
                          (run.n, 1, h.shape[1], 1)).view(h.shape)


def _layer_norm(run: _Pass, h: Tensor, layer: nn.LayerNorm, w: int | None,
                b: int | None) -> Tensor:
    """LayerNorm (Ba et al. 2016): each sample of ``h[n * b, ..., *shape]`` normalised over
    its last dimensions ``shape``, then worker i's affine ``w_i[shape]``, ``beta_i[shape]``."""
    shape = tuple(layer.normalized_shape)
    size = math.prod(shape)
    xhat = nn.functional.layer_norm(h, shape, None, None, layer.eps)
    return _worker_affine(run, xhat.reshape(run.n, -1, size), w, b,
                          (run.n, 1, size)).view(h.shape)


class _Current:
    """The pass a folded model's stand-ins read while its forward runs (None between)."""

    run: _Pass | None = None


class _StandIn(nn.Module):
    """A layer of a folded model's copy: ``call(pass, h, self.training)`` on the big batch
    with the pass of the gradient call under way."""

    def __init__(self, call: FoldedLayer, current: _Current) -> None:
        super().__init__()
        self._call = call
        self._current = current

    def forward(self, h: Tensor) -> Tensor:
        run = self._current.run
        if run is None:
            raise RuntimeError("a folded model runs inside BatchedModel.gradients only")
        return self._call(run, h, self.training)


class BatchedModel:
    """``module`` compiled once into layer calls that yield per-worker gradients.

    ``gradients(x, inputs, targets, task)`` runs every worker with the shared parameters
    ``x[d]`` on its own batch ``inputs[i]`` and returns each worker's gradient (and, for a
    module with buffers, every worker's updated buffers).

    Args:
        module: the model; never modified (the folded path runs a deep copy, which keeps
            the training mode ``module`` had here).
        layout: where its parameters sit in ``x``.
        independent_samples: ``module``'s forward treats every sample on its own except
            inside normalisation layers (declared by the model, e.g.
            ``models.info(name).independent_samples``): a module that is not an
            ``nn.Sequential`` then runs folded when every submodule owning parameters or
            buffers has a stand-in; False: through ``vmap``.

    Attributes:
        path: how the whole module runs: ``sequential``, ``folded`` or ``vmap``.
        buffer_layout: where its buffers sit in :class:`WorkerBuffers` (empty: none).
    """

    def __init__(self, module: nn.Module, layout: ParamLayout, *,
                 independent_samples: bool = False) -> None:
        self.layout = layout
        self.independent_samples = independent_samples
        canonical = {id(p): i for i, (_, p) in enumerate(module.named_parameters())}
        every_name = list(module.named_parameters(remove_duplicate=False))
        self._index = {name: canonical[id(p)] for name, p in every_name}
        tied = len(every_name) > len(canonical)  # a parameter used under several names
        self.uses_sink = False  # set by _compile when a layer writes into a GradientSink
        self.buffer_layout = BufferLayout.of(module)
        self._initial = {name: b.detach().clone() for name, b in module.named_buffers()}
        self._current = _Current()
        if tied:  # functional_call under vmap leaves a tied module's parameters batched:
            module = copy.deepcopy(module)  # work on a copy, never on the caller's module
        folded = None
        if isinstance(module, nn.Sequential) and not tied:
            self.path, self.layers = "sequential", self._compile(module, "")
        elif (independent_samples and not tied
              and (folded := self._fold(module, "")) is not None):
            self.path, self.layers = "folded", [folded]
        else:
            self.path, self.layers = "vmap", [self._vmapped(module, "")]

    def _own(self, module: nn.Module, prefix: str) -> dict[str, int]:
        """``module``'s parameter names (the first name of a tied one) -> layout index."""
        return {name: self._index[prefix + name] for name, _ in module.named_parameters()}

    def _compile(self, module: nn.Module, prefix: str) -> list[Layer]:
        if isinstance(module, nn.Sequential):
            # _modules, not named_children(): a module used twice must run twice
            return [call for name, child in module._modules.items() if child is not None
                    for call in self._compile(child, f"{prefix}{name}.")]
        norm = self._norm(module, prefix)
        if norm is not None:  # on the big batch [n * b, ...]; BatchNorm per worker
            return [lambda run, h: _on_big_batch(
                lambda big: norm(run, big, module.training), h)]
        stateless = not any(_owns_state(m) for m in module.modules())
        if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            return [lambda run, h: h.flatten(2)]
        if stateless and isinstance(module, ELEMENTWISE):  # any shape: on [n, b, ...] as is
            return [lambda run, h: module(h)]
        if stateless:  # parameter-free (pooling, ...): the module on the big batch [n * b, ...]
            return [lambda run, h: _on_big_batch(module, h)]
        fast = self._fast(module, prefix)
        if fast is not None:  # Linear, zero-padded Conv2d: on the big batch [n * b, ...]
            return [lambda run, h: _on_big_batch(
                lambda big: fast(run, big, module.training), h)]
        if self.independent_samples and (folded := self._fold(module, prefix)) is not None:
            return [folded]
        return [self._vmapped(module, prefix)]

    def _norm(self, module: nn.Module, prefix: str) -> FoldedLayer | None:
        """A normalisation layer (``BatchNorm1d/2d/3d``, ``GroupNorm``, ``LayerNorm``) as a
        layer on the big batch, or None for any other module."""
        kind = type(module)
        own = self._own(module, prefix)
        buffers = {name for name, _ in module.named_buffers(recurse=False)}
        if not set(own) <= {"weight", "bias"}:
            return None
        w, b = own.get("weight"), own.get("bias")
        if kind in BATCH_NORMS and buffers <= set(BATCH_NORM_BUFFERS):
            names = tuple(prefix + k if k in buffers else None for k in BATCH_NORM_BUFFERS)
            return lambda run, h, training: _batch_norm(run, h, module, w, b, names, training)
        if buffers:
            return None
        if kind is nn.GroupNorm:
            return lambda run, h, training: _group_norm(run, h, module, w, b)
        if kind is nn.LayerNorm:
            return lambda run, h, training: _layer_norm(run, h, module, w, b)
        return None

    def _fast(self, module: nn.Module, prefix: str) -> FoldedLayer | None:
        """A ``Linear`` or zero-padded ``Conv2d`` as a layer on the big batch, or None."""
        own = self._own(module, prefix)
        if _owns_buffers(module) or not set(own) <= {"weight", "bias"}:
            return None
        w, b = own.get("weight"), own.get("bias")
        slots = (w, b)
        if type(module) is nn.Linear and module.weight.numel() <= NATIVE_LINEAR_MAX:
            return lambda run, big, training: _batched_linear(
                run.leaf(w), None if b is None else run.leaf(b),
                big.reshape(run.n, -1, big.shape[-1])).view(*big.shape[:-1], -1)
        if type(module) is nn.Linear:
            self.uses_sink = True
            return lambda run, big, training: _WorkerLinear.apply(
                big, run.carrier, run.params[w], None if b is None else run.params[b],
                run.sink, slots)
        if (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            self.uses_sink = True
            return lambda run, big, training: _WorkerConv2d.apply(
                big, run.carrier, run.params[w], None if b is None else run.params[b],
                run.sink, slots, module)
        return None

    def _fold(self, module: nn.Module, prefix: str) -> Layer | None:
        """``module`` run folded: a deep copy whose ``Conv2d``, ``Linear`` and
        normalisation layers are stand-ins (:class:`_StandIn`) for the pass under way runs
        its own forward on the big batch ``[n * b, ...]``. None when some submodule that
        owns parameters or buffers (or computes batch statistics) has no stand-in."""
        calls: dict[str, FoldedLayer] = {}
        for name, sub in module.named_modules(remove_duplicate=False):
            full = f"{prefix}{name}." if name else prefix
            call = self._norm(sub, full) or self._fast(sub, full)
            if call is not None:
                calls[name] = call
            elif _owns_state(sub):
                return None
        self.uses_sink = True
        if "" in calls:  # the module is one layer
            root = _StandIn(calls[""], self._current).train(module.training)
            folded: nn.Module = root
        else:
            folded = copy.deepcopy(module)
            for name, call in calls.items():
                parent_name, _, attr = name.rpartition(".")
                parent = folded.get_submodule(parent_name)
                parent._modules[attr] = _StandIn(call, self._current).train(
                    parent._modules[attr].training)
        current = self._current

        def call(run: _Pass, h: Tensor) -> Tensor:
            current.run = run
            try:
                out = folded(h.reshape(-1, *h.shape[2:]))
            finally:
                current.run = None
            samples = h.shape[0] * h.shape[1]
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != samples:
                raise ValueError(
                    f"a model declared independent_samples must return one output per "
                    f"sample, [N, ...]; it returned "
                    f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__} "
                    f"for {samples} samples")
            return out.reshape(*h.shape[:2], *out.shape[1:])

        return call

    def _vmapped(self, module: nn.Module, prefix: str) -> Layer:
        own = self._own(module, prefix)
        buffer_names = {name: prefix + name for name, _ in module.named_buffers()}
        if not buffer_names:
            def one(params: dict[str, Tensor], xb: Tensor) -> Tensor:
                return functional_call(module, params, (xb,))  # ties follow the first name

            batched = vmap(one, randomness="different")

            def call(run: _Pass, h: Tensor) -> Tensor:
                return batched({name: run.leaf(i) for name, i in own.items()}, h)

            return call

        for name, sub in module.named_modules():
            if (isinstance(sub, BATCH_NORM_TYPES) and sub.momentum is None
                    and sub.track_running_stats):
                raise ValueError(
                    f"BatchNorm {prefix + name or 'module'} with momentum=None (a cumulative "
                    f"average) cannot run under vmap (torch reads its count as a Python "
                    f"number); valid: a momentum, or a model declared independent_samples")

        def one_with_buffers(params: dict[str, Tensor], buffers: dict[str, Tensor],
                             xb: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            # the module updates its buffers in place: on copies, returned as the new ones
            buffers = {name: b.clone() for name, b in buffers.items()}
            return functional_call(module, {**params, **buffers}, (xb,)), buffers

        batched_with_buffers = vmap(one_with_buffers, randomness="different")

        def call_with_buffers(run: _Pass, h: Tensor) -> Tensor:
            out, new = batched_with_buffers(
                {name: run.leaf(i) for name, i in own.items()},
                {name: run.buffers[full] for name, full in buffer_names.items()}, h)
            run.buffers.update({full: new[name].detach()
                                for name, full in buffer_names.items()})
            return out

        return call_with_buffers

    def initial_buffers(self, n: int) -> WorkerBuffers | None:
        """Every one of ``n`` workers with the module's buffers (as they were when it was
        compiled); None for a module without buffers."""
        if not self.buffer_layout:
            return None
        return self.buffer_layout.flatten(
            {name: b.expand(n, *b.shape) for name, b in self._initial.items()})

    def gradients(self, x: Tensor, inputs: Tensor, targets: Tensor, task: str, *,
                  loss: Loss | None = None, buffers: WorkerBuffers | None = None
                  ) -> WorkerStep:
        """Each worker's gradient of its mean batch loss at the shared parameters ``x[d]``.

        Args:
            inputs: ``[n, b, ...]`` (worker i's batch is ``inputs[i]``).
            targets: ``[n, b]``.
            loss: the per-sample loss (None: :func:`default_loss` of ``task``).
            buffers: every worker's buffers before the step (None: the module's own for
                every worker, :meth:`initial_buffers`); read, never written.

        Returns:
            the gradients, the batch losses and correct counts, and every worker's buffers
            after the step (None for a module without buffers).
        """
        n = inputs.shape[0]
        named = None
        if self.buffer_layout:
            state = self.initial_buffers(n) if buffers is None else buffers
            if state.n != n:
                raise ValueError(f"buffers of {state.n} workers for a batch of {n}")
            named = self.buffer_layout.unflatten(state)
        if self.uses_sink:
            run = _Pass(params=list(self.layout.unflatten(x.detach()).values()), n=n,
                        sink=GradientSink(self.layout, n, x),
                        carrier=x.new_zeros((), requires_grad=True), leaves={},
                        buffers=named)
        else:  # every layer autograd-native: differentiate the broadcast [n, d] directly
            stacked = x.detach().requires_grad_(True).expand(n, -1)
            views = [chunk.view(n, *shape) for chunk, shape in zip(
                stacked.split(self.layout.sizes, dim=1), self.layout.shapes, strict=True)]
            run = _Pass(params=[], n=n, sink=None, carrier=None, leaves=dict(enumerate(views)),
                        buffers=named)
        outputs = inputs
        for layer in self.layers:
            outputs = layer(run, outputs)
        losses = sample_losses(outputs, targets, task, loss).mean(dim=1)
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
        new_buffers = None if named is None else self.buffer_layout.flatten(named)
        return WorkerStep(grads, losses.detach(), correct, new_buffers)


def _owns_buffers(module: nn.Module) -> bool:
    return any(True for _ in module.named_buffers(recurse=False))


BATCH_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
"""Every batch norm (a subclass, ``SyncBatchNorm``): statistics across samples."""


def _owns_state(module: nn.Module) -> bool:
    """``module`` owns parameters or buffers, or computes statistics across samples (a
    batch norm): it cannot run unchanged on the big batch."""
    return (any(True for _ in module.named_parameters(recurse=False)) or _owns_buffers(module)
            or isinstance(module, BATCH_NORM_TYPES))


Loss = Callable[[Tensor, Tensor], Tensor]
"""A per-sample loss ``loss(outputs[N, ...], targets[N]) -> [N]`` (torch's losses with
``reduction="none"``); a worker's batch loss is its mean over the worker's samples."""


def per_sample_loss(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """Loss of every sample, shaped like ``targets``: cross-entropy for classification
    (outputs ``[..., C]``), squared error for regression (outputs ``[..., 1]``)."""
    if task == "classification":
        flat = nn.functional.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="none"
        )
        return flat.view(targets.shape)
    return (outputs.squeeze(-1) - targets).square()


TASKS = ("classification", "regression")


def default_loss(task: str) -> Loss:
    """The loss of ``task``: cross-entropy ``-log softmax(o)_y`` for classification,
    squared error ``(o - y)^2`` for regression (:func:`per_sample_loss`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return per_sample_loss(outputs, targets, task)

    loss.__name__ = loss.__qualname__ = f"default_loss({task!r})"
    return loss


def sample_losses(outputs: Tensor, targets: Tensor, task: str, loss: Loss | None = None
                  ) -> Tensor:
    """Every sample's loss, shaped like ``targets`` (any leading shape, e.g. ``[n, b]``):
    ``loss`` on the samples flattened to ``[N, ...]`` and ``[N]``, or the task's default
    (:func:`per_sample_loss`) when None. A loss that returns another shape than ``[N]``
    raises ValueError."""
    if loss is None:
        return per_sample_loss(outputs, targets, task)
    lead = targets.dim()
    flat = loss(outputs.reshape(-1, *outputs.shape[lead:]), targets.reshape(-1))
    if not isinstance(flat, Tensor) or flat.shape != (targets.numel(),):
        got = list(flat.shape) if isinstance(flat, Tensor) else type(flat).__name__
        raise ValueError(f"the loss returned {got} for {targets.numel()} samples; valid: one "
                         f"loss per sample, shape [N] (torch's losses: reduction='none')")
    return flat.view(targets.shape)


@dataclass(frozen=True)
class WorkerStep:
    """One step's honest gradients, each worker's batch statistics and buffers."""

    grads: Tensor  # [n, d]
    losses: Tensor  # [n] mean batch loss per worker
    correct: Tensor | None  # [n] correctly classified samples per worker (classification)
    buffers: WorkerBuffers | None = None  # every worker's buffers after the step


def worker_gradients(
    model: BatchedModel, x: Tensor, inputs: Tensor, targets: Tensor, task: str, *,
    loss: Loss | None = None, buffers: WorkerBuffers | None = None,
) -> WorkerStep:
    """Each worker's gradient of its mean batch loss at the shared parameters ``x[d]``
    (``inputs[n, b, ...]``, ``targets[n, b]``); see :meth:`BatchedModel.gradients`."""
    return model.gradients(x, inputs, targets, task, loss=loss, buffers=buffers)


@torch.no_grad()
def evaluate(
    module: nn.Module, layout: ParamLayout, x: Tensor, inputs: Tensor, targets: Tensor,
    task: str, batch_size: int = 4096, *, loss: Loss | None = None,
    buffers: dict[str, Tensor] | None = None,
) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) of parameters ``x`` on a whole set,
    the module in evaluation mode with ``buffers`` (by name; None: its own) as its
    running statistics, ``loss`` the per-sample loss (None: the task's default)."""
    was_training = module.training
    module.eval()
    state = {**layout.unflatten(x), **(buffers or {})}
    total_loss, total_correct = 0.0, 0
    for start in range(0, inputs.shape[0], batch_size):
        xb, yb = inputs[start:start + batch_size], targets[start:start + batch_size]
        out = functional_call(module, state, (xb,))
        total_loss += float(sample_losses(out, yb, task, loss).sum())
        if task == "classification":
            total_correct += int((out.argmax(dim=-1) == yb).sum())
    module.train(was_training)
    n = inputs.shape[0]
    return total_loss / n, (total_correct / n if task == "classification" else None)
