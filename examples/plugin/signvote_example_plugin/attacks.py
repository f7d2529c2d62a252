"""An omniscient attack with a parameter."""

from __future__ import annotations

from torch import Tensor

from signvote.contracts import AttackBase, AttackCapabilities


class MeanInversion(AttackBase):
    r"""Every Byzantine worker sends the inverted, scaled mean of the honest messages,

    .. math:: m'_b = -s \, \frac{1}{|H|} \sum_{i \in H} m_i,

    :math:`H` the workers outside ``byzantine_mask`` (the "inner product manipulation" of
    Xie, Koyejo & Gupta, UAI 2019, with :math:`\epsilon = s`). It reads every row:
    omniscient. The honest rows are left as they are; the input is not changed.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __init__(self, s: float = 1.0) -> None:
        self.s = float(s)

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx) -> Tensor:
        out = messages.clone()
        honest = messages[~byzantine_mask]
        if honest.shape[0] and bool(byzantine_mask.any()):
            out[byzantine_mask] = -self.s * honest.mean(dim=0)
        return out
