"""Two aggregators: a class with a parameter and its capabilities, and a plain function."""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.contracts import AggregatorBase, AggregatorCapabilities


class TrimmedVote(AggregatorBase):
    r"""The trimmed majority vote: per coordinate, drop the ``k`` largest and the ``k``
    smallest of the ``n`` messages and take the sign of the sum of the rest,

    .. math:: v_j = \mathrm{sign}\Big(\sum_{r = k + 1}^{n - k} m_{(r) j}\Big),

    :math:`m_{(1) j} \le \dots \le m_{(n) j}` the sorted column (the coordinate-wise
    trimmed mean of Yin, Chen, Kannan & Bartlett, ICML 2018, then the sign, as the majority
    vote of Bernstein et al., ICLR 2019, takes it). Needs ``n >= 2k + 1``.
    """

    capabilities = AggregatorCapabilities(returns_signs=True)
    name = "trimmed-vote"

    def __init__(self, k: int = 1) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"trimmed-vote: k must be a whole number >= 0, got {k!r}")
        self.k = k

    def __call__(self, messages: Tensor) -> Tensor:
        n = messages.shape[0]
        kept = messages.sort(dim=0).values[self.k:n - self.k]
        return torch.sign(kept.sum(dim=0))

    def min_workers(self, f: int) -> int:
        return 2 * self.k + 1


def sign_of_median(messages: Tensor) -> Tensor:
    r"""The sign of the coordinate-wise median, :math:`v_j = \mathrm{sign}(\mathrm{med}_i
    m_{ij})` (the lower median for an even ``n``): a plain function ``messages[n, d] ->
    [d]``, which signvote takes as an aggregator with the conservative capabilities."""
    return torch.sign(messages.median(dim=0).values)
