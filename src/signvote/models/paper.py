"""The five models of the paper's experiments (registered by :mod:`signvote.models`).

Each is a factory ``(input_shape, n_classes) -> nn.Module`` returning an ``nn.Sequential``,
which the simulator compiles into per-worker layer calls (``engine/gradients.py``)."""

from __future__ import annotations

import math

from torch import nn


def linregnet(input_shape: tuple[int, ...], n_classes: int = 1) -> nn.Module:
    """The paper's linear-regression net: ``in -> 40 -> 1`` with a ReLU."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), 40), nn.ReLU(), nn.Linear(40, 1)
    )


def logregnet(input_shape: tuple[int, ...], n_classes: int = 2) -> nn.Module:
    """The paper's logistic-regression net: ``in -> 40 -> n_classes`` with a ReLU."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), 40), nn.ReLU(), nn.Linear(40, n_classes)
    )


def torchnet(input_shape: tuple[int, ...], n_classes: int = 10) -> nn.Module:
    """The PyTorch MNIST example's net (the seed's ``torchnet``): conv 3x3 32 - ReLU - conv
    3x3 64 - ReLU - max-pool 2 - dropout 0.25 - fc 128 - ReLU - dropout 0.5 - fc; no padding.
    On 28x28 images: 1,199,882 parameters."""
    channels, height, width = input_shape
    flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, n_classes),
    )


def mnistnet(input_shape: tuple[int, ...], n_classes: int = 10) -> nn.Module:
    """The paper's deeper MNIST net (the seed's default ``mnistnet``): four 64-channel convs,
    5x5, 5x5, max-pool 2, 3x3, 3x3, max-pool 2, each conv followed by a ReLU, then fc 128 -
    ReLU - fc; no padding. On 28x28 images: 253,130 parameters."""
    channels, height, width = input_shape
    flat = 64 * (((height - 8) // 2 - 4) // 2) * (((width - 8) // 2 - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 64, 5), nn.ReLU(), nn.Conv2d(64, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes),
    )


def smallcnn(input_shape: tuple[int, ...], n_classes: int = 10) -> nn.Module:
    """A CNN cheap enough for CPU sweeps: conv 3x3 16 - ReLU - max-pool 2 - conv 3x3 32 -
    ReLU - max-pool 2 - fc, convs padded to keep the size. On 28x28 images: 20,490
    parameters; on the 8x8 digits: 6,090."""
    channels, height, width = input_shape
    flat = 32 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, n_classes),
    )
