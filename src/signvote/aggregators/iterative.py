"""Robust aggregators defined by an iteration: geometric median, centered clipping, CAF.

Each iterate is a combination of the messages, ``z = sum_i w_i x_i (+ c v0)``, so the
iterations run on the weights ``w`` with distances from the Gram matrix (``[n, n]`` work per
iteration); the ``[d]`` result is formed once at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.aggregators import REGISTRY
from signvote.aggregators.base import RobustAggregator, combine, gram
from signvote.contracts import AggregatorCapabilities
from signvote.registry import to_finite, to_int, to_positive

WEISZFELD_STARTS = ("mean", "zero")
"""Where the Weiszfeld iteration of ``geometric-median`` starts (its ``start``)."""


def weiszfeld_weights(g: Tensor, nu: float, tol: float, iterations: int,
                      start: str = "mean") -> Tensor:
    r"""The weights ``w[n]`` (summing to 1) of the smoothed Weiszfeld iterate ``z = X^T w``
    from the Gram matrix ``g``, starting at the mean (``start="mean"``, ``w = 1/n``) or at
    the origin (``start="zero"``, ``w = 0``); stops when a step moves ``z`` by at most
    ``tol * max(||z||, nu)`` or after ``iterations`` steps (``tol = 0``: all of them, but
    for a step that moves nothing, after which every step would be the same)."""
    n = g.shape[0]
    sq = g.diagonal()
    w = g.new_full((n,), 1.0 / n) if start == "mean" else g.new_zeros(n)
    for _ in range(iterations):
        gw = g @ w
        dist = (sq - 2 * gw + w @ gw).clamp(min=0).sqrt()
        beta = 1.0 / dist.clamp(min=nu)
        new = beta / beta.sum()
        step = new - w
        moved = float((step @ g @ step).clamp(min=0).sqrt())
        size = float((new @ g @ new).clamp(min=0).sqrt())
        w = new
        if moved <= tol * max(size, nu):
            break
    return w


@REGISTRY.register("geometric-median")
class GeometricMedian(RobustAggregator):
    r"""Geometric median, by the smoothed Weiszfeld iteration:

    .. math:: v = \arg\min_z \sum_i \|z - x_i\|, \qquad
              z_{t+1} = \frac{\sum_i \beta_i x_i}{\sum_i \beta_i}, \quad
              \beta_i = \frac{1}{\max(\nu, \|z_t - x_i\|)},

    from :math:`z_0` = the mean (``start="mean"``) or :math:`z_0 = 0` (``start="zero"``),
    until :math:`\|z_{t+1} - z_t\| \le` ``tol`` :math:`\cdot \max(\|z_{t+1}\|, \nu)` or
    ``iterations`` steps (``tol=0``: exactly ``iterations`` steps, as a fixed :math:`T`).

    ``geometric-median(iterations=8, nu=0.1, tol=0, start=zero)`` is the RFA of Karimireddy,
    He & Jaggi's bucketing code (``codes/aggregator/rfa.py``: ``smoothed_weiszfeld`` with
    :math:`T = 8`, :math:`\nu = 0.1`, :math:`z_0 = 0`, equal weights), and with
    ``iterations=3`` ByzFL's ``GeometricMedian`` of its benchmark (:math:`T = 3`,
    :math:`\nu = 0.1`, :math:`z_0 = 0`). Weiszfeld, "Sur le point pour lequel
    la somme des distances de n points donnés est minimum", Tôhoku Math. J. 1937; Pillutla,
    Kakade & Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022 (RFA).
    Breakdown point 1/2: needs :math:`n > 2f` (``f`` only sets that check).

    Example:
        >>> GeometricMedian()(torch.tensor([[0., 0.], [1., 0.], [0., 1.], [100., 100.]]))
        tensor([0.5000, 0.5000])
    """

    name = "geometric-median"
    uses_gram = True

    def __init__(self, f: int = 0, nu: float = 1e-6, tol: float = 1e-7,
                 iterations: int = 200, start: str = "mean") -> None:
        super().__init__(f)
        self.nu = to_positive(nu, "nu", self.name)
        self.tol = to_finite(tol, "tol", self.name, minimum=0)
        self.iterations = to_int(iterations, "iterations", self.name, minimum=1)
        if start not in WEISZFELD_STARTS:
            raise ValueError(f"{self.name}: unknown start {start!r}; valid: "
                             f"{', '.join(WEISZFELD_STARTS)}")
        self.start = start

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        w = weiszfeld_weights(g, self.nu, self.tol, self.iterations, self.start)
        return combine(w, messages)


def centered_clipping_weights(g: Tensor, tau: float, iterations: int) -> tuple[float, Tensor]:
    """``(c, w)`` with the centered-clipping iterate ``v = c v0 + X^T w`` (``= v0 + Y^T w``,
    since ``c + sum(w) = 1``) after ``iterations`` steps, from the Gram ``g`` of the rows
    ``y_i = x_i - v0`` shifted to the start, where ``v0`` is the origin:
    ``||x_i - v||^2 = g_ii - 2 (g w)_i + w^T g w``."""
    n = g.shape[0]
    sq = g.diagonal()
    c, w = 1.0, g.new_zeros(n)
    for _ in range(iterations):
        gw = g @ w
        dist = (sq - 2 * gw + w @ gw).clamp(min=0).sqrt()
        scale = torch.where(dist > tau, tau / dist, torch.ones_like(dist))
        c, w = c * (1 - float(scale.sum()) / n), w * (1 - scale.sum() / n) + scale / n
    return c, w


def centered_clipping(messages: Tensor, v0: Tensor, tau: float, iterations: int) -> Tensor:
    """The centered-clipping iterate ``v_L`` ``[d]`` from ``v0`` (:class:`CenteredClipping`).

    The distances are those of the rows shifted to ``v0``: ``v_l = c v0 + X^T w`` with
    ``c + sum(w) = 1``, so ``x_i - v_l = (x_i - v0) - sum_j w_j (x_j - v0)`` and the Gram
    matrix of ``x_i - v0`` (:func:`~signvote.aggregators.base.gram`, accurate even when the
    rows and ``v0`` share a large common part) gives every iteration; ``v0 = 0`` is the Gram
    of the rows themselves. One iteration needs no Gram: the norms ``||x_i - v0||``
    (``v0 = 0``: of the rows), then one ``[n] @ [n, d]`` product.
    """
    n = messages.shape[0]
    v0 = v0.to(messages.dtype)
    zero = not bool(v0.any())
    if iterations == 1:
        if zero:
            dist = torch.linalg.vector_norm(messages, dim=1)
        else:
            dist = torch.cdist(messages, v0.unsqueeze(0),
                               compute_mode="donot_use_mm_for_euclid_dist").squeeze(1)
        dist = dist.double()
        scale = torch.where(dist > tau, tau / dist, torch.ones_like(dist))
        v = combine(scale / n, messages)
        return v if zero else v + (1 - float(scale.sum()) / n) * v0
    g = gram(messages, None if zero else v0)
    c, w = centered_clipping_weights(g, tau, iterations)
    v = combine(w, messages)
    return v if zero else v + c * v0


@REGISTRY.register("centered-clipping")
class CenteredClipping(RobustAggregator):
    r"""Centered clipping: from the previous aggregate :math:`v_0` (zero at first), repeat
    ``iterations`` (:math:`L`) times

    .. math:: v_{l+1} = v_l + \frac{1}{n} \sum_i (x_i - v_l)
              \min\!\Big(1, \frac{\tau}{\|x_i - v_l\|}\Big),

    and return :math:`v_L`, which becomes the next call's :math:`v_0` (explicit state:
    ``state`` in :meth:`apply`; a call ``agg(m)`` starts from zero). Karimireddy, He & Jaggi,
    "Learning from History for Byzantine Robust Optimization", ICML 2021. Needs
    :math:`n > 2f` (``f`` only sets that check).

    Example:
        >>> CenteredClipping(tau=1.0, iterations=1)(torch.tensor([[3., 0.], [0., 0.5]]))
        tensor([0.5000, 0.2500])
    """

    name = "centered-clipping"
    uses_gram = False  # its distances are to v0: centered_clipping forms its own Gram
    capabilities = AggregatorCapabilities(stateful=True)

    def __init__(self, f: int = 0, tau: float = 10.0, iterations: int = 3) -> None:
        super().__init__(f)
        self.tau = to_positive(tau, "tau", self.name)
        self.iterations = to_int(iterations, "iterations", self.name, minimum=1)

    def aggregate_state(self, messages: Tensor, f: int, g: Tensor | None,
                        state: Tensor | None) -> tuple[Tensor, Tensor]:
        v0 = state
        if v0 is None or v0.shape != messages.shape[1:]:
            v0 = messages.new_zeros(messages.shape[1])
        v = centered_clipping(messages, v0, self.tau, self.iterations)
        return v, v


def caf_weights(g: Tensor, f: int) -> Tensor:
    r"""CAF's weights ``w[n]`` (summing to 1), from the Gram matrix ``g``.

    With weights :math:`c` and :math:`w = c / \sum c`, the weighted covariance of the rows
    shares its nonzero eigenpairs with :math:`K = D^{1/2} G_c D^{1/2}`, :math:`D =
    \mathrm{diag}(w)`, :math:`G_c` the Gram matrix of the centred rows :math:`x_i - \mu_c`:
    the top eigenvector :math:`u` of :math:`K` gives the covariance's top eigenvector
    :math:`e \propto \sum_i \sqrt{w_i} u_i (x_i - \mu_c)` and the projections
    :math:`\langle e, x_j - \mu_c \rangle = (G_c D^{1/2} u)_j / \sqrt{\lambda}`.
    """
    n = g.shape[0]
    c = g.new_ones(n)
    ones = g.new_ones(n)
    best_w, best_eig = c / n, float("inf")
    while float(c.sum()) > n - 2 * f:
        w = c / c.sum()
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        centre = eye - torch.outer(ones, w)  # rows: e_i - w
        g_c = centre @ g @ centre.T
        root = w.sqrt()
        eigenvalues, eigenvectors = torch.linalg.eigh(root.unsqueeze(1) * g_c * root)
        top, u = float(eigenvalues[-1]), eigenvectors[:, -1]
        if top < best_eig:
            best_eig, best_w = top, w
        if top <= 0:
            break
        tau = (g_c @ (root * u)) ** 2 / top
        c = (c * (1 - tau / tau[c > 0].max())).clamp(min=0)
    return best_w


@REGISTRY.register("caf")
class CAF(RobustAggregator):
    r"""Covariance-bound agnostic filter: start with weights :math:`c_i = 1`; while
    :math:`\sum_i c_i > n - 2f`, take the weighted mean :math:`\mu_c`, the top eigenpair
    :math:`(\lambda, e)` of the weighted covariance :math:`\sum_i c_i (x_i - \mu_c)(x_i -
    \mu_c)^T / \sum_i c_i`, and shrink :math:`c_i \leftarrow c_i (1 - \tau_i / \max_j
    \tau_j)` with :math:`\tau_i = \langle e, x_i - \mu_c \rangle^2`; return the
    :math:`\mu_c` of the smallest :math:`\lambda` seen. The maximum runs over the rows
    still weighted (:math:`c_j > 0`): a row already filtered out keeps a large
    :math:`\tau` and, counted in the maximum, would stall the filter (ByzFL counts it).

    Allouah, Guerraoui & Stephan, "Towards Trustworthy Federated Learning with Untrusted
    Participants", ICML 2025. The eigenpair is exact (:func:`caf_weights`, an ``[n, n]``
    eigenproblem), where ByzFL takes one power iteration from a random start. Needs
    :math:`n > 2f`.

    Example:
        >>> CAF(f=1)(torch.tensor([[0., 0.], [1., 0.], [0., 1.], [1., 1.], [50., -50.]])).round(
        ...     decimals=2)
        tensor([0.5000, 0.5000])
    """

    name = "caf"
    uses_gram = True

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        if f == 0:
            return messages.mean(dim=0)
        return combine(caf_weights(g, f), messages)

