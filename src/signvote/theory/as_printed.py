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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REPORT = "Akoun & Meyer 2022"
"""The source named in the verdicts of the report's own statements."""


def report_lemma1bis_sign_error(snr: float) -> float:
    r"""The report's Lemma 1bis as printed: :math:`P[\text{sign wrong}] \le 1 / (2 S^2)`
    (``inf`` at :math:`S = 0`), claimed for any noise of variance :math:`\sigma^2`."""
    return math.inf if snr == 0 else 1 / (2 * snr * snr)


def report_tolerable_fraction(p: float) -> float:
    r"""Theorem 2bis's condition as printed: it holds for :math:`\alpha < 1 - 1/(2p)`
    (0 when :math:`p \le 1/2`)."""
    return max(0.0, 1 - 1 / (2 * p))


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
            (above 1: fails by that factor; 1: reached; below 1: slack).
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
            if rhs > 0 and lhs / rhs > ratio:
                ratio = lhs / rhs
                worst = {**where, "lhs": lhs, "rhs": rhs}
    return Verdict(statement, source, case, assumptions_hold, count, failures, worst,
                   ratio, excess)
