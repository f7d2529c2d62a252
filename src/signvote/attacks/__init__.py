"""Adversaries: ``attack(messages[n, d], byzantine_mask[n], ctx) -> messages'[n, d]``.

An attack replaces the rows of its workers (``byzantine_mask``) and leaves every other row
untouched; it never mutates its input. What it may read is part of its definition
(``knowledge``): a *blind* attack reads only its own rows, an *omniscient* one also reads the
other workers' messages of this step.

    >>> import torch, signvote.attacks as attacks
    >>> ctx = attacks.AttackContext(step=0, generator=torch.Generator(), sign_messages=True)
    >>> m = torch.tensor([[1., 1.], [1., -1.], [-1., -1.]])
    >>> attacks.get("blind-inversion")(m, torch.tensor([False, False, True]), ctx)
    tensor([[ 1.,  1.],
            [ 1., -1.],
            [ 1.,  1.]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from signvote.contracts import Attack, AttackBase, AttackCapabilities
from signvote.registry import Registry, parse_spec

__all__ = ["REGISTRY", "Attack", "AttackBase", "AttackCapabilities", "AttackContext",
           "apply_all", "build", "get", "names"]

REGISTRY = Registry("attack")


@dataclass(frozen=True)
class AttackContext:
    """What an attack is told at one step.

    Attributes:
        step: the global step (0-based).
        generator: the adversaries' own random generator (seeded by the run's seed), on
            the messages' device (an attack draws its noise there: ``device=messages.device``).
        sign_messages: True when the worker rule sends signs (the wire carries ternary
            values), False for real-valued (fp32) messages.
        aggregator: the server's rule at its current state, for attacks that tune against
            it (``capabilities.uses_aggregator``): calling it aggregates without changing
            the server's state (a :class:`signvote.contracts.Preview`); None when unknown.
    """

    step: int
    generator: torch.Generator
    sign_messages: bool
    aggregator: Callable[[Tensor], Tensor] | None = None


def get(name: str, **params: Any) -> Attack:
    """The attack registered as ``name``, built with ``params``."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    """The names of all registered attacks."""
    return REGISTRY.names()


def build(spec: str) -> Attack:
    """The attack of ``spec``: ``name`` or ``name(key=value, ...)`` (e.g. ``"alie(z=1.5)"``)."""
    stages = parse_spec(spec, "attack")
    if len(stages) != 1:
        raise ValueError(f"attack {spec!r}: one attack per spec, got {len(stages)}")
    name, params = stages[0]
    return get(name, **params)


def apply_all(
    plan: Sequence[tuple[Attack, Tensor]], messages: Tensor, ctx: AttackContext
) -> Tensor:
    """Apply each ``(attack, mask)`` of ``plan`` in turn (a data-level attack is the
    identity on messages)."""
    for attack, mask in plan:
        if not attack.capabilities.data_level:
            messages = attack(messages, mask, ctx)
    return messages


# Register the built-in attacks.
from signvote.attacks import basic, data, omniscient  # noqa: E402,F401
