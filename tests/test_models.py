import pytest
import torch
from torch import nn

from signvote import models


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def linear(i, o):
    return i * o + o


@pytest.mark.parametrize(("name", "expected"), [
    ("torchnet", conv(1, 32, 3) + conv(32, 64, 3) + linear(64 * 12 * 12, 128) + linear(128, 10)),
    ("mnistnet", conv(1, 64, 5) + conv(64, 64, 5) + 2 * conv(64, 64, 3) + linear(64 * 3 * 3, 128)
     + linear(128, 10)),
    ("smallcnn", conv(1, 16, 3) + conv(16, 32, 3) + linear(32 * 7 * 7, 10)),
])
def test_mnist_models_have_the_papers_layers(name, expected):
    module = models.build(name, (1, 28, 28), 10)
    assert n_params(module) == expected
    assert module(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_torchnet_is_the_pytorch_example_with_two_dropouts():
    module = models.build("torchnet", (1, 28, 28), 10)
    rates = [m.p for m in module.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.25, 0.5]


@pytest.mark.parametrize("name", ["torchnet", "smallcnn"])
def test_cnns_fit_the_8x8_digits(name):
    assert models.build(name, (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_too_small_images_are_rejected_with_the_minimum():
    with pytest.raises(ValueError, match="at least 20x20 pixels, got 8x8"):
        models.build("mnistnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="needs images"):
        models.build("smallcnn", (20,), 2)
