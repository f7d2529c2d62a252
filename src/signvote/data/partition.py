"""How the training set is cut among workers."""

from __future__ import annotations

import torch
from torch import Tensor

PARTITIONS = ("iid",)
"""The registered partition names."""


def iid(n_samples: int, n_workers: int, generator: torch.Generator) -> Tensor:
    """Indices ``[n_workers, n_samples // n_workers]``: the samples shuffled once and cut into
    equal contiguous shards, the remainder dropped (the seed's ``PartitionGenerator``).

    Every sample goes to at most one worker; all shards have the same size, which lets the
    simulator stack the workers' batches.
    """
    if n_workers > n_samples:
        raise ValueError(f"{n_workers} workers cannot share {n_samples} samples")
    shard = n_samples // n_workers
    order = torch.randperm(n_samples, generator=generator)
    return order[: shard * n_workers].view(n_workers, shard)


def get(name: str, n_samples: int, n_workers: int, generator: torch.Generator) -> Tensor:
    """The partition ``name`` as an index tensor ``[n_workers, shard]``."""
    if name == "iid":
        return iid(n_samples, n_workers, generator)
    raise ValueError(f"unknown partition {name!r}; known: {', '.join(PARTITIONS)}")
