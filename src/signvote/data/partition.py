"""How the training set is cut among workers: iid and the standard non-iid partitions.

Every partition is an exact cover: each training sample goes to exactly one worker (no
sample dropped, none shared). A partition is a tuple of index tensors, worker i's being the
samples it owns in the order it walks them. All draws come from the ``generator`` given
(the run's partition stream), so a seed fixes the partition.

    iid        shuffle, cut into n nearly equal contiguous pieces (the seed's layout)
    dirichlet  per class c, shares p_c ~ Dir(alpha 1_n) of its samples (Hsu et al. 2019)
    shards     sort by label, cut into n * s shards, s random shards a worker (McMahan 2017)
    gamma      a fraction gamma iid, the rest sorted by label and cut in n pieces
               (Karimireddy, He & Jaggi 2022)

Small ``alpha``, few ``shards``, small ``gamma``: more heterogeneous workers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

PARTITIONS = ("iid", "dirichlet", "shards", "gamma")
"""The registered partition names."""

NEEDS_LABELS = ("dirichlet", "shards", "gamma")
"""Partitions defined by class labels (not available for regression datasets)."""

Partition = tuple[Tensor, ...]
"""Worker i's training-sample indices (int64) are ``partition[i]``."""

DIRICHLET_REDRAWS = 100
"""How many times :func:`dirichlet` redraws the shares before giving up on a partition
where every worker has at least one sample."""


def _check_workers(n_samples: int, n_workers: int) -> None:
    """Refuse fewer than one worker or more workers than samples (each worker needs one),
    naming ``--workers`` and its valid range."""
    if not 1 <= n_workers <= n_samples:
        cause = (f"exceeds the {n_samples} training samples" if n_workers > n_samples
                 else "needs at least one worker")
        raise ValueError(f"--workers {n_workers} {cause}; valid: --workers 1 to {n_samples}")


def _shuffled(indices: Tensor, generator: torch.Generator) -> Tensor:
    return indices[torch.randperm(indices.numel(), generator=generator)]


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from ``generator`` (for the Dirichlet draws torch lacks)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def _sorted_by_label(indices: Tensor, labels: Tensor) -> Tensor:
    """``indices`` sorted by their labels, keeping their order within a label."""
    return indices[torch.sort(labels[indices], stable=True).indices]


def iid(labels: Tensor, n_workers: int, generator: torch.Generator) -> Partition:
    """The samples shuffled once and cut into ``n_workers`` contiguous pieces whose sizes
    differ by at most one (the first ``N mod n`` workers get one more): the seed's
    ``PartitionGenerator`` when ``n`` divides ``N``."""
    _check_workers(labels.numel(), n_workers)
    return tuple(torch.randperm(labels.numel(), generator=generator).tensor_split(n_workers))


def dirichlet(labels: Tensor, n_workers: int, generator: torch.Generator,
              alpha: float = 0.5) -> Partition:
    r"""Label-skewed shares: for every class c, :math:`p_c \sim \mathrm{Dir}(\alpha
    \mathbf{1}_n)` and worker i receives a share :math:`p_{c,i}` of class c's samples (the
    cut points rounded down), as in Hsu, Qi & Brown, "Measuring the Effects of Non-Identical
    Data Distribution for Federated Visual Classification" (2019), the form used by most
    federated-learning benchmarks. Shares are redrawn until every worker owns at least one
    sample (up to :data:`DIRICHLET_REDRAWS` times). ``alpha -> inf`` is iid; ``alpha = 0.1``
    gives most workers two or three classes.
    """
    _check_workers(labels.numel(), n_workers)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"--partition-alpha {alpha}: must be a finite number > 0")
    rng = _numpy_rng(generator)
    classes = [_shuffled(torch.nonzero(labels == c).flatten(), generator)
               for c in torch.unique(labels).tolist()]
    for _ in range(DIRICHLET_REDRAWS):
        pieces: list[list[Tensor]] = [[] for _ in range(n_workers)]
        for members in classes:
            shares = rng.dirichlet(np.full(n_workers, alpha))
            cuts = (np.cumsum(shares)[:-1] * members.numel()).astype(np.int64).tolist()
            for worker, piece in enumerate(members.tensor_split(cuts)):
                pieces[worker].append(piece)
        parts = [torch.cat(p) for p in pieces]
        if min(p.numel() for p in parts) > 0:
            return tuple(_shuffled(p, generator) for p in parts)
    raise ValueError(f"--partition-alpha {alpha}: after {DIRICHLET_REDRAWS} draws some of "
                     f"the --workers {n_workers} still had no sample of the "
                     f"{labels.numel()} training samples; valid: a larger --partition-alpha "
                     f"or fewer --workers")


def shards(labels: Tensor, n_workers: int, generator: torch.Generator,
           shards_per_worker: int = 2) -> Partition:
    """Pathological non-iid: the samples sorted by label, cut into ``n * s`` contiguous
    shards of nearly equal size, and ``s`` random shards given to each worker (McMahan et
    al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017: 200 shards of 300 MNIST images, 2 per client). With ``s = 2`` most workers
    see only two classes. Every shard needs a sample: ``1 <= s <= N // n``."""
    n_samples = labels.numel()
    _check_workers(n_samples, n_workers)
    most = n_samples // n_workers
    if shards_per_worker < 1:
        raise ValueError(f"--partition-shards {shards_per_worker}: at least one shard per "
                         f"worker; valid: --partition-shards 1 to {most}")
    n_shards = n_workers * shards_per_worker
    if n_shards > n_samples:
        raise ValueError(f"--workers {n_workers} x --partition-shards {shards_per_worker} = "
                         f"{n_shards} shards for the {n_samples} training samples (a shard "
                         f"needs one); valid: --partition-shards 1 to {most} with --workers "
                         f"{n_workers}")
    order = torch.randperm(labels.numel(), generator=generator)
    pieces = _sorted_by_label(order, labels).tensor_split(n_shards)
    owner = torch.randperm(n_shards, generator=generator).view(n_workers, shards_per_worker)
    return tuple(_shuffled(torch.cat([pieces[k] for k in row.tolist()]), generator)
                 for row in owner)


def gamma_similarity(labels: Tensor, n_workers: int, generator: torch.Generator,
                     gamma: float = 0.5) -> Partition:
    """A fraction ``gamma`` of the samples spread iid, the other ``1 - gamma`` sorted by
    label and cut into ``n`` contiguous pieces, one per worker (the "gamma-similarity" of
    Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022). ``gamma = 1`` is iid, ``gamma = 0`` fully label-sorted.

    The iid part is cut as :func:`iid` cuts (the first ``n_iid mod n`` pieces one longer);
    the sorted part's contiguous pieces then make every worker's total ``N // n`` or one
    more (the first ``N mod n`` workers), so no worker is left without a sample while
    ``n <= N``. When ``n`` divides both parts, both are cut into equal pieces."""
    n_samples = labels.numel()
    _check_workers(n_samples, n_workers)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"--partition-gamma {gamma}: must be in [0, 1]")
    order = torch.randperm(n_samples, generator=generator)
    n_iid = int(gamma * n_samples)
    iid_part = order[:n_iid].tensor_split(n_workers)
    totals = [n_samples // n_workers + (i < n_samples % n_workers) for i in range(n_workers)]
    sorted_part = _sorted_by_label(order[n_iid:], labels).split(
        [total - piece.numel() for total, piece in zip(totals, iid_part, strict=True)])
    return tuple(_shuffled(torch.cat([a, b]), generator)
                 for a, b in zip(iid_part, sorted_part, strict=True))


def get(name: str, labels: Tensor, n_workers: int, generator: torch.Generator, *,
        alpha: float = 0.5, shards_per_worker: int = 2, gamma: float = 0.5) -> Partition:
    """The partition ``name`` of the training samples with ``labels`` among ``n_workers``."""
    if name == "iid":
        return iid(labels, n_workers, generator)
    if name == "dirichlet":
        return dirichlet(labels, n_workers, generator, alpha)
    if name == "shards":
        return shards(labels, n_workers, generator, shards_per_worker)
    if name == "gamma":
        return gamma_similarity(labels, n_workers, generator, gamma)
    raise ValueError(f"unknown partition {name!r}; known: {', '.join(PARTITIONS)}")


def label_histogram(partition: Partition, labels: Tensor, n_classes: int) -> Tensor:
    """``[n_workers, n_classes]``: how many samples of each class each worker owns."""
    return torch.stack([torch.bincount(labels[idx], minlength=n_classes)
                        for idx in partition])


def label_entropy(histogram: Tensor) -> Tensor:
    """The entropy in bits of each row's label distribution (``log2(C)`` for a uniform one,
    0 for a single class); rows of zeros give 0."""
    counts = histogram.to(torch.float64)
    p = counts / counts.sum(dim=-1, keepdim=True).clamp_min(1)
    return -(p * torch.log2(torch.where(p > 0, p, 1.0))).sum(dim=-1)


def epoch_indices(partition: Partition, per_epoch: int, epoch: int) -> Tensor:
    """``[n_workers, per_epoch]``: the samples each worker walks in 0-based ``epoch``.

    Worker i reads its own samples as an endless cycle, ``per_epoch`` of them an epoch:
    positions ``epoch * per_epoch + j`` modulo its sample count. When every worker owns
    exactly ``per_epoch`` samples (iid with ``n`` dividing ``N``) this is the same list every
    epoch, the seed's layout; a worker with fewer samples revisits some within an epoch, one
    with more reaches the rest in later epochs.
    """
    sizes = torch.tensor([idx.numel() for idx in partition])
    padded = torch.nn.utils.rnn.pad_sequence(list(partition), batch_first=True)
    positions = (epoch * per_epoch + torch.arange(per_epoch)).unsqueeze(0) % sizes.unsqueeze(1)
    return padded.gather(1, positions)
