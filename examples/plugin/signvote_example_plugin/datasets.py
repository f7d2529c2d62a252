"""A dataset function ``(seed, data_dir, **params) -> (train_x, train_y, test_x, test_y)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def blobs(seed: int, data_dir: Path | None, n: int = 600, classes: int = 3,
          features: int = 8) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` samples (three quarters for training) of ``classes`` Gaussian blobs: label
    ``c``'s samples are ``N(mu_c, I)``, ``mu_c ~ N(0, 4 I)``, all drawn from ``seed``;
    integer labels, so signvote makes it a classification with ``classes`` classes."""
    gen = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centres[y] + torch.randn(n, features, generator=gen)
    cut = 3 * n // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]
