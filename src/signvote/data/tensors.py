"""A dataset of tensors: the rule by which features and targets given in memory (by
:func:`signvote.train`, or returned by a plugin dataset's function) become a
:class:`~signvote.data.Dataset`, and the check of a Dataset given as it is.

Features ``[N, ...]`` become float32; integer targets are class labels (a
classification), floating-point targets real numbers (a regression); every value must be
finite, every label in ``[0, classes)``. Each refusal is one
:class:`~signvote.data.DatasetError` naming the tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from signvote.data import Dataset, DatasetError, require_samples

__all__ = ["check_dataset", "from_tensors", "tensor_of"]


def from_tensors(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                 classes: int | None = None, name: str = "tensors") -> Dataset:
    """A :class:`signvote.data.Dataset` of tensors (or numpy arrays): features
    ``[N, ...]`` (as float32), one target per sample ``[N]``. Integer targets are class
    labels in ``[0, classes)`` (int64; ``classes`` default: the largest label of either
    split + 1), float targets a regression (float32). Raises
    :class:`~signvote.data.DatasetError`, one line naming the tensor: samples and targets
    of different counts, samples of different shapes in the two splits, an empty split,
    complex features, NaN or infinite values, negative labels or labels not below
    ``classes``."""
    xs = [tensor_of(train_x, "train_x"), tensor_of(test_x, "test_x")]
    ys = [tensor_of(train_y, "train_y"), tensor_of(test_y, "test_y")]
    for x, y, split in zip(xs, ys, ("train", "test"), strict=True):
        if x.dim() < 2:
            raise DatasetError(f"{split}_x: shape {list(x.shape)}; valid: [N, ...], one row "
                               f"per sample (x[:, None] for one feature)")
        if y.dim() != 1:
            raise DatasetError(f"{split}_y: shape {list(y.shape)}; valid: [N], one target per "
                               f"sample")
        if x.is_complex():  # a cast to float32 would drop the imaginary part with a warning
            raise DatasetError(f"{split}_x: dtype {x.dtype}; valid: real numbers (a float, "
                               f"integer or bool tensor)")
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{split}_x has {x.shape[0]} samples, {split}_y "
                               f"{y.shape[0]} targets; valid: one target per sample")
        require_samples(x.shape[0], f"data {split}_x")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(f"train_x has samples of shape {list(xs[0].shape[1:])}, test_x "
                           f"{list(xs[1].shape[1:])}; valid: one shape for both")
    kinds = [_target_kind(y, f"{split}_y") for y, split in zip(ys, ("train", "test"),
                                                                 strict=True)]
    if kinds[0] != kinds[1]:
        raise DatasetError(f"train_y holds {kinds[0]}, test_y {kinds[1]}; valid: integer "
                           f"class labels in both, or float targets in both")
    xs = [_finite(x.to(torch.float32), f"{split}_x") for x, split in zip(
        xs, ("train", "test"), strict=True)]
    if kinds[0] == "float targets":
        if classes is not None:
            raise DatasetError(f"classes {classes}: float targets make a regression, which "
                               f"has no classes; valid: integer labels, or leave classes out")
        ys = [_finite(y.to(torch.float32), f"{split}_y") for y, split in zip(
            ys, ("train", "test"), strict=True)]
        return Dataset(name, xs[0], ys[0], xs[1], ys[1], "regression", 1)
    ys = [y.to(torch.int64) for y in ys]
    for y, split in zip(ys, ("train", "test"), strict=True):
        if int(y.min()) < 0:
            raise DatasetError(f"{split}_y: label {int(y.min())} is negative; valid: class "
                               f"labels 0, 1, ...")
    found = max(int(y.max()) for y in ys) + 1
    if classes is None:
        classes = found
    elif isinstance(classes, bool) or not isinstance(classes, int) or classes < found:
        raise DatasetError(f"classes {classes!r}: the labels go up to {found - 1}; valid: a "
                           f"whole number >= {found}")
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], "classification", classes)


def check_dataset(data: Dataset) -> None:
    """Refuse a :class:`signvote.data.Dataset` that :func:`from_tensors` would not make (float32
    features, int64 labels in ``[0, n_classes)`` or float32 targets, counts, shapes, NaN);
    raises :class:`~signvote.data.DatasetError` naming the tensor."""
    _refuse_data(data.task in ("classification", "regression"),
                 f"data {data.name}: task {data.task!r}; valid: classification, regression")
    labels = "float targets" if data.task == "regression" else "integer class labels"
    rebuilt = from_tensors(data.train_x, data.train_y, data.test_x, data.test_y,
                      classes=data.n_classes if data.task == "classification" else None,
                      name=data.name)
    for a, b, what in ((data.train_y, rebuilt.train_y, "train_y"),
                       (data.test_y, rebuilt.test_y, "test_y")):
        _refuse_data(a.dtype == b.dtype, f"data {data.name}: {what} is {a.dtype}; valid: "
                     f"{b.dtype} ({labels} of a {data.task})")
    for a, what in ((data.train_x, "train_x"), (data.test_x, "test_x")):
        _refuse_data(a.dtype == torch.float32, f"data {data.name}: {what} is {a.dtype}; "
                     f"valid: float32")


def _refuse_data(ok: bool, message: str) -> None:
    if not ok:
        raise DatasetError(message)


def tensor_of(value: Any, what: str) -> Tensor:
    """``value`` (a tensor, detached, or what ``torch.as_tensor`` takes: a numpy array, a
    list) as a tensor; anything else is a :class:`DatasetError` naming ``what``."""
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DatasetError(f"{what}: a {type(value).__name__} is no tensor ({exc}); valid: "
                           f"a torch tensor or a numpy array") from None


def _target_kind(y: Tensor, what: str) -> str:
    if y.dtype.is_floating_point:
        return "float targets"
    if y.dtype.is_complex or y.dtype == torch.bool:
        raise DatasetError(f"{what}: dtype {y.dtype}; valid: integer class labels or float "
                           f"targets")
    return "integer labels"


def _finite(t: Tensor, what: str) -> Tensor:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = [int(i) for i in torch.nonzero(bad)[0]]
        raise DatasetError(f"{what}: {int(bad.sum())} values are NaN or infinite (the first "
                           f"at {first}); valid: finite numbers")
    return t
