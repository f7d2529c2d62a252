"""The models of the paper's experiments, built by name."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

IMAGES = ("mnist", "fashion-mnist", "digits", "idx")

MODELS: dict[str, tuple[str, ...]] = {
    "linregnet": ("linreg",),
    "logregnet": ("logreg",),
    "torchnet": IMAGES,
    "mnistnet": ("mnist", "fashion-mnist", "idx"),
    "smallcnn": IMAGES,
}
"""Model name -> the datasets it fits."""

DEFAULT_MODEL = {"linreg": "linregnet", "logreg": "logregnet", "mnist": "mnistnet",
                 "fashion-mnist": "smallcnn", "digits": "smallcnn", "idx": "smallcnn"}
"""Dataset -> the model the paper trains on it."""


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


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "linregnet": linregnet,
    "logregnet": logregnet,
    "torchnet": torchnet,
    "mnistnet": mnistnet,
    "smallcnn": smallcnn,
}


MIN_IMAGE_SIZE = {"torchnet": 6, "mnistnet": 20, "smallcnn": 4}
"""The smallest image side each CNN accepts (its convolutions and poolings leave >= 1 pixel)."""


def build(name: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The model ``name`` for samples of ``input_shape`` and ``n_classes`` outputs."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    if name in MIN_IMAGE_SIZE:
        if len(input_shape) != 3:
            raise ValueError(f"needs images [channels, height, width], got samples of shape "
                             f"{tuple(input_shape)}")
        if min(input_shape[1:]) < MIN_IMAGE_SIZE[name]:
            side = MIN_IMAGE_SIZE[name]
            raise ValueError(f"needs images of at least {side}x{side} pixels, got "
                             f"{input_shape[1]}x{input_shape[2]}")
    return _BUILDERS[name](input_shape, n_classes)
