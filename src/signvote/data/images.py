"""Real image datasets: the MNIST family from IDX files, and scikit-learn's 8x8 digits.

Images become float32 tensors ``[N, 1, H, W]`` scaled to [0, 1] and then standardised with
the training set's mean and standard deviation (one scalar each, as the PyTorch MNIST
example's ``Normalize((0.1307,), (0.3081,))``); labels become int64. Colour images (CIFAR,
the folder dataset) are standardised per channel (:func:`standardise_channels`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import torch

from signvote.data import Dataset, DatasetError, require_samples
from signvote.data.idx import SPLIT_FILES, IDXError, find_split_files, read_idx

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
"""Where Debian's dataset packages install (``dataset-fashion-mnist``: ``fashion-mnist/``)."""

TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""The folder torchvision downloads each dataset into (its files are in ``FOLDER/raw``)."""

DEBIAN_PACKAGE = {"fashion-mnist": "dataset-fashion-mnist"}

CLASSES = {"mnist": 10, "fashion-mnist": 10, "digits": 10}
"""The declared class count of each image dataset that has one: labels outside
``[0, count)`` are refused. The generic ``idx`` dataset has none; its count is found from
its training labels (:func:`classes_found`)."""


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
                       ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Images ``[N, H, W]`` as float32 ``[N, 1, H, W]``, divided by ``scale`` and
    standardised with the training set's mean and standard deviation; a training set
    whose standard deviation is 0 or undefined (a single value) is only centred. Returns
    the two tensors, the mean and the standard deviation divided by (1 when centred)."""
    train_t, test_t = (torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
                       .div_(scale).unsqueeze(1) for a in (train, test))
    mean = train_t.mean()
    std = train_t.std() if train_t.numel() > 1 else torch.zeros(())
    std = torch.where(std > 0, std, 1.0)
    return train_t.sub_(mean).div_(std), test_t.sub_(mean).div_(std), float(mean), float(std)


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's mean and (population) standard deviation over uint8 ``images
    [N, C, H, W]`` scaled to [0, 1] (float64): ``mu_c = sum_v v h_c(v) / |h_c|``,
    ``sigma_c^2 = sum_v (v - mu_c)^2 h_c(v) / |h_c|`` over the channel's histogram ``h_c``
    of the 256 values ``v = k / 255``, exact and without a float copy of the images (CIFAR's
    training set would be 1.2 GB of float64); what per-channel normalisation subtracts and
    divides by."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} "
                         f"{images.shape}")
    values = np.arange(256) / 255.0
    hist = np.stack([np.bincount(images[:, c].ravel(), minlength=256)
                     for c in range(images.shape[1])]).astype(np.float64)
    count = hist.sum(axis=1)
    mean = hist @ values / count
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / count
    return mean, np.sqrt(var)


def standardise_channels(train: np.ndarray, test: np.ndarray
                         ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...],
                                    tuple[float, ...]]:
    """uint8 images ``[N, C, H, W]`` as float32, scaled to [0, 1] and standardised per
    channel with the training set's statistics (:func:`channel_statistics`), ``x' = (x /
    255 - mu_c) / sigma_c`` (torchvision's ``ToTensor`` then ``Normalize(mean, std)``); a
    channel of one value (``sigma_c = 0``) is only centred. Returns the two tensors and
    the means and standard deviations divided by."""
    mean, std = channel_statistics(train)
    std = np.where(std > 0, std, 1.0)
    shape = (1, -1, 1, 1)
    mean_t = torch.from_numpy(mean).to(torch.float32).view(shape)
    std_t = torch.from_numpy(std).to(torch.float32).view(shape)
    train_t, test_t = (torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
                       .div_(255.0).sub_(mean_t).div_(std_t) for a in (train, test))
    return train_t, test_t, tuple(map(float, mean)), tuple(map(float, std))


def check_images(images: np.ndarray, where: str) -> None:
    """Refuse images that are not ``[N, H, W]`` with ``N >= 1`` and ``H, W >= 1``, or that
    hold a value that is not finite: a :class:`IDXError` naming ``where`` (and the image)."""
    if images.ndim != 3:
        raise IDXError(f"{where}: expected images [N, H, W], got shape {images.shape}")
    if images.shape[0] == 0:
        raise IDXError(f"{where}: no images (the header's count is 0); a training and a "
                       f"test split need at least one sample each")
    if 0 in images.shape[1:]:
        raise IDXError(f"{where}: images of shape {images.shape[1:]}; an image needs at "
                       f"least one pixel")
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        if not finite.all():
            image = int(np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))[0])
            value = images[image][~finite[image]][0]
            raise IDXError(f"{where}: value {value} in image {image}; images must be "
                           f"finite numbers")


def first_index(labels: np.ndarray, low: int, high: int | None) -> int | None:
    """The first index whose label is outside ``[low, high)`` (``high`` None: no upper
    bound), or None. Compares in the labels' own dtype, so no value wraps or overflows."""
    info = np.iinfo(labels.dtype)
    outside = labels < low if low > info.min else np.zeros(labels.shape, bool)
    if high is not None and high <= info.max:
        outside |= labels >= labels.dtype.type(high)
    hits = np.flatnonzero(outside)
    return int(hits[0]) if hits.size else None


def labels_tensor(labels: np.ndarray, what: str, n_classes: int | None = None,
                  counted: str = "") -> torch.Tensor:
    """Class labels as int64. The rule: a 1-D array of whole numbers (an integer dtype),
    at least one, each in ``[0, n_classes)`` (``n_classes`` None: each >= 0); anything else
    is a :class:`DatasetError` naming ``what``, and for a label out of range the first
    one's index and value. ``counted`` says where ``n_classes`` comes from."""
    if labels.ndim != 1:
        raise DatasetError(f"{what}: labels of shape {labels.shape}; valid: one dimension, "
                           f"one label a sample")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{what}: labels of type {labels.dtype}; class labels are whole "
                           f"numbers (IDX type 08 uint8, 09 int8, 0B int16 or 0C int32)")
    if labels.size == 0:
        raise DatasetError(f"{what}: no labels (the header's count is 0); a training and a "
                           f"test split need at least one sample each")
    bad = first_index(labels, 0, n_classes)
    if bad is not None:
        valid = "whole numbers >= 0" if n_classes is None else f"0 to {n_classes - 1}"
        raise DatasetError(f"{what}: label {labels[bad]} at index {bad}; valid: {valid}"
                           + (f" ({counted})" if counted else ""))
    return torch.from_numpy(labels.astype(np.int64))


def check_data_dir(data_dir: Path) -> None:
    """Refuse a ``--data-dir`` that does not exist or is not a folder (a
    :class:`DatasetError` naming it), rather than fall back to another place."""
    try:
        is_folder = stat.S_ISDIR(data_dir.stat().st_mode)
    except FileNotFoundError:
        raise DatasetError(f"--data-dir {data_dir}: does not exist") from None
    except OSError as exc:
        raise DatasetError(f"--data-dir {data_dir}: cannot be read ({exc.strerror})"
                           ) from None
    if not is_folder:
        raise DatasetError(f"--data-dir {data_dir}: is a file, not a folder")


def classes_found(labels: np.ndarray, where: str) -> int:
    """The class count of a dataset that declares none: its largest training label + 1,
    refused (naming ``where``, the index and the label) when that exceeds the number of
    training samples, so that one stray label cannot build a model of millions of
    outputs, most of them classes without a sample."""
    n_classes = int(labels.max()) + 1
    if n_classes > labels.size:
        bad = first_index(labels, 0, labels.size)
        raise DatasetError(f"{where}: label {labels[bad]} at index {bad} makes "
                           f"{n_classes} classes, more than the {labels.size} training "
                           f"samples; valid: 0 to {labels.size - 1}")
    return n_classes


def load_idx(name: str, data_dir: Path | None = None) -> Dataset:
    """The IDX dataset ``name`` (``mnist``, ``fashion-mnist``, or ``idx``: whatever IDX
    dataset is in ``data_dir``), from the first folder of :func:`candidate_folders` holding
    all four files.

    Labels must lie in ``[0, CLASSES[name])``; the ``idx`` dataset declares no count: its
    classes are ``0`` to its largest training label, and its test labels must be among
    them. Every violation is a :class:`DatasetError` naming the file, the index and the
    label."""
    if name == "idx" and data_dir is None:
        raise DatasetError("dataset idx: needs --data-dir, the folder with the four IDX "
                           "files (" + ", ".join(SPLIT_FILES.values()) + ", each may be .gz)")
    if data_dir is not None:
        check_data_dir(data_dir)
    folders = [data_dir] if name == "idx" else candidate_folders(name, data_dir)
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
        check_images(images, str(where))
        if images.shape[0] != labels.shape[0]:
            raise IDXError(f"{where}: {images.shape[0]} images but "
                           f"{getattr(files, f'{split}_labels')} has {labels.shape[0]} labels")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise IDXError(f"{files.test_images}: images of shape {arrays['test_images'].shape[1:]}"
                       f", the training images are {arrays['train_images'].shape[1:]}")
    n_classes = CLASSES.get(name)
    counted = f"the {n_classes} classes of {name}"
    train_y = labels_tensor(arrays["train_labels"], str(files.train_labels), n_classes,
                            counted)
    if n_classes is None:
        n_classes = classes_found(arrays["train_labels"], str(files.train_labels))
        counted = f"the {n_classes} classes found in the training labels, {files.train_labels}"
    test_y = labels_tensor(arrays["test_labels"], str(files.test_labels), n_classes, counted)
    train_x, test_x, mean, std = standardise_images(arrays["train_images"],
                                                    arrays["test_images"], 255.0)
    return Dataset(name, train_x, train_y, test_x, test_y, "classification", n_classes,
                   mean=(mean,), std=(std,))


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
    require_samples(cut, f"dataset digits, training split of fraction {train_fraction}")
    require_samples(len(labels) - cut,
                    f"dataset digits, test split of fraction {1 - train_fraction:g}")
    train_x, test_x, mean, std = standardise_images(images[:cut], images[cut:], 16.0)
    counted = "the 10 classes of digits"
    return Dataset("digits", train_x,
                   labels_tensor(labels[:cut], "digits training labels", 10, counted),
                   test_x, labels_tensor(labels[cut:], "digits test labels", 10, counted),
                   "classification", CLASSES["digits"], mean=(mean,), std=(std,))


TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10",
                     "cifar100": "CIFAR100"}
"""The datasets ``signvote download`` fetches, and torchvision's class for each."""

DOWNLOADABLE = tuple(TORCHVISION_CLASS)


def download(name: str, data_dir: Path) -> Path:
    """Download ``mnist``, ``fashion-mnist``, ``cifar10`` or ``cifar100`` into ``data_dir``
    with torchvision (the ``download`` extra); returns the folder holding the files (the
    IDX files' ``FOLDER/raw``; CIFAR's ``cifar-10-batches-py/`` or ``cifar-100-python/``,
    where ``signvote train --dataset NAME --data-dir DATA_DIR`` finds them)."""
    if name not in TORCHVISION_CLASS:
        raise DatasetError(f"cannot download {name!r}; downloadable: "
                           + ", ".join(DOWNLOADABLE))
    try:
        from torchvision import datasets
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise DatasetError(
            f"downloading needs torchvision, which did not import ({type(exc).__name__}: "
            f"{exc}); install it with: pip install 'signvote[download]'"
        ) from None
    cls = getattr(datasets, TORCHVISION_CLASS[name])
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as exc:  # network errors, disk full, ...
        raise DatasetError(f"downloading {name} into {data_dir} failed: {exc}") from None
    if name in TORCHVISION_FOLDER:
        return data_dir / TORCHVISION_FOLDER[name] / "raw"
    from signvote.data.cifar import LAYOUTS

    return data_dir / LAYOUTS[name].folder
