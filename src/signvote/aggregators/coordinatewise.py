"""Coordinate-wise robust aggregators: each coordinate is aggregated on its own."""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.aggregators import REGISTRY
from signvote.aggregators.base import (
    RobustAggregator,
    coordinate_median,
    median_of_sorted,
    sorted_columns,
)


@REGISTRY.register("median")
class Median(RobustAggregator):
    r"""Coordinate-wise median: :math:`v_j = \mathrm{median}(x_{1j}, \dots, x_{nj})`, the mean
    of the two middle values when :math:`n` is even.

    Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018. Tolerates :math:`f < n/2`: each coordinate stays
    within the range of the honest values. ``f`` only sets that check.

    Example:
        >>> Median()(torch.tensor([[1., 9.], [2., -4.], [100., 0.]]))
        tensor([2., 0.])
    """

    name = "median"

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        return coordinate_median(messages)


def trimmed_mean_of_sorted(columns: Tensor, f: int) -> Tensor:
    """The mean ``[d]`` of each sorted column of ``columns[n, d]`` without its ``f`` lowest
    and ``f`` highest values."""
    n = columns.shape[0]
    return columns[f:n - f].mean(dim=0)


@REGISTRY.register("trimmed-mean")
class TrimmedMean(RobustAggregator):
    r"""Coordinate-wise trimmed mean: for each coordinate, drop the :math:`f` largest and
    :math:`f` smallest values and average the other :math:`n - 2f`,

    .. math:: v_j = \frac{1}{n - 2f} \sum_{k=f+1}^{n-f} x_{(k)j},

    :math:`x_{(1)j} \le \dots \le x_{(n)j}` the sorted values. Yin, Chen, Ramchandran &
    Bartlett, ICML 2018. Needs :math:`n > 2f`; with :math:`f = 0` it is the mean.

    Example:
        >>> TrimmedMean(f=1)(torch.tensor([[1.], [2.], [3.], [100.]]))
        tensor([2.5000])
    """

    name = "trimmed-mean"

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        if f == 0:
            return messages.mean(dim=0)
        return trimmed_mean_of_sorted(sorted_columns(messages), f)


def mean_around_median(columns: Tensor, keep: int) -> Tensor:
    """For each sorted column of ``columns[n, d]``: the mean of the ``keep`` values closest
    to the column's median, a tie in distance going to the smaller value.

    The ``keep`` values nearest a point form a contiguous window ``[s, s + keep)`` of the
    sorted column. Sliding the window by one swaps ``x_(s)`` for ``x_(s+keep)``, which
    helps exactly when ``|x_(s+keep) - med| < |x_(s) - med|``; along a sorted column that
    holds for a prefix of the ``s``, so the best start is the number of ``s`` where it holds.
    """
    n = columns.shape[0]
    med = median_of_sorted(columns)
    closer = (columns[keep:] - med).abs() < (columns[:n - keep] - med).abs()
    best = closer.sum(dim=0)
    position = torch.arange(n).unsqueeze(1)
    window = (position >= best) & (position < best + keep)
    return (columns * window).sum(dim=0) / keep


@REGISTRY.register("meamed")
class MeaMed(RobustAggregator):
    r"""Mean around the median: for each coordinate, the mean of the :math:`n - f` values
    closest to the coordinate-wise median :math:`\mu_j`,

    .. math:: v_j = \frac{1}{n - f} \sum_{i \in N_j} x_{ij}, \quad
              N_j = \text{the } n - f \text{ indices } i \text{ of smallest } |x_{ij} - \mu_j|

    (a tie in distance goes to the smaller value). Xie, Koyejo & Gupta, "Generalized
    Byzantine-tolerant SGD", 2018. Needs :math:`n > 2f`.

    Example:
        >>> MeaMed(f=1)(torch.tensor([[1.], [2.], [4.], [100.]]))
        tensor([2.3333])
    """

    name = "meamed"

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        if f == 0:
            return messages.mean(dim=0)
        return mean_around_median(sorted_columns(messages), messages.shape[0] - f)
