"""Data-level attacks: they change a Byzantine worker's batch before its gradient."""

from __future__ import annotations

from torch import Tensor

from signvote.attacks import REGISTRY, AttackContext
from signvote.contracts import AttackBase, AttackCapabilities


@REGISTRY.register("label-flip")
class LabelFlip(AttackBase):
    r"""Label flipping: each Byzantine worker trains on its own batch with every label
    :math:`y \in \{0, \dots, C-1\}` replaced by :math:`C - 1 - y` (for regression targets,
    :math:`y \mapsto -y`), then sends what its worker rule makes of that honest-looking
    gradient. Biggio, Nelson & Laskov, "Poisoning Attacks against Support Vector Machines",
    ICML 2012; the label-flipping worker of Allen-Zhu et al., ICLR 2021 and of ByzFL.

    An engine calls :meth:`poison_targets` on the batch; on messages the attack is the
    identity. knowledge: blind (its own data).
    """

    capabilities = AttackCapabilities(knowledge="blind", data_level=True)

    def poison_targets(self, targets: Tensor, byzantine_mask: Tensor,
                       n_classes: int | None) -> Tensor:
        """``targets[n, b]`` with the Byzantine workers' rows flipped (a new tensor)."""
        flipped = -targets if n_classes is None else n_classes - 1 - targets
        mask = byzantine_mask.view(-1, *([1] * (targets.dim() - 1)))
        return targets.where(~mask, flipped)

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        return messages
