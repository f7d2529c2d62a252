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
- Lemma 1bis (Akoun & Meyer's variance-only version; Cantelli's inequality). For any noise
  of variance :math:`\sigma^2`: :math:`P[\text{wrong}] \le \frac{1}{1 + S^2}`
  (:func:`lemma1bis_sign_error`).
- Theorems 2 and 2bis bound the vote's failure through the count :math:`Z` of right
  votes, using Cantelli's inequality on :math:`Z`:
  :math:`P[Z \le M/2] \le \frac{\mathrm{Var} Z}{\mathrm{Var} Z + (E Z - M/2)^2}` when
  :math:`E Z > M/2` (:func:`vote_failure_bound`).
  - Blind (Theorem 2): :math:`E Z - M/2 = M (p - \frac12)(1 - 2\alpha)` and
    :math:`\mathrm{Var} Z = M p (1 - p)`. It needs :math:`\alpha < 1/2`.
  - Byzantine (Theorem 2bis): :math:`Z \sim \mathrm{Bin}((1-\alpha) M, p)`. It needs
    :math:`\alpha < 1 - \frac{1}{2p}` (:func:`tolerable_fraction`).
  The papers' convergence rates follow from these per-coordinate failure probabilities.
  This module checks the probabilities, which are the part numbers can test.
- :func:`vote_failure_exact`: the exact failure probability, a binomial sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def lemma1bis_sign_error(snr: float) -> float:
    """Lemma 1bis's bound ``1 / (1 + S^2)`` (Cantelli: any noise with that variance)."""
    return 1 / (1 + snr * snr)


@dataclass(frozen=True)
class Noise:
    """Noise of mean 0 and variance 1: its name, whether it is symmetric and unimodal
    (Lemma 1's assumptions), ``left_tail(s) = P[xi <= -s]`` exactly, and a sampler."""

    name: str
    symmetric_unimodal: bool
    left_tail: Callable[[float], float]
    sample: Callable[[int, torch.Generator], torch.Tensor]


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
          lambda n, g: torch.randn(n, generator=g, dtype=torch.float64)),
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
    Byzantine fraction ``alpha < 1 - 1/(2p)`` (0 when ``p <= 1/2``)."""
    return max(0.0, 1 - 1 / (2 * p))


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
        checks.append(check_bound(lemma1bis_sign_error, noise.left_tail, SNR_GRID,
                                  "Lemma 1bis", noise.name, True))
    for mode, theorem in (("blind", "Theorem 2"), ("byzantine", "Theorem 2bis")):
        for m in (5, 11, 31, 101):
            for p in (0.55, 0.65, 0.75, 0.85, 0.95):
                counts = list(range(m))
                checks.append(check_bound(
                    lambda f, m=m, p=p, mode=mode: vote_failure_bound(m, p, f / m, mode),
                    lambda f, m=m, p=p, mode=mode: vote_failure_exact(m, p, int(f), mode),
                    counts, theorem, f"M={m}, p={p}"))
    return checks


# --- measured during training ---------------------------------------------------------------

MEASURE_COLUMNS = ("theory_p", "theory_vote_wrong", "theory_snr_median",
                   "theory_vote_wrong_predicted")
"""What ``--measure-theory`` adds to every epoch of ``metrics.csv`` (means over the epoch's
steps): the empirical p, the fraction of coordinates on which the vote is wrong, the
median over coordinates of the estimated S, and the wrong-vote fraction the exact binomial
predicts from each coordinate's own empirical p (:func:`predicted_vote_wrong`)."""


def measure_step(full_grad: Tensor, honest_grads: Tensor, honest_messages: Tensor,
                 vote: Tensor) -> dict[str, float]:
    """One step's measurements against the full-batch gradient ``full_grad[d]``, on the
    coordinates where it is not 0.

    - ``theory_p``: the fraction of (honest worker, coordinate) pairs on which the honest
      worker's message (its sign, before any attack) has the sign of the full gradient.
    - ``theory_vote_wrong``: the fraction of coordinates on which the aggregate ``vote``
      does not have that sign (0 counts as wrong, as in :func:`vote_failure_exact`).
    - ``theory_snr_median``: the median over coordinates of ``|mean_i g_i| / std_i g_i``
      over the honest workers' minibatch gradients ``honest_grads[h, d]`` (needs h >= 2;
      NaN otherwise).
    """
    truth = torch.sign(full_grad)
    live = truth != 0
    if not bool(live.any()):
        nan = float("nan")
        return dict.fromkeys(MEASURE_COLUMNS, nan)
    agree = (torch.sign(honest_messages[:, live]) == truth[live]).double().mean()
    wrong = (torch.sign(vote[live]) != truth[live]).double().mean()
    if honest_grads.shape[0] >= 2:
        g = honest_grads[:, live].double()
        snr = g.mean(0).abs() / g.std(0).clamp_min(1e-300)
        snr_median = float(snr.median())
    else:
        snr_median = float("nan")
    return {"theory_p": float(agree), "theory_vote_wrong": float(wrong),
            "theory_snr_median": snr_median}


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
