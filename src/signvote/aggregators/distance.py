"""Distance-based robust aggregators: they select workers by their pairwise distances.

All distances come from one Gram matrix (``base.gram``): one ``[n, d] @ [d, n]`` product,
after which the selection is ``O(n^2 log n)`` work on ``[n, n]`` and the output one
``[n] @ [n, d]`` product.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from signvote.aggregators import REGISTRY
from signvote.aggregators.base import (
    RobustAggregator,
    sorted_columns,
    squared_distances,
    subset_mean,
)
from signvote.aggregators.coordinatewise import mean_around_median
from signvote.registry import to_int, to_positive


def krum_scores(dist: Tensor, neighbours: int, power: float = 2.0) -> Tensor:
    r"""Krum scores ``[n]``: :math:`s(i) = \sum_{j \in N_i} \|x_i - x_j\|^p` over the
    ``neighbours`` nearest other rows (``dist`` the squared distances; 0 neighbours: 0;
    :math:`p` = ``power``, 2 in Blanchard et al.)."""
    n = dist.shape[0]
    if neighbours <= 0:
        return dist.new_zeros(n)
    others = dist + torch.diag(dist.new_full((n,), torch.inf))
    nearest = others.topk(neighbours, dim=1, largest=False).values
    return (nearest if power == 2 else nearest.clamp(min=0) ** (power / 2)).sum(dim=1)


def _neighbours(n: int, f: int, neighbours: int | None) -> int:
    return max(n - f - 2, 1) if neighbours is None else min(neighbours, n - 1)


def _check_neighbours(neighbours: int | None, name: str) -> int | None:
    return None if neighbours is None else to_int(neighbours, "neighbours", name, minimum=1)


def lowest(scores: Tensor, count: int, dist: Tensor | None = None) -> Tensor:
    """The indices of the ``count`` lowest scores. A tie goes to the row whose distances to
    all rows (``dist``) sum lower (so that the choice does not depend on the workers'
    order: with one neighbour, two mutual nearest rows tie), then to the lower index."""
    order = torch.arange(scores.shape[0], device=scores.device)
    if dist is not None:
        order = torch.sort(dist.sum(dim=1), stable=True).indices
    return order[torch.sort(scores[order], stable=True).indices[:count]]


class _KrumFamily(RobustAggregator):
    """What Krum and multi-Krum share: ``n >= 2f + 3`` and the ranking by Krum score."""

    uses_gram = True

    def __init__(self, f: int = 0, neighbours: int | None = None, power: float = 2.0) -> None:
        super().__init__(f)
        self.neighbours = _check_neighbours(neighbours, self.name)
        self.power = to_positive(power, "power", self.name)

    def min_workers(self, f: int) -> int:
        return 2 * f + 3

    def ranked(self, g: Tensor, f: int, count: int) -> Tensor:
        """The ``count`` rows of lowest Krum score (ties as in :func:`lowest`)."""
        dist = squared_distances(g)
        scores = krum_scores(dist, _neighbours(g.shape[0], f, self.neighbours), self.power)
        return lowest(scores, count, dist)


@REGISTRY.register("krum")
class Krum(_KrumFamily):
    r"""Krum: the message with the smallest score,

    .. math:: v = x_{i^*}, \quad i^* = \arg\min_i \sum_{j \in N_i} \|x_i - x_j\|^2,

    :math:`N_i` the :math:`n - f - 2` nearest other messages (``neighbours``; a tie in the
    argmin goes to the smaller sum of distances to all, then to the lower index). With
    ``power`` :math:`p` the score is :math:`\sum_{j \in N_i} \|x_i - x_j\|^p`:
    Karimireddy, He & Jaggi's bucketing code (``codes/aggregator/krum.py``) squares the
    squared distances again, so ``krum(power=4)`` is their Krum (:math:`m = 1`).
    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017. Needs
    :math:`n \ge 2f + 3`. (ByzFL's Krum uses ``neighbours = n - f - 1``.)

    Example:
        >>> Krum(f=1)(torch.tensor([[0.], [1.], [2.], [3.], [100.]]))
        tensor([2.])
    """

    name = "krum"

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        return messages[int(self.ranked(g, f, 1))]


@REGISTRY.register("multi-krum")
class MultiKrum(_KrumFamily):
    r"""Multi-Krum: the mean of the :math:`m` messages with the smallest Krum scores
    (:class:`Krum`; :math:`m = n - f` by default, ties to the lower index),

    .. math:: v = \frac{1}{m} \sum_{i \in S_m} x_i .

    Blanchard et al., NeurIPS 2017 (Section 5); El Mhamdi, Guerraoui & Rouault, "The Hidden
    Vulnerability of Distributed Learning in Byzantium", ICML 2018. Needs :math:`n \ge 2f+3`.

    Example:
        >>> MultiKrum(f=1)(torch.tensor([[0.], [1.], [2.], [3.], [100.]]))
        tensor([1.5000])
    """

    name = "multi-krum"

    def __init__(self, f: int = 0, m: int | None = None, neighbours: int | None = None,
                 power: float = 2.0) -> None:
        super().__init__(f, neighbours, power)
        self.m = None if m is None else to_int(m, "m", "multi-krum", minimum=1)

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        n = messages.shape[0]
        return subset_mean(self.ranked(g, f, min(self.m or n - f, n)), messages)


def bulyan_selection(dist: Tensor, f: int) -> list[int]:
    """Bulyan's first stage: ``n - 2f`` rows chosen one at a time by Krum on the rows not
    yet chosen (each time with ``max(r - f - 2, 1)`` neighbours among the ``r`` remaining)."""
    n = dist.shape[0]
    remaining = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        sub = dist[remaining][:, remaining]
        best = int(lowest(krum_scores(sub, max(len(remaining) - f - 2, 1)), 1, sub))
        chosen.append(remaining.pop(best))
    return chosen


@REGISTRY.register("bulyan")
class Bulyan(RobustAggregator):
    r"""Bulyan: Krum applied :math:`\theta = n - 2f` times (each time removing the chosen
    message), then, on the :math:`\theta` chosen, the coordinate-wise mean of the
    :math:`\beta = \theta - 2f` values closest to the coordinate-wise median,

    .. math:: v_j = \frac{1}{\beta} \sum_{i \in N_j} x_{ij}, \quad N_j = \text{the }
              \beta \text{ chosen values nearest } \mathrm{median}_j .

    El Mhamdi, Guerraoui & Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018. Needs :math:`n \ge 4f + 3`.

    Example:
        >>> Bulyan(f=1)(torch.tensor([[0.], [1.], [2.], [3.], [4.], [5.], [100.]]))
        tensor([3.])
    """

    name = "bulyan"
    uses_gram = True

    def min_workers(self, f: int) -> int:
        return 4 * f + 3

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        n = messages.shape[0]
        chosen = bulyan_selection(squared_distances(g), f)
        return mean_around_median(sorted_columns(messages[chosen]), n - 4 * f)


def _has_cover(adjacency: list[int], alive: int, budget: int, removed: int,
               nodes: list[int]) -> int | None:
    """A vertex cover (bit mask) of the conflict graph on ``alive`` of size <= ``budget``,
    joined to ``removed``, or None: the bounded search tree of vertex cover (at most
    ``2^budget`` leaves); ``nodes[0]`` counts the nodes visited."""
    nodes[0] += 1
    best_v, best_deg = -1, 0
    rest = alive
    while rest:
        v = (rest & -rest).bit_length() - 1
        rest &= rest - 1
        deg = (adjacency[v] & alive).bit_count()
        if deg > best_deg:
            best_v, best_deg = v, deg
    if best_deg == 0:
        return removed
    if budget == 0:
        return None
    v = best_v
    without_v = _has_cover(adjacency, alive & ~(1 << v), budget - 1, removed | (1 << v), nodes)
    if without_v is not None or best_deg > budget:
        return without_v
    neighbours = adjacency[v] & alive
    return _has_cover(adjacency, alive & ~neighbours, budget - best_deg,
                      removed | neighbours, nodes)


def min_diameter_subset(dist: Tensor, f: int) -> list[int]:
    """Exactly a subset of ``n - f`` rows of smallest diameter (largest pairwise distance).

    Its diameter is one of the pairwise distances: binary search for the smallest ``t`` such
    that removing at most ``f`` rows leaves no pair farther apart than ``t``, which is a
    vertex cover of size ``<= f`` in the graph of pairs ``> t``, found by a bounded search
    tree (``O(2^f n)`` per ``t``, not the ``C(n, f)`` subsets). If the cover has fewer than
    ``f`` rows, the remaining removals take the rows farthest from the others (ties: higher
    index).
    """
    n = dist.shape[0]
    values = torch.unique(dist[torch.triu_indices(n, n, 1).unbind()])
    everyone = (1 << n) - 1
    lo, hi, cover = 0, len(values) - 1, None
    while lo <= hi:  # smallest index t with a cover
        mid = (lo + hi) // 2
        far = (dist > values[mid]).tolist()
        adjacency = [sum(1 << j for j in range(n) if far[i][j]) for i in range(n)]
        found = _has_cover(adjacency, everyone, f, 0, [0])
        if found is not None:
            cover, hi = found, mid - 1
        else:
            lo = mid + 1
    removed = [i for i in range(n) if cover is not None and cover >> i & 1]
    if cover is None:  # n - f <= 1: any single row has diameter 0
        removed = []
    spread = dist.max(dim=1).values.tolist()
    extra = sorted((i for i in range(n) if i not in removed), key=lambda i: (-spread[i], -i))
    removed += extra[:f - len(removed)]
    return [i for i in range(n) if i not in removed]


def ball_subset(dist: Tensor, f: int) -> list[int]:
    """A subset of ``n - f`` rows whose diameter is at most twice the smallest possible: of
    the balls "row i and its ``n - f - 1`` nearest rows", the one of smallest diameter.

    If ``S*`` is an optimal subset of diameter ``D*`` and ``i`` in ``S*``, the ``n - f``
    rows nearest ``i`` are within ``D*`` of ``i``, hence within ``2 D*`` of each other.
    """
    n = dist.shape[0]
    balls = dist.topk(n - f, dim=1, largest=False).indices  # [n, n - f], row i included
    diameters = torch.stack([dist[b][:, b].max() for b in balls])
    return sorted(balls[int(lowest(diameters, 1))].tolist())


@REGISTRY.register("mda")
class MDA(RobustAggregator):
    r"""Minimum-diameter averaging: the mean of the :math:`n - f` messages whose diameter is
    smallest,

    .. math:: v = \frac{1}{n - f} \sum_{i \in S^*} x_i, \quad S^* = \arg\min_{|S| = n - f}
              \max_{i, j \in S} \|x_i - x_j\| .

    El Mhamdi, Guerraoui, Guirguis, Hoang & Rouault, "Genuinely Distributed Byzantine
    Machine Learning", PODC 2020 (and Rousseeuw, "Multivariate estimation with high
    breakdown point", 1985). Needs :math:`n > 2f`.

    Exact without enumerating the :math:`\binom{n}{f}` subsets (:func:`min_diameter_subset`:
    a bounded search tree of at most :math:`2^f` leaves per probed diameter). When its worst
    case, :math:`2^f \lceil \log_2 \binom{n}{2} \rceil` nodes, exceeds ``max_nodes``, or with
    ``exact=False``, it uses the 2-approximation :func:`ball_subset` instead (diameter at
    most twice the optimum), decided before any search: never an exponential surprise.
    """

    name = "mda"
    uses_gram = True

    def __init__(self, f: int = 0, exact: bool | None = None, max_nodes: int = 1 << 15) -> None:
        super().__init__(f)
        if exact not in (None, True, False):
            raise ValueError(f"mda: exact must be true, false or none, got {exact!r}")
        self.exact = exact
        self.max_nodes = to_int(max_nodes, "max_nodes", "mda", minimum=1)

    def uses_exact(self, n: int, f: int) -> bool:
        """Whether the exact search runs for ``n`` rows with ``f`` (else the approximation)."""
        if self.exact is not None:
            return bool(self.exact)
        probes = max(1, math.ceil(math.log2(max(n * (n - 1) // 2, 2))))
        return (1 << f) * probes <= self.max_nodes

    def aggregate(self, messages: Tensor, f: int, g: Tensor | None = None) -> Tensor:
        n = messages.shape[0]
        if f == 0:
            return messages.mean(dim=0)
        dist = squared_distances(g)
        chosen = (min_diameter_subset(dist, f) if self.uses_exact(n, f)
                  else ball_subset(dist, f))
        return subset_mean(chosen, messages)
