"""Server rules: messages ``[n, d]`` (one row per worker) -> one update direction ``[d]``.

Use the registry::

    >>> import torch, signvote.aggregators as aggregators
    >>> vote = aggregators.get("majority-vote")
    >>> vote(torch.tensor([[1., -1.], [1., 1.], [-1., 0.]]))
    tensor([1., 0.])

or a spec, which puts pre-aggregators in front of an aggregator and hands every stage the
fault bound ``f`` (``aggregators.build("nnm+krum", f=2)``, ``"bucketing(s=2)+median"``,
``"centered-clipping(tau=5)"``).

Every aggregator follows :class:`signvote.contracts.Aggregator` (the whole contract, in
one place): it is a pure function of its input, declares its ``capabilities``, and keeps
no state of its own. The stateful ones (``centered-clipping``, ``weighted-majority-vote``,
and any chain with ``bucketing``, whose state is its generator's) map ``(messages, state)``
to ``(aggregate, state)`` in ``apply``, starting from ``init_state()``; ``agg(messages)``
aggregates from the initial state.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor

from signvote.contracts import Aggregator, PreAggregator, Preview, State
from signvote.registry import Registry, parse_spec

REGISTRY = Registry("aggregator")
PRE_REGISTRY = Registry("pre-aggregator")


def get(name: str, **params: Any) -> Aggregator:
    """The aggregator registered as ``name``, built with ``params`` (e.g. ``f=2``)."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    """The names of all registered aggregators."""
    return REGISTRY.names()


def get_pre(name: str, **params: Any) -> PreAggregator:
    """The pre-aggregator registered as ``name`` (``pre(messages, f) -> [n', d]``)."""
    return PRE_REGISTRY.get(name, **params)


def pre_names() -> list[str]:
    """The names of all registered pre-aggregators."""
    return PRE_REGISTRY.names()


def takes_f(registry: Registry, name: str) -> bool:
    """Whether the factory ``name`` of ``registry`` takes the fault bound ``f``."""
    return "f" in inspect.signature(registry.factory(name)).parameters


def build(spec: str, f: int = 0) -> Aggregator:
    """The aggregator of ``spec`` (``"[pre+...+]aggregator"``, each stage ``name`` or
    ``name(key=value, ...)``), every stage that takes ``f`` getting ``f`` unless the spec
    sets it (each stage then keeps its own). Unknown names or parameters raise ValueError
    listing the valid ones."""
    stages = parse_spec(spec, "aggregator")
    *pres, (last, last_params) = stages
    if last in PRE_REGISTRY.names():
        raise ValueError(f"aggregator {spec!r}: {last!r} is a pre-aggregator, it needs an "
                         f"aggregator after it (e.g. {last}+krum); aggregators: "
                         f"{', '.join(names())}")
    if takes_f(REGISTRY, last):
        last_params = {"f": f, **last_params}
    aggregator = get(last, **last_params)
    if not pres:
        return aggregator
    built = []
    for name, params in pres:
        if name in REGISTRY.names():
            raise ValueError(f"aggregator {spec!r}: {name!r} is an aggregator and can only "
                             f"be the last stage; pre-aggregators: {', '.join(pre_names())}")
        built.append(get_pre(name, **params))
    return Chain(built, aggregator, f, [name for name, _ in stages])


def preview(aggregator: Aggregator, messages: Tensor, state: State = None) -> Tensor:
    """The aggregate of ``messages`` from ``state`` (None: the initial state); no state
    is changed anywhere (aggregators keep none of their own)."""
    return Preview(aggregator, aggregator.init_state() if state is None else state)(messages)


def check(aggregator: Aggregator, n: int) -> None:
    """Raise ValueError if ``aggregator`` cannot run on ``n`` workers with its ``f``."""
    aggregator.check(n)


# Register the built-in rules.
from signvote.aggregators import (  # noqa: E402,F401
    basic,
    coordinatewise,
    distance,
    iterative,
    preaggregators,
    votes,
)
from signvote.aggregators.preaggregators import Chain  # noqa: E402
