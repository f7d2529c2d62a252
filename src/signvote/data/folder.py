"""Your own images: ``--dataset folder --data-dir DIR``, one subfolder a class.

The layout is torchvision's ``ImageFolder`` for each split::

    DIR/train/CLASS/IMAGE    (any depth below CLASS)
    DIR/test/CLASS/IMAGE

The classes are the subfolders of ``DIR/train``, sorted by name (code point order, as
``sorted`` of the names), label ``k`` being the ``k``-th; ``DIR/test`` may hold only those
classes (a test class that training lacks is refused, naming it). Every file below a class
folder is an image: read with Pillow (PNG, JPEG, or any format it opens; an animated one
gives its first frame), converted to RGB (an alpha channel is dropped), and resized to
``S x S`` pixels with bilinear interpolation (``--image-size S``, default 32; the aspect
ratio is not kept, as torchvision's ``Resize((S, S))``). Hidden files and folders (a name
starting with ``.``) are skipped, as are plain files beside the class folders (as
``ImageFolder`` does). The images are standardised per channel with the training set's
statistics, as CIFAR's (:func:`signvote.data.images.standardise_channels`).

Pillow is an optional dependency (``pip install 'signvote[images]'``). A missing split, a
split with no class, a class with no image, a file Pillow cannot read: each one
:class:`~signvote.data.DatasetError` naming the path (and Pillow's reason).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from signvote.data import Dataset, DatasetError
from signvote.data.images import check_data_dir, standardise_channels

DEFAULT_IMAGE_SIZE = 32
"""The side images are resized to without ``--image-size`` (CIFAR's)."""
MAX_IMAGE_SIZE = 1024
"""The largest ``--image-size``: one 1024 x 1024 RGB image is 12 MB of float32, so a
thousand of them already fill 12 GB."""
LAYOUT = "DIR/train/CLASS/IMAGE and DIR/test/CLASS/IMAGE"


def _hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(split: Path) -> list[str]:
    """The class names of a split: its subfolders that are not hidden, sorted by name."""
    try:
        entries = list(os.scandir(split))
    except OSError as exc:
        raise DatasetError(f"{split}: cannot be read ({exc.strerror})") from None
    return sorted(e.name for e in entries if not _hidden(e.name) and e.is_dir())


def image_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` that is not hidden nor inside a hidden folder, sorted
    by path (so that the order, and with it the run, does not depend on the file system).
    A linked folder is followed as a linked file is; a folder reached twice (a loop of
    links, which would be walked without end, or two links to one folder) is a
    :class:`DatasetError` naming it."""
    found = []
    seen = set()
    for root, dirs, files in os.walk(folder, onerror=_raise_walk_error, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in seen:
            raise DatasetError(f"dataset folder: {root} is a folder already read below "
                               f"{folder} (a loop of links, or a second link to it); valid: "
                               f"each folder once")
        seen.add((here.st_dev, here.st_ino))
        dirs[:] = [d for d in dirs if not _hidden(d)]
        found += [Path(root) / f for f in files if not _hidden(f)]
    return sorted(found)


def _raise_walk_error(exc: OSError) -> None:
    raise DatasetError(f"{exc.filename}: cannot be read ({exc.strerror})")


def split_folder(data_dir: Path, split: str) -> Path:
    """``data_dir/split``, refused (naming it and the layout) when it is not a folder."""
    path = data_dir / split
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"dataset folder: {path} {what}; expected {LAYOUT}")
    return path


def read_image(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` as uint8 ``[3, size, size]`` (RGB, resized bilinearly); a file
    Pillow cannot read is a :class:`DatasetError` naming it and Pillow's reason.

    16-bit grey pixels (Pillow's modes ``I;16...``) are scaled to 8 bits, ``round(v /
    257)`` (65535 -> 255), where Pillow's own conversion would clip them at 255; an image
    of 32-bit pixels (modes ``I``, ``F``), whose range no mode says, is refused naming the
    mode. Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``; the warning it
    gives between the limit and twice it) refuses the image in one line before it is
    decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.mode in ("I", "F"):
                raise DatasetError(f"{path}: an image of mode {image.mode} (32-bit pixels, of "
                                   f"no known range); valid: 8-bit or 16-bit images (PNG, "
                                   f"JPEG, ...), or convert it to 8 bits")
            if image.mode.startswith("I;16"):  # 16-bit grey: to 8 bits, not clipped
                wide = np.asarray(image).astype(np.uint32)
                image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except DatasetError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(f"{path}: not an image Pillow can read ({reason}); every file "
                           f"in a class folder must be an image") from None


def read_split(split: Path, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images ``[N, 3, size, size]`` (uint8) and labels (int64, the index of the class
    in ``classes``) of the split folder ``split``."""
    found = class_folders(split)
    if not found:
        raise DatasetError(f"dataset folder: {split} has no class folder; expected {LAYOUT}, "
                           f"one subfolder a class")
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise DatasetError(f"dataset folder: {split / unknown[0]} is a class that "
                           f"{split.parent / 'train'} lacks; valid classes: "
                           + ", ".join(classes))
    files, labels = [], []
    for name in found:
        paths = image_files(split / name)
        if not paths:
            raise DatasetError(f"dataset folder: {split / name} holds no image; every class "
                               f"folder needs at least one")
        files += paths
        labels += [classes.index(name)] * len(paths)
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for k, path in enumerate(files):
        images[k] = read_image(path, size)
    return images, np.asarray(labels, dtype=np.int64)


def load_folder(data_dir: Path | None, image_size: int = DEFAULT_IMAGE_SIZE) -> Dataset:
    """The images of ``data_dir/train`` and ``data_dir/test`` (module docstring), float32
    ``[N, 3, S, S]`` with ``S = image_size``, standardised per channel, ``x' = (x / 255 -
    mu_c) / sigma_c`` over the training set; ``classes`` holds the class names."""
    if data_dir is None:
        raise DatasetError(f"dataset folder: needs --data-dir DIR, the folder holding "
                           f"{LAYOUT}")
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or not 1 <= image_size <= MAX_IMAGE_SIZE):
        raise DatasetError(f"dataset folder: image size {image_size!r}; valid: 1 to "
                           f"{MAX_IMAGE_SIZE}")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DatasetError("dataset folder reads images with Pillow, which is not "
                           "installed; install it with: pip install 'signvote[images]'"
                           ) from None
    check_data_dir(data_dir)
    train, test = split_folder(data_dir, "train"), split_folder(data_dir, "test")
    classes = class_folders(train)
    train_x, train_y = read_split(train, classes, image_size)
    test_x, test_y = read_split(test, classes, image_size)
    train_t, test_t, mean, std = standardise_channels(train_x, test_x)
    return Dataset("folder", train_t, torch.from_numpy(train_y), test_t,
                   torch.from_numpy(test_y), "classification", len(classes),
                   classes=tuple(classes), mean=mean, std=std)
