"""Omniscient model-poisoning attacks of the robust-aggregation literature.

Each reads the other workers' messages of this step, :math:`h_1, \\dots, h_{n-f}` (the rows
outside ``byzantine_mask``; blind adversaries included, as the paper's Byzantine server sees
them), with mean :math:`\\mu` and coordinate-wise standard deviation :math:`\\sigma`, and
sends the same row from every Byzantine worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor

from signvote import aggregators
from signvote.aggregators.base import gram, squared_distances
from signvote.attacks import REGISTRY, AttackContext
from signvote.attacks.basic import replace_rows
from signvote.contracts import AttackBase, AttackCapabilities
from signvote.registry import to_finite, to_float, to_int


def honest_rows(messages: Tensor, byzantine_mask: Tensor) -> Tensor:
    """The rows ``[n - f, d]`` not in ``byzantine_mask``."""
    return messages[~byzantine_mask]


@REGISTRY.register("sign-flip")
class SignFlip(AttackBase):
    r"""Sign flipping: every Byzantine worker sends minus the honest mean, :math:`m_b =
    -\mu`. Allen-Zhu, Ebrahimianghazani, Li & Alistarh, "Byzantine-Resilient Non-Convex
    Stochastic Gradient Descent", ICLR 2021. knowledge: omniscient.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        if not bool(byzantine_mask.any()):
            return messages
        return replace_rows(messages, byzantine_mask,
                            -honest_rows(messages, byzantine_mask).mean(dim=0))


ALIE_QUANTILES = ("workers", "honest")
"""Over whom ALIE's :math:`z` quantile is taken (:func:`alie_z`'s ``quantile``)."""


def alie_z(n: int, f: int, quantile: str = "workers") -> float:
    r"""ALIE's :math:`z_{\max}`: with :math:`s = \lfloor n/2 + 1 \rfloor - f` the honest
    workers the attackers need on their side (at least 1),

    * ``quantile="workers"``: :math:`z = \Phi^{-1}((n - s) / n)`, Baruch, Baruch & Goldberg,
      "A Little Is Enough", NeurIPS 2019, Algorithm 3;
    * ``quantile="honest"``: :math:`z = \Phi^{-1}((n - f - s) / (n - f))`, the fraction
      over the :math:`n - f` honest workers, as Karimireddy, He & Jaggi's bucketing code
      computes it (``codes/attacks/alittle.py``; for :math:`n = 25, f = 5`:
      :math:`\Phi^{-1}(0.6) = 0.2533` where Algorithm 3 gives :math:`\Phi^{-1}(0.68) =
      0.4677`).
    """
    if quantile not in ALIE_QUANTILES:
        raise ValueError(f"alie: unknown quantile {quantile!r}; valid: "
                         f"{', '.join(ALIE_QUANTILES)}")
    s = max(n // 2 + 1 - f, 1)
    p = (n - f - s) / (n - f) if quantile == "honest" and n > f else (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(f"alie: no z for n={n} workers, f={f} ({quantile}: the quantile "
                         f"{p:g} is outside (0, 1)); give z, e.g. alie(z=1)")
    return NormalDist().inv_cdf(p)


def alie_row(honest: Tensor, z: float) -> Tensor:
    """``mu - z * sigma`` of the honest rows (sigma unbiased; 0 for a single row)."""
    mean = honest.mean(dim=0)
    if honest.shape[0] < 2:
        return mean
    return mean - z * honest.std(dim=0)


@REGISTRY.register("alie")
class ALIE(AttackBase):
    r"""A little is enough: every Byzantine worker sends :math:`m_b = \mu - z\,\sigma`,
    a shift small enough per coordinate to pass for honest yet consistent across all of
    them. ``z`` defaults to :func:`alie_z` (``n`` workers, ``f`` Byzantine) with its
    ``quantile``: ``workers`` (Baruch et al.'s Algorithm 3) or ``honest`` (Karimireddy, He &
    Jaggi's code: ``alie(quantile=honest)`` is their ALIE). Baruch, Baruch
    & Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed Learning",
    NeurIPS 2019. knowledge: omniscient.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __init__(self, z: float | None = None, quantile: str = "workers") -> None:
        self.z = None if z is None else to_finite(z, "z", "alie")
        alie_z(3, 1, quantile)  # refuses an unknown quantile
        self.quantile = quantile

    def check(self, workers: int, byzantine: int) -> None:
        """Raise ValueError when ``z`` is not given and :func:`alie_z` has none."""
        if self.z is None and byzantine > 0:
            alie_z(workers, byzantine, self.quantile)

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        f = int(byzantine_mask.sum())
        if f == 0:
            return messages
        z = alie_z(messages.shape[0], f, self.quantile) if self.z is None else self.z
        return replace_rows(messages, byzantine_mask,
                            alie_row(honest_rows(messages, byzantine_mask), z))


@REGISTRY.register("ipm")
class IPM(AttackBase):
    r"""Inner product manipulation: every Byzantine worker sends :math:`m_b = -\epsilon\,\mu`.
    The mean of all messages is then :math:`\frac{(n - f) - f\epsilon}{n}\mu`, whose inner
    product with :math:`\mu` is negative when :math:`f\epsilon > n - f` (with the default
    :math:`\epsilon = 2`, from 4 Byzantine workers of 10); robust aggregators that keep
    vectors near the honest ones are the target of small :math:`\epsilon` (Karimireddy, He &
    Jaggi's benchmark: ``ipm(epsilon=0.1)``). Xie, Koyejo &
    Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation", UAI 2019. knowledge: omniscient.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __init__(self, epsilon: float = 2.0) -> None:
        self.epsilon = to_finite(epsilon, "epsilon", "ipm")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        if not bool(byzantine_mask.any()):
            return messages
        return replace_rows(messages, byzantine_mask,
                            -self.epsilon * honest_rows(messages, byzantine_mask).mean(dim=0))


@REGISTRY.register("mimic")
class Mimic(AttackBase):
    r"""Mimic: every Byzantine worker copies one honest worker's message, :math:`m_b =
    h_t`, over-representing that worker's data (harmful under heterogeneity). Karimireddy,
    He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR
    2022 (Section 4 and their code's ``MimicVariantAttacker``). knowledge: omniscient.

    With ``warmup = 0`` the target is fixed: ``target``, a position among the honest rows.
    With ``warmup`` :math:`= T_0 \ge 1` the target is chosen as their code chooses it. At
    step 0, with :math:`\bar h` the honest mean and :math:`\zeta` a standard normal vector
    drawn from a generator seeded with ``seed`` (on the CPU, as their ``torch.Generator``
    seeded 0), :math:`\mu_0 = \bar h` and

    .. math:: z_0 = \frac{c}{\|c\|}, \quad c = \sum_i \langle h_i - \mu_0, \zeta \rangle
              (h_i - \mu_0);

    at steps :math:`0 < t < T_0`, :math:`\mu_t = \frac{t}{t+1} \mu_{t-1} + \frac{1}{t+1}
    \bar h`, :math:`c` as above with :math:`\mu_t, z_{t-1}` in place of :math:`\mu_0,
    \zeta`, and :math:`z_t \propto \frac{t}{t+1} z_{t-1} + \frac{1}{t+1} c / \|c\|`
    (unit norm). At every step :math:`t < T_0` the target is :math:`\arg\max_i \langle
    h_i, z_t \rangle` (the first on a tie); from :math:`T_0` on it stays the last one
    chosen. Their experiments use :math:`T_0 = 1` (``--mimic-warmup`` default): one power
    step at step 0 picks the target for the whole run, ``mimic(warmup=1)``.

    The warm-up's :math:`(\mu, z)` and the target are kept on the attack object between
    steps (a step-0 call starts afresh); a run resumed from a checkpoint after the warm-up
    has lost them and re-runs the warm-up from the step it resumes at.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __init__(self, target: int = 0, warmup: int = 0, seed: int = 0) -> None:
        self.target = to_int(target, "target", "mimic", minimum=0)
        self.warmup = to_int(warmup, "warmup", "mimic", minimum=0)
        self.seed = to_int(seed, "seed", "mimic", minimum=0)
        if self.seed >= 2**63:
            raise ValueError(f"mimic: seed must be a whole number >= 0 and < 2**63, got {seed}")
        if self.warmup and self.target:
            raise ValueError(f"mimic: target={self.target} and warmup={self.warmup} "
                             f"exclude each other (warmup chooses the target); valid: "
                             f"mimic(target=i) or mimic(warmup=k)")
        self._mu: Tensor | None = None
        self._z: Tensor | None = None
        self._chosen: int | None = None
        self._t = 0

    def check(self, workers: int, byzantine: int) -> None:
        """Raise ValueError unless ``target`` names one of the ``workers - byzantine``."""
        honest = workers - byzantine
        if self.target >= honest:
            raise ValueError(f"mimic: target {self.target} but only {honest} honest workers; "
                             f"valid: 0 to {honest - 1}")

    def choose(self, honest: Tensor, step: int) -> int:
        """The target (a position among the honest rows ``honest[n - f, d]``) at ``step``."""
        if not self.warmup:
            return self.target
        if step == 0 or self._chosen is None:  # a fresh run (or a resumed one): start over
            self._t = 0
        if self._t >= self.warmup:
            return self._chosen
        mean = honest.mean(dim=0)
        if self._t == 0:
            self._mu = mean
            generator = torch.Generator().manual_seed(self.seed)
            direction = torch.randn(honest.shape[1], generator=generator)  # fp32, as theirs
            self._z = _power_step(honest, self._mu, direction.to(honest))
        else:
            t = self._t
            self._mu = t / (1 + t) * self._mu + mean / (1 + t)
            z = t / (1 + t) * self._z + _power_step(honest, self._mu, self._z) / (1 + t)
            self._z = z / torch.linalg.vector_norm(z)
        self._chosen = int(torch.argmax(honest @ self._z))
        self._t += 1
        return self._chosen

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        if not bool(byzantine_mask.any()):
            return messages
        self.check(messages.shape[0], int(byzantine_mask.sum()))
        honest = honest_rows(messages, byzantine_mask)
        return replace_rows(messages, byzantine_mask, honest[self.choose(honest, ctx.step)])


def _power_step(honest: Tensor, mu: Tensor, z: Tensor) -> Tensor:
    r""":math:`c / \|c\|` with :math:`c = \sum_i \langle h_i - \mu, z \rangle (h_i - \mu)`:
    one power-iteration step of the honest rows' scatter matrix on ``z``."""
    centred = honest - mu
    c = (centred @ z) @ centred
    size = torch.linalg.vector_norm(c)
    return c / size if bool(size > 0) else z  # all honest rows alike: keep the direction


DIRECTIONS = ("std", "unit", "sign")


def perturbation(honest: Tensor, direction: str) -> Tensor:
    """The perturbation direction of Shejwalkar & Houmansadr: ``-sigma`` (std), ``-mu /
    ||mu||`` (unit) or ``-sign(mu)`` (sign)."""
    mean = honest.mean(dim=0)
    if direction == "std":
        return -honest.std(dim=0) if honest.shape[0] > 1 else torch.zeros_like(mean)
    if direction == "unit":
        norm = torch.linalg.vector_norm(mean)
        return -mean / norm if norm > 0 else torch.zeros_like(mean)
    return -torch.sign(mean)


def largest_gamma(honest: Tensor, p: Tensor, objective: str) -> float:
    r"""The largest :math:`\gamma \ge 0` for which :math:`m = \mu + \gamma p` meets the
    min-max (``max_i ||m - h_i|| <= max_{i,j} ||h_i - h_j||``) or min-sum (``sum_i ||m -
    h_i||^2 <= max_i sum_j ||h_i - h_j||^2``) condition, solved in closed form: each
    side is a quadratic in :math:`\gamma`."""
    h = honest.double()
    a = float(p.double() @ p.double())
    if a == 0.0:
        return 0.0
    dist = squared_distances(gram(h))
    mean = h.mean(dim=0)
    centred = mean.unsqueeze(0) - h                       # mu - h_i
    b = centred @ p.double()                              # <mu - h_i, p>
    c = (centred * centred).sum(dim=1)                    # ||mu - h_i||^2
    if objective == "min-max":
        bound = float(dist.max())
        roots = (-b + (b * b - a * (c - bound)).clamp(min=0).sqrt()) / a
        return max(float(roots.min()), 0.0)
    bound = float(dist.sum(dim=1).max())
    return math.sqrt(max(bound - float(c.sum()), 0.0) / (h.shape[0] * a))  # sum_i b_i = 0


class _MinDistance(AttackBase):
    capabilities = AttackCapabilities(knowledge="omniscient")
    objective = ""

    def __init__(self, direction: str = "std") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"{self.objective}: unknown direction {direction!r}; valid: "
                             f"{', '.join(DIRECTIONS)}")
        self.direction = direction

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        if not bool(byzantine_mask.any()):
            return messages
        honest = honest_rows(messages, byzantine_mask)
        p = perturbation(honest, self.direction)
        gamma = largest_gamma(honest, p, self.objective)
        return replace_rows(messages, byzantine_mask, honest.mean(dim=0) + gamma * p)


@REGISTRY.register("min-max")
class MinMax(_MinDistance):
    r"""Min-max: every Byzantine worker sends :math:`m = \mu + \gamma p` with the largest
    :math:`\gamma` such that :math:`\max_i \|m - h_i\| \le \max_{i,j} \|h_i - h_j\|` (no
    farther from any honest message than the honest ones are from each other); ``direction``
    :math:`p`: ``std`` (:math:`-\sigma`, default), ``unit`` or ``sign``. Shejwalkar &
    Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses
    for Federated Learning", NDSS 2021 (their binary search for :math:`\gamma`, solved here
    exactly by :func:`largest_gamma`). knowledge: omniscient.
    """

    objective = "min-max"


@REGISTRY.register("min-sum")
class MinSum(_MinDistance):
    r"""Min-sum: as :class:`MinMax` with the condition :math:`\sum_i \|m - h_i\|^2 \le
    \max_i \sum_j \|h_i - h_j\|^2`. Shejwalkar & Houmansadr, NDSS 2021.
    knowledge: omniscient.
    """

    objective = "min-sum"


SEARCHES = ("two-sided", "forward")
"""The contraction phases of :func:`line_search` (the optimal attacks' ``search``)."""


def line_search(objective: Callable[[float], float], start: float, delta: float, evals: int,
                ratio: float, search: str = "two-sided") -> float:
    """The expansion-contraction search of ByzFL's optimal attacks for the ``x`` that
    maximises ``objective``: from ``start``, step by ``delta`` and double it while the
    objective grows; then shrink the step by ``ratio`` for the rest of the ``evals``
    evaluations, keeping any better point. ``search="forward"`` is ByzFL's contraction
    (``attacks.py``, ``_contraction_phase``): one evaluation a round, at ``best + delta``.
    ``"two-sided"`` (the default) tries ``best + delta`` and ``best - delta``, so an
    overshoot is undone. Both spend exactly ``evals`` evaluations."""
    if search not in SEARCHES:
        raise ValueError(f"line search: unknown search {search!r}; valid: {', '.join(SEARCHES)}")
    sides = (1.0,) if search == "forward" else (1.0, -1.0)
    best_x, best_y = start, objective(start)
    remaining = evals - 1
    while remaining > 0:
        x = best_x + delta
        y = objective(x)
        remaining -= 1
        if y > best_y:
            best_x, best_y = x, y
            delta *= 2
        else:
            delta *= ratio
            break
    while remaining > 0:
        centre = best_x
        for x in tuple(centre + side * delta for side in sides)[:remaining]:
            y = objective(x)
            remaining -= 1
            if y > best_y:
                best_x, best_y = x, y
        delta *= ratio
    return best_x


class _Optimal(AttackBase):
    capabilities = AttackCapabilities(knowledge="omniscient", uses_aggregator=True)
    label = ""

    def __init__(self, evals: int = 20, start: float = 0.0, delta: float = 10.0,
                 ratio: float = 0.8, search: str = "two-sided") -> None:
        evals = to_int(evals, "evals", self.label, minimum=1)
        ratio = to_float(ratio, "ratio", self.label)
        if not 0.5 < ratio < 1.0:
            raise ValueError(f"{self.label}: ratio must be in (0.5, 1), got {ratio!r}")
        if search not in SEARCHES:
            raise ValueError(f"{self.label}: unknown search {search!r}; valid: "
                             f"{', '.join(SEARCHES)}")
        self.evals, self.ratio, self.search = evals, ratio, search
        self.start = to_finite(start, "start", self.label)
        self.delta = to_finite(delta, "delta", self.label)

    def row(self, honest: Tensor, scale: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def best_scale(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> float:
        """The scale the line search picks against ``ctx.aggregator`` (the mean if None),
        which aggregates without changing the server's state."""
        honest = honest_rows(messages, byzantine_mask)
        target = honest.mean(dim=0)
        aggregator = ctx.aggregator or aggregators.get("mean")

        def damage(scale: float) -> float:
            attacked = replace_rows(messages, byzantine_mask, self.row(honest, scale))
            out = aggregator(attacked)
            return float(torch.linalg.vector_norm((out - target).double()))

        return line_search(damage, self.start, self.delta, self.evals, self.ratio, self.search)

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        if not bool(byzantine_mask.any()):
            return messages
        scale = self.best_scale(messages, byzantine_mask, ctx)
        return replace_rows(messages, byzantine_mask,
                            self.row(honest_rows(messages, byzantine_mask), scale))


@REGISTRY.register("optimal-alie")
class OptimalALIE(_Optimal):
    r""":class:`ALIE` with :math:`z` chosen per step by :func:`line_search` to maximise
    :math:`\|\mathrm{agg}(M') - \mu\|` against the aggregator in use (``ctx.aggregator``,
    evaluated without changing its state; the mean when there is none), as ByzFL's
    ``Optimal_ALittleIsEnough``. knowledge: omniscient, and the server's rule.

    The row is :math:`\mu + s\,z\,\sigma` with ``sign`` :math:`s`: -1 (the default,
    :class:`ALIE`'s :math:`\mu - z\sigma`) or +1 (ByzFL's ``ALittleIsEnough``,
    :math:`\mu + \tau\sigma`). ByzFL's benchmark attack is
    ``optimal-alie(search=forward, sign=1)``: its search starts at 0 and only steps up, so
    the side of the shift is part of its definition.
    """

    label = "optimal-alie"

    def __init__(self, evals: int = 20, start: float = 0.0, delta: float = 10.0,
                 ratio: float = 0.8, search: str = "two-sided", sign: int = -1) -> None:
        super().__init__(evals, start, delta, ratio, search)
        if sign not in (1, -1) or isinstance(sign, bool):
            raise ValueError(f"{self.label}: sign must be +1 or -1, got {sign!r}")
        self.sign = int(sign)

    def row(self, honest: Tensor, scale: float) -> Tensor:
        return alie_row(honest, -self.sign * scale)


@REGISTRY.register("optimal-ipm")
class OptimalIPM(_Optimal):
    r""":class:`IPM` with :math:`\epsilon` chosen per step by :func:`line_search` to maximise
    :math:`\|\mathrm{agg}(M') - \mu\|` against the aggregator in use, as ByzFL's
    ``Optimal_InnerProductManipulation``. knowledge: omniscient, and the server's rule.
    """

    label = "optimal-ipm"

    def row(self, honest: Tensor, scale: float) -> Tensor:
        return -scale * honest.mean(dim=0)


@REGISTRY.register("optimal-vote")
class OptimalVote(AttackBase):
    r"""A colluding coalition voting against the honest majority: with the honest vote sums
    :math:`S_j = \sum_{i \notin B} \mathrm{sign}(m_{ij})`, every Byzantine worker votes
    :math:`-\mathrm{sign}(S_j)` (and abstains where :math:`S_j = 0`). Of the coalitions
    that read only the honest votes it does the most harm to the expected progress
    :math:`E[\mathrm{sign}(V)\,\mathrm{sign}(g)]`, but not to the probability that the
    vote fails (wrong or zero): ``cancel-to-zero`` fails it more often
    (:mod:`signvote.theory.coalition`, brute force).

    Per coordinate the coalition's :math:`f` votes then flip the outcome wherever
    :math:`0 < |S_j| < f`, zero it where :math:`|S_j| = f`, and shrink the margin
    elsewhere; no other use of the :math:`f` votes flips more coordinates, and it flips
    every coordinate the paper's vote cancelling (:class:`~signvote.attacks.basic.VoteCancel`,
    which flips only where :math:`f - |S_j|` is odd) flips. On real-valued messages it reads
    their signs and sends ternary rows. knowledge: omniscient.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        if not bool(byzantine_mask.any()):
            return messages
        honest_sum = aggregators.basic.ternary_votes(honest_rows(messages, byzantine_mask)).sum(0)
        return replace_rows(messages, byzantine_mask, -torch.sign(honest_sum))


@REGISTRY.register("cancel-to-zero")
class CancelToZero(AttackBase):
    r"""Cancel to zero: with the honest vote sums :math:`S_j` (as :class:`OptimalVote`),
    the coalition's votes sum to :math:`c_j = -\mathrm{clip}(S_j, -f, f)`: the first
    :math:`|c_j|` Byzantine workers vote :math:`\mathrm{sign}(c_j)` and the others abstain.

    The vote is then exactly 0 wherever :math:`|S_j| \le f` and
    :math:`S_j - f\,\mathrm{sign}(S_j)` elsewhere. Where a zero vote counts as a failure,
    this fails exactly when the coalition that knows the true sign :math:`t` and votes
    :math:`-t` fails (both when :math:`t S_j \le f`), without knowing :math:`t`; unlike
    :class:`OptimalVote` it never turns a wrong honest majority into a right vote
    (``signvote.theory.coalition``). The project's own strategy; the abstentions are what
    the report's vote cancelling (:class:`~signvote.attacks.basic.VoteCancel`, all
    :math:`\pm 1`) lacks when :math:`f - |S_j|` is odd. On real-valued messages it reads their
    signs and sends ternary rows. knowledge: omniscient.
    """

    capabilities = AttackCapabilities(knowledge="omniscient")

    def __call__(self, messages: Tensor, byzantine_mask: Tensor, ctx: AttackContext) -> Tensor:
        f = int(byzantine_mask.sum())
        if f == 0:
            return messages
        honest_sum = aggregators.basic.ternary_votes(honest_rows(messages, byzantine_mask)).sum(0)
        total = -honest_sum.clamp(min=-f, max=f)
        k = torch.arange(f, device=messages.device).unsqueeze(1)
        rows = torch.where(k < total.abs().unsqueeze(0), torch.sign(total).unsqueeze(0),
                           torch.zeros_like(total).unsqueeze(0))
        return replace_rows(messages, byzantine_mask, rows)
