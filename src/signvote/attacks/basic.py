"""The paper's adversaries (blind inversion, vote cancelling) and simple faults."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from signvote.attacks import REGISTRY, AttackContext
from signvote.contracts import AttackBase, AttackCapabilities
from signvote.registry import to_finite


def replace_rows(messages: Tensor, mask: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``messages`` with the rows where ``mask`` is True set to ``rows``.

    ``rows`` broadcasts against ``messages[mask]`` (shape ``[f, d]``; a ``[d]`` row is
    given to every masked worker); a 0-dim ``rows`` made on the CPU is moved to the
    messages' device.
    """
    out = messages.clone()
    out[mask] = rows.to(device=messages.device, dtype=messages.dtype)
    return out


@REGISTRY.register("none")
class NoAttack(AttackBase):
    """No attack: the messages pass unchanged (``M' = M``). knowledge: none."""

    capabilities = AttackCapabilities(knowledge="none")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        return messages


@REGISTRY.register("blind-inversion")
class BlindInversion(AttackBase):
    r"""Blind inversion: each adversary sends the opposite of its own message,
    :math:`m'_i = -m_i` (for sign rules, the inverted sign of its gradient or momentum).

    The blind adversary of Bernstein et al., ICLR 2019 (Section 4) and of Akoun & Meyer,
    "SignSGD: Fault-Tolerance to Blind and Byzantine Adversaries", 2022 (the seed's
    ``--blind-inv``). knowledge: blind (reads only its own rows).
    """

    capabilities = AttackCapabilities(knowledge="blind")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        return replace_rows(messages, byzantine_mask, -messages[byzantine_mask])


def cancelling_votes(honest_sum: Tensor, f: int) -> Tensor:
    r"""The coalition's votes ``[f, d]`` against the honest vote sums ``S[d]``.

    With :math:`a = |S|` and :math:`\sigma = -1` where :math:`S > 0`, :math:`+1` where
    :math:`S \le 0`, Byzantine worker :math:`k \in \{0, \dots, f-1\}` votes

    .. math:: b_k = \sigma \text{ if } k < a \text{ or } (k - a) \text{ is even}, \quad
              b_k = -\sigma \text{ otherwise.}

    So where :math:`|S| > f` all vote :math:`-\mathrm{sign}(S)`; where :math:`0 \le S \le f`,
    :math:`S` of them vote :math:`-1` to cancel the honest sum and the rest alternate
    :math:`-1, +1, -1, \dots` (mirror image for :math:`-f \le S \le 0`). The coalition's
    total is :math:`-S - ((f - S) \bmod 2)` for :math:`0 < S \le f` and
    :math:`-S + ((f + S) \bmod 2)` for :math:`-f \le S \le 0`, as in the seed code, which
    applies the mirror rule last, so at :math:`S = 0` (possible only with zeros among the
    honest signs, or an even number of honest workers) the total is :math:`f \bmod 2`.
    """
    # [f + 1, f]: the votes, in units of sigma, for |S| = 0..f
    table = _cancelling_table(f).to(honest_sum.device)
    magnitude = honest_sum.abs().clamp(max=f).long()
    against = torch.where(honest_sum > 0, -1.0, 1.0)
    return (table[magnitude] * against.unsqueeze(1)).T


@functools.cache
def _cancelling_table(f: int) -> Tensor:
    """``T[a, k] = +1 if k < a or (k - a) is even, else -1`` for ``a = 0..f``, ``k < f``.

    (Cached and read-only; for ``|S| > f`` the row ``a = f`` is all +1, as it must be.)"""
    a = torch.arange(f + 1).unsqueeze(1)
    k = torch.arange(f).unsqueeze(0)
    return torch.where((k < a) | ((k - a) % 2 == 0), 1.0, -1.0)


@REGISTRY.register("vote-cancel")
class VoteCancel(AttackBase):
    r"""The paper's omniscient, colluding Byzantine strategy (Akoun & Meyer 2022, Sec. 3).

    On sign messages, with :math:`f` Byzantine workers and the honest vote sum
    :math:`S_j = \sum_{i \notin B} \mathrm{sign}(m_{ij})` (the non-Byzantine rows, blind
    adversaries included), the coalition votes :func:`cancelling_votes`: against the
    majority where it cannot be reached, and to drive it to zero or flip it where
    :math:`|S_j| \le f`.

    On real-valued messages (distributed SGD), the first Byzantine worker sends the negated
    sum of all other rows, :math:`m'_{b} = -\sum_{i \ne b} m_i`, so that the sum (and the
    mean) of the messages is exactly zero; the other Byzantine workers send their own
    messages, as in the seed's DistSGD. knowledge: omniscient.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        f = int(byzantine_mask.sum())
        if f == 0:
            return messages
        if ctx.sign_messages:
            honest = messages[~byzantine_mask]
            honest_sum = torch.sign(honest).sum(dim=0)
            return replace_rows(messages, byzantine_mask, cancelling_votes(honest_sum, f))
        first = int(torch.nonzero(byzantine_mask)[0])
        others = torch.ones_like(byzantine_mask)
        others[first] = False
        out = messages.clone()
        out[first] = -messages[others].sum(dim=0)
        return out


@REGISTRY.register("random-sign")
class RandomSign(AttackBase):
    r"""Random signs: each adversary sends :math:`m'_{ij} = s \cdot \epsilon_{ij}` with
    :math:`\epsilon_{ij}` uniform on :math:`\{-1, +1\}` (a faulty worker whose bits are noise;
    Bernstein et al., ICLR 2019, Sec. 4). knowledge: blind.

    Args:
        scale: the magnitude :math:`s` (1 for sign rules).
    """

    capabilities = AttackCapabilities(knowledge="blind")

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = to_finite(scale, "scale", "random-sign")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        f, d = int(byzantine_mask.sum()), messages.shape[1]
        bits = torch.randint(0, 2, (f, d), generator=ctx.generator, dtype=messages.dtype,
                             device=messages.device)
        return replace_rows(messages, byzantine_mask, (2 * bits - 1) * self.scale)


@REGISTRY.register("gaussian")
class Gaussian(AttackBase):
    r"""Gaussian noise: each adversary sends :math:`m'_i \sim \mathcal{N}(\mu, \sigma^2 I_d)`
    (the Gaussian Byzantine worker of Blanchard et al., "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017). knowledge: blind.

    Args:
        mean: :math:`\mu`.
        std: :math:`\sigma`.
    """

    capabilities = AttackCapabilities(knowledge="blind")

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean = to_finite(mean, "mean", "gaussian")
        self.std = to_finite(std, "std", "gaussian", minimum=0)

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        f, d = int(byzantine_mask.sum()), messages.shape[1]
        noise = torch.randn((f, d), generator=ctx.generator, dtype=messages.dtype,
                            device=messages.device)
        return replace_rows(messages, byzantine_mask, noise * self.std + self.mean)


@REGISTRY.register("crash")
class Crash(AttackBase):
    """A crashed worker: it sends nothing, read as zeros (``m'_i = 0``, an abstention in a
    vote). knowledge: none."""

    capabilities = AttackCapabilities(knowledge="none")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        return replace_rows(messages, byzantine_mask, torch.zeros(()))


@REGISTRY.register("nan")
class NotANumber(AttackBase):
    """A faulty worker that sends NaN in every coordinate (``m'_i = NaN``). knowledge: none."""

    capabilities = AttackCapabilities(knowledge="none")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        return replace_rows(messages, byzantine_mask, torch.tensor(float("nan")))


@REGISTRY.register("inf")
class Infinity(AttackBase):
    """A faulty worker that sends an infinity in every coordinate (``m'_i = sign * inf``).
    knowledge: none.

    Args:
        sign: +1 or -1, the sign of the infinity.
    """

    capabilities = AttackCapabilities(knowledge="none")

    def __init__(self, sign: float = 1.0) -> None:
        if sign not in (1, -1):
            raise ValueError(f"inf attack: sign must be +1 or -1, got {sign}")
        self.sign = float(sign)

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        return replace_rows(messages, byzantine_mask, torch.tensor(self.sign * float("inf")))
