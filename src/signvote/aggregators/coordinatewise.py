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
from signvote.contracts import State


class SortedRule(RobustAggregator):
    """Base of the rules computed from each coordinate's sorted values.

    Fast path: sort first; a sorted column holds NaN last and infinities at its ends, so
    if the first and last sorted rows are finite, every message is, and no separate pass
    over the input looks for malformed rows. If they are not, or if the result is not
    finite (values near the float maximum can overflow a sum), the base class's path runs:
    drop the malformed rows, lower ``f``. So a row of finite values, however large, is
    treated as malformed here only when it would make the result overflow.
    """

    def apply(self, messages: Tensor, state: State) -> tuple[Tensor, State]:
        self.check(messages.shape[0])
        columns = sorted_columns(messages)
        # one finite sum is the cheapest test (an overflowing one just takes the slow path)
        if bool(torch.isfinite((columns[0] + columns[-1]).sum())):
            result = self.from_sorted(columns, self.f)
            if bool(torch.isfinite(result.sum())):
                return result, state
        return super().apply(messages, state)

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        return self.from_sorted(sorted_columns(messages), f)

    def from_sorted(self, columns: Tensor, f: int) -> Tensor:  # pragma: no cover - abstract
        """The rule from ``columns[n, d]``, each column sorted ascending, with ``f``."""
        raise NotImplementedError


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
class TrimmedMean(SortedRule):
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

    def from_sorted(self, columns: Tensor, f: int) -> Tensor:
        return trimmed_mean_of_sorted(columns, f)


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
class MeaMed(SortedRule):
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

    def from_sorted(self, columns: Tensor, f: int) -> Tensor:
        return mean_around_median(columns, columns.shape[0] - f)
