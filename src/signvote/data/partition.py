"""How the training set is cut among workers: iid and the standard non-iid partitions.

The first four partitions are exact covers: each training sample goes to exactly one worker
(no sample dropped, none shared). A partition is a tuple of index tensors, worker i's being
the samples it owns in the order it walks them. All draws come from the ``generator`` given
(the run's partition stream), so a seed fixes the partition.

    iid             shuffle, cut into n nearly equal contiguous pieces (the seed's layout)
    dirichlet       per class c, shares p_c ~ Dir(alpha 1_n) of its samples (Hsu et al. 2019)
    shards          sort by label, cut into n * s shards, s random shards a worker
                    (McMahan 2017)
    gamma           a fraction gamma iid, the rest sorted by label and cut in n pieces
    honest-sorted   the label-sorted set cut into contiguous blocks among the h honest
                    workers only; each Byzantine worker an iid share (Karimireddy, He &
                    Jaggi 2022's non-iid split, from their code)
    honest-strided  the same with every h-th sample of the sorted set (their iid split)
    gamma-byzfl     ByzFL's gamma-similarity among the honest workers only

The three honest-only partitions are not exact covers: the honest workers cover the training
set (a few samples twice where h does not divide N, as the code they follow pads), and the
Byzantine workers' iid shares are drawn from the same set, overlapping theirs. They take the
Byzantine workers' indices explicitly (``byzantine``).

Small ``alpha``, few ``shards``, small ``gamma``: more heterogeneous workers.
:func:`long_tail` (Karimireddy et al.'s experiment 1) thins the training set before any
partition is cut.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

PARTITIONS = ("iid", "dirichlet", "shards", "gamma", "honest-sorted", "honest-strided",
              "gamma-byzfl")
"""The registered partition names."""

NEEDS_LABELS = ("dirichlet", "shards", "gamma", "honest-sorted", "honest-strided",
                "gamma-byzfl")
"""Partitions defined by class labels (not available for regression datasets)."""

HONEST_ONLY = ("honest-sorted", "honest-strided", "gamma-byzfl")
"""Partitions cut among the honest workers only, the Byzantine ones getting iid shares
(they need the Byzantine workers' indices)."""

IMBALANCES = ("none", "long-tail")
"""The registered training-set imbalances (:func:`imbalance`)."""

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
    ``n <= N``. When ``n`` divides both parts, both are cut into equal pieces.

    ByzFL's ``gamma_similarity_niid`` is the same per-worker construction, cut among the
    honest clients only: :func:`gamma_byzfl`, whose docstring lists the differences.
    Karimireddy et al.'s code has the same split as ``DecentralizedMixedSampler``
    (``noniid_percent = 1 - gamma``, the iid part rounded down to a multiple of n and
    dealt every n-th), which none of their experiments uses; where the name
    "gamma-similarity" was first printed we have not checked."""
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


def _honest_workers(n_workers: int, byzantine: tuple[int, ...]) -> list[int]:
    """The workers not in ``byzantine``, in index order; refuses an index outside
    ``[0, n)``, a repeated one, or no honest worker left."""
    byzantine = tuple(int(b) for b in byzantine)
    bad = [b for b in byzantine if not 0 <= b < n_workers]
    if bad:
        raise ValueError(f"Byzantine worker {bad[0]} is not one of the --workers {n_workers}; "
                         f"valid: worker indices 0 to {n_workers - 1}")
    if len(set(byzantine)) != len(byzantine):
        raise ValueError(f"Byzantine workers {list(byzantine)} repeat an index; valid: "
                         f"distinct worker indices")
    honest = [i for i in range(n_workers) if i not in set(byzantine)]
    if not honest:
        raise ValueError(f"all --workers {n_workers} are Byzantine; an honest-only partition "
                         f"needs one honest worker; valid: --byzantine below --workers")
    return honest


def _wrapped(order: Tensor, total: int) -> Tensor:
    """``order`` extended to ``total`` entries by repeating its first ones (the padding of
    torch's ``DistributedSampler`` that Karimireddy et al.'s samplers keep)."""
    return torch.cat([order, order[:total - order.numel()]])


def _assemble(n_workers: int, honest: list[int], honest_parts: list[Tensor],
              byzantine_parts: list[Tensor], generator: torch.Generator) -> Partition:
    """Worker ``honest[k]`` owns ``honest_parts[k]``, the j-th Byzantine worker (by index)
    ``byzantine_parts[j]``; each shuffled once (the order it walks them)."""
    owned: dict[int, Tensor] = dict(zip(honest, honest_parts, strict=True))
    others = [i for i in range(n_workers) if i not in owned]
    owned.update(zip(others, byzantine_parts, strict=True))
    return tuple(_shuffled(owned[i], generator) for i in range(n_workers))


def _byzantine_iid(n_samples: int, n_honest: int, n_byzantine: int,
                   generator: torch.Generator) -> list[Tensor]:
    """The Byzantine workers' iid shares, as Karimireddy et al.'s code draws them (a
    ``DistributedSampler`` over the whole training set with ``num_replicas = h`` and
    ``rank = j mod h``): one random permutation, extended to ``h * ceil(N / h)`` entries by
    repeating its first ones, and the j-th Byzantine worker takes every h-th entry from
    position ``j mod h``. Byzantine workers (``f <= h``) get shares of ``ceil(N / h)``
    samples, disjoint but for the padding's ``h ceil(N / h) - N`` repeated samples; the
    shares overlap the honest workers' samples."""
    size = -(-n_samples // n_honest)
    order = _wrapped(torch.randperm(n_samples, generator=generator), n_honest * size)
    return [order[j % n_honest::n_honest] for j in range(n_byzantine)]


def _honest_label_sorted(labels: Tensor, n_workers: int, generator: torch.Generator,
                         byzantine: tuple[int, ...], strided: bool) -> Partition:
    n_samples = labels.numel()
    _check_workers(n_samples, n_workers)
    honest = _honest_workers(n_workers, tuple(byzantine))
    h = len(honest)
    size = -(-n_samples // h)
    byzantine_parts = _byzantine_iid(n_samples, h, n_workers - h, generator)
    ordered = _wrapped(_sorted_by_label(torch.arange(n_samples), labels), h * size)
    parts = ([ordered[k::h] for k in range(h)] if strided
             else list(ordered.split(size)))
    return _assemble(n_workers, honest, parts, byzantine_parts, generator)


def honest_sorted(labels: Tensor, n_workers: int, generator: torch.Generator,
                  byzantine: tuple[int, ...] = ()) -> Partition:
    r"""The non-iid split of Karimireddy, He & Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing" (ICLR 2022), as their code cuts it
    (epfml/byzantine-robust-noniid-optimizer, ``codes/sampler.py`` ``NONIIDLTSampler``
    with ``alpha = 0``, and ``utils.py`` ``get_sampler_callback``): only the
    :math:`h = n - f` honest workers share the training set. The samples are sorted by
    label, within a label in dataset order (no draw), the list is extended to
    :math:`h \lceil N/h \rceil` entries by repeating its first ones, and the k-th honest
    worker (by index) takes the contiguous block
    :math:`[k \lceil N/h \rceil, (k+1) \lceil N/h \rceil)`: equal blocks, and where
    :math:`h \nmid N` the last block ends with the first few samples of the lowest
    class again (no sample is dropped; at most :math:`h - 1` are owned twice). Each
    Byzantine worker gets an iid share of :math:`\lceil N/h \rceil` samples of the whole
    set (:func:`_byzantine_iid`), overlapping the honest samples, as their Byzantine
    workers' ``DistributedSampler`` does.

    Their samplers reshuffle a worker's samples every epoch (the Byzantine shares too);
    here each worker's samples are shuffled once and walked as a cycle
    (:func:`epoch_indices`), and a Byzantine share is fixed for the run.
    ``byzantine``: the Byzantine workers' indices (which ones is the run's choice:
    :func:`signvote.engine.run.choose_adversaries`)."""
    return _honest_label_sorted(labels, n_workers, generator, tuple(byzantine), False)


def honest_strided(labels: Tensor, n_workers: int, generator: torch.Generator,
                   byzantine: tuple[int, ...] = ()) -> Partition:
    r"""The iid split of Karimireddy, He & Jaggi (ICLR 2022) as their code makes it
    (``NONIIDLTSampler`` with ``alpha = 1``): the same label-sorted, extended list as
    :func:`honest_sorted`, the k-th honest worker taking every h-th entry from position k,
    so every honest worker holds each class in the same proportion (to one sample); the
    Byzantine workers get the iid shares of :func:`_byzantine_iid`. No draw decides the
    honest samples (only their walking order)."""
    return _honest_label_sorted(labels, n_workers, generator, tuple(byzantine), True)


def gamma_byzfl(labels: Tensor, n_workers: int, generator: torch.Generator,
                gamma: float = 0.5, byzantine: tuple[int, ...] = ()) -> Partition:
    r"""ByzFL's gamma-similarity (LPD-EPFL/byzfl, ``fed_framework/data_distributor.py``
    ``DataDistributor.gamma_niid_idx``, the benchmark's ``gamma_similarity_niid``), cut
    among the :math:`h` honest workers only, as ByzFL splits the data among its honest
    clients: of a random order of the N samples, the first
    :math:`\lfloor \gamma N \rfloor` are shuffled and cut into h pieces (``array_split``:
    the first :math:`\lfloor\gamma N\rfloor \bmod h` one longer), the rest are sorted by
    (label, index) and cut into h contiguous pieces the same way, and honest worker k owns
    its two k-th pieces. ByzFL's Byzantine clients hold no data (its attacks read the
    honest vectors); a signvote Byzantine worker computes on its own samples, so each gets
    the iid share of :func:`_byzantine_iid` (our choice).

    Against :func:`gamma_similarity`: the same per-worker construction (a gamma fraction
    iid, the rest label-sorted and cut contiguously), except that (1) ``gamma`` cuts among
    all n workers, so with Byzantine workers their shares of the sorted part are lost to
    the honest ones (at gamma = 0 whole classes can leave the honest workers), (2) its
    sorted part's sizes balance each worker's total, where ByzFL cuts both parts
    independently (totals may differ by two), (3) within a label it keeps the random
    order, ByzFL the dataset order. ByzFL's benchmark also holds out 20% of the training
    set for validation first (``size_train_set = 0.8``); that is the caller's choice."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"--partition-gamma {gamma}: must be in [0, 1]")
    n_samples = labels.numel()
    _check_workers(n_samples, n_workers)
    honest = _honest_workers(n_workers, tuple(byzantine))
    h = len(honest)
    order = torch.randperm(n_samples, generator=generator)
    n_iid = int(n_samples * gamma)
    iid_part = _shuffled(order[:n_iid], generator).tensor_split(h)
    rest = torch.sort(order[n_iid:]).values
    sorted_part = _sorted_by_label(rest, labels).tensor_split(h)
    parts = [torch.cat([a, b]) for a, b in zip(iid_part, sorted_part, strict=True)]
    byzantine_parts = _byzantine_iid(n_samples, h, n_workers - h, generator)
    return _assemble(n_workers, honest, parts, byzantine_parts, generator)


def long_tail(labels: Tensor, ratio: float = 0.5) -> Tensor:
    r"""The training samples kept by the long-tail imbalance of Karimireddy, He & Jaggi
    (ICLR 2022, experiment 1), as their code keeps them (``NONIIDLTSampler``, ``beta``):
    class c (the label value, 0-based) keeps its first
    :math:`\lfloor n_c \cdot \mathrm{ratio}^c \rfloor` samples in dataset order (class 0
    all of them), the rest are dropped. Returns the kept indices, ascending (dataset
    order). ``ratio`` in (0, 1]; 1 keeps everything.

    Their code applies it to the honest workers' training data and to the test set (the
    Byzantine workers' sampler reads the whole, unthinned set; experiment 1 has none).
    signvote applies it to the training set before the partition is cut, so Byzantine
    shares come from the thinned set, and to the test set with ``--imbalance-split both``
    (:func:`signvote.engine.run.apply_imbalance`)."""
    if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        raise ValueError(f"--imbalance-ratio {ratio}: must be in (0, 1]")
    kept = [torch.zeros(0, dtype=torch.int64)]
    for c in range(int(labels.max()) + 1 if labels.numel() else 0):
        members = torch.nonzero(labels == c).flatten()
        kept.append(members[:int(members.numel() * ratio ** c)])
    return torch.sort(torch.cat(kept)).values


def imbalance(name: str, labels: Tensor, ratio: float = 0.5) -> Tensor:
    """The training-sample indices that imbalance ``name`` keeps (ascending): all for
    ``none``, :func:`long_tail` for ``long-tail``."""
    if name == "none":
        return torch.arange(labels.numel())
    if name == "long-tail":
        return long_tail(labels, ratio)
    raise ValueError(f"unknown imbalance {name!r}; known: {', '.join(IMBALANCES)}")


def get(name: str, labels: Tensor, n_workers: int, generator: torch.Generator, *,
        alpha: float = 0.5, shards_per_worker: int = 2, gamma: float = 0.5,
        byzantine: tuple[int, ...] = ()) -> Partition:
    """The partition ``name`` of the training samples with ``labels`` among ``n_workers``
    (``byzantine``: the Byzantine workers' indices, read by the :data:`HONEST_ONLY` ones)."""
    if name == "honest-sorted":
        return honest_sorted(labels, n_workers, generator, byzantine)
    if name == "honest-strided":
        return honest_strided(labels, n_workers, generator, byzantine)
    if name == "gamma-byzfl":
        return gamma_byzfl(labels, n_workers, generator, gamma, byzantine)
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
