"""Per-worker weight gradients of one ``Conv2d`` applied to all workers' samples at once.

The simulator runs a convolution with the shared weights ``W[O, C/g, kh, kw]`` on the big
batch ``h[n * b, C, H, W]`` (worker i's samples are rows ``i b .. (i + 1) b - 1``); its
backward needs, besides the ordinary input gradient, each worker's own weight gradient

    dW_i = sum_{s in worker i} corr(h_s, dy_s),    i = 1 .. n,

where ``dy = dL/dy[n * b, O, H', W']`` and ``corr`` is the cross-correlation that
``convolution_backward`` computes for the weight (stride, padding, dilation and groups
as in the forward). Two formulations give the same numbers up to float rounding:

- ``"loop"``: ``convolution_backward`` (weight gradient only) on each worker's slice of
  the batch, n calls;
- ``"grouped"``: the workers as groups of one grouped convolution (the per-example
  gradient trick of Rochette et al. 2019, "Efficient Per-Example Gradient Computations in
  Convolutional Neural Networks", used by Opacus): ``h`` viewed ``[n, b, C, H, W]`` and
  transposed to ``[b, n C, H, W]`` (one copy), ``dy`` likewise to ``[b, n O, H', W']``;
  one ``convolution_backward`` with a weight of shape ``[n O, C/g, kh, kw]`` and
  ``groups = n g`` gives ``[n O, C/g, kh, kw]``, i.e. every ``dW_i``, in one call.

Which one is faster depends on the machine and on the thread count (see
:func:`choose_method` and benchmarks/RESULTS.md); both are tested against autograd of
per-worker ``F.conv2d``. Unfolding (im2col) then one ``bmm`` over the workers was measured
too and was 2-16x slower than either on every built-in model's layers (its ``[n b, C kh
kw, H' W']`` column matrix is materialised and transposed), so it is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Method = Literal["loop", "grouped"]
METHODS: tuple[Method, ...] = ("loop", "grouped")
"""The formulations of :func:`worker_weight_grads`."""


def _pair(value: int | Sequence[int]) -> list[int]:
    return [value, value] if isinstance(value, int) else [int(v) for v in value]


def choose_method(h: Tensor, weight: Tensor, n: int) -> Method:
    """The formulation :func:`worker_weight_grads` uses when none is asked for.

    ``"loop"`` everywhere: on this project's 2-core CPU it was the faster of the two (or
    within the noise) on every convolution of ``smallcnn``, ``torchnet``, ``mnistnet`` and
    ``resnet20`` at 10 workers x 12 and x 64 samples with the thread count a run uses,
    since ``convolution_backward`` on ``b`` samples already runs at the speed of the
    whole batch (``benchmarks/bench_cnn.py --layers`` prints the comparison). On other
    devices nothing was measured and the loop is kept."""
    del h, weight, n
    return "loop"


def worker_weight_grads(
    grad_out: Tensor, h: Tensor, weight: Tensor, n: int,
    stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1, groups: int = 1, *,
    out: Tensor | None = None, method: Method | None = None,
) -> Tensor:
    """Each worker's weight gradient ``dW_i = sum_{s in worker i} corr(h_s, dy_s)``.

    Args:
        grad_out: ``dy[n * b, O, H', W']``, the gradient of the convolution's output.
        h: ``[n * b, C, H, W]``, the convolution's input; worker i's samples are rows
            ``i b .. (i + 1) b - 1`` of both.
        weight: ``[O, C / groups, kh, kw]``, the shared weights (only their shape, dtype
            and device matter: the weight gradient does not depend on the weights).
        n: the number of workers (divides ``h.shape[0]``).
        stride, padding, dilation, groups: the convolution's (integers or pairs; zero
            padding).
        out: ``[n, O, C / groups, kh, kw]`` to write into (e.g. a view of the columns of a
            ``[n, d]`` gradient matrix); a new tensor when None.
        method: ``"loop"`` or ``"grouped"`` (see the module's notes); None:
            :func:`choose_method`.

    Returns:
        ``[n, O, C / groups, kh, kw]`` (``out`` when given). The inputs are not modified.
    """
    if h.shape[0] % n or grad_out.shape[0] != h.shape[0]:
        raise ValueError(f"h[{h.shape[0]}, ...] and grad_out[{grad_out.shape[0]}, ...] must "
                         f"hold the same number of samples, a multiple of n={n}")
    method = choose_method(h, weight, n) if method is None else method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if out is None:
        out = weight.new_empty((n, *weight.shape))
    args = (_pair(stride), _pair(padding), _pair(dilation), False, [0, 0])
    mask = [False, True, False]
    if method == "loop":
        for i, (dy, hi) in enumerate(zip(grad_out.chunk(n), h.chunk(n), strict=True)):
            out[i].copy_(torch.ops.aten.convolution_backward(
                dy, hi, weight, None, *args, groups, mask)[1])
        return out
    b = h.shape[0] // n
    as_groups = h.reshape(n, b, *h.shape[1:]).transpose(0, 1).reshape(b, -1, *h.shape[2:])
    dy_groups = (grad_out.reshape(n, b, *grad_out.shape[1:]).transpose(0, 1)
                 .reshape(b, -1, *grad_out.shape[2:]))
    stacked = weight.new_empty((n * weight.shape[0], *weight.shape[1:]))  # shape only
    grads = torch.ops.aten.convolution_backward(
        dy_groups, as_groups, stacked, None, *args, n * groups, mask)[1]
    out.copy_(grads.view(n, *weight.shape))
    return out
