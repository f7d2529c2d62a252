"""Pre-aggregators: messages ``[n, d]`` -> messages ``[n', d]``, put in front of any aggregator.

A pre-aggregator is called as ``pre(messages, f)``; :class:`Chain` composes any number of
them with a final aggregator (``signvote.aggregators.build("nnm+krum", f=2)``). Each one
here is linear in the rows: its output is ``W @ messages`` for a ``[n', n]`` matrix ``W``
that depends on the messages (their distances or norms), so it costs one product.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from signvote.aggregators import PRE_REGISTRY
from signvote.aggregators.base import (
    RobustAggregator,
    check_f,
    gram,
    squared_distances,
    well_formed,
)
from signvote.registry import to_int, to_positive


def nearest_neighbour_matrix(dist: Tensor, keep: int) -> Tensor:
    """``W[n, n]``: row ``i`` averages the ``keep`` rows nearest row ``i`` (itself included,
    ties to the lower index)."""
    n = dist.shape[0]
    order = torch.sort(dist, dim=1, stable=True).indices[:, :keep]
    w = torch.zeros(n, n, dtype=dist.dtype)
    return w.scatter_(1, order, 1.0 / keep)


@PRE_REGISTRY.register("nnm")
class NNM:
    r"""Nearest-neighbour mixing: each message is replaced by the mean of its :math:`n - f`
    nearest messages (itself included; ties to the lower index),

    .. math:: y_i = \frac{1}{n - f} \sum_{j \in N_i} x_j .

    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by Mixing: A Recipe
    for Optimal Byzantine ML under Heterogeneity", AISTATS 2023. ``f`` defaults to the
    chain's.

    Example:
        >>> NNM(f=1)(torch.tensor([[0.], [1.], [10.]]))
        tensor([[0.5000],
                [0.5000],
                [5.5000]])
    """

    def __init__(self, f: int | None = None) -> None:
        self.f = None if f is None else check_f(f, "nnm")

    def __call__(self, messages: Tensor, f: int = 0) -> Tensor:
        n = messages.shape[0]
        keep = max(n - (f if self.f is None else self.f), 1)
        w = nearest_neighbour_matrix(squared_distances(gram(messages)), keep)
        return w.to(messages.dtype) @ messages


@PRE_REGISTRY.register("bucketing")
class Bucketing:
    r"""Bucketing: shuffle the messages, cut them into buckets of ``s`` (the last one may
    be smaller) and send each bucket's mean on,

    .. math:: y_k = \frac{1}{|B_k|} \sum_{i \in B_k} x_{\pi(i)}, \quad
              B_k = \{ks, \dots, \min(n, (k+1)s) - 1\},

    :math:`\pi` a fresh random permutation each call (drawn from its own generator, seeded
    by ``seed``: explicit state). Karimireddy, He & Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR 2022.

    Example:
        >>> Bucketing(s=2)(torch.tensor([[1.], [1.], [3.], [3.]])).shape
        torch.Size([2, 1])
    """

    def __init__(self, s: int = 2, seed: int = 0) -> None:
        self.s = to_int(s, "s", "bucketing", minimum=1)
        self.generator = torch.Generator().manual_seed(to_int(seed, "seed", "bucketing"))

    def __call__(self, messages: Tensor, f: int = 0) -> Tensor:
        n = messages.shape[0]
        order = torch.randperm(n, generator=self.generator)
        buckets = -(-n // self.s)
        w = torch.zeros(buckets, n, dtype=messages.dtype)
        bucket = torch.arange(n) // self.s
        sizes = torch.bincount(bucket, minlength=buckets).to(messages.dtype)
        w[bucket, order] = 1.0 / sizes[bucket]
        return w @ messages


def clip_rows(messages: Tensor, threshold: Tensor | float) -> Tensor:
    """Each row scaled by ``min(1, threshold / ||row||)`` (a new tensor)."""
    norms = torch.linalg.vector_norm(messages, dim=1, keepdim=True)
    scale = torch.where(norms > threshold, threshold / norms, torch.ones_like(norms))
    return messages * scale


@PRE_REGISTRY.register("clipping")
class StaticClipping:
    r"""Static clipping: :math:`y_i = x_i \min(1, c / \|x_i\|)`.

    Norm clipping of the workers' messages, as in Karimireddy, He & Jaggi, ICML 2021 and
    Allouah et al., "The Vital Role of Gradient Clipping in Byzantine-Resilient Distributed
    Learning", 2024 (the static baseline of ARC).

    Example:
        >>> StaticClipping(c=1.0)(torch.tensor([[3., 4.], [0.3, 0.4]]))
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """

    def __init__(self, c: float = 1.0) -> None:
        self.c = to_positive(c, "c", "clipping")

    def __call__(self, messages: Tensor, f: int = 0) -> Tensor:
        return clip_rows(messages, self.c)


@PRE_REGISTRY.register("arc")
class ARC:
    r"""Adaptive robust clipping: the :math:`k = \lfloor 2 (f / n) (n - f) \rfloor` messages
    of largest norm are clipped to the norm of the largest one left alone,

    .. math:: y_i = x_i \min\!\Big(1, \frac{\|x_{(n-k)}\|}{\|x_i\|}\Big),

    :math:`\|x_{(1)}\| \le \dots \le \|x_{(n)}\|` the sorted norms. Allouah, Guerraoui,
    Gupta, Jellouli, Rizk & Stephan, "The Vital Role of Gradient Clipping in
    Byzantine-Resilient Distributed Learning", 2024. ``f`` defaults to the chain's.

    Example:
        >>> ARC(f=1)(torch.tensor([[1., 0.], [0., 2.], [30., 40.]]))
        tensor([[1.0000, 0.0000],
                [0.0000, 2.0000],
                [1.2000, 1.6000]])
    """

    def __init__(self, f: int | None = None) -> None:
        self.f = None if f is None else check_f(f, "arc")

    def __call__(self, messages: Tensor, f: int = 0) -> Tensor:
        n = messages.shape[0]
        f = f if self.f is None else self.f
        clipped = min(int(2 * f * (n - f) / n), n - 1)
        if clipped <= 0:
            return messages
        norms = torch.linalg.vector_norm(messages, dim=1)
        threshold = torch.sort(norms).values[n - clipped - 1]
        return clip_rows(messages, threshold)


class Chain:
    """Pre-aggregators then an aggregator: ``agg(pre_k(... pre_1(messages, f) ..., f))``.

    Malformed rows (``base.finite_rows``) are discarded once, before the first stage, and
    ``f`` is lowered by their count, as for the robust aggregators alone.

    Attributes:
        stages: the pre-aggregators, in order.
        aggregator: the final aggregator.
        f: the fault bound handed to every stage.
    """

    def __init__(self, stages: list[Any], aggregator: Any, f: int) -> None:
        self.stages, self.aggregator, self.f = list(stages), aggregator, check_f(f, "chain")
        self.name = "+".join([*(type(s).name for s in stages), type(aggregator).name])

    def check(self, n: int) -> None:
        """Raise ValueError unless the final aggregator accepts the rows that ``n`` workers
        leave after the stages (bucketing divides them by ``s``)."""
        if isinstance(self.aggregator, RobustAggregator):
            rows = n
            for stage in self.stages:
                rows = -(-rows // stage.s) if isinstance(stage, Bucketing) else rows
            self.aggregator.check(rows)

    def __call__(self, messages: Tensor) -> Tensor:
        self.check(messages.shape[0])
        rows, f, _ = well_formed(messages, self.f)
        if rows.shape[0] == 0:
            return torch.zeros(messages.shape[1], dtype=messages.dtype)
        for stage in self.stages:
            rows = stage(rows, f)
        if isinstance(self.aggregator, RobustAggregator):
            return self.aggregator.run(rows, f)
        return self.aggregator(rows)

    def preview(self, messages: Tensor) -> Tensor:
        """The output without changing any stage's state (random generator, history)."""
        saved = [s.generator.get_state() for s in self.stages if isinstance(s, Bucketing)]
        state = getattr(self.aggregator, "state", None)
        try:
            return self(messages)
        finally:
            for s, g in zip([s for s in self.stages if isinstance(s, Bucketing)], saved,
                            strict=True):
                s.generator.set_state(g)
            if hasattr(self.aggregator, "state"):
                self.aggregator.state = state
