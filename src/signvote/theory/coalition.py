r"""What a colluding Byzantine coalition does to one coordinate of the majority vote,
exactly: the failure probability, the probability of a wrong sign and the expected
progress for several coalition strategies, and the bounds on the vote's failure beside
the exact worst case.

Setting (the project's, :mod:`signvote.theory.core`): one coordinate whose true sign is
:math:`t \in \{+1, -1\}`; :math:`H` honest workers each vote :math:`t` with probability
:math:`p` and :math:`-t` otherwise, independently; :math:`f` Byzantine workers,
:math:`M = H + f`, :math:`\alpha = f / M`. With :math:`K \sim \mathrm{Bin}(H, p)` the honest
right votes, the honest vote sum is :math:`s = t (2K - H)`. A strategy sends the coalition's
votes (each in :math:`\{-1, 0, +1\}`), whose sum is :math:`c`; the vote is
:math:`V = s + c` and

- it *fails* when :math:`t V \le 0` (wrong or zero: a tie is a failure, the project's
  convention), it is *wrong* when :math:`t V < 0`;
- its *progress* is :math:`E[\mathrm{sign}(V)\, t]` (1 when always right).

Every probability here is an exact sum over :math:`K`:
:math:`P[\text{fail}] = \sum_{k=0}^{H} \binom{H}{k} p^k (1-p)^{H-k}\,
\mathbb{1}[t V(k) \le 0]`, where :math:`V(k)` is obtained by running the strategy itself
(the project's attack classes for ``vote-cancel``, ``optimal-vote`` and ``cancel-to-zero``)
on a message matrix whose column :math:`k` holds :math:`k` right honest votes.

Strategies (:data:`STRATEGIES`):

- ``all-against``: every Byzantine votes :math:`-t`, :math:`c = -t f` (the report's step 1
  worst case, Akoun & Meyer, "SignSGD: Fault-Tolerance to Blind and Byzantine Adversaries",
  arXiv 2202.02085, 2022, proof of Theorem 2bis; its failure is
  ``signvote.theory.vote_failure_exact(M, p, f, "byzantine")``).
- ``vote-cancel``: the report's strategy,
  :func:`signvote.attacks.basic.cancelling_votes` (reads :math:`s`, not :math:`t`).
- ``optimal-vote``: :class:`signvote.attacks.omniscient.OptimalVote`,
  :math:`c = -f\,\mathrm{sign}(s)` (reads :math:`s`).
- ``mengoli-optimal``: the omniscient coalition's best response as we read Mengoli, Moll,
  Strozzi & El-Mhamdi, "On the Byzantine Fault Tolerance of signSGD with Majority Vote",
  arXiv 2502.19170 (2025): a coalition that knows everything (the honest messages *and*
  the true gradient) and chooses the total :math:`c \in \{-f, \dots, f\}` that minimises
  :math:`t (s + c)`, found by a search over every reachable total
  (:func:`omniscient_best_total`). **Reading, not the printed text**: the paper's body was
  not available to us (only its abstract: "the strongest possible damage ... the optimal
  strategy for maximizing damage"); the search always returns :math:`c = -t f`, so under
  this reading their attack is ``all-against``.
- ``cancel-to-zero``: ours (:class:`signvote.attacks.omniscient.CancelToZero`): reads
  :math:`s` only and sends :math:`c = -\mathrm{clip}(s, -f, f)` using abstentions, so the
  vote is exactly 0 wherever :math:`|s| \le f`. Its failure equals ``all-against``'s at
  every :math:`(H, f, p, t)` (both fail exactly when :math:`t s \le f`), without knowing
  :math:`t`.

Findings this module computes (:func:`worst_case_verdicts`, :func:`best_response_verdicts`):

- every strategy's failure, P[wrong] and loss of progress are at most ``all-against``'s,
  at every :math:`(H, f, p, t)`: any :math:`f` ternary votes sum to :math:`t c \ge -f`, so
  :math:`t V` is never below all-against's, outcome by outcome;
- ``optimal-vote`` fails less where the honest majority is wrong but within reach
  (:math:`0 < -t s < f`: its votes against the honest majority put the vote back on the
  right side), by exactly :math:`P[0 < -t s < f]` (:func:`corrected_mass`); such an
  :math:`s` exists only when :math:`s \equiv H \pmod 2` allows it;
- ``vote-cancel`` (all :math:`\pm 1`) ends at :math:`V \in \{0, \mp 1\}` where
  :math:`|s| \le f`: with :math:`M` odd it flips a wrong honest majority back as
  ``optimal-vote`` does, with :math:`M` even it zeroes it (the failure of ``all-against``),
  and its tie-break at :math:`s = 0` (the seed's mirror rule: a total of
  :math:`f \bmod 2`, +1 for odd :math:`f`) fails for :math:`t = -1` only;
- with the true sign unknown (:math:`\pm 1` with probability 1/2), the most a coalition
  that reads the honest votes can do (:func:`honest_sum_best_response`) is attained by
  ``cancel-to-zero`` for P[fail] (which then equals ``all-against``'s: the report's step 1
  is attained without knowing the true sign) and by ``optimal-vote`` for the progress;
  for P[wrong] by neither (``optimal-vote`` abstains at :math:`s = 0`).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from signvote.theory.as_printed import Verdict, theorem2bis_failure_in_p, verdict
from signvote.theory.core import _binomial_pmf, vote_failure_bound

STRATEGIES = ("all-against", "vote-cancel", "optimal-vote", "mengoli-optimal",
              "cancel-to-zero")
"""The coalition strategies :func:`coalition_outcome` knows."""

MENGOLI = "Mengoli et al. 2025"
"""The source named in verdicts about Mengoli, Moll, Strozzi & El-Mhamdi (arXiv 2502.19170)."""

OURS = "ours"

WORKER_GRID = (5, 11, 31, 101)
"""The numbers of workers :math:`M` of the checks."""

EVEN_WORKER_GRID = (6, 10, 30, 100)
"""Even :math:`M` added to the worst-case checks: ``vote-cancel`` behaves differently with
:math:`M` even (its votes zero a wrong honest majority instead of flipping it back)."""

P_GRID = tuple(round(0.55 + 0.01 * i, 2) for i in range(45))
"""The honest right-sign probabilities of the checks: 0.55 to 0.99 by 0.01."""


def _check_sizes(honest: int, byzantine: int) -> None:
    if not isinstance(honest, int) or honest < 1:
        raise ValueError(f"honest workers {honest!r}; valid: an integer >= 1")
    if not isinstance(byzantine, int) or byzantine < 0:
        raise ValueError(f"Byzantine workers {byzantine!r}; valid: an integer >= 0")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def _check_sign(true_sign: int) -> None:
    if true_sign not in (1, -1):
        raise ValueError(f"true_sign {true_sign!r}; valid: 1, -1")


def omniscient_best_total(honest_sum: int, byzantine: int, true_sign: int) -> int:
    r"""The coalition total :math:`c` minimising :math:`t (s + c)` over every total
    :math:`f` votes in :math:`\{-1, 0, +1\}` can reach (:math:`c \in \{-f, \dots, f\}`),
    by search: the omniscient best response (our reading of Mengoli et al. 2025's optimal
    attack; it is :math:`-t f` for every :math:`s`)."""
    _check_sign(true_sign)
    return min(range(-byzantine, byzantine + 1),
               key=lambda c: (true_sign * (honest_sum + c), abs(c)))


def honest_columns(honest: int, true_sign: int = 1) -> Tensor:
    """``[honest, honest + 1]`` float64 honest votes: column ``k`` has ``k`` votes of
    ``true_sign`` (right) on top and ``honest - k`` of ``-true_sign`` below."""
    rows = torch.arange(honest).unsqueeze(1)
    k = torch.arange(honest + 1).unsqueeze(0)
    return torch.where(rows < k, float(true_sign), float(-true_sign)).double()


def coalition_messages(strategy: str, honest_votes: Tensor, byzantine: int,
                       true_sign: int = 1) -> Tensor:
    """The coalition's ``[byzantine, d]`` votes against ``honest_votes[H, d]`` (columns
    are coordinates): the project's attack classes for the strategies that read only the
    honest votes, ``-true_sign`` everywhere for ``all-against``, and
    :func:`omniscient_best_total` spread over the coalition for ``mengoli-optimal``."""
    _check_strategy(strategy)
    _check_sign(true_sign)
    from signvote.attacks import AttackContext, get

    d = honest_votes.shape[1]
    if byzantine == 0:
        return honest_votes.new_zeros(0, d)
    if strategy == "all-against":
        return honest_votes.new_full((byzantine, d), float(-true_sign))
    if strategy == "mengoli-optimal":
        sums = honest_votes.sum(0).round().long().tolist()
        totals = torch.tensor([omniscient_best_total(s, byzantine, true_sign) for s in sums],
                              dtype=honest_votes.dtype)
        return _spread(totals, byzantine)
    messages = torch.cat([honest_votes, honest_votes.new_zeros(byzantine, d)])
    mask = torch.zeros(messages.shape[0], dtype=torch.bool)
    mask[honest_votes.shape[0]:] = True
    ctx = AttackContext(step=0, generator=torch.Generator(), sign_messages=True)
    return get(strategy)(messages, mask, ctx)[mask]


def _spread(totals: Tensor, byzantine: int) -> Tensor:
    """``[byzantine, d]`` votes in {-1, 0, +1} summing to ``totals`` (|total| <= byzantine):
    the first ``|total|`` workers vote its sign, the others abstain."""
    k = torch.arange(byzantine).unsqueeze(1)
    return torch.where(k < totals.abs().unsqueeze(0), torch.sign(totals).unsqueeze(0),
                       torch.zeros_like(totals).unsqueeze(0))


def coalition_votes(strategy: str, honest: int, byzantine: int, true_sign: int = 1) -> Tensor:
    """The vote :math:`V(k)` (float64 ``[honest + 1]``) when ``k`` of the ``honest`` workers
    are right, under ``strategy``."""
    _check_sizes(honest, byzantine)
    votes = honest_columns(honest, true_sign)
    return votes.sum(0) + coalition_messages(strategy, votes, byzantine, true_sign).sum(0)


@functools.lru_cache(maxsize=4096)
def _indicators(strategy: str, honest: int, byzantine: int, true_sign: int
                ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Per ``k = 0..honest``: 1[t V(k) <= 0], 1[t V(k) < 0] and sign(t V(k)) (cached: they
    do not depend on ``p``)."""
    signed = (true_sign * coalition_votes(strategy, honest, byzantine, true_sign)).tolist()
    return (tuple(1.0 if v <= 0 else 0.0 for v in signed),
            tuple(1.0 if v < 0 else 0.0 for v in signed),
            tuple(1.0 if v > 0 else -1.0 if v < 0 else 0.0 for v in signed))


@functools.lru_cache(maxsize=8192)
def _pmf(honest: int, p: float) -> tuple[float, ...]:
    return tuple(_binomial_pmf(honest, p))


@dataclass(frozen=True)
class Outcome:
    """One strategy's exact outcome at one coordinate.

    Attributes:
        failure: :math:`P[t V \\le 0]` (wrong or zero).
        wrong: :math:`P[t V < 0]`.
        progress: :math:`E[\\mathrm{sign}(V)\\, t]`.
    """

    failure: float
    wrong: float
    progress: float


@functools.lru_cache(maxsize=65536)
def coalition_outcome(strategy: str, honest: int, byzantine: int, p: float,
                      true_sign: int = 1) -> Outcome:
    r"""The exact :class:`Outcome` of ``strategy`` with ``honest`` workers each right with
    probability ``p`` and ``byzantine`` colluders, true sign ``true_sign``: binomial sums
    :math:`\sum_k \binom{H}{k} p^k (1 - p)^{H - k} \mathbb{1}[\cdot]` over :math:`V(k)`
    from :func:`coalition_votes`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p {p!r}; valid: a probability in [0, 1]")
    fail, wrong, progress = _indicators(strategy, honest, byzantine, true_sign)
    pmf = _pmf(honest, p)
    return Outcome(failure=math.fsum(map(operator.mul, pmf, fail)),
                   wrong=math.fsum(map(operator.mul, pmf, wrong)),
                   progress=math.fsum(map(operator.mul, pmf, progress)))


def coalition_failure(strategy: str, honest: int, byzantine: int, p: float,
                      true_sign: int | None = None) -> float:
    """:attr:`Outcome.failure`; with ``true_sign=None`` the larger over both true signs
    (``vote-cancel`` breaks the tie :math:`s = 0` towards +1, so its failure depends on
    the sign; the others are symmetric)."""
    signs = (1, -1) if true_sign is None else (true_sign,)
    return max(coalition_outcome(strategy, honest, byzantine, p, t).failure for t in signs)


def failure_gap(strategy: str, honest: int, byzantine: int, p: float,
                true_sign: int = 1) -> float:
    """``failure(all-against) - failure(strategy)``: how much less ``strategy`` fails than
    the report's worst case (>= 0 where the worst case holds)."""
    return (coalition_outcome("all-against", honest, byzantine, p, true_sign).failure
            - coalition_outcome(strategy, honest, byzantine, p, true_sign).failure)


def corrected_mass(honest: int, byzantine: int, p: float) -> float:
    r""":math:`P[0 < -t s < f]`: the probability that the honest majority is wrong by less
    than :math:`f`, where a coalition voting against the honest majority (``optimal-vote``)
    makes the vote right; the closed form of ``failure_gap("optimal-vote", ...)``."""
    pmf = _binomial_pmf(honest, p)
    return math.fsum(w for k, w in enumerate(pmf) if 0 < honest - 2 * k < byzantine)


# --- the grid ------------------------------------------------------------------------------


def grid_points(workers: Sequence[int] = WORKER_GRID, ps: Sequence[float] = P_GRID,
                beyond_half: bool = False) -> list[tuple[int, int, float]]:
    """``(M, f, p)`` for every ``M`` of ``workers``, every ``f < M / 2`` (every
    ``f < M`` with ``beyond_half``) and every ``p`` of ``ps``."""
    out = []
    for m in workers:
        top = m if beyond_half else (m + 1) // 2
        out.extend((m, f, p) for f in range(top) if beyond_half or 2 * f < m for p in ps)
    return out


MEASURES = ("failure", "wrong", "progress")
"""What :func:`worst_case_points` compares: P[fail], P[wrong] (at most all-against's) and
the expected progress (at least all-against's)."""


def worst_case_points(strategy: str, points: Iterable[tuple[int, int, float]],
                      true_sign: int = 1, measure: str = "failure"
                      ) -> list[tuple[dict, float, float]]:
    """``(where, lhs, rhs)`` at each ``(M, f, p)`` for the claim that all-against is the
    worst case, for :func:`~signvote.theory.as_printed.verdict`: ``(strategy's,
    all-against's)`` P[fail] or P[wrong], ``(all-against's, strategy's)`` progress."""
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}; valid: {', '.join(MEASURES)}")
    out = []
    for m, f, p in points:
        p = float(p)
        mine = getattr(coalition_outcome(strategy, m - f, f, p, true_sign), measure)
        worst = getattr(coalition_outcome("all-against", m - f, f, p, true_sign), measure)
        where = {"M": m, "f": f, "p": p, "true_sign": true_sign}
        out.append((where, worst, mine) if measure == "progress" else (where, mine, worst))
    return out


_STATEMENTS = {"failure": "P[fail](strategy) <= P[fail](all against)",
               "wrong": "P[wrong](strategy) <= P[wrong](all against)",
               "progress": "progress(all against) <= progress(strategy)"}


def worst_case_verdicts(points: Sequence[tuple[int, int, float]] | None = None
                        ) -> list[Verdict]:
    """One :class:`Verdict` per strategy other than ``all-against``, per measure of
    :data:`MEASURES` and per true sign: the report's step 1 (all against the true sign is
    the worst case; Akoun & Meyer 2022, proof of Theorem 2bis) for that strategy. Default
    points: :data:`WORKER_GRID` and :data:`EVEN_WORKER_GRID`, every ``f < M/2``,
    :data:`P_GRID`."""
    points = grid_points(WORKER_GRID + EVEN_WORKER_GRID) if points is None else points
    out = []
    for strategy in STRATEGIES[1:]:
        for measure in MEASURES:
            for t in (1, -1):
                out.append(verdict(f"step 1 worst case: {_STATEMENTS[measure]}",
                                   "Akoun & Meyer 2022", f"{strategy}, true sign {t:+d}",
                                   worst_case_points(strategy, points, t, measure)))
    return out


def worst_case_gaps(points: Sequence[tuple[int, int, float]] | None = None) -> list[dict]:
    """Per strategy other than ``all-against``, true sign and ``M``: the largest and the
    mean :func:`failure_gap` over the points of that ``M`` (how much less than the report's
    worst case the strategy fails), where the largest is, and the largest P[wrong] and
    progress gaps (default points as :func:`worst_case_verdicts`)."""
    points = grid_points(WORKER_GRID + EVEN_WORKER_GRID) if points is None else points
    rows = []
    for strategy in STRATEGIES[1:]:
        for t in (1, -1):
            for m in sorted({pt[0] for pt in points}):
                gaps = []
                for mm, f, p in points:
                    if mm != m:
                        continue
                    mine = coalition_outcome(strategy, m - f, f, float(p), t)
                    worst = coalition_outcome("all-against", m - f, f, float(p), t)
                    gaps.append((worst.failure - mine.failure, f, p,
                                 worst.wrong - mine.wrong, mine.progress - worst.progress))
                top = max(gaps)
                rows.append({"strategy": strategy, "true_sign": t, "M": m,
                             "max failure gap": top[0], "at f": top[1], "at p": top[2],
                             "mean failure gap": math.fsum(g[0] for g in gaps) / len(gaps),
                             "max wrong gap": max(g[3] for g in gaps),
                             "max progress gap": max(g[4] for g in gaps)})
    return rows


# --- the best a coalition that reads only the honest votes can do --------------------------


def _damage(measure: str, signed_vote: float) -> float:
    """The attacker's gain at one outcome ``t V``: 1[t V <= 0], 1[t V < 0], or
    ``-sign(t V)`` (minus the progress)."""
    if measure == "failure":
        return 1.0 if signed_vote <= 0 else 0.0
    if measure == "wrong":
        return 1.0 if signed_vote < 0 else 0.0
    return -1.0 if signed_vote > 0 else 1.0 if signed_vote < 0 else 0.0


def honest_sum_best_response(honest: int, byzantine: int, p: float, measure: str) -> float:
    r"""The largest damage a coalition that sees the honest votes but not the true sign can
    do, the true sign being :math:`\pm 1` with probability 1/2 each: for each honest sum
    :math:`s` the total :math:`c \in \{-f, \dots, f\}` (every total ternary votes reach) that
    maximises :math:`rac12 P[s \mid t = 1]\, d(s + c) + rac12 P[s \mid t = -1]\, d(-s - c)`,
    summed over :math:`s` (a search; the honest votes are exchangeable, so :math:`s` is all
    they tell about :math:`t`). ``measure``: ``failure`` or ``wrong`` (the damage is that
    probability) or ``progress`` (returned as the smallest expected progress)."""
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}; valid: {', '.join(MEASURES)}")
    _check_sizes(honest, byzantine)
    return _best_response(honest, byzantine, float(p), measure)


@functools.lru_cache(maxsize=65536)
def _best_response(honest: int, byzantine: int, p: float, measure: str) -> float:
    pmf = _pmf(honest, p)
    total = []
    for k in range(honest + 1):  # s = 2k - H; P[s | t = 1] = pmf[k], P[s | t = -1] = pmf[H - k]
        s = 2 * k - honest
        # the damage depends on s + c only through its sign: try each reachable sign
        reachable = [x for x, ok in ((-1, s - byzantine < 0), (0, abs(s) <= byzantine),
                                     (1, s + byzantine > 0)) if ok]
        total.append(max(0.5 * pmf[k] * _damage(measure, x)
                         + 0.5 * pmf[honest - k] * _damage(measure, -x) for x in reachable))
    best = math.fsum(total)
    return -best if measure == "progress" else best


def sign_averaged(strategy: str, honest: int, byzantine: int, p: float, measure: str
                  ) -> float:
    """``strategy``'s ``measure`` averaged over the true sign (1/2 each)."""
    return 0.5 * (getattr(coalition_outcome(strategy, honest, byzantine, p, 1), measure)
                  + getattr(coalition_outcome(strategy, honest, byzantine, p, -1), measure))


def best_response_verdicts(points: Sequence[tuple[int, int, float]] | None = None
                           ) -> list[Verdict]:
    r"""Per strategy that reads only the honest votes and per measure: does it do the
    most damage such a coalition can (:func:`honest_sum_best_response`, the true sign
    :math:`\pm 1` with probability 1/2)? ``lhs <= rhs`` with the strategy's damage on the
    right (P[fail], P[wrong], or minus the progress); the claim of
    :class:`~signvote.attacks.omniscient.OptimalVote`'s docstring ("the best response ...
    to the majority vote") is the ``optimal-vote`` rows."""
    points = grid_points(WORKER_GRID + EVEN_WORKER_GRID) if points is None else points
    out = []
    for strategy in ("vote-cancel", "optimal-vote", "cancel-to-zero"):
        for measure in MEASURES:
            sign = -1.0 if measure == "progress" else 1.0
            pts = [({"M": m, "f": f, "p": p},
                    sign * honest_sum_best_response(m - f, f, p, measure),
                    sign * sign_averaged(strategy, m - f, f, float(p), measure))
                   for m, f, p in points]
            out.append(verdict(f"attains the best honest-sum response, {measure}", OURS,
                               strategy, pts, tolerance=1e-9))
    return out


# --- bounds on the vote's failure against the exact worst case -----------------------------


def hoeffding_failure_bound(workers: int, p: float, alpha: float) -> float:
    r"""Hoeffding's inequality (W. Hoeffding, "Probability Inequalities for Sums of Bounded
    Random Variables", JASA 1963, Theorem 1) on the honest right votes
    :math:`Z \sim \mathrm{Bin}(H, p)`, :math:`H = (1 - \alpha) M`, against all-against:
    :math:`P[Z \le M/2] \le \exp(-2 (H p - M/2)^2 / H)` while :math:`H p > M/2`; 1 (no
    bound) otherwise. Ours, a reference with no unknown constant."""
    honest = workers * (1 - alpha)
    gap = honest * p - workers / 2
    if honest <= 0 or gap <= 0:
        return 1.0
    return math.exp(-2 * gap * gap / honest)


BOUNDS: dict[str, Callable[[int, float, float], float]] = {
    "report step 4": theorem2bis_failure_in_p,
    "ours (Cantelli)": lambda m, p, a: vote_failure_bound(m, p, a, "byzantine"),
    "Hoeffding (reference)": hoeffding_failure_bound,
}
"""The bounds :func:`tightest_bounds` compares, ``(M, p, alpha) -> bound``. Mengoli et
al. 2025's bound is not among them: its printed statement was not available to us (add it
here, under its name, once it is)."""


@dataclass(frozen=True)
class BoundPoint:
    """One grid point of :func:`tightest_bounds`.

    Attributes:
        workers, byzantine, p: :math:`M`, :math:`f`, :math:`p`; ``alpha`` is :math:`f/M`.
        exact: the exact failure under all-against.
        bounds: each bound's value (``inf`` / 1 where it gives none).
        tightest: the smallest valid (>= exact) bound below 1, or "" when none is.
    """

    workers: int
    byzantine: int
    p: float
    exact: float
    bounds: dict[str, float] = field(default_factory=dict)
    tightest: str = ""

    @property
    def alpha(self) -> float:
        return self.byzantine / self.workers


def tightest_bounds(points: Iterable[tuple[int, int, float]] | None = None,
                    bounds: Mapping[str, Callable[[int, float, float], float]] | None = None
                    ) -> list[BoundPoint]:
    """At each ``(M, f, p)``: the exact all-against failure, every bound of ``bounds``
    (default :data:`BOUNDS`) and which valid one (>= exact, < 1) is smallest."""
    points = grid_points() if points is None else points
    bounds = BOUNDS if bounds is None else bounds
    out = []
    for m, f, p in points:
        exact = coalition_outcome("all-against", m - f, f, p).failure
        values = {name: float(b(m, p, f / m)) for name, b in bounds.items()}
        valid = {n: v for n, v in values.items() if v >= exact * (1 - 1e-12) and v < 1}
        best = min(valid, key=valid.__getitem__) if valid else ""
        out.append(BoundPoint(m, f, p, exact, values, best))
    return out


ALPHA_BINS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5))
P_BINS = ((0.55, 0.7), (0.7, 0.85), (0.85, 1.0))


def tightest_summary(table: Sequence[BoundPoint] | None = None) -> list[dict]:
    """Per region (``M``, an ``alpha`` bin of :data:`ALPHA_BINS`, a ``p`` bin of
    :data:`P_BINS`): the number of points, how often each bound is the tightest valid one,
    how often none is below 1, how often each is invalid (< exact), and each bound's median
    ratio bound / exact where it is below 1."""
    table = tightest_bounds() if table is None else table
    names = list(table[0].bounds) if table else []
    rows = []
    for m in sorted({pt.workers for pt in table}):
        for a_lo, a_hi in ALPHA_BINS:
            for p_lo, p_hi in P_BINS:
                pts = [pt for pt in table if pt.workers == m and a_lo <= pt.alpha < a_hi
                       and p_lo <= pt.p < p_hi]
                if not pts:
                    continue
                row = {"M": m, "alpha": f"[{a_lo}, {a_hi})", "p": f"[{p_lo}, {p_hi})",
                       "points": len(pts), "none below 1": sum(not pt.tightest for pt in pts)}
                for n in names:
                    row[f"tightest: {n}"] = sum(pt.tightest == n for pt in pts)
                    row[f"invalid: {n}"] = sum(pt.bounds[n] < pt.exact * (1 - 1e-12)
                                               for pt in pts)
                    ratios = sorted(pt.bounds[n] / pt.exact for pt in pts
                                    if pt.bounds[n] < 1 and pt.exact > 0)
                    row[f"median ratio: {n}"] = ratios[len(ratios) // 2] if ratios else math.inf
                rows.append(row)
    return rows


def bound_verdicts(table: Sequence[BoundPoint] | None = None,
                   names: Sequence[str] = ("Hoeffding (reference)",)) -> list[Verdict]:
    """``exact <= bound`` per bound of ``names`` and per ``M`` over the table."""
    table = tightest_bounds() if table is None else table
    out = []
    for n in names:
        for m in sorted({pt.workers for pt in table}):
            pts = [({"M": pt.workers, "f": pt.byzantine, "p": pt.p}, pt.exact, pt.bounds[n])
                   for pt in table if pt.workers == m]
            out.append(verdict(f"vote failure <= {n}", OURS, f"all against, M = {m}", pts))
    return out


def coalition_verdicts() -> list[Verdict]:
    """Every statement this module checks: "all against is the worst case" for each
    strategy, true sign and measure (:func:`worst_case_verdicts`, odd and even ``M``);
    whether each honest-vote strategy is the best response of a coalition that does not
    know the true sign (:func:`best_response_verdicts`);
    Hoeffding's bound against the exact failure (:func:`bound_verdicts` on
    :data:`WORKER_GRID`, every ``f < M/2``, :data:`P_GRID`).
    Mengoli et al. 2025's bound is absent (its statement was not available to us)."""
    return worst_case_verdicts() + best_response_verdicts() + bound_verdicts()
