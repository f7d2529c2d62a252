"""Sign-specific aggregators beyond the plain majority vote."""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.aggregators import REGISTRY
from signvote.aggregators.basic import ternary_votes
from signvote.contracts import AggregatorBase, AggregatorCapabilities
from signvote.registry import to_float


def llr_weights(agree: Tensor, total: Tensor) -> Tensor:
    r"""Log-likelihood-ratio weights :math:`w_i = \log\frac{1 - \hat p_i}{\hat p_i}` from the
    counts of agreements with the decoded sign, :math:`\hat p_i = (\text{total}_i -
    \text{agree}_i + 1) / (\text{total}_i + 2)` (Laplace's rule: no count gives weight 0)."""
    p_wrong = (total - agree + 1) / (total + 2)
    return torch.log1p(-p_wrong) - torch.log(p_wrong)


@REGISTRY.register("weighted-majority-vote")
class WeightedMajorityVote(AggregatorBase):
    r"""Weighted majority vote with weights learned from agreement (sign decoding):

    .. math:: v_j = \mathrm{sign}\Big(\sum_i w_i\, \mathrm{sign}(m_{ij})\Big), \qquad
              w_i = \log \frac{1 - \hat p_i}{\hat p_i},

    :math:`\hat p_i` the estimated probability that worker :math:`i`'s sign is wrong (the
    cross-over probability of its binary symmetric channel): the fraction of past
    coordinates on which its (nonzero) sign disagreed with the decoded sign, with Laplace's
    smoothing and counts discounted by ``memory`` per step. Each call first decodes with the
    current weights (plain majority vote at the first call), counts every worker's
    agreement with that decoding, updates the weights and decodes again. A worker that
    mostly disagrees gets a *negative* weight: its inverted signs are used, not discarded.

    Park & Lee, "SignSGD with Federated Defense: Harnessing Adversarial Attacks through
    Gradient Sign Decoding", ICML 2024 (signSGD-FD). Zeros and NaN abstain
    (:func:`ternary_votes`). Explicit state: ``state = (agree, total)`` per worker row,
    None at the start (:meth:`apply`); a call ``vote(m)`` starts from it.

    Example:
        >>> vote = WeightedMajorityVote()
        >>> m = torch.tensor([[1., 1., 1., -1.], [1., 1., 1., -1.], [-1., -1., -1., 1.]])
        >>> vote(m)
        tensor([ 1.,  1.,  1., -1.])
    """

    capabilities = AggregatorCapabilities(reads_signs=True, returns_signs=True,
                                          stateful=True)

    def __init__(self, memory: float = 1.0) -> None:
        memory = to_float(memory, "memory", "weighted-majority-vote")
        if not 0.0 < memory <= 1.0:
            raise ValueError(f"weighted-majority-vote: memory must be in (0, 1], got {memory}")
        self.memory = memory

    def apply(self, messages: Tensor, state: tuple[Tensor, Tensor] | None
              ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        votes = ternary_votes(messages)
        n = votes.shape[0]
        if state is None or state[0].shape[0] != n:
            state = (torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
        agree, total = state
        weights = llr_weights(agree, total)
        if not bool((weights != 0).any()):
            weights = torch.ones(n, dtype=torch.float64)
        decoded = torch.sign(weights.to(votes.dtype) @ votes)
        # per worker: (agreements - disagreements) and (agreements + disagreements), as two
        # matrix-vector products: votes and decoded signs are in {-1, 0, +1}
        margin = (votes @ decoded).double()
        counted = (votes.abs() @ decoded.abs()).double()
        agree = self.memory * agree + (counted + margin) / 2
        total = self.memory * total + counted
        return torch.sign(llr_weights(agree, total).to(votes.dtype) @ votes), (agree, total)
