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
  Convolutional Neural Networks"): ``h`` viewed ``[n, b, C, H, W]`` and
  transposed to ``[b, n C, H, W]`` (one copy), ``dy`` likewise to ``[b, n O, H', W']``;
  one ``convolution_backward`` with a weight of shape ``[n O, C/g, kh, kw]`` and
  ``groups = n g`` gives ``[n O, C/g, kh, kw]``, i.e. every ``dW_i``, in one call.

The loop pays a call's fixed cost n times, the grouped call pays two transposing copies
and oneDNN's grouped kernel; which is faster depends on one worker's share of the work,
the channels and the threads (:func:`choose_method`, measured in benchmarks/RESULTS.md).
Both are tested against autograd of per-worker ``F.conv2d``. Unfolding (im2col) then one
``bmm`` over the workers was measured too (10 workers x 12 samples, one thread): 1.6-16x
slower than the loop on every convolution of ``smallcnn``, ``torchnet``, ``mnistnet`` and
``resnet20`` (its ``[n b, C kh kw, H' W']`` column matrix is materialised and
transposed), faster (0.86x) only on a 1x1 stride-2 projection, which none of them has; it
is not offered.
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


GROUPED_MIN_CHANNELS = 16
"""Input channels per group below which the grouped formulation is never chosen: with 1
or 3 channels per group (a first layer) oneDNN's grouped kernel was at best as fast as the
loop (4 samples a worker) and 1.3-3.6x slower from 12 samples a worker on."""

GROUPED_MAX_FLOPS = 24e6
"""Per-worker weight-gradient work (floating-point operations, per intra-op thread) up to
which :func:`choose_method` takes the grouped formulation on a CPU. Measured on one
thread: layers of 7-19 MFLOP a worker ran grouped at 0.60-1.06x the loop, 22 MFLOP
(``smallcnn``'s second convolution, 12 samples) 0.89x, 28-32 MFLOP 0.94-1.20x, beyond
57 MFLOP 0.94-1.32x."""


def weight_grad_flops(h: Tensor, weight: Tensor, n: int, stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int]) -> int:
    """One worker's weight-gradient work ``2 b O (C/g) kh kw H' W'`` (the forward's)."""
    out_side = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in zip(
        h.shape[2:], padding, dilation, weight.shape[2:], stride, strict=True)]
    return 2 * (h.shape[0] // n) * weight[0].numel() * weight.shape[0] * out_side[0] * out_side[1]


def choose_method(h: Tensor, weight: Tensor, n: int, stride: Sequence[int] = (1, 1),
                  padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1)
                  ) -> Method:
    """The formulation :func:`worker_weight_grads` uses when none is asked for:

        "grouped"  if the device is a CPU, the dtype float32, oneDNN (mkldnn) on,
                   C/g >= GROUPED_MIN_CHANNELS and
                   weight_grad_flops <= GROUPED_MAX_FLOPS * torch.get_num_threads(),
        "loop"     otherwise.

    Each ``convolution_backward`` call has a fixed cost (oneDNN's set-up, a parallel
    region per call), which the loop pays n times: it matters when one worker's share is
    small (few samples, small images) and more with two threads. Measured on this
    project's 2-core CPU (``benchmarks/bench_cnn.py``'s layer table, 10 workers, the
    built-in CNNs' convolutions; the allocator set by ``keep_freed_memory`` as a run has
    it, without which the grouped copies are page-faulted in on every call and cost up to
    2x): with 16-64 channels, grouped / loop = 0.6-1.06 at 4 samples a worker (0.4-1.0
    on two threads, in a separate run), 0.87-1.24 at 12, 1.04-1.32 at 64 (where the loop
    costs 0.9-1.2x one whole-batch call); with 1 or 3 input channels see
    :data:`GROUPED_MIN_CHANNELS`. Float64 (no oneDNN) was not faster grouped; other
    devices were not measured: the loop."""
    if (h.device.type != "cpu" or h.dtype != torch.float32
            or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
            or weight.shape[1] < GROUPED_MIN_CHANNELS):
        return "loop"
    flops = weight_grad_flops(h, weight, n, stride, padding, dilation)
    return "grouped" if flops <= GROUPED_MAX_FLOPS * torch.get_num_threads() else "loop"


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
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if method is None:
        method = choose_method(h, weight, n, stride, padding, dilation)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if out is None:
        out = weight.new_empty((n, *weight.shape))
    args = (stride, padding, dilation, False, [0, 0])
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
