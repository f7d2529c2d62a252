"""The models of the paper's experiments, built by name."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

MODELS: dict[str, tuple[str, ...]] = {
    "linregnet": ("linreg",),
    "logregnet": ("logreg",),
}
"""Model name -> the datasets it fits."""

DEFAULT_MODEL = {"linreg": "linregnet", "logreg": "logregnet"}
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


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "linregnet": linregnet,
    "logregnet": logregnet,
}


def build(name: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The model ``name`` for samples of ``input_shape`` and ``n_classes`` outputs."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](input_shape, n_classes)
