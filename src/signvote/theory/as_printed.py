r"""The report's theory as printed (Akoun & Meyer, "SignSGD: Fault-Tolerance to Blind and
Byzantine Adversaries", arXiv 2202.02085, section 3; restated in ``shared/paper/THEORY.md``),
beside the forms the project derived, and a verdict for every statement.

Notation as in :mod:`signvote.theory.core`: one coordinate's true gradient :math:`g > 0`,
a worker's estimate :math:`g + \sigma \xi` with :math:`E\xi = 0`, :math:`E\xi^2 = 1`,
:math:`S = |g| / \sigma`, :math:`p = P[\xi > -S]` the probability that an honest sign is
right (a zero sign counts as wrong), :math:`M` workers of which :math:`f = \alpha M`
Byzantine, :math:`Z \sim \mathrm{Bin}((1 - \alpha) M, p)` the honest right votes.

- :func:`report_lemma1bis_sign_error`: the report's Lemma 1bis,
  :math:`P[\mathrm{sign}\,\hat g \ne \mathrm{sign}\,g] \le \frac{1}{2 S^2}`, claimed from
  Chebyshev's inequality alone (Assumption 3, no symmetry). Not the project's Cantelli form
  :math:`\frac{1}{1 + S^2}` (:func:`signvote.theory.core.cantelli_sign_error`).
- :func:`theorem2bis_failure`: the per-coordinate failure bound its proof of Theorem 2bis
  ends with (step 5), :math:`\frac{1}{2\sqrt2} \frac{1}{p (1 - \alpha) - 1/2}
  \frac{1}{S \sqrt M}`, under :math:`\alpha < 1 - \frac{1}{2p}`;
  :func:`theorem2bis_failure_in_p` its step-4 form, before Lemma 1bis is used.
- :func:`theorem2bis_rate`: Theorem 2bis's convergence rate as printed.

A :class:`Verdict` records, for one statement on one family of cases, whether the claimed
inequality ``lhs <= rhs`` held at every point, where it failed worst and by how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from signvote.theory import core
from signvote.theory.core import NOISES, Noise, cantelli_sign_error

REPORT = "Akoun & Meyer 2022"
"""The source named in the verdicts of the report's own statements."""


def report_lemma1bis_sign_error(snr: float) -> float:
    r"""The report's Lemma 1bis as printed: :math:`P[\text{sign wrong}] \le 1 / (2 S^2)`
    (``inf`` at :math:`S = 0`), claimed for any noise of variance :math:`\sigma^2`."""
    return math.inf if snr == 0 else 1 / (2 * snr * snr)


def report_tolerable_fraction(p: float) -> float:
    r"""Theorem 2bis's condition as printed: it holds for :math:`\alpha < 1 - 1/(2p)`
    (0 when :math:`p \le 1/2`): :func:`signvote.theory.core.tolerable_fraction`, under
    the report's name."""
    return core.tolerable_fraction(p)


def _margin(p: float, alpha: float) -> float:
    """``p (1 - alpha) - 1/2``: Theorem 2bis's denominator, positive under its condition."""
    return p * (1 - alpha) - 0.5


def theorem2bis_failure_in_p(workers: int, p: float, alpha: float) -> float:
    r"""Step 4 of the report's proof of Theorem 2bis: the vote's failure
    :math:`P[Z \le M/2] \le \frac12 \frac{\sqrt{1 - p}}{p (1 - \alpha) - 1/2} \frac{1}{\sqrt M}`;
    ``inf`` (no bound) outside :math:`\alpha < 1 - 1/(2p)`."""
    margin = _margin(p, alpha)
    if margin <= 0:
        return math.inf
    return 0.5 * math.sqrt(max(0.0, 1 - p)) / margin / math.sqrt(workers)


def theorem2bis_failure(workers: int, p: float, alpha: float, snr: float) -> float:
    r"""Step 5, the per-coordinate bound Theorem 2bis is built on:
    :math:`\frac{1}{2\sqrt2} \frac{1}{p (1 - \alpha) - 1/2} \frac{1}{S \sqrt M}`, from step 4
    with Lemma 1bis (:math:`1 - p \le 1 / (2 S^2)`); ``inf`` outside
    :math:`\alpha < 1 - 1/(2p)` or at :math:`S = 0`."""
    margin = _margin(p, alpha)
    if margin <= 0 or snr == 0:
        return math.inf
    return 1 / (2 * math.sqrt(2)) / margin / (snr * math.sqrt(workers))


def theorem2bis_rate(*, l1_smoothness: float, sigma_l1: float, f_gap: float, workers: int,
                     alpha: float, p: float, steps: int) -> float:
    r"""Theorem 2bis as printed: on Theorem 2's schedule (lr
    :math:`\sqrt{(f_0 - f_*) / (\|L\|_1 K)}`, batch K, :math:`N = K^2`), if
    :math:`\alpha < 1 - 1/(2p)`,

    .. math:: \Bigl[\frac1K \sum_k E\|g_k\|_1\Bigr]^2 \le \frac{4}{\sqrt N}
              \Bigl[\frac{1}{2\sqrt2} \frac{1}{p (1 - \alpha) - 1/2}
              \frac{\|\sigma\|_1}{\sqrt M} + \sqrt{\|L\|_1 (f_0 - f_*)}\Bigr]^2.

    ``p`` is one number for every coordinate and step, as printed. ``inf`` outside the
    condition."""
    margin = _margin(p, alpha)
    if margin <= 0:
        return math.inf
    inner = sigma_l1 / (2 * math.sqrt(2) * margin * math.sqrt(workers)) + math.sqrt(
        l1_smoothness * f_gap)
    return 4 / steps * inner * inner  # 4 / sqrt(N) with N = K^2


# --- verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One statement ``lhs <= rhs`` checked at ``points`` points of one family of cases.

    Attributes:
        statement: the statement's name ("Lemma 1bis (report)", "step 2: Cantelli", ...).
        source: whose statement it is (``REPORT``, "Mengoli et al. 2025", "ours", ...).
        case: the family of cases (a noise, a setting).
        assumptions_hold: whether the statement's own assumptions hold on this family.
        points: how many points were checked.
        failures: at how many ``lhs > rhs`` (beyond a relative tolerance).
        worst: the point where ``lhs / rhs`` is largest (its coordinates, ``lhs``, ``rhs``).
        ratio: that largest ``lhs / rhs`` over points with a finite positive ``rhs``
            (above 1: fails by that factor; 1: reached; below 1: slack), ``inf`` where
            ``lhs`` exceeds a bound of 0 or below (a claim that something never happens).
        excess: the largest ``lhs - rhs`` (positive where it fails).
    """

    statement: str
    source: str
    case: str
    assumptions_hold: bool
    points: int
    failures: int
    worst: dict[str, Any] = field(default_factory=dict)
    ratio: float = 0.0
    excess: float = -math.inf

    @property
    def holds(self) -> bool:
        return self.failures == 0


def verdict(statement: str, source: str, case: str,
            points: Iterable[tuple[Mapping[str, Any], float, float]], *,
            assumptions_hold: bool = True, tolerance: float = 1e-12) -> Verdict:
    """Check ``lhs <= rhs`` at every ``(where, lhs, rhs)`` of ``points``: a failure is
    ``lhs > rhs + tolerance * max(1, |rhs|)``. Points whose ``rhs`` is infinite (no
    bound there) count as checked and held."""
    count = failures = 0
    worst: dict[str, Any] = {}
    ratio, excess = 0.0, -math.inf
    for where, lhs, rhs in points:
        count += 1
        if lhs > rhs + tolerance * max(1.0, abs(rhs)):
            failures += 1
        if math.isfinite(rhs):
            excess = max(excess, lhs - rhs)
            # a failure against a bound of 0 or below has no ratio: inf, the worst of all
            point_ratio = lhs / rhs if rhs > 0 else math.inf if lhs > rhs else 0.0
            if point_ratio > ratio:
                ratio = point_ratio
                worst = {**where, "lhs": lhs, "rhs": rhs}
    return Verdict(statement, source, case, assumptions_hold, count, failures, worst,
                   ratio, excess)


# --- noises that test a variance-only claim -----------------------------------------------


def _bernoulli_left_tail(q: float, negated: bool) -> Callable[[float], float]:
    """``P[xi <= -s]`` of the standardised Bernoulli(q): ``(B - q) / sqrt(q (1 - q))``, or
    its negation ``(q - B) / ...`` (a rare large negative value)."""
    low = math.sqrt((1 - q) / q) if negated else math.sqrt(q / (1 - q))  # |negative value|
    mass = q if negated else 1 - q  # of the negative value

    def tail(s: float) -> float:
        return mass if s <= low else 0.0
    return tail


def _bernoulli_sampler(q: float, negated: bool) -> Callable[[int, torch.Generator], Tensor]:
    """Draws of the same noise, its two values computed as the tail's (so that a draw at
    the boundary ``-s`` is counted alike)."""
    rare, common = math.sqrt((1 - q) / q), math.sqrt(q / (1 - q))  # |B=1 value|, |B=0 value|

    def sample(n: int, gen: torch.Generator) -> Tensor:
        b = torch.rand(n, generator=gen, dtype=torch.float64) < q
        xi = torch.where(b, rare, -common).double()
        return -xi if negated else xi
    return sample


def _poisson_pmf(lam: float, k: int) -> float:
    return math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))


def _poisson_left_tail(lam: float, negated: bool) -> Callable[[float], float]:
    """``P[xi <= -s]`` of the standardised Poisson(lam), ``(K - lam) / sqrt(lam)``, or of its
    negation (a long left tail): exact sums of the probability mass function."""
    root = math.sqrt(lam)

    def tail(s: float) -> float:
        if negated:  # P[K >= lam + s sqrt(lam)]
            first = math.ceil(lam + s * root - 1e-9)
            return max(0.0, 1.0 - math.fsum(_poisson_pmf(lam, k) for k in range(first)))
        last = math.floor(lam - s * root + 1e-9)  # P[K <= lam - s sqrt(lam)]
        return math.fsum(_poisson_pmf(lam, k) for k in range(last + 1)) if last >= 0 else 0.0
    return tail


def _poisson_sampler(lam: float, negated: bool) -> Callable[[int, torch.Generator], Tensor]:
    def sample(n: int, gen: torch.Generator) -> Tensor:
        k = torch.poisson(torch.full((n,), lam, dtype=torch.float64), generator=gen)
        xi = (k - lam) / math.sqrt(lam)
        return -xi if negated else xi
    return sample


def _discrete(kind: str, parameter: float, negated: bool) -> Noise:
    name = f"{'-' if negated else ''}{kind}({parameter:g}), standardised"
    if kind == "bernoulli":
        return Noise(name, False, _bernoulli_left_tail(parameter, negated),
                     _bernoulli_sampler(parameter, negated))
    return Noise(name, False, _poisson_left_tail(parameter, negated),
                 _poisson_sampler(parameter, negated))


DISCRETE_NOISES = (
    *(_discrete("bernoulli", q, negated) for q in (0.2, 0.1, 0.01) for negated in (True, False)),
    *(_discrete("poisson", lam, negated) for lam in (0.1, 1.0, 4.0)
      for negated in (True, False)),
)
"""Zero-mean, unit-variance discrete noises that are not symmetric: a standardised
Bernoulli(q) or Poisson(lambda), and each negated (``-``: a rare large negative value, a
long left tail). A minibatch gradient with a rare outlying example looks like the negated
ones. The negated Bernoulli(q) is the two-point noise that reaches Cantelli's bound at
``S = sqrt((1 - q) / q)``."""

CLAIM_NOISES = (*NOISES, *DISCRETE_NOISES)
"""Every noise a variance-only claim is checked on: :data:`signvote.theory.core.NOISES`
and :data:`DISCRETE_NOISES`."""


def worst_sign_error(snr: float) -> float:
    r"""The largest sign error over every noise of mean 0 and variance 1 at ``S``:
    :math:`\sup_\xi P[\xi \le -S] = \frac{1}{1 + S^2}` (Cantelli's inequality, reached by
    the two-point noise :math:`-S` with probability :math:`\frac{1}{1+S^2}` and
    :math:`1/S` otherwise), and 1 at :math:`S = 0` (a noise with :math:`P[\xi \le 0]`
    as close to 1 as one likes)."""
    return 1.0 if snr == 0 else 1 / (1 + snr * snr)


# --- the report's Lemma 1bis and the fixes, checked ------------------------------------------

LEMMA_GRID = [i / 20 for i in range(1, 101)]  # S from 0.05 to 5
"""The signal-to-noise ratios the lemmas are checked at."""

WORST_CASE = "every noise of variance 1 (the worst at each S)"
"""The case of a verdict taken against :func:`worst_sign_error`, the supremum over noises."""


def chebyshev_sign_error(snr: float) -> float:
    r"""Chebyshev's two-sided inequality read as a bound on the sign error:
    :math:`P[\xi \le -S] \le P[|\xi| \ge S] \le 1 / S^2`: the report's Lemma 1bis with the
    constant 1 in place of 1/2 (any noise of variance 1)."""
    return math.inf if snr == 0 else 1 / (snr * snr)


SIGN_ERROR_STATEMENTS: tuple[tuple[str, str, Callable[[float], float], bool], ...] = (
    ("Lemma 1bis: 1/(2S^2)", REPORT, report_lemma1bis_sign_error, False),
    ("fix: Lemma 1bis + symmetric noise", "fix", report_lemma1bis_sign_error, True),
    ("fix: 1/S^2 (Chebyshev, constant 1)", "fix", chebyshev_sign_error, False),
    ("Cantelli: 1/(1+S^2)", "ours", cantelli_sign_error, False),
)
"""The sign-error statements checked: (name, source, bound, needs symmetry). The report's
Lemma 1bis claims to need only the variance; its two smallest repairs either add symmetry
(Chebyshev's two-sided tail halves) or double the constant; Cantelli's form is the
project's, and is the tightest variance-only bound (:func:`worst_sign_error`)."""


def lemma_verdicts(grid: Iterable[float] = LEMMA_GRID) -> list[Verdict]:
    """Each statement of :data:`SIGN_ERROR_STATEMENTS` against the exact sign error of every
    noise of :data:`CLAIM_NOISES` and against the worst case over all noises
    (:func:`worst_sign_error`), at every S of ``grid``."""
    grid = list(grid)
    cases = [(noise.name, noise.left_tail, noise.symmetric_unimodal) for noise in CLAIM_NOISES]
    cases.append((WORST_CASE, worst_sign_error, False))
    out = []
    for name, source, bound, needs_symmetry in SIGN_ERROR_STATEMENTS:
        for case, exact, symmetric in cases:
            out.append(verdict(name, source, case,
                               (({"S": s}, exact(s), bound(s)) for s in grid),
                               assumptions_hold=symmetric or not needs_symmetry))
    return out


# --- the proof of Theorem 2bis, step by step --------------------------------------------------


def step2_cantelli(workers: int, byzantine: int, p: float) -> float:
    r"""Step 2: Cantelli's inequality on :math:`Z \sim \mathrm{Bin}((1-\alpha) M, p)`,
    :math:`P[Z \le M/2] \le 1 / (1 + (E Z - M/2)^2 / \mathrm{Var} Z)`, valid while
    :math:`E Z > M/2` (``inf`` otherwise); 0 when the variance is 0."""
    honest = workers - byzantine
    gap = honest * p - workers / 2
    if gap <= 0:
        return math.inf
    variance = honest * p * (1 - p)
    return variance / (variance + gap * gap)


def step3_am_gm(workers: int, byzantine: int, p: float) -> float:
    r"""Step 3 as printed: with :math:`1 + x^2 \ge 2x`,
    :math:`\frac12 \sqrt{p (1-p) (1-\alpha)} / (p (1-\alpha) - 1/2) / \sqrt M`."""
    alpha = byzantine / workers
    margin = _margin(p, alpha)
    if margin <= 0:
        return math.inf
    return 0.5 * math.sqrt(p * (1 - p) * (1 - alpha)) / margin / math.sqrt(workers)


STEP_GRID_WORKERS = (5, 11, 31, 101)
STEP_GRID_P = (0.51, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


def _exact_byzantine(workers: int, byzantine: int, ps: Tensor) -> list[float]:
    """The exact failure ``P[Z <= M/2]`` (every Byzantine against) at each p of ``ps``."""
    return core.vote_failure_per_coordinate(workers, ps, byzantine=byzantine).tolist()


def proof_step_verdicts(workers: Iterable[int] = STEP_GRID_WORKERS,
                        ps: Iterable[float] = STEP_GRID_P,
                        snrs: Iterable[float] = LEMMA_GRID[::2]) -> list[Verdict]:
    """Steps 2 to 5 of the report's proof of Theorem 2bis (``THEORY.md``) and the bound they
    end with, each as an inequality between exact quantities over a grid of M, f (every
    count below M) and p, or, for the steps that use a noise, over every noise of
    :data:`CLAIM_NOISES` and the worst noise at each S (:func:`worst_sign_error`), at each
S (p = 1 - the noise's exact sign error). Step 1 (every
    Byzantine votes against the true sign) is checked against the coalition strategies in
    :mod:`signvote.theory.coalition`."""
    workers, ps, snrs = list(workers), list(ps), list(snrs)
    grid = [(m, f) for m in workers for f in range(m)]
    exact = {(m, f): _exact_byzantine(m, f, torch.tensor(ps, dtype=torch.float64))
             for m, f in grid}

    def where(m: int, f: int, p: float) -> dict[str, Any]:
        return {"M": m, "f": f, "p": p}

    out = [
        verdict("step 2: Cantelli on Z", REPORT, "binomial Z, every Byzantine against",
                ((where(m, f, p), exact[m, f][i], step2_cantelli(m, f, p))
                 for m, f in grid for i, p in enumerate(ps))),
        verdict("step 3: 1 + x^2 >= 2x", REPORT, "binomial Z",
                ((where(m, f, p), step2_cantelli(m, f, p), step3_am_gm(m, f, p))
                 for m, f in grid for p in ps)),
        verdict("step 4: p (1 - alpha) <= 1", REPORT, "binomial Z",
                ((where(m, f, p), step3_am_gm(m, f, p),
                  theorem2bis_failure_in_p(m, p, f / m)) for m, f in grid for p in ps)),
    ]
    finals: tuple[tuple[str, str, Callable[[int, float, float, float], float]], ...] = (
        ("Theorem 2bis's vote bound (step 5)", REPORT, theorem2bis_failure),
        ("fix: step 5 with 1/S^2 (Chebyshev)", "fix", _step5_chebyshev),
        ("fix: step 5 with 1/(1+S^2) (Cantelli)", "fix", _step5_cantelli),
    )
    tails = [(noise.name, noise.left_tail) for noise in CLAIM_NOISES]
    tails.append((WORST_CASE, worst_sign_error))
    for case, tail in tails:
        p_of = {s: 1 - tail(s) for s in snrs}
        tensor = torch.tensor([p_of[s] for s in snrs], dtype=torch.float64)
        failure = {(m, f): _exact_byzantine(m, f, tensor) for m, f in grid}

        def point(m: int, f: int, s: float, p: float) -> dict[str, Any]:
            return {"M": m, "f": f, "S": s, "p": p}

        out.append(verdict(
            "step 5: Lemma 1bis in step 4", REPORT, case,
            ((point(m, f, s, p_of[s]), theorem2bis_failure_in_p(m, p_of[s], f / m),
              theorem2bis_failure(m, p_of[s], f / m, s)) for m, f in grid for s in snrs)))
        for name, source, bound in finals:
            out.append(verdict(
                name, source, case,
                ((point(m, f, s, p_of[s]), failure[m, f][i], bound(m, p_of[s], f / m, s))
                 for m, f in grid for i, s in enumerate(snrs))))
    return out


def _step5_chebyshev(workers: int, p: float, alpha: float, snr: float) -> float:
    """Step 5 with ``1 - p <= 1 / S^2``: ``(1/2) / (p (1 - alpha) - 1/2) / (S sqrt(M))``."""
    margin = _margin(p, alpha)
    if margin <= 0 or snr == 0:
        return math.inf
    return 0.5 / margin / (snr * math.sqrt(workers))


def _step5_cantelli(workers: int, p: float, alpha: float, snr: float) -> float:
    """Step 5 with ``1 - p <= 1 / (1 + S^2)``:
    ``(1/2) / (p (1 - alpha) - 1/2) / (sqrt(1 + S^2) sqrt(M))``."""
    margin = _margin(p, alpha)
    if margin <= 0:
        return math.inf
    return 0.5 / margin / (math.sqrt(1 + snr * snr) * math.sqrt(workers))


# --- Theorem 2bis's rate with one p, on simulated votes ----------------------------------------

SINGLE_P = ("min", "median", "mean")
"""Where Theorem 2bis's one p is read from the distribution of the exact per-coordinate,
per-step p of a run."""


def p_summary(p: Tensor) -> dict[str, float]:
    """The minimum, median (the lower middle value) and mean of ``p`` (any shape)."""
    flat = p.reshape(-1).double().sort().values
    return {"min": float(flat[0]), "median": float(flat[(flat.numel() - 1) // 2]),
            "mean": float(flat.mean())}


def theorem2bis_rate_checks(case: core.RateCase, repeats: int, gen: torch.Generator
                            ) -> tuple[list[core.RateCheck], dict[str, float]]:
    r"""Simulate ``case`` (:func:`signvote.theory.core.simulate_vote_descent`, Gaussian
    noise only: a worker's estimate is then exactly Gaussian, so each coordinate's exact
    :math:`p = \Phi(S)` at every step is known) and compare the measured left side with
    Theorem 2bis as printed (:func:`theorem2bis_rate`) at one p: the minimum, the median
    and the mean over (step, run, coordinate) of the exact p. Returns the checks (bound
    names ``"Theorem 2bis, p = <min|median|mean>"``; ``inf`` where the theorem's condition
    fails at that p) and the p summary."""
    if case.noise != "gaussian":
        raise ValueError(f"noise {case.noise!r}: the exact p per coordinate is known for the "
                         "Gaussian only; valid: gaussian")
    if repeats < 2:
        raise ValueError(f"repeats {repeats}: need at least 2 (a standard error needs two "
                         "runs)")
    lip = torch.ones(case.dim, dtype=torch.float64)
    run = core.simulate_vote_descent(
        core.OBJECTIVES[[o.name for o in core.OBJECTIVES].index(case.objective)], lip,
        case.sigma * lip, case.start * lip, NOISES[0], workers=case.workers,
        adversaries=case.adversaries, mode=case.mode, steps=case.steps, repeats=repeats,
        gen=gen)
    p = 1 - 0.5 * torch.erfc(run["snr"] / math.sqrt(2))  # 1 - P[xi <= -S], Gaussian
    summary = p_summary(p)
    checks = []
    for where in SINGLE_P:
        value = theorem2bis_rate(l1_smoothness=float(case.dim), sigma_l1=case.sigma * case.dim,
                                 f_gap=run["f_gap"], workers=case.workers,
                                 alpha=case.adversaries / case.workers, p=summary[where],
                                 steps=case.steps)
        checks.append(core.RateCheck(case, f"Theorem 2bis, p = {where}", True, run["lhs"],
                                     run["lhs_se"], value))
    return checks, summary


RATE_CASES_2BIS = (
    *(case for case in core.RATE_CASES if case.noise == "gaussian"),
    # much noise near the minimum, few Byzantine workers: where the condition can hold
    *(core.RateCase("quadratic", "gaussian", "byzantine", m, f, 256, sigma=10.0, start=0.5)
      for m, f in ((10, 0), (10, 1), (10, 2), (100, 0), (100, 10), (100, 20))),
)
"""The simulated settings Theorem 2bis's rate is checked on: the Gaussian cases of
:data:`signvote.theory.core.RATE_CASES`, and noisy ones with Byzantine fractions 0 to 0.2."""


def rate_verdicts(repeats: int = 10, seed: int = 3) -> tuple[list[Verdict], list[dict[str, Any]]]:
    """Theorem 2bis's rate at each single p of :data:`SINGLE_P` on every case of
    :data:`RATE_CASES_2BIS`: one verdict per single p (``lhs`` = the measured left side
    minus 3 standard errors, ``rhs`` = the bound), and one record per case and p for the
    report."""
    gen = torch.Generator().manual_seed(seed)
    records = []
    for case in RATE_CASES_2BIS:
        checks, summary = theorem2bis_rate_checks(case, repeats, gen)
        for where, check in zip(SINGLE_P, checks, strict=True):
            records.append({"case": case.label, "p_at": where, "p": summary[where],
                            "p_min": summary["min"], "p_median": summary["median"],
                            "p_mean": summary["mean"], "measured": check.measured,
                            "measured_se": check.measured_se, "bound": check.value,
                            "holds": check.holds, "ratio": check.ratio})
    verdicts = [verdict(f"Theorem 2bis's rate, one p = the {where}", REPORT,
                        "simulated votes, Gaussian noise (RATE_CASES_2BIS)",
                        (({"case": r["case"], "p": r["p"]},
                          r["measured"] - 3 * r["measured_se"], r["bound"])
                         for r in records if r["p_at"] == where))
                for where in SINGLE_P]
    return verdicts, records
