"""Datasets (train/test tensors) and their partition among workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """A train/test split held in memory.

    Attributes:
        name: the dataset's registered name.
        train_x, train_y, test_x, test_y: features ``[N, ...]`` (float32) and targets
            (int64 class labels, or float32 regression targets).
        task: ``"classification"`` or ``"regression"``.
        n_classes: the number of classes (1 for regression).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    task: str
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.train_x.shape[1:])


DATASETS = ("linreg", "logreg")
"""The registered dataset names."""


def load(name: str, seed: int, data_dir: Path | None = None) -> Dataset:
    """The dataset ``name``; synthetic ones are drawn from ``seed``."""
    from signvote.data import synthetic

    if name == "linreg":
        return synthetic.linear_regression(seed)
    if name == "logreg":
        return synthetic.logistic_regression(seed)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
