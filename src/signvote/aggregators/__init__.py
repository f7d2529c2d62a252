"""Server rules: messages ``[n, d]`` (one row per worker) -> one update direction ``[d]``.

Use the registry::

    >>> import torch, signvote.aggregators as aggregators
    >>> vote = aggregators.get("majority-vote")
    >>> vote(torch.tensor([[1., -1.], [1., 1.], [-1., 0.]]))
    tensor([1., 0.])

Every aggregator is a pure function of its input: it never mutates the messages.
"""

from __future__ import annotations

from typing import Any

from signvote.registry import Registry

REGISTRY = Registry("aggregator")


def get(name: str, **params: Any) -> Any:
    """The aggregator registered as ``name``, built with ``params`` (e.g. ``f=2``)."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    """The names of all registered aggregators."""
    return REGISTRY.names()


from signvote.aggregators import basic  # noqa: E402,F401  (registers the built-in rules)
