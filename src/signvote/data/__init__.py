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


class DatasetError(ValueError):
    """A dataset cannot be loaded (files missing, corrupt, or inconsistent); the message
    says which and what to do."""


def require_samples(count: int, what: str) -> None:
    """Refuse a split with no sample: a :class:`DatasetError` naming ``what`` (a file, or
    the dataset and its split); an empty split would train on nothing or score NaN."""
    if count < 1:
        raise DatasetError(f"{what}: no sample; a training and a test split need at least "
                           f"one each")


DATASETS = ("linreg", "logreg", "mnist", "fashion-mnist", "digits", "idx")
"""The registered dataset names: synthetic ``linreg``/``logreg`` (drawn from the seed),
``mnist``/``fashion-mnist``/``idx`` (IDX files, see :mod:`signvote.data.images`) and
scikit-learn's ``digits``."""

REGRESSION = ("linreg",)
"""The datasets whose targets are real numbers (all others are classification)."""


def load(name: str, seed: int, data_dir: str | Path | None = None) -> Dataset:
    """The dataset ``name``; synthetic ones are drawn from ``seed``, digits are split by it,
    IDX datasets are read from ``data_dir`` or the standard places."""
    data_dir = None if data_dir is None else Path(data_dir)
    from signvote.data import images, synthetic

    if name == "linreg":
        return synthetic.linear_regression(seed)
    if name == "logreg":
        return synthetic.logistic_regression(seed)
    if name == "digits":
        return images.digits(seed)
    if name in ("mnist", "fashion-mnist", "idx"):
        return images.load_idx(name, data_dir)
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
