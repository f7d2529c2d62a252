"""CIFAR-10 and CIFAR-100 from the official python pickles, read without trusting them.

The files (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"):
``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``;
``cifar-100-python/`` holds ``train`` and ``test``. Each is a Python 2 pickle of a dict
whose ``data`` is a uint8 numpy array ``[N, 3072]`` (the 1024 red, then green, then blue
values of a 32x32 image, row by row) and whose labels are ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100), with byte-string keys, read with ``encoding="latin1"``.

A pickle can run any code it names. :class:`RestrictedUnpickler` resolves only the names
these files hold: numpy's array reconstructor, ``numpy.ndarray`` and ``numpy.dtype``.
Any other global (``os.system``, a module of the user's) is refused with its name, so a
foreign or malicious file is a :class:`~signvote.data.DatasetError`, never executed.

``--dataset cifar10`` / ``cifar100`` (:func:`load_cifar`) find the folder as the MNIST
family's files are found: in ``--data-dir`` (the folder itself, or its parent), the
download folder (``$SIGNVOTE_DATA``, else ``~/.cache/signvote``; ``signvote download
cifar10`` puts it there) and ``/usr/share/datasets/NAME``. The images are scaled to [0, 1]
and standardised per channel with the training set's mean and standard deviation.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from signvote.data import Dataset, DatasetError, images
from signvote.data.images import channel_statistics, check_data_dir, standardise_channels

__all__ = ["ALLOWED_GLOBALS", "IMAGE_SHAPE", "LAYOUTS", "PIXELS", "Layout",
           "RestrictedUnpickler", "candidate_folders", "channel_statistics", "find_folder",
           "load_cifar", "read_batch", "read_cifar"]

IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Layout:
    """Where a CIFAR variant's files are and how its labels are named."""

    folder: str
    train: tuple[str, ...]
    test: str
    labels: str
    classes: int


LAYOUTS = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      "test_batch", "labels", 10),
    "cifar100": Layout("cifar-100-python", ("train",), "test", "fine_labels", 100),
}

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),  # numpy 1's name, the files' own
    ("numpy._core.multiarray", "_reconstruct"),  # numpy 2's name
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
"""The only names a CIFAR pickle may resolve (``module``, ``name``)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`: containers, numbers,
    strings and numpy arrays come back; any other global raises ``UnpicklingError``
    naming it."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file "
                                         f"never does (only numpy arrays are allowed)")
        if name == "_reconstruct":
            return _reconstruct()
        return getattr(np, name)


def _reconstruct() -> object:
    """numpy's array reconstructor, under numpy 2's name or numpy 1's."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    return multiarray._reconstruct


def read_batch(path: Path, labels_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images ``[N, 3, 32, 32]`` (uint8) and labels ``[N]`` (int64) of one CIFAR
    pickle; a file that is missing, truncated, foreign or out of range is a
    :class:`DatasetError` naming it and the reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        batch = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path}: not a CIFAR pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, OverflowError) as exc:
        raise DatasetError(f"{path}: not a CIFAR pickle (truncated or damaged: "
                           f"{type(exc).__name__})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: holds a {type(batch).__name__}; a CIFAR pickle holds "
                           f"a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images, labels = batch.get("data"), batch.get(labels_key)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != PIXELS:
        what = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise DatasetError(f"{path}: 'data' is {what}; a CIFAR file's is uint8 "
                           f"[N, {PIXELS}]")
    if len(images) == 0:
        raise DatasetError(f"{path}: holds no images")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError):
        labels = np.asarray([""])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {labels_key!r} is not a list of whole numbers")
    if len(labels) != len(images):
        raise DatasetError(f"{path}: {len(images)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise DatasetError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])}; "
                           f"valid: 0 to {classes - 1}")
    return images.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_cifar(name: str, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]:
    """``train_x, train_y, test_x, test_y`` of CIFAR variant ``name`` (``cifar10``,
    ``cifar100``) from ``folder`` (the one holding ``cifar-10-batches-py/``, or that
    folder itself); images uint8 ``[N, 3, 32, 32]``, labels int64."""
    if name not in LAYOUTS:
        raise DatasetError(f"unknown CIFAR variant {name!r}; valid: {', '.join(LAYOUTS)}")
    layout = LAYOUTS[name]
    root = folder if folder.name == layout.folder else folder / layout.folder
    missing = [f for f in (*layout.train, layout.test) if not (root / f).is_file()]
    if missing:
        raise DatasetError(f"{name}: {root} lacks {', '.join(missing)}; expected the "
                           f"official python version's files ({layout.folder}/); to get "
                           f"them: signvote download {name} [--data-dir DIR]")
    train = [read_batch(root / f, layout.labels, layout.classes) for f in layout.train]
    test_x, test_y = read_batch(root / layout.test, layout.labels, layout.classes)
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            test_x, test_y)


def candidate_folders(name: str, data_dir: Path | None) -> list[Path]:
    """The folders searched, in order, for CIFAR variant ``name``'s folder (each may be
    that folder itself or hold it): ``data_dir``, the download folder, the system one."""
    roots = [data_dir] if data_dir is not None else []
    roots += [images.default_data_dir(), images.SYSTEM_DATA_DIR / name]
    return list(dict.fromkeys(roots))


def find_folder(name: str, data_dir: Path | None) -> Path:
    """The first of :func:`candidate_folders` that is, or holds, ``name``'s folder
    (``cifar-10-batches-py/``, ``cifar-100-python/``); none is a :class:`DatasetError`
    saying where it looked and how to get the files."""
    layout = LAYOUTS[name]
    if data_dir is not None:
        check_data_dir(data_dir)
    roots = candidate_folders(name, data_dir)
    for root in roots:
        for folder in (root, root / layout.folder):
            if folder.name == layout.folder and folder.is_dir():
                return folder
    files = ", ".join((*layout.train, layout.test))
    raise DatasetError(
        f"dataset {name}: folder {layout.folder}/ not found; looked in: "
        + ", ".join(str(r) for r in roots) + f". To get it: (1) download it (needs the "
        f"network and torchvision): pip install 'signvote[download]' && signvote download "
        f"{name} [--data-dir DIR]; or (2) put the official python version's "
        f"{layout.folder}/ ({files}) in a folder and pass --data-dir FOLDER")


def load_cifar(name: str, data_dir: Path | None = None) -> Dataset:
    """CIFAR variant ``name`` (``cifar10``: 50,000 training and 10,000 test images of 10
    classes; ``cifar100``: the same counts of 100 fine classes) from the folder
    :func:`find_folder` finds: images float32 ``[N, 3, 32, 32]``, ``x' = (x / 255 - mu_c) /
    sigma_c`` with each channel's training mean and standard deviation
    (:func:`signvote.data.images.standardise_channels`), labels int64."""
    if name not in LAYOUTS:
        raise DatasetError(f"unknown CIFAR variant {name!r}; valid: {', '.join(LAYOUTS)}")
    train_x, train_y, test_x, test_y = read_cifar(name, find_folder(name, data_dir))
    train_t, test_t, mean, std = standardise_channels(train_x, test_x)
    return Dataset(name, train_t, torch.from_numpy(train_y), test_t, torch.from_numpy(test_y),
                   "classification", LAYOUTS[name].classes, mean=mean, std=std)

