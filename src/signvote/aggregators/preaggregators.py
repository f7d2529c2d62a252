"""Pre-aggregators: messages ``[n, d]`` -> messages ``[n', d]``, put in front of any aggregator.

A pre-aggregator is called as ``pre(messages, f)``; :class:`Chain` composes any number of
them with a final aggregator (``signvote.aggregators.build("nnm+krum", f=2)``). Each one
here is linear in the rows: its output is ``W @ messages`` for a ``[n', n]`` matrix ``W``
that depends on the messages (their distances or norms), so it costs one product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from signvote.aggregators import PRE_REGISTRY
from signvote.aggregators.base import (
    check_f,
    gram,
    squared_distances,
    well_formed,
)
from signvote.contracts import (
    Aggregator,
    AggregatorBase,
    AggregatorCapabilities,
    PreAggregator,
    PreAggregatorBase,
    PreAggregatorCapabilities,
    State,
)
from signvote.registry import to_int, to_positive


def nearest_neighbour_matrix(dist: Tensor, keep: int) -> Tensor:
    """``W[n, n]``: row ``i`` averages the ``keep`` rows nearest row ``i`` (itself included,
    ties to the lower index)."""
    n = dist.shape[0]
    order = torch.sort(dist, dim=1, stable=True).indices[:, :keep]
    w = dist.new_zeros(n, n)
    return w.scatter_(1, order, 1.0 / keep)


@PRE_REGISTRY.register("nnm")
class NNM(PreAggregatorBase):
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
class Bucketing(PreAggregatorBase):
    r"""Bucketing: shuffle the messages, cut them into buckets of ``s`` (the last one may
    be smaller) and send each bucket's mean on,

    .. math:: y_k = \frac{1}{|B_k|} \sum_{i \in B_k} x_{\pi(i)}, \quad
              B_k = \{ks, \dots, \min(n, (k+1)s) - 1\},

    :math:`\pi` a fresh random permutation each call, drawn from its own generator seeded
    by ``seed``; the generator's state is the explicit state (:meth:`apply`; a call
    ``pre(m)`` draws from the seeded start). Karimireddy, He & Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR 2022.

    Example:
        >>> Bucketing(s=2)(torch.tensor([[1.], [1.], [3.], [3.]])).shape
        torch.Size([2, 1])
    """

    capabilities = PreAggregatorCapabilities(stateful=True)

    def __init__(self, s: int = 2, seed: int = 0) -> None:
        self.s = to_int(s, "s", "bucketing", minimum=1)
        self.seed = to_int(seed, "seed", "bucketing")

    def init_state(self) -> Tensor:
        """The state of the generator seeded with ``seed``."""
        return torch.Generator().manual_seed(self.seed).get_state()

    def output_rows(self, n: int) -> int:
        return -(-n // self.s)

    def apply(self, messages: Tensor, f: int, state: Tensor) -> tuple[Tensor, Tensor]:
        n = messages.shape[0]
        generator = torch.Generator()
        generator.set_state(state)
        order = torch.randperm(n, generator=generator).to(messages.device)  # n numbers
        buckets = self.output_rows(n)
        w = messages.new_zeros(buckets, n)
        bucket = torch.arange(n, device=messages.device) // self.s
        sizes = torch.bincount(bucket, minlength=buckets).to(messages.dtype)
        w[bucket, order] = 1.0 / sizes[bucket]
        return w @ messages, generator.get_state()


def clip_rows(messages: Tensor, threshold: Tensor | float) -> Tensor:
    """Each row scaled by ``min(1, threshold / ||row||)`` (a new tensor)."""
    norms = torch.linalg.vector_norm(messages, dim=1, keepdim=True)
    scale = torch.where(norms > threshold, threshold / norms, torch.ones_like(norms))
    return messages * scale


@PRE_REGISTRY.register("clipping")
class StaticClipping(PreAggregatorBase):
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
class ARC(PreAggregatorBase):
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


class Chain(AggregatorBase):
    """Pre-aggregators then an aggregator: ``agg(pre_k(... pre_1(messages, f_1) ..., f_k))``.

    Malformed rows (``base.finite_rows``) are discarded once, before the first stage, and
    every stage's ``f`` is lowered by their count, as for the robust aggregators alone.
    Each stage runs with its own ``f`` when its spec sets one (``nnm(f=2)``), else with the
    chain's; the final aggregator always with its own (``krum(f=1)`` in a run with f = 3
    keeps f = 1, while ``nnm`` in front of it takes 3).

    The state is ``(stage states, aggregator state)``.

    Attributes:
        stages: the pre-aggregators, in order.
        aggregator: the final aggregator.
        f: the chain's fault bound (the run's), for the stages that set none.
        name: ``names`` joined by '+' (the spec's stage names, a plugin's import spec
            among them), else the registered names of the stages' classes.
    """

    def __init__(self, stages: list[PreAggregator], aggregator: Aggregator, f: int,
                 names: list[str] | None = None) -> None:
        self.stages, self.aggregator, self.f = list(stages), aggregator, check_f(f, "chain")
        self.name = "+".join(names if names is not None else  # the spec's (a plugin's too)
                             [*(type(s).name for s in stages), type(aggregator).name])
        caps = aggregator.capabilities
        self.capabilities = AggregatorCapabilities(
            returns_signs=caps.returns_signs,
            stateful=caps.stateful or any(s.capabilities.stateful for s in self.stages))

    def min_workers(self, f: int) -> int:
        return 1

    def check(self, n: int) -> None:
        """Raise ValueError unless the final aggregator accepts the rows that ``n`` workers
        leave after the stages (bucketing divides them by ``s``)."""
        rows = n
        for stage in self.stages:
            rows = stage.output_rows(rows)
        self.aggregator.check(rows)

    def init_state(self) -> State:
        return (tuple(s.init_state() for s in self.stages), self.aggregator.init_state())

    def apply(self, messages: Tensor, state: State) -> tuple[Tensor, State]:
        self.check(messages.shape[0])
        stage_states, agg_state = state
        rows, _, keep = well_formed(messages, self.f)
        dropped = 0 if keep is None else messages.shape[0] - rows.shape[0]
        if rows.shape[0] == 0:
            return messages.new_zeros(messages.shape[1]), state
        new_states = []
        for stage, stage_state in zip(self.stages, stage_states, strict=True):
            f = max((self.f if stage.f is None else stage.f) - dropped, 0)
            rows, stage_state = stage.apply(rows, f, stage_state)
            new_states.append(stage_state)
        f = max(self.aggregator.f - dropped, 0)
        v, agg_state = self.aggregator.run(rows, f, agg_state)  # rows already well formed
        return v, (tuple(new_states), agg_state)
