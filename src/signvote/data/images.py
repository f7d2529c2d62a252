"""Real image datasets: the MNIST family from IDX files, and scikit-learn's 8x8 digits.

Images become float32 tensors ``[N, 1, H, W]`` scaled to [0, 1] and then standardised with
the training set's mean and standard deviation (one scalar each, as the PyTorch MNIST
example's ``Normalize((0.1307,), (0.3081,))``); labels become int64.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from signvote.data import Dataset, DatasetError
from signvote.data.idx import SPLIT_FILES, IDXError, find_split_files, read_idx

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
"""Where Debian's dataset packages install (``dataset-fashion-mnist``: ``fashion-mnist/``)."""

TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""The folder torchvision downloads each dataset into (its files are in ``FOLDER/raw``)."""

DEBIAN_PACKAGE = {"fashion-mnist": "dataset-fashion-mnist"}


def default_data_dir() -> Path:
    """Where ``signvote download`` puts datasets by default: ``$SIGNVOTE_DATA`` if set, else
    ``$XDG_CACHE_HOME/signvote`` (``~/.cache/signvote``)."""
    if os.environ.get("SIGNVOTE_DATA"):
        return Path(os.environ["SIGNVOTE_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "signvote"


def candidate_folders(name: str, data_dir: Path | None) -> list[Path]:
    """The folders searched, in order, for the IDX files of dataset ``name``."""
    roots = [data_dir] if data_dir is not None else []
    roots.append(default_data_dir())
    folders = []
    for root in roots:
        folders += [root, root / name]
        if name in TORCHVISION_FOLDER:
            folders.append(root / TORCHVISION_FOLDER[name] / "raw")
    folders.append(SYSTEM_DATA_DIR / name)
    return list(dict.fromkeys(folders))


def not_found_message(name: str, folders: list[Path]) -> str:
    """The error for missing IDX files: where we looked and the three ways to get them."""
    files = ", ".join(f"{stem}[.gz]" for stem in SPLIT_FILES.values())
    ways = []
    if name in DEBIAN_PACKAGE:
        ways.append(f"install Debian's package (found automatically): "
                    f"apt-get install {DEBIAN_PACKAGE[name]}")
    if name in TORCHVISION_FOLDER:
        ways.append(f"download it (needs the network and torchvision): pip install "
                    f"'signvote[download]' && signvote download {name} [--data-dir DIR]")
    ways.append(f"put the four IDX files ({files}) in a folder and pass --data-dir FOLDER")
    return (f"dataset {name}: IDX files not found; looked in: "
            + ", ".join(str(f) for f in folders) + ". To get them: "
            + "; or ".join(f"({k}) {way}" for k, way in enumerate(ways, 1)))


def standardise_images(train: np.ndarray, test: np.ndarray, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, H, W]`` as float32 ``[N, 1, H, W]``, divided by ``scale`` and
    standardised with the training set's mean and standard deviation."""
    train_t, test_t = (torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
                       .div_(scale).unsqueeze(1) for a in (train, test))
    std, mean = torch.std_mean(train_t)
    std = std.clamp_min(1e-12)
    return train_t.sub_(mean).div_(std), test_t.sub_(mean).div_(std)


def labels_tensor(labels: np.ndarray, what: str) -> torch.Tensor:
    """Class labels as int64, checked to be whole numbers >= 0."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DatasetError(f"{what}: labels must be a 1-D array of whole numbers >= 0, got "
                           f"shape {labels.shape} of {labels.dtype}")
    return torch.from_numpy(labels.astype(np.int64))


def load_idx(name: str, data_dir: Path | None = None) -> Dataset:
    """The IDX dataset ``name`` (``mnist``, ``fashion-mnist``, or ``idx``: whatever IDX
    dataset is in ``data_dir``), from the first folder of :func:`candidate_folders` holding
    all four files."""
    if name == "idx":
        if data_dir is None:
            raise DatasetError("dataset idx: needs --data-dir, the folder with the four IDX "
                               "files (" + ", ".join(SPLIT_FILES.values()) + ", each may be .gz)")
        folders = [data_dir]
    else:
        folders = candidate_folders(name, data_dir)
    for folder in folders:
        files = find_split_files(folder)
        if files is not None:
            break
    else:
        if name == "idx":
            raise DatasetError(f"dataset idx: no IDX dataset in {data_dir}; expected "
                               + ", ".join(f"{s}[.gz]" for s in SPLIT_FILES.values()))
        raise DatasetError(not_found_message(name, folders))

    arrays = {key: read_idx(getattr(files, key)) for key in SPLIT_FILES}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = getattr(files, f"{split}_images")
        if images.ndim != 3:
            raise IDXError(f"{where}: expected images [N, H, W], got shape {images.shape}")
        if images.shape[0] != labels.shape[0]:
            raise IDXError(f"{where}: {images.shape[0]} images but "
                           f"{getattr(files, f'{split}_labels')} has {labels.shape[0]} labels")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise IDXError(f"{files.test_images}: images of shape {arrays['test_images'].shape[1:]}"
                       f", the training images are {arrays['train_images'].shape[1:]}")
    train_x, test_x = standardise_images(arrays["train_images"], arrays["test_images"], 255.0)
    train_y = labels_tensor(arrays["train_labels"], str(files.train_labels))
    test_y = labels_tensor(arrays["test_labels"], str(files.test_labels))
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    return Dataset(name, train_x, train_y, test_x, test_y, "classification", n_classes)


def digits(seed: int, train_fraction: float = 0.8) -> Dataset:
    """Scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, values 0-16,
    10 classes; the UCI optical-recognition test set), shuffled by ``seed`` and split
    80/20: 1,437 training and 360 test images. No download needed."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise DatasetError("dataset digits needs scikit-learn: pip install scikit-learn"
                           ) from None
    images, labels = load_digits(return_X_y=True)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
    images, labels = images[order].reshape(-1, 8, 8), labels[order]
    cut = int(train_fraction * len(labels))
    train_x, test_x = standardise_images(images[:cut], images[cut:], 16.0)
    return Dataset("digits", train_x, labels_tensor(labels[:cut], "digits"),
                   test_x, labels_tensor(labels[cut:], "digits"), "classification", 10)


def download(name: str, data_dir: Path) -> Path:
    """Download ``mnist`` or ``fashion-mnist`` into ``data_dir`` with torchvision (the
    ``download`` extra); returns the folder holding the IDX files."""
    if name not in TORCHVISION_FOLDER:
        raise DatasetError(f"cannot download {name!r}; downloadable: "
                           + ", ".join(TORCHVISION_FOLDER))
    try:
        from torchvision import datasets
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise DatasetError(
            f"downloading needs torchvision, which did not import ({type(exc).__name__}: "
            f"{exc}); install it with: pip install 'signvote[download]'"
        ) from None
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as exc:  # network errors, disk full, ...
        raise DatasetError(f"downloading {name} into {data_dir} failed: {exc}") from None
    return data_dir / TORCHVISION_FOLDER[name] / "raw"
