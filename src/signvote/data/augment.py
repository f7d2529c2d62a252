"""Per-worker data augmentation: random crop with zero padding and random horizontal flip.

The standard CIFAR augmentation (He et al. 2016, "Deep Residual Learning for Image
Recognition", sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly
sampled from the padded image or its horizontal flip"), torchvision's
``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()``. For image ``j`` of worker
``i``, with offsets ``(r, s)`` uniform on ``{0, ..., 2p}`` and a flip bit ``f`` of
probability 1/2, all drawn from worker ``i``'s own generator::

    P = the image padded with p pixels on each side, of the value a raw black pixel has
    out[c, h, w] = P[c, r + h, s + w]            (f = 0)
    out[c, h, w] = P[c, r + h, s + W - 1 - w]    (f = 1)

The padding is black in the raw image, as torchvision pads the uint8 image with 0 before
``ToTensor`` and ``Normalize``: after the per-channel standardisation ``(x - mu_c) /
sigma_c`` that is ``-mu_c / sigma_c`` (:func:`black`), not 0.

Vectorised: each worker draws its ``b`` offsets and flips from its own generator (``n``
small draws), then one padding and one gather crop and flip all ``n * b`` images at once.
Because a worker draws only from its own stream, and only as many numbers as its batch
has images, worker ``i``'s draws are the same whatever ``n`` is and whichever process runs
it: the simulator and the distributed engine augment alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from signvote.data import Dataset

PAD = 4
"""He et al.'s padding: 4 pixels on each side."""


def draw(generators: Sequence[torch.Generator], batch: int, pad: int = PAD,
         flip: bool = True) -> tuple[Tensor, Tensor]:
    """The crop offsets ``[n, b, 2]`` (row, column; uniform on ``{0, ..., 2 pad}``) and the
    flips ``[n, b]`` (bool, each with probability 1/2; all False without ``flip``) of the
    ``n`` workers of ``generators``, worker ``i`` drawing from ``generators[i]`` only: first
    its ``2 b`` offsets (``torch.randint``, ``[b, 2]``), then its ``b`` flips. A ``pad``
    that is no whole number >= 0 raises ValueError."""
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad {pad!r}: the pixels added on each side; valid: a whole "
                         f"number >= 0")
    if not generators:  # no worker: no draw
        return torch.zeros(0, batch, 2, dtype=torch.int64), torch.zeros(0, batch,
                                                                        dtype=torch.bool)
    offsets, flips = [], []
    for g in generators:
        offsets.append(torch.randint(0, 2 * pad + 1, (batch, 2), generator=g))
        flips.append(torch.randint(0, 2, (batch,), generator=g).bool() if flip
                     else torch.zeros(batch, dtype=torch.bool))
    return torch.stack(offsets), torch.stack(flips)


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int = PAD,
              fill: Tensor | float = 0.0) -> Tensor:
    """``images [n, b, C, H, W]`` padded with ``pad`` pixels of ``fill`` (a number, or one
    value a channel ``[C]``) on each side, cropped back to ``H x W`` at ``offsets [n, b,
    2]`` and flipped left-right where ``flips [n, b]``: the formula of the module
    docstring, as one gather on the images' device (the numbers drawn on the CPU are
    moved there). A new tensor; the inputs are not changed."""
    n, b, C, H, W = images.shape
    device = images.device
    offsets, flips = offsets.to(device), flips.to(device)
    fill_t = torch.as_tensor(fill, dtype=images.dtype).to(device).reshape(-1)
    if fill_t.numel() not in (1, C):
        raise ValueError(f"fill of {fill_t.numel()} values for images of {C} channels; "
                         f"valid: one value, or one a channel")
    padded = fill_t.reshape(1, 1, -1, 1, 1).expand(n, b, C, H + 2 * pad, W + 2 * pad).clone()
    padded[..., pad:pad + H, pad:pad + W] = images
    H2, W2 = H + 2 * pad, W + 2 * pad
    rows = offsets[..., 0, None] + torch.arange(H, device=device)  # [n, b, H]
    columns = torch.arange(W, device=device).expand(n, b, W)
    columns = torch.where(flips[..., None], W - 1 - columns, columns) + offsets[..., 1, None]
    pixel = rows[:, :, None, :, None] * W2 + columns[:, :, None, None, :]  # [n, b, 1, H, W]
    plane = torch.arange(n * b * C, device=device).reshape(n, b, C, 1, 1) * (H2 * W2)
    return torch.take(padded, plane + pixel)


def augment(images: Tensor, generators: Sequence[torch.Generator], *, pad: int = PAD,
            flip: bool = True, fill: Tensor | float = 0.0) -> Tensor:
    """The augmented batch of ``images [n, b, C, H, W]``: worker ``i``'s ``b`` images
    cropped and flipped by the numbers it draws from ``generators[i]`` (:func:`draw`, then
    :func:`crop_flip`), padding with ``fill`` (:func:`black` for a standardised dataset).
    A new tensor; the images are not changed, the generators advance."""
    if images.ndim != 5:
        raise ValueError(f"expected images [n, b, C, H, W], got shape {tuple(images.shape)}")
    if len(generators) != images.shape[0]:
        raise ValueError(f"{len(generators)} generators for the {images.shape[0]} workers' "
                         f"batches; valid: one a worker")
    offsets, flips = draw(generators, images.shape[1], pad, flip)
    return crop_flip(images, offsets, flips, pad, fill)


def black(data: Dataset) -> Tensor | float:
    """The value a raw black pixel has in ``data``'s images, per channel ``[C]``:
    ``-mu_c / sigma_c`` of its standardisation (``Dataset.mean``, ``Dataset.std``); 0 for
    a dataset that records none (features already as given)."""
    if data.mean is None or data.std is None:
        return 0.0
    # float32 as the images: exactly the stored value (0 - mu_c) / sigma_c of a black pixel
    return -torch.tensor(data.mean, dtype=torch.float32) / torch.tensor(data.std,
                                                                        dtype=torch.float32)


@dataclass
class Augmenter:
    """A run's augmentation of its workers' batches: :func:`augment` with these workers'
    generators (which it advances; their states are what a checkpoint saves) and the
    dataset's black."""

    generators: list[torch.Generator]
    fill: Tensor | float = 0.0
    pad: int = PAD
    flip: bool = True

    def __call__(self, images: Tensor) -> Tensor:
        return augment(images, self.generators, pad=self.pad, flip=self.flip, fill=self.fill)
