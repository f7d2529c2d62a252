"""The IDX file format of MNIST and its family (Fashion-MNIST, KMNIST, EMNIST, ...).

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then NDIM big-endian uint32
dimension sizes, then the array's values in row-major order, big-endian. TYPE is one of
``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E``
float64 (LeCun & Cortes, "The MNIST database of handwritten digits"). Files may be gzipped
(``.gz``, recognised by their content, not their name).

A dataset in this format is four files in one folder: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
optionally ``.gz``, optionally with a prefix such as EMNIST's ``emnist-letters-``).
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signvote.data import DatasetError
from signvote.experiment.runs import atomic_write_bytes

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
"""IDX type code -> the numpy dtype of the values on disk."""

SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
"""The standard names of the four files of an IDX dataset (without ``.gz``)."""

GZIP_MAGIC = b"\x1f\x8b"


class IDXError(DatasetError):
    """An IDX file is missing, truncated or corrupt; the message names the file."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in the IDX bytes ``data`` (gzipped or not), in native byte order.

    Raises:
        IDXError: bad magic number, unknown type code, or a length that does not match the
            header's dimensions (a truncated file is never read as a shorter dataset).
    """
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXError(f"{name}: corrupt gzip data ({exc})") from None
    if len(data) < 4:
        raise IDXError(f"{name}: {len(data)} bytes, too short for an IDX header")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise IDXError(
            f"{name}: bad magic number 0x{data[:4].hex()}; an IDX file starts with 00 00, a "
            f"type code ({', '.join(f'{c:02x}' for c in IDX_TYPES)}) and a dimension count >= 1"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name}: truncated header ({len(data)} bytes, {ndim} dimensions "
                       f"need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "too long"
        raise IDXError(f"{name}: {what}: the header's shape {shape} needs {expected} bytes of "
                       f"{dtype.name} data, the file has {found}")
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    except ValueError as exc:  # a zero count beside sizes no array can have
        raise IDXError(f"{name}: the header's shape {shape} is no array ({exc})") from None
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (plain or gzipped); a path that cannot be
    read (missing, a directory, no permission) is an :class:`IDXError` naming it."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise IDXError(f"{path}: is a directory, not an IDX file") from None
    except OSError as exc:
        raise IDXError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_idx(data, str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """``array`` as IDX bytes (uncompressed); its dtype must be one of :data:`IDX_TYPES`'."""
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        valid = ", ".join(d.name for d in IDX_TYPES.values())
        raise IDXError(f"dtype {array.dtype} cannot be stored in IDX; valid: {valid}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz`` (atomically)."""
    data = encode_idx(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(Path(path), data)


@dataclass(frozen=True)
class IDXFiles:
    """The four files of an IDX dataset found in one folder."""

    train_images: Path
    train_labels: Path
    test_images: Path
    test_labels: Path


def find_split_files(folder: Path) -> IDXFiles | None:
    """The four files of an IDX dataset in ``folder`` (plain or ``.gz``, any name prefix), or
    None when one is missing or ``folder`` is not a folder. Raises :class:`IDXError` when a
    name is ambiguous or ``folder`` cannot be listed. An entry with a file's name that is
    not a file (a directory) is returned, for :func:`read_idx` to refuse by name."""
    try:
        if not folder.is_dir():
            return None
        names = [p for p in folder.iterdir() if p.name.endswith(tuple(
            end for stem in SPLIT_FILES.values() for end in (stem, stem + ".gz")))]
    except OSError as exc:
        raise IDXError(f"{folder}: cannot be read ({exc.strerror})") from None
    found: dict[str, Path] = {}
    for key, stem in SPLIT_FILES.items():
        matches = sorted(p for p in names if p.name.endswith((stem, stem + ".gz")))
        plain = [p for p in matches if p.name in (stem, stem + ".gz")]
        if plain:  # the standard name wins over prefixed ones; plain over .gz
            matches = plain
        if not matches:
            return None
        stems = {p.name.removesuffix(".gz") for p in matches}
        if len(stems) > 1:
            raise IDXError(f"{folder}: several {stem} files ({', '.join(sorted(stems))}); "
                           f"keep one dataset per folder")
        found[key] = min(matches, key=lambda p: p.name.endswith(".gz"))
    return IDXFiles(**found)
