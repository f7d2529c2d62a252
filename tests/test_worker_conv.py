"""engine/worker_conv.py: every formulation of the per-worker convolution weight gradient
equals two independent references, for stride/padding/dilation/groups variants, float32
and float64:

- autograd of per-worker ``F.conv2d``: worker i's own copy of the weights, an ordinary
  forward on its samples, ``backward(dy_i)``;
- the loop of per-worker ``convolution_backward`` calls the engine used before (written
  out here, not imported).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from signvote.engine.gradients import BatchedModel, ParamLayout
from signvote.engine.worker_conv import (
    GROUPED_MAX_FLOPS,
    GROUPED_MIN_CHANNELS,
    METHODS,
    choose_method,
    weight_grad_flops,
    worker_weight_grads,
)

# (C, O, kernel, stride, padding, dilation, groups, side)
CASES = [
    (1, 4, 3, 1, 0, 1, 1, 9),       # a first layer (one input channel), no padding
    (3, 5, 3, 1, 1, 1, 1, 8),       # padded 3x3
    (4, 6, 3, 2, 1, 1, 2, 9),       # stride 2, groups 2, odd side
    (6, 3, 1, 1, 0, 2, 1, 7),       # 1x1 with dilation 2
    (2, 4, (3, 2), (2, 1), (1, 0), (1, 2), 1, 10),  # non-square kernel, stride, dilation
    (4, 4, 3, 1, 2, 2, 4, 8),       # depthwise, dilated, padding 2
    (3, 8, 5, 3, 2, 1, 1, 11),      # 5x5 with stride 3
]


def conv_case(case, n, b, dtype, gen):
    c, o, k, stride, padding, dilation, groups, side = case
    kh, kw = (k, k) if isinstance(k, int) else k
    h = torch.randn(n * b, c, side, side + 1, generator=gen, dtype=dtype)
    weight = torch.randn(o, c // groups, kh, kw, generator=gen, dtype=dtype)
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out_shape = F.conv2d(h, weight, **conv).shape
    dy = torch.randn(out_shape, generator=gen, dtype=dtype)
    return h, weight, dy, conv


def autograd_reference(h, weight, dy, conv, n):
    """Each worker's own weights, ordinary forward and backward on its own samples."""
    grads = []
    for hi, dyi in zip(h.chunk(n), dy.chunk(n), strict=True):
        own = weight.clone().requires_grad_(True)
        F.conv2d(hi, own, **conv).backward(dyi)
        grads.append(own.grad)
    return torch.stack(grads)


def loop_reference(h, weight, dy, conv, n):
    """The engine's former loop: convolution_backward on each worker's slice."""
    def pair(v):
        return [v, v] if isinstance(v, int) else list(v)

    args = (pair(conv["stride"]), pair(conv["padding"]), pair(conv["dilation"]), False,
            [0, 0], conv["groups"])
    return torch.stack([
        torch.ops.aten.convolution_backward(dyi, hi, weight, None, *args,
                                            [False, True, False])[1]
        for hi, dyi in zip(h.chunk(n), dy.chunk(n), strict=True)])


def tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10,
                                                                           atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_weight_grads_equal_per_worker_autograd_and_the_loop(case, dtype, method, gen):
    n, b = 4, 3
    h, weight, dy, conv = conv_case(case, n, b, dtype, gen)
    h_before, dy_before, w_before = h.clone(), dy.clone(), weight.clone()
    got = worker_weight_grads(dy, h, weight, n, **conv, method=method)
    assert got.shape == (n, *weight.shape) and got.dtype == dtype
    torch.testing.assert_close(got, autograd_reference(h, weight, dy, conv, n),
                               **tolerance(dtype))
    torch.testing.assert_close(got, loop_reference(h, weight, dy, conv, n),
                               **tolerance(dtype))
    assert torch.equal(h, h_before) and torch.equal(dy, dy_before)
    assert torch.equal(weight, w_before)


@pytest.mark.parametrize("method", METHODS)
def test_workers_are_not_mixed(method, gen):
    """Only worker 2's output gradient is non-zero: only dW_2 is; and it is the gradient
    of worker 2's samples alone (a formulation that pairs one worker's inputs with
    another's output gradients fails here)."""
    n, b = 5, 2
    h, weight, dy, conv = conv_case(CASES[2], n, b, torch.float64, gen)
    dy.view(n, b, *dy.shape[1:])[[0, 1, 3, 4]] = 0
    got = worker_weight_grads(dy, h, weight, n, **conv, method=method)
    assert torch.count_nonzero(got[[0, 1, 3, 4]]) == 0
    only = autograd_reference(h[2 * b:3 * b], weight, dy[2 * b:3 * b], conv, 1)[0]
    torch.testing.assert_close(got[2], only, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_writes_into_a_strided_view_of_the_gradient_matrix(method, gen):
    """``out`` as the engine passes it: parameter k's columns of an ``[n, d]`` matrix (rows
    not contiguous with each other); nothing outside those columns is touched."""
    n, b = 3, 4
    h, weight, dy, conv = conv_case(CASES[1], n, b, torch.float32, gen)
    size = weight.numel()
    matrix = torch.full((n, 7 + size + 5), -3.0)
    view = matrix[:, 7:7 + size].view(n, *weight.shape)
    returned = worker_weight_grads(dy, h, weight, n, **conv, out=view, method=method)
    assert returned.data_ptr() == view.data_ptr()
    torch.testing.assert_close(view, autograd_reference(h, weight, dy, conv, n),
                               rtol=1e-5, atol=1e-4)
    assert torch.all(matrix[:, :7] == -3.0) and torch.all(matrix[:, 7 + size:] == -3.0)


@pytest.mark.parametrize("method", METHODS)
def test_one_worker_is_the_whole_batch_gradient(method, gen):
    h, weight, dy, conv = conv_case(CASES[0], 1, 6, torch.float64, gen)
    got = worker_weight_grads(dy, h, weight, 1, **conv, method=method)
    torch.testing.assert_close(got, autograd_reference(h, weight, dy, conv, 1),
                               rtol=1e-10, atol=1e-10)


def test_bad_arguments_name_the_value():
    h, dy, weight = torch.zeros(6, 1, 5, 5), torch.zeros(6, 2, 3, 3), torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"unknown method 'im2col'; valid: loop, grouped"):
        worker_weight_grads(dy, h, weight, 3, method="im2col")
    with pytest.raises(ValueError, match=r"multiple of n=4"):
        worker_weight_grads(dy, h, weight, 4)


@pytest.mark.parametrize("case", CASES)
def test_weight_grad_flops_counts_the_forward_multiply_adds(case, gen):
    """2 x (output elements of one worker) x (C/g) kh kw, the output size taken from an
    actual F.conv2d."""
    n, b = 3, 2
    h, weight, _, conv = conv_case(case, n, b, torch.float32, gen)
    out = F.conv2d(h, weight, **conv)
    pair = [conv[k] if isinstance(conv[k], tuple) else (conv[k], conv[k])
            for k in ("stride", "padding", "dilation")]
    assert weight_grad_flops(h, weight, n, *pair) == 2 * out[:b].numel() * weight[0].numel()


def test_the_rule_picks_grouped_only_for_small_float32_cpu_layers_with_channels(monkeypatch):
    threads = torch.get_num_threads()
    side = 8  # 3x3 padded: one worker's work is 2 b O C 9 side^2
    small_b = max(1, int(GROUPED_MAX_FLOPS * threads) // (2 * 16 * 16 * 9 * side * side))
    h = torch.zeros(4 * small_b, 16, side, side)
    weight = torch.zeros(16, 16, 3, 3)
    args = ((1, 1), (1, 1), (1, 1))
    assert weight_grad_flops(h, weight, 4, *args) <= GROUPED_MAX_FLOPS * threads
    assert choose_method(h, weight, 4, *args) == "grouped"
    big = torch.zeros(4 * (small_b + 1), 16, side, side)
    assert weight_grad_flops(big, weight, 4, *args) > GROUPED_MAX_FLOPS * threads
    assert choose_method(big, weight, 4, *args) == "loop"
    assert choose_method(h.double(), weight.double(), 4, *args) == "loop"
    few = GROUPED_MIN_CHANNELS - 1
    assert choose_method(h[:, :few], weight[:, :few], 4, *args) == "loop"
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # restored after the test
    assert choose_method(h, weight, 4, *args) == "loop"


def test_the_engine_uses_it_per_worker_against_separate_modules(gen):
    """BatchedModel's conv path (which calls worker_weight_grads with the default rule: the
    loop for the first and last convolutions, grouped for the middle one) against n
    ordinary modules, each trained on its own batch: every row of the gradient matrix
    equals that module's own gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(16, 4, 3, stride=2), nn.Tanh(),
                          nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    layout = ParamLayout.of(model)
    n, b = 3, 4
    middle = model[2]
    assert choose_method(torch.zeros(n * b, 16, 7, 7), middle.weight, n, middle.stride,
                         middle.padding, middle.dilation) == "grouped"
    inputs = torch.randn(n, b, 2, 7, 7, generator=gen)
    targets = torch.randint(0, 3, (n, b), generator=gen)
    step = BatchedModel(model, layout).gradients(layout.flatten(model), inputs, targets,
                                                 "classification")
    for i in range(n):
        model.zero_grad()
        F.cross_entropy(model(inputs[i]), targets[i]).backward()
        own = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(step.grads[i], own, rtol=1e-5, atol=1e-6)
