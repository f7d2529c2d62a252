r"""The paper's theory as functions: bounds on a worker's sign error and on the majority
vote's failure, the exact values they bound, and a checker that compares the two.

Notation. One coordinate's true gradient is :math:`g > 0` (the case :math:`g < 0` is the
mirror image). A worker's stochastic gradient is :math:`\hat g = g + \sigma \xi`, with noise
:math:`\xi` of mean 0 and variance 1, and :math:`S = |g| / \sigma` is the signal-to-noise
ratio. A worker's sign is right with probability :math:`p = P[\xi > -S]`. Of :math:`M`
workers, :math:`f = \alpha M` are adversaries.
- Blind adversaries send their own sign inverted, so each is right with probability
  :math:`1 - p`.
- Byzantine adversaries all vote wrong: the worst case for one coordinate.
The vote fails when the right votes are not more than the wrong ones; a tie counts as a
failure, since a zero does not move the parameter the right way.

- Lemma 1 (Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed
  Optimisation for Non-Convex Problems", ICML 2018, Lemma 1). For unimodal noise that is
  symmetric about 0:
  :math:`P[\mathrm{sign}\,\hat g \ne \mathrm{sign}\,g] \le \frac{2}{9 S^2}` if
  :math:`S > 2/\sqrt3`, else :math:`\le \frac12 - \frac{S}{2\sqrt3}`
  (:func:`lemma1_sign_error`).
- The Cantelli form (the project's variance-only bound; Cantelli's one-sided inequality).
  For any noise of variance :math:`\sigma^2`: :math:`P[\text{wrong}] \le \frac{1}{1 + S^2}`
  (:func:`cantelli_sign_error`; its old name ``lemma1bis_sign_error`` still works). The
  report's own Lemma 1bis, :math:`\frac{1}{2 S^2}`, is in :mod:`signvote.theory.as_printed`.
- Theorems 2 and 2bis bound the vote's failure through the count :math:`Z` of right
  votes, using Cantelli's inequality on :math:`Z`:
  :math:`P[Z \le M/2] \le \frac{\mathrm{Var} Z}{\mathrm{Var} Z + (E Z - M/2)^2}` when
  :math:`E Z > M/2` (:func:`vote_failure_bound`).
  - Blind (Theorem 2): :math:`E Z - M/2 = M (p - \frac12)(1 - 2\alpha)` and
    :math:`\mathrm{Var} Z = M p (1 - p)`. It needs :math:`\alpha < 1/2`.
  - Byzantine (step 2 of the report's proof of Theorem 2bis):
    :math:`Z \sim \mathrm{Bin}((1-\alpha) M, p)`. It needs
    :math:`\alpha < 1 - \frac{1}{2p}` (:func:`tolerable_fraction`).
- :func:`vote_failure_exact`: the exact failure probability, a binomial sum.
- Convergence rates. :func:`theorem2_rate` is Theorem 2 of Bernstein, Zhao,
  Azizzadenesheli & Anandkumar, "signSGD with Majority Vote is Communication Efficient and
  Byzantine Fault Tolerant" (ICLR 2019), for blind adversaries. :func:`vote_rate_bound`
  is our derivation of a rate for Byzantine (or blind) adversaries through Theorem 2bis's
  vote bound, written before the report's text was at hand; the report's own rate is
  :func:`signvote.theory.as_printed.theorem2bis_rate`. Both are checked on simulated
  votes (:func:`simulate_vote_descent`, :func:`rate_check`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SQRT3 = math.sqrt(3.0)
MODES = ("blind", "byzantine")


# --- a worker's sign error ---------------------------------------------------------------


def lemma1_sign_error(snr: float) -> float:
    """Lemma 1's bound on ``P[sign wrong]`` at signal-to-noise ratio ``S`` (unimodal noise,
    symmetric about 0)."""
    if snr > 2 / SQRT3:
        return 2 / (9 * snr * snr)
    return 0.5 - snr / (2 * SQRT3)


def cantelli_sign_error(snr: float) -> float:
    """The project's variance-only bound on a worker's sign error, ``1 / (1 + S^2)``
    (Cantelli's one-sided inequality: any noise of mean 0 and that variance; tight, reached
    by a two-point noise). Not the report's Lemma 1bis, ``1 / (2 S^2)``
    (:func:`signvote.theory.as_printed.report_lemma1bis_sign_error`)."""
    return 1 / (1 + snr * snr)


lemma1bis_sign_error = cantelli_sign_error
"""The old name of :func:`cantelli_sign_error`, kept for scripts that use it: the project
called its Cantelli form "Lemma 1bis" before the report's text was at hand."""


@dataclass(frozen=True)
class Noise:
    """Noise of mean 0 and variance 1: its name, whether it is symmetric and unimodal
    (Lemma 1's assumptions), ``left_tail(s) = P[xi <= -s]`` exactly, a sampler, and
    whether it is ``stable``: the mean of n draws is then one draw divided by sqrt(n)."""

    name: str
    symmetric_unimodal: bool
    left_tail: Callable[[float], float]
    sample: Callable[[int, torch.Generator], torch.Tensor]
    stable: bool = False


def _t3_cdf(t: float) -> float:
    """Student's t with 3 degrees of freedom (closed form)."""
    x = t / SQRT3
    return 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi


def _student_t3(n: int, gen: torch.Generator) -> torch.Tensor:
    # Student's t_3 scaled to unit variance: normal / sqrt(chi2_3 / 3) / sqrt(3)
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    chi = torch.randn(n, 3, generator=gen, dtype=torch.float64).square().sum(1)
    return z / torch.sqrt(chi / 3) / SQRT3


NOISES = (
    Noise("gaussian", True, lambda s: 0.5 * math.erfc(s / math.sqrt(2)),
          lambda n, g: torch.randn(n, generator=g, dtype=torch.float64), stable=True),
    Noise("uniform", True, lambda s: max(0.0, (SQRT3 - s) / (2 * SQRT3)),
          lambda n, g: (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * SQRT3),
    Noise("laplace", True, lambda s: 0.5 * math.exp(-s * math.sqrt(2)),
          lambda n, g: _laplace(n, g)),
    Noise("student-t3 (heavy-tailed)", True, lambda s: _t3_cdf(-s * SQRT3),
          lambda n, g: _student_t3(n, g)),
    # asymmetric, mean 0: E - 1 with E ~ Exp(1) (a long right tail, a short left one) ...
    Noise("exponential - 1 (asymmetric)", False,
          lambda s: 1 - math.exp(-(1 - s)) if s < 1 else 0.0,
          lambda n, g: _exponential(n, g) - 1),
    # ... and 1 - E (a long left tail)
    Noise("1 - exponential (asymmetric)", False, lambda s: math.exp(-(1 + s)),
          lambda n, g: 1 - _exponential(n, g)),
)


def _exponential(n: int, gen: torch.Generator) -> torch.Tensor:
    return -torch.log1p(-torch.rand(n, generator=gen, dtype=torch.float64))


def _laplace(n: int, gen: torch.Generator) -> torch.Tensor:
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    return sign * _exponential(n, gen) / math.sqrt(2)


def sign_error_monte_carlo(noise: Noise, snr: float, samples: int,
                           gen: torch.Generator) -> float:
    """The fraction of ``samples`` draws with ``sign(S + xi) != +1``."""
    return float((noise.sample(samples, gen) <= -snr).double().mean())


# --- the majority vote ---------------------------------------------------------------------


def _binomial_pmf(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]


def vote_failure_exact(workers: int, p: float, adversaries: int, mode: str) -> float:
    """The exact probability that the majority vote of ``workers`` is not right, with
    ``adversaries`` of them blind (each right with probability ``1 - p``) or Byzantine
    (always wrong); honest workers are right with probability ``p``, all independently."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; valid: {', '.join(MODES)}")
    honest = workers - adversaries
    right = _binomial_pmf(honest, p)  # distribution of the honest right votes
    if mode == "blind":
        inverted = _binomial_pmf(adversaries, 1 - p)
        right = [sum(right[i] * inverted[k - i] for i in range(max(0, k - adversaries),
                                                                 min(k, honest) + 1))
                 for k in range(workers + 1)]
    # fails when right votes <= wrong votes, i.e. 2 * right <= workers
    return math.fsum(prob for k, prob in enumerate(right) if 2 * k <= workers)


def vote_failure_per_coordinate(workers: int, p: Tensor, blind: int = 0,
                                byzantine: int = 0) -> Tensor:
    """:func:`vote_failure_exact` for a tensor of per-coordinate ``p`` at once, with
    ``blind`` and ``byzantine`` adversaries together (float64; the distribution of the
    right votes built by convolving one worker at a time)."""
    p = p.double()
    right = torch.zeros(*p.shape, workers + 1, dtype=torch.float64)
    right[..., 0] = 1.0
    honest = workers - blind - byzantine
    for q in [p] * honest + [1 - p] * blind:  # each voter right with probability q
        q = q.unsqueeze(-1)
        shifted = torch.cat([torch.zeros_like(right[..., :1]), right[..., :-1]], dim=-1)
        right = right * (1 - q) + shifted * q
    fails = torch.arange(workers + 1) * 2 <= workers
    return right[..., fails].sum(-1)


def vote_failure_monte_carlo(workers: int, p: float, adversaries: int, mode: str,
                             trials: int, gen: torch.Generator) -> float:
    """The failure frequency of ``trials`` simulated votes (the definition, drawn)."""
    honest = workers - adversaries
    right = (torch.rand(trials, honest, generator=gen, dtype=torch.float64) < p).sum(1)
    if mode == "blind":
        right = right + (torch.rand(trials, adversaries, generator=gen,
                                    dtype=torch.float64) < 1 - p).sum(1)
    return float((2 * right <= workers).double().mean())


def vote_failure_bound(workers: int, p: float, alpha: float, mode: str) -> float:
    """Theorems 2 / 2bis: Cantelli's bound on the vote's failure with a fraction ``alpha``
    of adversaries; 1 (no bound) outside the theorem's range of ``alpha``."""
    m = workers
    if mode == "blind":
        mean_gap = m * (p - 0.5) * (1 - 2 * alpha)
        variance = m * p * (1 - p)
    elif mode == "byzantine":
        mean_gap = m * ((1 - alpha) * p - 0.5)
        variance = m * (1 - alpha) * p * (1 - p)
    else:
        raise ValueError(f"mode {mode!r}; valid: {', '.join(MODES)}")
    if mean_gap <= 0:
        return 1.0
    return variance / (variance + mean_gap * mean_gap)


def tolerable_fraction(p: float) -> float:
    """Theorem 2bis's limit: the vote's failure bound tends to 0 as M grows for every
    Byzantine fraction ``alpha < 1 - 1/(2p)`` (0 when ``p <= 1/2``, including ``p = 0``)."""
    return 0.0 if p <= 0.5 else 1 - 1 / (2 * p)


def tolerable_byzantine(workers: int, p: float, level: float = 0.5) -> int:
    """The most Byzantine workers among ``workers`` for which the exact failure probability
    stays below ``level`` (-1 when none does)."""
    best = -1
    for f in range(workers):
        if vote_failure_exact(workers, p, f, "byzantine") < level:
            best = f
    return best


# --- the checker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One bound checked against exact values over a grid of its argument."""

    bound: str
    case: str
    assumptions_hold: bool
    points: int
    violations: list[tuple[float, float, float]]  # (argument, exact, bound)
    tightest_ratio: float  # max exact / bound where the bound is below 1 (1 = reached)

    @property
    def holds(self) -> bool:
        return not self.violations


def check_bound(bound: Callable[[float], float], exact: Callable[[float], float],
                grid: Sequence[float], name: str, case: str, assumptions_hold: bool = True,
                tolerance: float = 1e-12) -> Check:
    """Compare ``bound(x) >= exact(x)`` over ``grid``; records every violation."""
    violations, ratio = [], 0.0
    for x in grid:
        b, e = bound(x), exact(x)
        if e > b + tolerance:
            violations.append((x, e, b))
        if 0 < b < 1:  # a bound of 1 says nothing; its ratio would flatter
            ratio = max(ratio, e / b)
    return Check(name, case, assumptions_hold, len(grid), violations, ratio)


SNR_GRID = [i / 50 for i in range(0, 251)]  # S from 0 to 5


def check_all() -> list[Check]:
    """Every bound of the paper against its exact value: the two sign-error lemmas on
    every noise of :data:`NOISES`, and the vote bounds of Theorems 2 / 2bis for M in
    {5, 11, 31, 101}, p in {0.55, ..., 0.95} and every adversary count."""
    checks = []
    for noise in NOISES:
        checks.append(check_bound(lemma1_sign_error, noise.left_tail, SNR_GRID, "Lemma 1",
                                  noise.name, noise.symmetric_unimodal))
        checks.append(check_bound(cantelli_sign_error, noise.left_tail, SNR_GRID,
                                  "Cantelli", noise.name, True))
    for mode, theorem in (("blind", "Theorem 2"), ("byzantine", "Theorem 2bis")):
        for m in (5, 11, 31, 101):
            for p in (0.55, 0.65, 0.75, 0.85, 0.95):
                counts = list(range(m))
                checks.append(check_bound(
                    lambda f, m=m, p=p, mode=mode: vote_failure_bound(m, p, f / m, mode),
                    lambda f, m=m, p=p, mode=mode: vote_failure_exact(m, p, int(f), mode),
                    counts, theorem, f"M={m}, p={p}"))
    return checks


# --- convergence rates ---------------------------------------------------------------------
#
# f is the objective with f >= f* (Assumption 1), L = (L_1..L_d) its coordinate-wise
# smoothness (Assumption 2), sigma = (sigma_1..sigma_d) the per-sample standard deviations
# of the stochastic gradient's coordinates (Assumption 3). Each of the M workers averages
# n samples per step, so its coordinate i has standard deviation sigma_i / sqrt(n) and
# signal-to-noise ratio S_i = sqrt(n) |g_i| / sigma_i. K steps; N = n K samples per worker.


def theorem2_schedule(f_gap: float, l1_smoothness: float, steps: int) -> tuple[float, int]:
    r"""Theorem 2's learning rate and per-worker batch for ``steps`` = K:
    :math:`\eta = \sqrt{(f_0 - f_*) / (\|L\|_1 K)}` and :math:`n = K`."""
    if f_gap <= 0 or l1_smoothness <= 0 or steps < 1:
        raise ValueError(f"need f_gap > 0, l1_smoothness > 0, steps >= 1; got {f_gap}, "
                         f"{l1_smoothness}, {steps}")
    return math.sqrt(f_gap / (l1_smoothness * steps)), steps


def theorem2_rate(*, l1_smoothness: float, sigma_l1: float, f_gap: float, workers: int,
                  alpha: float, steps: int) -> float:
    r"""Theorem 2's bound on :math:`\bigl[\frac1K \sum_{k<K} E\|g_k\|_1\bigr]^2`.

    Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with Majority Vote is
    Communication Efficient and Byzantine Fault Tolerant" (ICLR 2019), Theorem 2, as
    printed in the version submitted for review. Akoun & Meyer restate it as their
    Theorem 2 (``shared/paper/THEORY.md``) in exactly this form. Under
    Assumptions 1-4 (lower bound, smoothness, variance bound, unimodal noise symmetric
    about its mean), with momentum and weight decay off, the schedule of
    :func:`theorem2_schedule`, and a fraction :math:`\alpha < 1/2` of the M workers
    *blind* (each sends its own sign estimate negated):

    .. math:: \Bigl[\frac1K \sum_{k<K} E\|g_k\|_1\Bigr]^2 \le \frac{4}{\sqrt N}
              \Bigl[\frac{1}{1 - 2\alpha} \frac{\|\sigma\|_1}{\sqrt M}
              + \sqrt{\|L\|_1 (f_0 - f_*)}\Bigr]^2, \qquad N = K^2.

    ``inf`` when :math:`\alpha \ge 1/2` (no bound).
    """
    if alpha >= 0.5:
        return math.inf
    samples = steps * steps
    inner = sigma_l1 / ((1 - 2 * alpha) * math.sqrt(workers)) + math.sqrt(
        l1_smoothness * f_gap)
    return 4 / math.sqrt(samples) * inner * inner


RATE_SNR_GRID = [10 ** (-2 + 4 * i / 400) for i in range(401)]  # S* from 0.01 to 100


def vote_rate_bound(*, l1_smoothness: float, sigma_l1: float, f_gap: float, workers: int,
                    adversaries: int, mode: str, steps: int,
                    sign_error: Callable[[float], float] = cantelli_sign_error,
                    snr_grid: Sequence[float] = RATE_SNR_GRID) -> float:
    r"""A bound on :math:`\bigl[\frac1K \sum_{k<K} E\|g_k\|_1\bigr]^2` for majority vote
    with ``adversaries`` blind or Byzantine workers among M, on Theorem 2's schedule: our
    derivation of Theorem 2bis's rate, with every constant explicit.

    Written before the report's statement of Theorem 2bis's rate was at hand (that is
    :func:`signvote.theory.as_printed.theorem2bis_rate`), this is
    the rate that Bernstein et al.'s argument for Theorem 2 gives when its vote-failure
    bound is Cantelli's on the binomial count of right votes (:func:`vote_failure_bound`),
    for either kind of adversary. Derivation, for one step, conditioned on the iterate:

    1. Smoothness and :math:`|\mathrm{sign}(V)_i| \le 1`:
       :math:`E f_{k+1} - f_k \le -\eta \sum_i |g_i| (1 - 2 P_i) + \eta^2 \|L\|_1 / 2`,
       with :math:`P_i` the probability that the vote on coordinate i is not right
       (a tie moves nothing, so it counts as a failure).
    2. Pick a threshold :math:`S^* > 0`. If :math:`S_i \ge S^*`, a worker's sign is right
       with probability :math:`p_i \ge p^* = 1 - \text{sign\_error}(S^*)` (the Cantelli form
       needs only the variance; Lemma 1 needs Assumption 4), and the vote's bound is
       decreasing in p, so :math:`P_i \le P^* =` Cantelli's bound at :math:`p^*`.
       If :math:`S_i < S^*`, then :math:`|g_i| < S^* \sigma_i / \sqrt n` and
       :math:`-(1 - 2P_i) \le -(1 - 2P^*) + 2`.
       Hence :math:`E f_{k+1} - f_k \le -\eta (1 - 2P^*) \|g_k\|_1
       + 2 \eta S^* \|\sigma\|_1 / \sqrt n + \eta^2 \|L\|_1 / 2`.
    3. Sum over K steps with :math:`f_K \ge f_*`, :math:`\eta` and :math:`n = K` as in
       Theorem 2 (:math:`N = K^2`):

    .. math:: \Bigl[\frac1K \sum_{k<K} E\|g_k\|_1\Bigr]^2 \le \min_{S^*: P^* < 1/2}
              \frac{1}{\sqrt N} \biggl[\frac{\frac32 \sqrt{\|L\|_1 (f_0 - f_*)}
              + 2 S^* \|\sigma\|_1}{1 - 2 P^*}\biggr]^2.

    Byzantine workers may coordinate and see everything; the bound takes them all wrong on
    every coordinate. :math:`P^* < 1/2` needs :math:`(1 - \alpha) p^* > 1/2`
    (Theorem 2bis's :math:`\alpha < 1 - 1/(2p)`), which a large enough :math:`S^*` meets
    for every :math:`\alpha < 1/2`; the price is the :math:`2 S^* \|\sigma\|_1` term.
    The minimum is taken over ``snr_grid``; every grid point gives a valid bound.
    ``inf`` when no grid point has :math:`P^* < 1/2`.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; valid: {', '.join(MODES)}")
    best = math.inf
    smooth = 1.5 * math.sqrt(l1_smoothness * f_gap)
    for s in snr_grid:
        failure = vote_failure_bound(workers, 1 - sign_error(s), adversaries / workers, mode)
        if failure >= 0.5:
            continue
        best = min(best, ((smooth + 2 * s * sigma_l1) / (1 - 2 * failure)) ** 2 / steps)
    return best


@dataclass(frozen=True)
class Objective:
    """A separable test objective with minimum 0 at x = 0: its value, gradient and
    coordinate-wise smoothness constants (Assumption 2 holds with them exactly)."""

    name: str
    value: Callable[[Tensor, Tensor], Tensor]  # (x[..., d], L[d]) -> f[...]
    gradient: Callable[[Tensor, Tensor], Tensor]  # (x[..., d], L[d]) -> g[..., d]


OBJECTIVES = (
    # f = sum_i L_i x_i^2 / 2
    Objective("quadratic", lambda x, lip: (lip * x * x).sum(-1) / 2, lambda x, lip: lip * x),
    # f = sum_i sqrt(1 + L_i x_i^2) - 1: curvature L_i / (1 + L_i x^2)^(3/2) <= L_i, and the
    # gradient stays near sqrt(L_i) far from 0 (a hard case for the l1 norm of g)
    Objective("soft absolute value", lambda x, lip: (torch.sqrt(1 + lip * x * x) - 1).sum(-1),
              lambda x, lip: lip * x / torch.sqrt(1 + lip * x * x)),
)


def _mean_noise(noise: Noise, shape: tuple[int, ...], batch: int,
                gen: torch.Generator) -> Tensor:
    """The mean of ``batch`` independent draws of ``noise``, for every entry of ``shape``."""
    count = math.prod(shape)
    if noise.stable:
        return noise.sample(count, gen).reshape(shape) / math.sqrt(batch)
    total = torch.zeros(count, dtype=torch.float64)
    for _ in range(batch):
        total += noise.sample(count, gen)
    return (total / batch).reshape(shape)


def simulate_vote_descent(objective: Objective, smoothness: Tensor, sigma: Tensor,
                          start: Tensor, noise: Noise, *, workers: int, adversaries: int,
                          mode: str, steps: int, repeats: int,
                          gen: torch.Generator) -> dict[str, float]:
    r"""Run signSGD with majority vote on ``objective`` for ``steps`` = K steps on Theorem
    2's schedule, ``repeats`` times independently, and estimate the left side
    :math:`[\frac1K \sum_k E\|g_k\|_1]^2` of the rate bounds.

    Each worker's estimate of coordinate i is :math:`g_i + \sigma_i \bar\xi`, with
    :math:`\bar\xi` the mean of n = K draws of ``noise``. Blind adversaries (the first
    ``adversaries`` workers) send their own sign negated; Byzantine ones send
    :math:`-\mathrm{sign}(g)`, wrong on every coordinate. The vote is
    :math:`\mathrm{sign}(\sum_m s_m)`, 0 on a tie. Returns ``lhs`` (the square of the
    mean over repeats and steps of :math:`\|g_k\|_1`), its standard error ``lhs_se`` (delta
    method over repeats), ``f_gap`` = :math:`f(x_0) - 0`, ``final_f`` (mean over repeats)
    and ``snr`` ``[K, R, d]``, each coordinate's S of a worker's estimate at each step
    (:math:`\sqrt n |g_i| / \sigma_i`), from which its exact p follows.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; valid: {', '.join(MODES)}")
    smoothness, sigma = smoothness.double(), sigma.double()
    f_gap = float(objective.value(start.double(), smoothness))
    lr, batch = theorem2_schedule(f_gap, float(smoothness.sum()), steps)
    x = start.double().expand(repeats, -1).clone()
    norm_sum = torch.zeros(repeats, dtype=torch.float64)
    snrs = []
    for _ in range(steps):
        g = objective.gradient(x, smoothness)  # [R, d]
        norm_sum += g.abs().sum(-1)
        snrs.append(g.abs() * math.sqrt(batch) / sigma)
        estimate = g.unsqueeze(1) + sigma * _mean_noise(
            noise, (repeats, workers, x.shape[-1]), batch, gen)  # [R, M, d]
        signs = torch.sign(estimate)
        if mode == "blind":
            signs[:, :adversaries] = -signs[:, :adversaries]
        else:
            signs[:, :adversaries] = -torch.sign(g).unsqueeze(1)
        x = x - lr * torch.sign(signs.sum(1))
    per_repeat = norm_sum / steps
    mean = float(per_repeat.mean())
    se = float(per_repeat.std()) / math.sqrt(repeats) if repeats > 1 else math.nan
    return {"lhs": mean * mean, "lhs_se": 2 * mean * se, "f_gap": f_gap,
            "final_f": float(objective.value(x, smoothness).mean()),
            "snr": torch.stack(snrs)}


@dataclass(frozen=True)
class RateCase:
    """One simulated setting for the rate bounds: ``dim`` coordinates, each with smoothness
    1, per-sample noise ``sigma`` times ``noise`` and start ``start``."""

    objective: str
    noise: str
    mode: str
    workers: int
    adversaries: int
    steps: int
    sigma: float = 1.0
    start: float = 3.0
    dim: int = 10

    @property
    def label(self) -> str:
        return (f"{self.objective}, {self.noise}, sigma={self.sigma:g}, x0={self.start:g}, "
                f"M={self.workers}, {self.adversaries} {self.mode}, K={self.steps}")


def _by_name(items: Sequence[Any], name: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    raise ValueError(f"{name!r}; valid: {', '.join(i.name for i in items)}")


RATE_BOUNDS = ("Theorem 2", "derived, Lemma 1", "derived, Cantelli")
"""The bounds on the rate that :func:`rate_check` evaluates: Theorem 2 as printed
(:func:`theorem2_rate`), and :func:`vote_rate_bound` with Lemma 1 or the Cantelli form
(:func:`cantelli_sign_error`)."""


def rate_bounds(case: RateCase, f_gap: float) -> dict[str, tuple[float, bool]]:
    """Each bound of :data:`RATE_BOUNDS` for ``case``, with whether its assumptions hold
    there: Theorem 2 needs Assumption 4 and blind adversaries, Lemma 1 needs Assumption 4,
    the Cantelli form needs neither."""
    noise = _by_name(NOISES, case.noise)
    args = {"l1_smoothness": float(case.dim), "sigma_l1": case.sigma * case.dim,
            "f_gap": f_gap, "workers": case.workers, "steps": case.steps}
    symmetric = noise.symmetric_unimodal
    return {
        "Theorem 2": (theorem2_rate(alpha=case.adversaries / case.workers, **args),
                      symmetric and case.mode == "blind"),
        "derived, Lemma 1": (vote_rate_bound(adversaries=case.adversaries, mode=case.mode,
                                             sign_error=lemma1_sign_error, **args), symmetric),
        "derived, Cantelli": (vote_rate_bound(adversaries=case.adversaries, mode=case.mode,
                                                **args), True),
    }


@dataclass(frozen=True)
class RateCheck:
    """A rate bound against the simulated left side of one :class:`RateCase`. It fails
    when the measured value exceeds the bound by more than ``margin`` standard errors."""

    case: RateCase
    bound: str
    assumptions_hold: bool
    measured: float
    measured_se: float
    value: float
    margin: float = 3.0

    @property
    def holds(self) -> bool:
        return self.measured - self.margin * self.measured_se <= self.value

    @property
    def ratio(self) -> float:
        """measured / bound: how much of the bound the simulation reaches."""
        return self.measured / self.value if self.value > 0 else math.inf


def rate_check(case: RateCase, repeats: int, gen: torch.Generator,
               bounds: Callable[[RateCase, float], dict[str, tuple[float, bool]]]
               = rate_bounds) -> list[RateCheck]:
    """Simulate ``case`` (:func:`simulate_vote_descent`, ``repeats`` runs) and compare the
    measured left side with every bound that ``bounds(case, f_gap)`` returns; ``repeats``
    must be at least 2, for the standard error the verdict needs."""
    if repeats < 2:
        raise ValueError(f"repeats {repeats}: need at least 2 (a standard error needs two "
                         "runs)")
    lip = torch.ones(case.dim, dtype=torch.float64)
    run = simulate_vote_descent(
        _by_name(OBJECTIVES, case.objective), lip, case.sigma * lip, case.start * lip,
        _by_name(NOISES, case.noise), workers=case.workers, adversaries=case.adversaries,
        mode=case.mode, steps=case.steps, repeats=repeats, gen=gen)
    return [RateCheck(case, name, holds, run["lhs"], run["lhs_se"], value)
            for name, (value, holds) in bounds(case, run["f_gap"]).items()]


RATE_CASES = (
    # far from the minimum, little noise: the smoothness term dominates
    *(RateCase(objective, "gaussian", mode, 10, f, 256)
      for objective in ("quadratic", "soft absolute value")
      for mode in MODES for f in (0, 4)),
    # near the minimum, much noise: the noise term dominates, and M matters
    *(RateCase("quadratic", "gaussian", mode, m, round(0.4 * m), 256, sigma=10.0, start=0.5)
      for mode in MODES for m in (10, 100, 1000)),
    # other noises, with Theorem 2's batch n = K = 16 averaging them
    *(RateCase("quadratic", noise.name, mode, 10, 2, 16, sigma=10.0, start=0.5)
      for noise in NOISES[1:] for mode in MODES),
)
"""The settings :func:`signvote.experiment.theory_report.write` checks the rates on."""


# --- measured during training ---------------------------------------------------------------

CRITICAL_SNR = 2 / SQRT3
"""Where Lemma 1 changes form: above it the sign error is at most 2 / (9 S^2) (Bernstein et
al. call it the critical SNR)."""

MEASURE_STEP_COLUMNS = ("theory_p", "theory_vote_wrong", "theory_snr_median",
                        "theory_snr_q10", "theory_snr_q90", "theory_snr_above_critical")
"""What :func:`measure_step` returns for one step."""

MEASURE_P_SPREAD_COLUMNS = ("theory_p_coord_min", "theory_p_coord_q10",
                            "theory_p_coord_median", "theory_p_coord_mean",
                            "theory_p_coord_q90")
"""What :func:`p_coordinate_spread` returns: the spread over coordinates of each
coordinate's own empirical p over the epoch."""

MEASURE_COLUMNS = (*MEASURE_STEP_COLUMNS, "theory_vote_wrong_predicted",
                   *MEASURE_P_SPREAD_COLUMNS)
"""What ``--measure-theory`` adds to every epoch of ``metrics.csv``: the columns of
:func:`measure_step` as means over the epoch's steps, then the wrong-vote fraction the
exact binomial predicts from each coordinate's own empirical p over the epoch
(:func:`predicted_vote_wrong`), then the spread of those per-coordinate p
(:func:`p_coordinate_spread`)."""


def measure_step(full_grad: Tensor, honest_grads: Tensor, honest_messages: Tensor,
                 vote: Tensor) -> dict[str, float]:
    """One step's measurements against the full-batch gradient ``full_grad[d]``, on the
    coordinates where it is not 0.

    - ``theory_p``: the fraction of (honest worker, coordinate) pairs on which the honest
      worker's message (its sign, before any attack) has the sign of the full gradient.
    - ``theory_vote_wrong``: the fraction of coordinates on which the aggregate ``vote``
      does not have that sign (0 counts as wrong, as in :func:`vote_failure_exact`).
    - ``theory_snr_median``, ``theory_snr_q10``, ``theory_snr_q90``: the median, 10% and
      90% quantiles (the lower order statistic) over coordinates of the estimated S,
      ``|mean_i g_i| / std_i g_i`` over the honest workers' minibatch gradients
      ``honest_grads[h, d]`` (needs h >= 2; NaN otherwise).
    - ``theory_snr_above_critical``: the fraction of coordinates whose estimated S exceeds
      :data:`CRITICAL_SNR`, where Lemma 1's bound falls as 1 / S^2.
    """
    truth = torch.sign(full_grad)
    live = truth != 0
    if not bool(live.any()):
        nan = float("nan")
        return dict.fromkeys(MEASURE_COLUMNS, nan)
    agree = (torch.sign(honest_messages[:, live]) == truth[live]).double().mean()
    wrong = (torch.sign(vote[live]) != truth[live]).double().mean()
    out = {"theory_p": float(agree), "theory_vote_wrong": float(wrong)}
    if honest_grads.shape[0] >= 2:
        g = honest_grads[:, live].double()
        snr = (g.mean(0).abs() / g.std(0).clamp_min(1e-300)).sort().values
        last = snr.numel() - 1
        out |= {"theory_snr_median": float(snr[last // 2]),
                "theory_snr_q10": float(snr[int(0.1 * last)]),
                "theory_snr_q90": float(snr[int(0.9 * last)]),
                "theory_snr_above_critical": float((snr > CRITICAL_SNR).double().mean())}
    else:
        out |= dict.fromkeys(MEASURE_STEP_COLUMNS[2:], float("nan"))
    return out


def predicted_vote_wrong(agree: Tensor, live: Tensor, workers: int, blind: int,
                         byzantine: int) -> float:
    """The mean over coordinates of the exact failure probability at each coordinate's own
    p: ``agree[d]`` counts the honest (worker, step) pairs that agreed with the full
    gradient's sign, ``live[d]`` the pairs counted. The heterogeneity of p across
    coordinates is what a single mean p hides."""
    seen = live > 0
    if not bool(seen.any()):
        return float("nan")
    p = agree[seen].double() / live[seen].double()
    return float(vote_failure_per_coordinate(workers, p, blind, byzantine).mean())


def p_coordinate_spread(agree: Tensor, live: Tensor) -> dict[str, float]:
    r"""The spread over coordinates of the per-coordinate empirical p of one epoch, from the
    counts :func:`predicted_vote_wrong` reads: :math:`\hat p_i = a_i / n_i` on the
    coordinates with :math:`n_i > 0` (``agree[d]``, ``live[d]``).

    Akoun & Meyer ("SignSGD: Fault-Tolerance to Blind and Byzantine Adversaries", arXiv
    2202.02085, 2022), Theorem 2bis, use one p for every coordinate; these columns say how
    far the coordinates' own p are from one number. With :math:`\hat p_{(0)} \le \dots \le
    \hat p_{(m-1)}` sorted and ``last = m - 1``, the quantiles are the lower order statistics
    of :func:`measure_step`: ``theory_p_coord_q10`` :math:`= \hat p_{(\lfloor 0.1\,
    last\rfloor)}`, ``_median`` :math:`\hat p_{(\lfloor last/2 \rfloor)}`, ``_q90``
    :math:`\hat p_{(\lfloor 0.9\, last\rfloor)}`; ``_min`` and ``_mean`` are
    :math:`\hat p_{(0)}` and :math:`\frac1m \sum_i \hat p_i` (each coordinate weighs the
    same, unlike ``theory_p``, which weighs every counted pair the same). NaN for all when
    no coordinate was counted."""
    seen = live > 0
    if not bool(seen.any()):
        return dict.fromkeys(MEASURE_P_SPREAD_COLUMNS, float("nan"))
    p = (agree[seen].double() / live[seen].double()).sort().values
    last = p.numel() - 1
    return {"theory_p_coord_min": float(p[0]),
            "theory_p_coord_q10": float(p[int(0.1 * last)]),
            "theory_p_coord_median": float(p[last // 2]),
            "theory_p_coord_mean": float(p.mean()),
            "theory_p_coord_q90": float(p[int(0.9 * last)])}
