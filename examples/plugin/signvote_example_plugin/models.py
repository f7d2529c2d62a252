"""A model factory ``(input_shape, n_classes, **params) -> nn.Module``."""

from __future__ import annotations

import math

from torch import nn

from signvote.models import declare


@declare(independent_samples=True)
def tiny_mlp(input_shape: tuple[int, ...], n_classes: int, hidden: int = 32) -> nn.Module:
    """``in -> hidden -> n_classes`` with a ReLU: ``(prod(input_shape) + 1) * hidden +
    (hidden + 1) * n_classes`` parameters. Every sample is computed on its own (declared:
    ``independent_samples=True``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))
