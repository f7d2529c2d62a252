"""The paper's synthetic regression problems (Akoun & Meyer 2022, Sec. 4.1).

20 Gaussian features with the Toeplitz covariance ``Sigma_ij = rho^|i-j|`` (rho = 0.3),
true weights ``w ~ N(2, 1)``, 10,000 samples split 80/20 in order, features standardised
with the training set's statistics. Linear: ``y = X w + 0.5 eps``, targets standardised
too (as the seed did). Logistic: ``y ~ Bernoulli(sigmoid(X w))``, labels kept as 0/1 (the
seed standardised them as well, which makes cross-entropy fail on a target of -1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.data import Dataset, require_samples


def toeplitz_gaussian(
    n_samples: int, n_features: int, rho: float, generator: torch.Generator
) -> Tensor:
    """Samples ``[n_samples, n_features]`` of ``N(0, Sigma)``, ``Sigma_ij = rho^|i-j|``."""
    idx = torch.arange(n_features, dtype=torch.float64)
    cov = rho ** (idx[:, None] - idx[None, :]).abs()
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(n_samples, n_features, generator=generator, dtype=torch.float64)
    return z @ chol.T


def standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """``(train - mu) / sd`` and ``(test - mu) / sd`` with the training set's mean and sd."""
    mu, sd = train.mean(dim=0), train.std(dim=0, correction=0)
    return (train - mu) / sd, (test - mu) / sd


def split_point(name: str, n_samples: int, train_fraction: float) -> int:
    """How many of the ``n_samples`` go to training (the first ones): ``int(fraction * N)``,
    refused (a :class:`DatasetError` naming the dataset) when either split is empty."""
    n_train = int(train_fraction * n_samples)
    require_samples(n_train, f"dataset {name}, training split of {train_fraction} x "
                             f"{n_samples} samples")
    require_samples(n_samples - n_train, f"dataset {name}, test split of "
                                         f"{1 - train_fraction:g} x {n_samples} samples")
    return n_train


def _features(seed: int, n_samples: int, n_features: int, rho: float):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n_features, generator=gen, dtype=torch.float64) + 2.0
    x = toeplitz_gaussian(n_samples, n_features, rho, gen)
    return gen, w, x


def linear_regression(
    seed: int, n_samples: int = 10_000, n_features: int = 20, rho: float = 0.3,
    noise: float = 0.5, train_fraction: float = 0.8,
) -> Dataset:
    """The paper's linear regression problem, drawn from ``seed``."""
    n_train = split_point("linreg", n_samples, train_fraction)
    gen, w, x = _features(seed, n_samples, n_features, rho)
    y = x @ w + noise * torch.randn(n_samples, generator=gen, dtype=torch.float64)
    x_train, x_test = standardise(x[:n_train], x[n_train:])
    y_train, y_test = standardise(y[:n_train], y[n_train:])
    return Dataset(
        "linreg", x_train.float(), y_train.float(), x_test.float(), y_test.float(),
        task="regression", n_classes=1,
    )


def logistic_regression(
    seed: int, n_samples: int = 10_000, n_features: int = 20, rho: float = 0.3,
    train_fraction: float = 0.8,
) -> Dataset:
    """The paper's logistic regression problem, drawn from ``seed``; labels in {0, 1}."""
    n_train = split_point("logreg", n_samples, train_fraction)
    gen, w, x = _features(seed, n_samples, n_features, rho)
    y = torch.bernoulli(torch.sigmoid(x @ w), generator=gen).long()
    x_train, x_test = standardise(x[:n_train], x[n_train:])
    return Dataset(
        "logreg", x_train.float(), y[:n_train], x_test.float(), y[n_train:],
        task="classification", n_classes=2,
    )
