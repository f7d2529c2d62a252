"""What the robust aggregators share: the fault bound ``f``, malformed rows, distances.

Conventions of every robust aggregator (docs/design.md, "Robust aggregators"):

- ``f`` is the number of Byzantine workers the rule is built to tolerate; each rule states
  the smallest ``n`` it accepts for that ``f`` and refuses fewer with a ValueError.
- A message whose squared norm is not finite (a NaN or infinite entry, or entries so large
  that ``||m||^2`` overflows) is *malformed* (the coordinate-wise rules, which never square,
  treat a row of finite values as malformed only when it makes their result overflow:
  ``coordinatewise.SortedRule``): the server discards it before aggregating, and
  since a malformed sender is certainly faulty, the rule runs with ``f' = max(f - k, 0)``
  on the ``n - k`` remaining rows. If more than ``f`` rows are malformed, the rule's bound
  no longer applies; the remaining rows are then aggregated by the coordinate-wise median
  when the rule cannot run on so few, and an all-malformed input aggregates to zeros. So a
  non-finite message never makes a robust aggregator return a non-finite value.
- Distances come from the Gram matrix, ``||x_i - x_j||^2 = ||x_i||^2 + ||x_j||^2 - 2 <x_i,
  x_j>``, one ``[n, d] @ [d, n]`` product, then held in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.contracts import AggregatorBase, State
from signvote.registry import to_int


def check_f(f: int, name: str) -> int:
    """``f`` as an int, or a ValueError naming the aggregator and the valid values."""
    return to_int(f, "f", name, minimum=0)


def finite_rows(messages: Tensor) -> Tensor:
    """Boolean ``[n]``: True where the row's squared norm is finite (the row is well formed)."""
    return torch.isfinite(torch.linalg.vector_norm(messages, dim=1))


def well_formed(messages: Tensor, f: int,
                keep: Tensor | None = None) -> tuple[Tensor, int, Tensor | None]:
    """``(rows, f', keep)``: the well-formed rows of ``messages`` (all of them, not a copy,
    when none is malformed), ``f' = max(f - k, 0)`` for the ``k`` malformed rows discarded,
    and the mask of the rows kept (None when all are). ``keep`` may be given (e.g. from a
    Gram matrix's diagonal); by default :func:`finite_rows`."""
    keep = finite_rows(messages) if keep is None else keep
    kept = int(keep.sum())
    if kept == messages.shape[0]:
        return messages, f, None
    return messages[keep], max(f - (messages.shape[0] - kept), 0), keep


GRAM_CHUNKS = 16
"""The inner dimension is cut into this many slices, multiplied as one batched product and
summed: for few, long rows (n <= 25) that runs 1.5-2.8x faster than one ``X @ X^T`` on
2 cores (it gives BLAS parallel work), and sums in a tree, which is more accurate."""


def gram(messages: Tensor) -> Tensor:
    """The Gram matrix ``X X^T`` ``[n, n]`` in float64 (computed in the messages' dtype)."""
    n, d = messages.shape
    width = d // GRAM_CHUNKS
    if width < 4096:
        return (messages @ messages.T).double()
    head = messages[:, :width * GRAM_CHUNKS].reshape(n, GRAM_CHUNKS, width).transpose(0, 1)
    g = torch.bmm(head, head.transpose(1, 2)).sum(dim=0)
    tail = messages[:, width * GRAM_CHUNKS:]
    if tail.shape[1]:
        g = g + tail @ tail.T
    return g.double()


def squared_distances(g: Tensor) -> Tensor:
    """Pairwise squared distances ``[n, n]`` from a Gram matrix ``g``: zero diagonal, clamped
    at 0 against rounding, and +inf where the Gram overflowed."""
    sq = g.diagonal()
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * g).clamp(min=0.0)
    dist = torch.where(torch.isfinite(dist), dist, torch.inf)
    return dist.fill_diagonal_(0.0)


def combine(weights: Tensor, messages: Tensor) -> Tensor:
    """``sum_i w_i x_i`` ``[d]`` (weights in float64, result in the messages' dtype): one
    pass over the messages, cheaper than gathering the chosen rows and averaging them."""
    return weights.to(messages.dtype) @ messages


def subset_mean(rows: Tensor | list[int], messages: Tensor) -> Tensor:
    """The mean ``[d]`` of the chosen ``rows`` of ``messages``, by :func:`combine`."""
    index = torch.as_tensor(rows, dtype=torch.long)
    weights = torch.zeros(messages.shape[0], dtype=torch.float64)
    weights[index] = 1.0 / index.numel()
    return combine(weights, messages)


def sorted_columns(messages: Tensor) -> Tensor:
    """Every coordinate's values in ascending order: ``messages`` sorted along dim 0
    (``[n, d]``; measured no slower than sorting a transposed copy, see benchmarks)."""
    return messages.sort(dim=0).values


def median_of_sorted(columns: Tensor) -> Tensor:
    """The median ``[d]`` of each column of ``columns[n, d]`` sorted ascending; for even
    ``n`` the mean of the two middle values."""
    n = columns.shape[0]
    if n % 2:
        return columns[n // 2]
    return (columns[n // 2 - 1] + columns[n // 2]) / 2


def coordinate_median(messages: Tensor) -> Tensor:
    """The coordinate-wise median ``[d]`` (mean of the two middle values for even ``n``)."""
    if messages.shape[0] % 2:
        return messages.median(dim=0).values
    return median_of_sorted(sorted_columns(messages))


class RobustAggregator(AggregatorBase):
    """Base of the rules that take ``f``: checks ``n``, discards malformed rows, then calls
    :meth:`aggregate` (``messages[n, d], f -> [d]``), which subclasses define; a stateful
    rule defines :meth:`aggregate_state` instead (and ``init_state``)."""

    name = "robust"
    uses_gram = False
    """True for the rules that work from the Gram matrix: it is computed once, and its
    diagonal (the squared norms) tells the malformed rows, saving a pass over the input."""

    def __init__(self, f: int = 0) -> None:
        self.f = check_f(f, self.name)

    def min_workers(self, f: int) -> int:
        """The smallest ``n`` the rule accepts with ``f`` faults (``2f + 1`` unless stated)."""
        return 2 * f + 1

    def check(self, n: int) -> None:
        """Raise ValueError unless the rule accepts ``n`` workers with its ``f``."""
        need = self.min_workers(self.f)
        if n < need:
            raise ValueError(
                f"aggregator {self.name} with f={self.f} needs at least {need} workers, got "
                f"{n}; valid: f <= {self.max_f(n)} for {n} workers")

    def max_f(self, n: int) -> int:
        """The largest ``f`` the rule accepts with ``n`` workers (-1 if none)."""
        f = -1
        while self.min_workers(f + 1) <= n:
            f += 1
        return f

    def apply(self, messages: Tensor, state: State) -> tuple[Tensor, State]:
        self.check(messages.shape[0])
        if not self.uses_gram:
            rows, f, _ = well_formed(messages, self.f)
            return self.run(rows, f, state)
        g = gram(messages)
        rows, f, keep = well_formed(messages, self.f, torch.isfinite(g.diagonal()))
        return self.run(rows, f, state, g if keep is None else g[keep][:, keep])

    def run(self, messages: Tensor, f: int, state: State = None,
            g: Tensor | None = None) -> tuple[Tensor, State]:
        """Aggregate well-formed ``messages`` with ``f`` from ``state`` (the coordinate-wise
        median when fewer rows remain than the rule needs, zeros when none remain: the
        state is then kept as it was); ``g`` their Gram matrix if already computed."""
        if messages.shape[0] == 0:
            return torch.zeros(messages.shape[1], dtype=messages.dtype), state
        if messages.shape[0] < self.min_workers(f):
            return coordinate_median(messages), state
        if self.uses_gram and g is None:
            g = gram(messages)
        return self.aggregate_state(messages, f, g, state)

    def aggregate_state(self, messages: Tensor, f: int, g: Tensor | None,
                        state: State) -> tuple[Tensor, State]:
        """The rule on ``n >= min_workers(f)`` well-formed rows from ``state``; the
        stateless rules keep the state as it is and define :meth:`aggregate`."""
        return self.aggregate(messages, f, g), state

    def aggregate(self, messages: Tensor, f: int,
                  g: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        """The rule on ``n`` well-formed rows with ``f`` (``g``: their Gram matrix, given to
        the rules with ``uses_gram``)."""
        raise NotImplementedError
