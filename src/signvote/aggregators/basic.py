"""The averaging and voting aggregators of the paper."""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.aggregators import REGISTRY
from signvote.contracts import AggregatorBase, AggregatorCapabilities


def ternary_votes(messages: Tensor) -> Tensor:
    """Each message's coordinate-wise sign as a vote in {-1, 0, +1} (same dtype).

    ``+1`` where ``m > 0``, ``-1`` where ``m < 0``, ``0`` elsewhere: zeros *and NaN* abstain,
    ``+inf``/``-inf`` vote ``+1``/``-1``. This is all of a sign that survives a 1-bit/2-bit
    wire, so a non-finite message cannot poison the vote.
    """
    return torch.sign(messages).nan_to_num_(nan=0.0)


@REGISTRY.register("mean")
class Mean(AggregatorBase):
    r"""Arithmetic mean of the messages: :math:`v = \frac{1}{n} \sum_{i=1}^{n} m_i`.

    The server rule of distributed SGD (e.g. Dean et al., "Large Scale Distributed Deep
    Networks", NeurIPS 2012). Not robust: one Byzantine row moves it arbitrarily far.

    Example:
        >>> Mean()(torch.tensor([[1., 2.], [3., 4.]]))
        tensor([2., 3.])
    """

    capabilities = AggregatorCapabilities(reduction="mean")

    def __call__(self, messages: Tensor) -> Tensor:
        return messages.mean(dim=0)


@REGISTRY.register("sum")
class Sum(AggregatorBase):
    r"""Sum of the messages: :math:`v = \sum_{i=1}^{n} m_i`.

    What the paper's seed code applies for distributed SGD (an all-reduce SUM, then
    ``x <- x - lr * v``): the mean with the learning rate scaled by ``n``.

    Example:
        >>> Sum()(torch.tensor([[1., 2.], [3., 4.]]))
        tensor([4., 6.])
    """

    capabilities = AggregatorCapabilities(reduction="sum")

    def __call__(self, messages: Tensor) -> Tensor:
        return messages.sum(dim=0)


@REGISTRY.register("majority-vote")
class MajorityVote(AggregatorBase):
    r"""Coordinate-wise majority vote of the signs: :math:`v_j = \mathrm{sign}\big(\sum_i
    \mathrm{sign}(m_{ij})\big)`, a tie giving :math:`v_j = 0`.

    Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with Majority Vote is
    Communication Efficient and Fault Tolerant", ICLR 2019 (Algorithm 1). Messages are read
    through :func:`ternary_votes`: a zero or NaN message abstains.

    Example:
        >>> MajorityVote()(torch.tensor([[1., -1., 1.], [1., 1., -1.], [-1., 0., 0.]]))
        tensor([1., 0., 0.])
    """

    capabilities = AggregatorCapabilities(reads_signs=True, returns_signs=True,
                                          reduction="vote")
    """It reads messages through :func:`ternary_votes` itself (the wire's semantics); its
    aggregate is ternary (it travels back bit-packed); the wire may count the bits."""

    def __call__(self, messages: Tensor) -> Tensor:
        # = sign(ternary_votes(messages).sum(0)) in one pass fewer: nansum skips sign(NaN).
        return torch.sign(torch.sign(messages).nansum(dim=0))
