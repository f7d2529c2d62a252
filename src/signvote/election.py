r"""Election Coding: redundant partition gradients, a local majority vote per worker, the
server's majority vote (Sohn, Han, Choi & Moon, "Election Coding for Distributed Learning:
Protecting SignSGD against Byzantine Attacks", NeurIPS 2020, arXiv 1910.06093).

The framework. The data of a step is cut into :math:`n` partitions (here: the :math:`n`
workers' batches). An *allocation matrix* :math:`G \in \{0, 1\}^{n \times n}` assigns
worker :math:`i` the partitions :math:`P_i = \{j : G_{ij} = 1\}`. An honest worker computes
the sign :math:`s_j \in \{-1, +1\}^d` of each assigned partition's gradient (here: the worker
rule's message for that partition, signSGD's sign or Signum's sign of momentum) and sends
their coordinate-wise majority (the *encoder*)

.. math:: c_i = \mathrm{sign}\Big(\sum_{j} G_{ij}\, s_j\Big) \in \{-1, 0, +1\}^d

(a tie, possible when :math:`|P_i|` is even, sends 0: the authors' code takes
``sign`` of the sum, cifar10/main.py of github.com/jysohn1108/Election-Coding). Byzantine
workers send anything. The server (the *decoder*) takes the majority vote
:math:`\hat\mu = \mathrm{sign}(\sum_i c_i)`. The target is the *majority opinion*
:math:`\mu = \mathrm{sign}(\sum_j s_j)`, the vote an uncoded, attack-free signSGD-MV would
take. The computational redundancy is :math:`r = \|G\|_0 / n`, the mean number of
partition gradients a worker computes per step (the cost is :math:`r` times the plain
vote's).

The codes here:

- :func:`bernoulli_allocation`: the random Bernoulli code, :math:`G_{ij} \sim
  \mathrm{Bernoulli}(q)` i.i.d., expected redundancy :math:`E[r] = n q`; as in the
  authors' code, a draw with an empty row is drawn again (every worker computes something).
- :func:`deterministic_allocation`: a deterministic code for :math:`n` workers (odd) and
  :math:`b` Byzantines, :math:`2b + 1 \le n`. Its rows: :math:`2b + 1` workers compute every
  partition; the other :math:`n - 2b - 1` (an even number) come in pairs, worker
  :math:`2t` computing the single partition :math:`t` and worker :math:`2t + 1` the
  :math:`n - 2` partitions :math:`t + 1, \dots, t + n - 2 \pmod n`. Its redundancy is

  .. math:: r = (2b + 1) + \frac{(n - 2b - 1)(n - 1)}{2n}.

  For :math:`n = 5, b = 1` it is the authors' released matrix (rows ``[1,0,0,0,0]``,
  ``[0,1,1,1,0]`` and three rows of ones, :math:`r = 3.8`; cifar10/main.py). Why it
  tolerates :math:`b`: the full rows output :math:`\mu` exactly; in each pair the two sets
  are disjoint, odd and cover :math:`n - 1` partitions, so both local majorities cannot be
  :math:`-\mu` (that would need :math:`(n + 1)/2` signs :math:`-\mu`); so the light rows
  never have more :math:`-\mu` than :math:`\mu` among them, and with at most :math:`b`
  Byzantines the vote keeps a margin of at least 1.

What the paper says, and what could not be read: the stored copies reachable from this
project's search tool hold only the paper's abstract and introduction (arXiv 1910.06093;
the ar5iv and SPIQA copies of v4, an abstract page of an earlier version). The earlier
abstract claims (i) for the Bernoulli codes "upper bounds on the error probability in
estimating the majority opinion" (v4: "an upper bound on the error probability in
estimating the signs of the true gradients"), (ii) "an explicit code which perfectly
tolerates Byzantines" (v4: "proven to perfectly tolerate arbitrary Byzantine attacks"),
(iii) "tight upper/lower bounds on the minimum required computational redundancy".
The numbered statements (their theorems' exact text, the
general construction and its printed redundancy, the Bernoulli bound) were not available;
the deterministic construction above is the released :math:`n = 5, b = 1` matrix, extended
by us to every odd :math:`n`, and checked here by brute force (:func:`tolerance_check`),
not taken from a printed theorem.

:func:`election_verdicts` returns the checks as :class:`signvote.theory.as_printed.Verdict`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from signvote.theory.as_printed import Verdict, verdict

SOURCE = "Sohn et al. 2020"
"""The source named in the verdicts of the paper's claims."""
CODES = ("none", "deterministic", "bernoulli")
"""``--election-code``: no code (plain vote), the deterministic code, the Bernoulli code."""
MAX_BERNOULLI_DRAWS = 10_000
"""How often :func:`bernoulli_allocation` draws again for a matrix without an empty row."""


# --- allocation matrices ---------------------------------------------------------------------


def deterministic_problem(n: int, b: int) -> str | None:
    """Why :func:`deterministic_allocation` has no code for ``n`` workers and ``b``
    Byzantines (None when it has one): ``n`` odd, ``b >= 0``, ``2b + 1 <= n``."""
    if n < 1 or n % 2 == 0:
        return (f"the deterministic code is built for an odd number of workers (the "
                f"majority of an even number of partitions can tie), got {n}; valid: odd "
                f"n >= 1")
    if b < 0 or 2 * b + 1 > n:
        return (f"the deterministic code for n = {n} workers tolerates at most "
                f"b = {(n - 1) // 2} Byzantines (2b + 1 <= n), got b = {b}; valid: 0 <= b <= "
                f"{(n - 1) // 2}")
    return None


def deterministic_allocation(n: int, b: int) -> Tensor:
    r"""The deterministic code's allocation matrix ``G[n, n]`` (int64, 0/1) for ``n``
    workers (odd) and ``b`` Byzantines (module docstring): rows :math:`0, \dots, n - 2b - 2`
    in pairs ``(2t, 2t + 1)`` with :math:`P_{2t} = \{t\}`,
    :math:`P_{2t+1} = \{t + 1, \dots, t + n - 2\} \bmod n`; the last :math:`2b + 1` rows all
    ones. Raises ValueError outside :func:`deterministic_problem`'s range."""
    problem = deterministic_problem(n, b)
    if problem is not None:
        raise ValueError(problem)
    g = torch.zeros(n, n, dtype=torch.int64)
    light = n - 2 * b - 1
    for t in range(light // 2):
        g[2 * t, t] = 1
        for k in range(1, n - 1):
            g[2 * t + 1, (t + k) % n] = 1
    g[light:] = 1
    return g


def deterministic_redundancy(n: int, b: int) -> float:
    r""":math:`r = (2b + 1) + (n - 2b - 1)(n - 1) / (2n)`, the redundancy of
    :func:`deterministic_allocation` (derived from its rows, not a printed statement)."""
    return (2 * b + 1) + (n - 2 * b - 1) * (n - 1) / (2 * n)


def bernoulli_allocation(n: int, q: float, generator: torch.Generator) -> Tensor:
    r"""The random Bernoulli code: ``G[n, n]`` (int64) with :math:`G_{ij} \sim
    \mathrm{Bernoulli}(q)` i.i.d. from ``generator`` (advanced), drawn again while a row is
    empty (as the authors' code does), at most :data:`MAX_BERNOULLI_DRAWS` times.
    Expected redundancy before the redraw :math:`n q`. ``q`` in (0, 1]."""
    if not (isinstance(q, float | int) and 0 < q <= 1):
        raise ValueError(f"the Bernoulli code's q must be in (0, 1], got {q}")
    for _ in range(MAX_BERNOULLI_DRAWS):
        g = (torch.rand(n, n, generator=generator, dtype=torch.float64) < q).to(torch.int64)
        if bool((g.sum(1) > 0).all()):
            return g
    raise ValueError(f"the Bernoulli code with q = {q} for n = {n} drew an empty row "
                     f"{MAX_BERNOULLI_DRAWS} times; valid: a larger q")


def redundancy(g: Tensor) -> float:
    r"""The computational redundancy :math:`r = \|G\|_0 / n`: gradient computations per
    worker per step."""
    return int((g != 0).sum()) / g.shape[0]


# --- encoder and decoder ----------------------------------------------------------------------


def encode(g: Tensor, signs: Tensor) -> Tensor:
    r"""Every worker's message :math:`c_i = \mathrm{sign}(\sum_j G_{ij} s_j)` from the
    partitions' signs ``signs[n, d]`` (values in {-1, 0, +1}); ``[n, d]`` of ``signs``'
    dtype, 0 where a worker's assigned signs tie. Exact: the sums are small integers."""
    counts = g.to(device=signs.device, dtype=signs.dtype) @ signs
    return torch.sign(counts)


def majority(signs: Tensor) -> Tensor:
    r"""The coordinate-wise majority :math:`\mathrm{sign}(\sum_i m_i)` of ``signs[k, d]``
    (0 on a tie): the server's vote, and on the partitions' signs the majority opinion
    :math:`\mu`."""
    return torch.sign(signs.sum(0))


# --- the tolerance check ----------------------------------------------------------------------


def _patterns(n: int, values: tuple[int, ...]) -> Tensor:
    """Every vector of ``values^n`` as the rows of a ``[len(values)^n, n]`` int64 tensor."""
    return torch.tensor(list(itertools.product(values, repeat=n)), dtype=torch.int64
                        ).reshape(-1, n)


@dataclass(frozen=True)
class Tolerance:
    """What :func:`tolerance_check` found for one code and one number of attackers.

    Attributes:
        attackers: the Byzantine count checked (every set of exactly this size).
        cases: the (partition-sign pattern, Byzantine set, Byzantine messages) combinations.
        failures: how many of them end with a server vote other than the majority opinion.
        example: one failing combination (``signs``, ``byzantine``, ``messages``, ``vote``,
            ``majority``), empty when there is none.
    """

    attackers: int
    cases: int
    failures: int
    example: dict[str, Any]

    @property
    def error(self) -> float:
        return self.failures / self.cases if self.cases else 0.0


def tolerance_check(g: Tensor, attackers: int, *, messages: tuple[int, ...] = (-1, 0, 1),
                    partitions: tuple[int, ...] = (-1, 1), skip_ties: bool = False
                    ) -> Tolerance:
    r"""Brute force, one coordinate: for every partition-sign pattern
    :math:`s \in \{-1, +1\}^n`, every Byzantine set :math:`B` of exactly ``attackers``
    workers and every pattern of their messages in ``messages^{|B|}`` (ternary by default,
    ``(-1, 1)`` for binary), whether the server's vote
    :math:`\mathrm{sign}(\sum_{i \notin B} c_i + \sum_{i \in B} m_i)` equals the majority
    opinion :math:`\mathrm{sign}(\sum_j s_j)`. ``partitions=(-1, 0, 1)``: the partitions'
    signs may be 0 too (a coordinate whose gradient is exactly 0 on a partition, which the
    paper's binary signs leave out); ``skip_ties``: only the patterns whose majority
    opinion is not 0. For ``n`` up to about 9."""
    n = g.shape[0]
    signs = _patterns(n, partitions)  # [P, n]
    mu = torch.sign(signs.sum(1))  # [P]
    if skip_ties:
        signs, mu = signs[mu != 0], mu[mu != 0]
    honest = torch.sign(signs @ g.T.to(torch.int64))  # [P, n]: c_i for every pattern
    sent = _patterns(attackers, messages).sum(1) if attackers else torch.zeros(1, dtype=torch.int64)
    cases = failures = 0
    example: dict[str, Any] = {}
    for byz in itertools.combinations(range(n), attackers):
        keep = torch.ones(n, dtype=torch.bool)
        keep[list(byz)] = False
        total = honest[:, keep].sum(1)[:, None] + sent[None, :]  # [P, M]
        wrong = torch.sign(total) != mu[:, None]
        cases += wrong.numel()
        count = int(wrong.sum())
        if count and not example:
            p, m = (int(v) for v in torch.nonzero(wrong)[0])
            msgs = _patterns(attackers, messages)[m].tolist() if attackers else []
            example = {"signs": signs[p].tolist(), "byzantine": list(byz), "messages": msgs,
                       "vote": int(torch.sign(total[p, m])), "majority": int(mu[p])}
        failures += count
    return Tolerance(attackers, cases, failures, example)


def tolerates(g: Tensor, b: int) -> bool:
    """True when every attack of at most ``b`` Byzantines leaves the vote at the majority
    opinion (:func:`tolerance_check` for 0, ..., ``b`` attackers)."""
    return all(tolerance_check(g, k).failures == 0 for k in range(b + 1))


def worst_case_tolerates(g: Tensor, b: int) -> bool:
    r""":func:`tolerates` by the strongest attack alone: for each sign pattern the ``b``
    Byzantines are the workers whose messages agree most with :math:`\mu`, and each sends
    :math:`-\mu` (no ternary or binary message moves the vote's sum further). Much faster;
    equal to :func:`tolerates` (tested)."""
    return bool(_worst_case_ok(_agreement(g.to(torch.int64))[None], b).all())


def _agreement(rows: Tensor) -> Tensor:
    r"""``[k, P]``: :math:`\mathrm{sign}(\langle G_i, s\rangle)\,\mu(s)` of every row of
    ``rows[k, n]`` and every sign pattern ``s`` of :func:`_patterns` (1: the row's local
    majority agrees with the majority opinion, -1: disagrees, 0: ties)."""
    signs = _patterns(rows.shape[1], (-1, 1))  # [P, n]
    return torch.sign(rows @ signs.T) * torch.sign(signs.sum(1))


def _worst_case_ok(agree: Tensor, b: int) -> Tensor:
    """:func:`worst_case_tolerates` from the agreements ``agree[C, n, P]`` of ``C``
    matrices' rows: ``[C]`` bool."""
    n = agree.shape[1]
    ordered = agree.sort(dim=1).values  # ascending: the Byzantines take the b largest
    return ((ordered[:, :n - b].sum(1) - b) > 0).all(1)


def minimum_redundancy(n: int, b: int, *, nonempty: bool = True, chunk: int = 20_000
                       ) -> tuple[float, Tensor]:
    """The smallest redundancy of any ``n x n`` allocation matrix that tolerates ``b``
    Byzantines, by exhaustive search over the multisets of rows (the rows' order does not
    matter: every Byzantine set is tried), cheapest first; ``nonempty``: every worker
    computes at least one partition (as the authors' Bernoulli draw insists). Returns the
    redundancy and one matrix reaching it. ``n <= 5`` (``C(2^n + n - 1, n)`` multisets)."""
    if n > 5:
        raise ValueError(f"the exhaustive search is for n <= 5, got {n}")
    rows = _patterns(n, (0, 1))
    if nonempty:
        rows = rows[rows.sum(1) > 0]
    combos = torch.tensor(list(itertools.combinations_with_replacement(
        range(rows.shape[0]), n)), dtype=torch.int64)
    cost = rows.sum(1)[combos].sum(1)
    order = torch.argsort(cost, stable=True)
    combos, cost = combos[order], cost[order]
    agree = _agreement(rows)  # [S, P], once for every row
    for lo in range(0, combos.shape[0], chunk):
        ok = _worst_case_ok(agree[combos[lo:lo + chunk]], b)
        if bool(ok.any()):
            k = lo + int(torch.nonzero(ok)[0])
            return int(cost[k]) / n, rows[combos[k]]
    raise ValueError(f"no {n} x {n} allocation matrix tolerates b = {b}")


# --- the Bernoulli code's error ---------------------------------------------------------------


def bernoulli_error(n: int, q: float, attackers: int, draws: int, generator: torch.Generator
                    ) -> tuple[float, float]:
    r"""Monte Carlo over ``draws`` Bernoulli matrices (:func:`bernoulli_allocation`) of the
    probability that the strongest attack of ``attackers`` Byzantines (the first ones: the
    rows are exchangeable) moves the vote off the majority opinion, for the partition-sign
    patterns closest to a tie (:math:`(n + 1)/2` signs against :math:`(n - 1)/2`, ``n``
    odd), each pattern weighted equally. The strongest attack sends :math:`-\mu` from every
    Byzantine (a ternary or binary message cannot move the sum further). Returns the
    estimate and its standard error."""
    signs = _patterns(n, (-1, 1))
    tight = signs[signs.sum(1).abs() == 1]
    mu = torch.sign(tight.sum(1))
    wrong = torch.empty(draws, dtype=torch.float64)
    for k in range(draws):
        g = bernoulli_allocation(n, q, generator)
        honest = torch.sign(tight @ g.T)[:, attackers:].sum(1)
        total = honest - attackers * mu
        wrong[k] = (torch.sign(total) != mu).double().mean()
    mean = float(wrong.mean())
    se = float(wrong.std()) / math.sqrt(draws) if draws > 1 else math.inf
    return mean, se


def uncoded_error(n: int, attackers: int) -> float:
    """The same error as :func:`bernoulli_error` for the plain vote (``G = I``): exact."""
    signs = _patterns(n, (-1, 1))
    tight = signs[signs.sum(1).abs() == 1]
    mu = torch.sign(tight.sum(1))
    total = tight[:, attackers:].sum(1) - attackers * mu
    return float((torch.sign(total) != mu).double().mean())


# --- verdicts ---------------------------------------------------------------------------------

DETERMINISTIC_CASES = ((3, 1), (5, 1), (5, 2), (7, 1), (7, 2), (7, 3), (9, 2))
"""``(n, b)`` of the deterministic codes :func:`election_verdicts` checks by brute force."""
MINIMUM_CASES = ((3, 1), (5, 1))
"""``(n, b)`` where :func:`election_verdicts` compares the code's redundancy with the
exhaustive minimum."""
BERNOULLI_CASES = ((5, 1, 2.5), (9, 2, 3.0), (9, 3, 3.0), (9, 3, 2.0))
"""``(n, b, r)`` of the paper's Bernoulli experiments (their run.sh) that are checked."""


def _deterministic_points(over: int, **kinds: Any
                          ) -> Iterator[tuple[dict[str, Any], float, float]]:
    for n, b in DETERMINISTIC_CASES:
        if kinds and n > 7:
            continue  # 3^9 ternary patterns times every Byzantine set: too many for a report
        g = deterministic_allocation(n, b)
        for k in ([b + over] if over else range(b + 1)):
            if k >= n:
                continue
            t = tolerance_check(g, k, **kinds)
            yield ({"n": n, "b": b, "attackers": k, "r": redundancy(g), **t.example},
                   t.error, 0.0)


def election_verdicts(*, draws: int = 400, seed: int = 0) -> list[Verdict]:
    r"""The Election Coding checks as verdicts (``lhs <= rhs``):

    1. the deterministic code perfectly tolerates :math:`b` Byzantines (the abstract's
       claim (ii), on :func:`deterministic_allocation`): lhs the fraction of
       (sign pattern, Byzantine set of :math:`k \le b`, ternary messages) cases whose vote
       is not the majority opinion, rhs 0, for every :data:`DETERMINISTIC_CASES`;
    2. the same at :math:`b + 1` attackers (no claim; ``assumptions_hold=False``): fails;
       and with partition signs that may be 0 (outside the paper's binary signs): fails
       exactly where the partitions' majority is a tie (0), holds where it is not;
    3. the authors' released :math:`n = 5, b = 1` matrix (:math:`r = 3.8`), at 1 and 2;
    4. the deterministic code's redundancy against the exhaustive minimum
       (:func:`minimum_redundancy`, :data:`MINIMUM_CASES`), with every worker computing
       (holds with equality) and with idle workers allowed (fails: :math:`2b + 1` full
       rows and idle others tolerate :math:`b` at :math:`r = 2b + 1`);
    5. the Bernoulli code's error (Monte Carlo, :func:`bernoulli_error`, ``draws``
       matrices from ``seed``) against the uncoded vote's exact error on the same tight
       patterns (the abstract's "substantial improvement"): lhs minus 2 standard errors.
       The paper's printed error bound could not be read (module docstring), so it is not
       checked here.
    """
    out = [verdict("deterministic code tolerates b Byzantines", SOURCE,
                   "every sign pattern, Byzantine set and ternary message, n <= 9",
                   _deterministic_points(0)),
           verdict("deterministic code at b + 1 Byzantines", "ours (beyond the claim)",
                   "every sign pattern, Byzantine set of b + 1 and ternary message",
                   _deterministic_points(1), assumptions_hold=False),
           verdict("deterministic code tolerates b Byzantines, zero partition signs",
                   "ours (outside the paper's binary signs)",
                   "ternary partition signs, every Byzantine set and ternary message, n <= 7",
                   _deterministic_points(0, partitions=(-1, 0, 1)), assumptions_hold=False),
           verdict("deterministic code tolerates b Byzantines, zero signs, no tie",
                   "ours (outside the paper's binary signs)",
                   "ternary partition signs whose majority is not 0, n <= 7",
                   _deterministic_points(0, partitions=(-1, 0, 1), skip_ties=True),
                   assumptions_hold=False)]
    released = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 1, 0]] + [[1] * 5] * 3)
    for k in (1, 2):
        t = tolerance_check(released, k)
        out.append(verdict(f"released n=5 matrix (r = 3.8) tolerates {k} Byzantine(s)",
                           SOURCE, "every sign pattern, Byzantine set and ternary message",
                           [({"n": 5, "attackers": k, **t.example}, t.error, 0.0)],
                           assumptions_hold=k <= 1))
    for nonempty in (True, False):
        points = []
        for n, b in MINIMUM_CASES:
            best, _ = minimum_redundancy(n, b, nonempty=nonempty)
            points.append(({"n": n, "b": b, "nonempty_rows": nonempty, "minimum_r": best},
                           deterministic_redundancy(n, b), best))
        out.append(verdict("deterministic code's redundancy is the minimum"
                           + (" (every worker computes)" if nonempty else " (idle workers)"),
                           "ours", "exhaustive search over allocation matrices", points,
                           assumptions_hold=nonempty))
    generator = torch.Generator().manual_seed(seed)
    points = []
    for n, b, r in BERNOULLI_CASES:
        mean, se = bernoulli_error(n, r / n, b, draws, generator)
        points.append(({"n": n, "b": b, "r": r, "draws": draws, "error": mean, "se": se},
                       mean - 2 * se, uncoded_error(n, b)))
    out.append(verdict("Bernoulli code error <= uncoded vote error", SOURCE,
                       "tightest sign patterns, strongest attack, Monte Carlo over G",
                       points))
    return out
