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
        classes: the class names, label k being ``classes[k]`` (the folder dataset's
            subfolders), or None where the dataset has no names.
        mean, std: for images, the per-channel mean and standard deviation (of pixels
            scaled to [0, 1], over the training set) that standardisation removed, stored
            ``= (raw - mean) / std``; a raw black pixel is ``-mean / std`` (what
            augmentation pads with). None where the features are no pixels.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    task: str
    n_classes: int
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

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


DATASETS = ("linreg", "logreg", "mnist", "fashion-mnist", "digits", "idx", "cifar10",
            "cifar100", "folder")
"""The registered dataset names: synthetic ``linreg``/``logreg`` (drawn from the seed),
``mnist``/``fashion-mnist``/``idx`` (IDX files, see :mod:`signvote.data.images`),
scikit-learn's ``digits``, ``cifar10``/``cifar100`` (the python pickles,
:mod:`signvote.data.cifar`) and ``folder`` (your own images, one subfolder a class,
:mod:`signvote.data.folder`)."""

TABULAR = ("linreg", "logreg")
"""The registered datasets whose samples are feature vectors, not images ``[C, H, W]``."""

AUGMENTED = ("cifar10", "cifar100")
"""The datasets trained with augmentation (random crop and flip) unless ``--augment off``."""

REGRESSION = ("linreg",)
"""The datasets whose targets are real numbers (all others are classification)."""


def load(name: str, seed: int, data_dir: str | Path | None = None,
         image_size: int | None = None) -> Dataset:
    """The dataset ``name``; synthetic ones are drawn from ``seed``, digits are split by it,
    IDX and CIFAR datasets are read from ``data_dir`` or the standard places, ``folder``
    from ``data_dir``, its images resized to ``image_size`` x ``image_size`` (default
    :data:`signvote.data.folder.DEFAULT_IMAGE_SIZE`; the other datasets have a size of
    their own and refuse one)."""
    data_dir = None if data_dir is None else Path(data_dir)
    from signvote.data import cifar, folder, images, synthetic

    if image_size is not None and name != "folder":
        raise DatasetError(f"dataset {name}: image_size {image_size} is the size the folder "
                           f"dataset resizes to; {name} has a size of its own; valid: "
                           f"image_size=None, or the dataset folder")

    if name == "linreg":
        return synthetic.linear_regression(seed)
    if name == "logreg":
        return synthetic.logistic_regression(seed)
    if name == "digits":
        return images.digits(seed)
    if name in ("mnist", "fashion-mnist", "idx"):
        return images.load_idx(name, data_dir)
    if name in cifar.LAYOUTS:
        return cifar.load_cifar(name, data_dir)
    if name == "folder":
        return folder.load_folder(data_dir, folder.DEFAULT_IMAGE_SIZE if image_size is None
                                  else image_size)
    from signvote import plugins  # an entry point or an import spec, else unknown

    return plugins.load_dataset(name, seed, data_dir, DATASETS)
