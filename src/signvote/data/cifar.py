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
import math
import pickle
import pickletools
import re
import warnings
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
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5, numpy 1's name
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5, numpy 2's name
    ("_codecs", "encode"),  # protocols 0 to 2 written by Python 3: bytes as latin-1 text
}
"""The only names a CIFAR pickle may resolve (``module``, ``name``), each to a stand-in
of this module that checks what the file passes it (:class:`RestrictedUnpickler`)."""

_NUMBER_TYPES = re.compile(r"[biuf][1248]")
"""The dtype names an array of a CIFAR file may have (numpy pickles ``u1``, ``i8``, ...;
the byte order comes in the dtype's state)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`: containers, numbers,
    strings and numpy arrays come back; any other global raises ``UnpicklingError``
    naming it.

    numpy's own reconstructors are never called with what the file holds: a damaged
    dtype state crashes ``numpy.dtype.__setstate__`` (a segmentation fault, numpy 2.4),
    and ``numpy.ndarray(shape)`` or ``_reconstruct(ndarray, shape, dtype)`` allocate any
    shape the file declares. Each name resolves to a stand-in instead: an array is
    rebuilt from its state ``(1, shape, dtype, is_fortran, raw)`` (or protocol 5's
    ``_frombuffer(raw, dtype, shape, order)``) with ``np.frombuffer`` on the raw bytes,
    which must be exactly ``prod(shape) * itemsize`` of them, so no array is larger than
    the file; a dtype must be a number type (:data:`_NUMBER_TYPES`) with a plain state;
    anything numpy never writes is refused (``UnpicklingError`` saying what)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file "
                                         f"never does (only numpy arrays are allowed)")
        return {"_reconstruct": _reconstruct, "ndarray": _NDARRAY, "dtype": _Dtype,
                "_frombuffer": _frombuffer, "encode": _latin1}[name]


class _Name:
    """What ``numpy.ndarray`` resolves to: the first argument of :func:`_reconstruct`,
    never called (``ndarray(shape)`` would allocate any shape, uninitialised)."""

    __slots__ = ()

    def __call__(self, *args: object) -> object:
        raise pickle.UnpicklingError("it calls numpy.ndarray, which numpy's own pickles "
                                     "never do")

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError("it gives numpy.ndarray a state")


_NDARRAY = _Name()


class _Dtype:
    """``numpy.dtype(name, align, copy)`` as numpy pickles it: a number type, its byte
    order set by its state ``(3, order, None, None, None, elsize, alignment, flags)``
    (version 4 adds metadata); any other state is damaged."""

    __slots__ = ("dtype",)

    def __init__(self, name: object, align: object = False, copy: object = True) -> None:
        if not isinstance(name, str) or _NUMBER_TYPES.fullmatch(name) is None:
            raise pickle.UnpicklingError(f"it holds an array of dtype {name!r}; a CIFAR "
                                         f"file's arrays hold numbers")
        self.dtype = np.dtype(name)

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=")
                and all(part is None for part in state[2:5])):
            raise pickle.UnpicklingError("a dtype's state is damaged")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """An array of the file, made once from its raw bytes (:func:`_array_of`): by its state
    after :func:`_reconstruct`, or by :func:`_frombuffer`."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array

    def __setstate__(self, state: object) -> None:
        if self.array is not None:
            raise pickle.UnpicklingError("an array is given a state twice")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1
                and isinstance(state[3], bool)):
            raise pickle.UnpicklingError("an array's state is damaged")
        _, shape, dtype, fortran, raw = state
        self.array = _array_of(raw, dtype, shape, "F" if fortran else "C")


def _reconstruct(kind: object, shape: object, typecode: object) -> _Array:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``, the empty array a pickle's state
    then fills: nothing else is taken."""
    if kind is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError("it reconstructs an array as numpy never pickles one")
    return _Array()


def _frombuffer(raw: object, dtype: object, shape: object, order: object) -> _Array:
    """numpy's ``_frombuffer(buffer, dtype, shape, order)`` (protocol 5, the buffer in
    the file)."""
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"an array of order {order!r}")
    return _Array(_array_of(raw, dtype, shape, order))


def _latin1(text: object, encoding: object) -> bytes:
    """``_codecs.encode(text, 'latin1')``: how Python 3 writes bytes in protocols 0-2."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("it encodes text as numpy never does")
    return text.encode("latin1")


def _array_of(raw: object, dtype: object, shape: object, order: str) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` whose bytes are ``raw`` (a Python 2 string is
    read back as its latin-1 bytes), a copy; ``raw`` must hold exactly its bytes."""
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes | bytearray) or not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError("an array's data or dtype is damaged")
    if not (isinstance(shape, tuple) and len(shape) <= 8
            and all(type(side) is int and side >= 0 for side in shape)):
        raise pickle.UnpicklingError(f"an array of shape {shape!r}")
    count = math.prod(shape)
    if count * dtype.dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(f"an array of shape {list(shape)} and dtype "
                                     f"{dtype.dtype} needs {count * dtype.dtype.itemsize} "
                                     f"bytes, the file holds {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.dtype, count=count).reshape(shape, order=order).copy()


def _check_opcodes(data: bytes) -> None:
    """Refuse, before anything is unpickled, opcodes that do not parse (a cut or damaged
    file) or that store an object at a memo index beyond the opcodes read so far: an honest
    pickler numbers them 0, 1, 2, ..., and CPython's unpickler grows its memo to the index
    (16 bytes an index, zeroed) whatever the file's size."""
    for count, (opcode, index, _) in enumerate(pickletools.genops(data)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and index > count:
            raise pickle.UnpicklingError(f"it stores an object at memo index {index} after "
                                         f"{count} opcodes")


def _value(value: object) -> object:
    """A value of the file's dict: an array rebuilt, else the value as it is."""
    if isinstance(value, _Array):
        if value.array is None:
            raise pickle.UnpicklingError("it holds an array without its data")
        return value.array
    return value


def read_batch(path: Path, labels_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images ``[N, 3, 32, 32]`` (uint8) and labels ``[N]`` (int64) of one CIFAR
    pickle; a file that is missing, truncated, foreign or out of range is a
    :class:`DatasetError` naming it and the reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        with warnings.catch_warnings():  # a damaged text string's escapes: said below
            warnings.simplefilter("ignore", DeprecationWarning)
            _check_opcodes(data)
            batch = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        if isinstance(batch, dict):
            batch = {k.decode("latin1") if isinstance(k, bytes) else k: _value(v)
                     for k, v in batch.items()}
    except pickle.UnpicklingError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the unpickler says
        raise DatasetError(f"{path}: not a CIFAR pickle: {reason}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, OverflowError) as exc:
        raise DatasetError(f"{path}: not a CIFAR pickle (truncated or damaged: "
                           f"{type(exc).__name__})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: holds a {type(batch).__name__}; a CIFAR pickle holds "
                           f"a dict")
    images, labels = batch.get("data"), batch.get(labels_key)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != PIXELS:
        what = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise DatasetError(f"{path}: 'data' is {what}; a CIFAR file's is uint8 "
                           f"[N, {PIXELS}]")
    if len(images) == 0:
        raise DatasetError(f"{path}: holds no images")
    if isinstance(labels, list) and any(isinstance(v, bool) for v in labels):
        raise DatasetError(f"{path}: {labels_key!r} holds True/False; a CIFAR file's labels "
                           f"are whole numbers")
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

