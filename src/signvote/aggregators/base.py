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
  x_j>``, one ``[n, d] @ [d, n]`` product, then held in float64; when the rows share a
  common part large enough for that difference to cancel, :func:`gram` computes the
  product again on the rows shifted to one of them (translation leaves distances as they
  are), so float32 rows give the distances of float64 ones.
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

SHIFT_WIDTH = 1 << 16
"""Coordinates shifted per block by :func:`shifted_gram` (the shifted rows are never held
whole: ``[n, 65536]`` at a time, which :func:`product_gram` still cuts into 16 slices)."""

CANCELLATION = 8.0
""":func:`gram` recomputes the Gram matrix of the rows shifted to a reference row when some
row's ``||x_i||^2 + ||x_k||^2`` exceeds this many times its squared distance to that row
``k``: the rounding of ``<x_i, x_j>`` scales with the norms, so the distances would carry
that much more error than the same product of the shifted rows."""


def product_gram(messages: Tensor) -> Tensor:
    """``X X^T`` ``[n, n]`` computed in the messages' dtype, returned in float64."""
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


def shifted_gram(messages: Tensor, reference: Tensor, extra: Tensor | None = None) -> Tensor:
    """The Gram matrix in float64 of the rows ``x_i - reference`` (``[n, n]``), followed by
    the row ``extra`` when given (``[n + 1, n + 1]``): products in the messages' dtype, one
    block of :data:`SHIFT_WIDTH` coordinates at a time, summed in float64."""
    n, d = messages.shape
    rows = n + (extra is not None)
    g = torch.zeros(rows, rows, dtype=torch.float64, device=messages.device)
    for start in range(0, d, SHIFT_WIDTH):
        stop = min(start + SHIFT_WIDTH, d)
        block = torch.empty(rows, stop - start, dtype=messages.dtype, device=messages.device)
        torch.sub(messages[:, start:stop], reference[start:stop], out=block[:n])
        if extra is not None:
            block[n] = extra[start:stop]
        g += product_gram(block)
    return g


def _reference_row(g: Tensor) -> tuple[int, bool]:
    """``(k, shift)``: the row ``k`` of smallest total squared distance to the rows (a row
    of the bulk: an outlier's total counts its distance to every other row), and whether
    the Gram ``g`` (all rows finite) loses to cancellation (:data:`CANCELLATION`) the
    distances that shifting the rows to ``x_k`` would keep. A few ``[n]`` operations."""
    n = g.shape[0]
    sq = g.diagonal()
    k = int((n * sq - 2 * g.sum(dim=1)).argmin())  # sum_j ||x_i - x_j||^2 - sum_j ||x_j||^2
    near = sq + sq[k]
    lost = near > CANCELLATION * (near - 2 * g[k]).clamp(min=0)
    lost[k] = False
    return k, bool(lost.any())


def gram(messages: Tensor, reference: Tensor | None = None) -> Tensor:
    r"""The Gram matrix ``[n, n]`` in float64 of the rows ``x_i - reference`` (of the rows
    themselves by default), accurate even when the rows share a large common part.

    ``||x_i - x_j||^2 = ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>`` cancels when the distances
    are small next to the norms: a product rounded in float32 then leaves errors of order
    ``1e-7 ||x||^2`` in distances that may be far smaller (rows ``1 + 1e-3 N(0, 1)``:
    ``||x||^2 / ||x_i - x_j||^2 ~ 5e5``). So the product (:func:`product_gram`, in the
    messages' dtype) is recomputed, for input less precise than float64, when it would
    lose more than :data:`CANCELLATION` times what the rows shifted to a reference row
    :math:`x_k` keep: with :math:`y_i = x_i - x_k`, ``a_i = <y_i, x_k>`` and ``R =
    ||x_k||^2`` from one product of the shifted rows, :math:`\langle x_i, x_j \rangle =
    \langle y_i, y_j \rangle + a_i + a_j + R` is assembled in float64, whose rounding is
    ``1e-16 ||x||^2``. Rows whose squared norm is not finite keep their non-finite
    diagonal (``well_formed`` reads them off it) and take no part.
    """
    g = (product_gram(messages) if reference is None
         else shifted_gram(messages, reference))
    if messages.dtype == torch.float64 or messages.shape[0] < 2:
        return g
    keep = torch.isfinite(g.diagonal())
    rows = messages if bool(keep.all()) else messages[keep]
    if rows.shape[0] < 2:
        return g
    sub = g if rows is messages else g[keep][:, keep]
    k, lost = _reference_row(sub)
    if not lost:
        return g
    anchor = rows[k] if reference is None else rows[k] - reference
    shifted = shifted_gram(rows, rows[k], anchor)
    m = rows.shape[0]
    a, big = shifted[:m, m], shifted[m, m]
    accurate = shifted[:m, :m] + a.unsqueeze(1) + a.unsqueeze(0) + big
    if not bool(torch.isfinite(accurate).all()):
        return g
    if rows is messages:
        return accurate
    index = keep.nonzero().squeeze(1)
    g[index.unsqueeze(1), index.unsqueeze(0)] = accurate
    return g


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
    index = torch.as_tensor(rows, dtype=torch.long, device=messages.device)
    weights = torch.zeros(messages.shape[0], dtype=torch.float64, device=messages.device)
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
            return messages.new_zeros(messages.shape[1]), state
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
