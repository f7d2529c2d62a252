"""The contracts of the data path: worker rule, aggregator, pre-aggregator and attack.

Everything a part of the path can do is declared here, in one place, and read by the
engines as declared: nothing is guessed from a class name or a missing attribute.

A new aggregator is a class with the attribute ``capabilities`` and the methods below
(derive from :class:`AggregatorBase` to get the defaults)::

    class TopCoordinateMean(AggregatorBase):
        '''v = mean of the rows, then zero all but the k largest |v_j|.'''
        capabilities = AggregatorCapabilities()
        def __init__(self, k: int = 10) -> None:
            self.k = k
        def __call__(self, messages: Tensor) -> Tensor:
            v = messages.mean(dim=0)
            keep = v.abs().topk(min(self.k, v.numel())).indices
            return torch.zeros_like(v).index_copy_(0, keep, v[keep])

and, registered with ``@signvote.aggregators.REGISTRY.register("top-mean")``, it is
``--aggregator top-mean(k=5)``. State is explicit, as in optax: a stateful rule returns its
initial state from :meth:`Aggregator.init_state` and maps ``(messages, state)`` to
``(aggregate, new_state)`` in :meth:`Aggregator.apply`; the state is made of tensors and
plain data, so a checkpoint stores it as it is. A plain callable ``messages[n, d] -> [d]``
is an aggregator too (:func:`as_aggregator` gives it the conservative capabilities).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from signvote.attacks import AttackContext

State = Any
"""An explicit state: None, a tensor, or a tuple/list/dict of tensors and plain data
(what ``torch.load(weights_only=True)`` reads back)."""

Knowledge = Literal["none", "blind", "omniscient"]
"""What an attack reads: nothing (``none``), its own rows (``blind``), every worker's
message of the step (``omniscient``)."""

Reduction = Literal["mean", "sum", "vote"]
"""An aggregate that the wire may compute itself: an all-reduce (``mean``, ``sum``) or
the majority vote straight from the packed bits (``vote``)."""


# --- aggregators -------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregatorCapabilities:
    """What an aggregator declares (the defaults are the conservative ones).

    Attributes:
        reads_signs: it reads every message through ``ternary_votes`` itself, so the wire's
            ternary pass may be skipped before it.
        returns_signs: its aggregate is ternary, so it travels back bit-packed.
        stateful: it keeps state between calls (:meth:`Aggregator.apply`).
        reduction: the aggregate is this reduction of the rows, which an exchange may
            compute in its own way (an all-reduce, the vote from the bits); None: the
            rows are gathered and the aggregator is called on them.
    """

    reads_signs: bool = False
    returns_signs: bool = False
    stateful: bool = False
    reduction: Reduction | None = None


@runtime_checkable
class Aggregator(Protocol):
    """A server rule: messages ``[n, d]`` (one row per worker) -> one direction ``[d]``.

    ``agg(messages)`` aggregates from the initial state and never mutates its input;
    ``apply(messages, state) -> (v, state)`` carries a stateful rule's state from step to
    step. ``f`` is the number of faults it is built for (0 for the rules that take none);
    ``min_workers(f)`` the smallest ``n`` it accepts with ``f``; ``check(n)`` raises
    ValueError naming the valid values when ``n`` is too few.
    """

    capabilities: AggregatorCapabilities
    f: int

    def __call__(self, messages: Tensor) -> Tensor: ...

    def init_state(self) -> State: ...

    def apply(self, messages: Tensor, state: State) -> tuple[Tensor, State]: ...

    def run(self, messages: Tensor, f: int, state: State) -> tuple[Tensor, State]: ...

    def min_workers(self, f: int) -> int: ...

    def check(self, n: int) -> None: ...


class AggregatorBase:
    """Defaults of the :class:`Aggregator` contract: stateless, no fault bound, any ``n``.

    A stateless rule defines ``__call__``; a stateful one defines ``init_state`` and
    ``apply`` (and gets ``__call__`` from the initial state)."""

    capabilities = AggregatorCapabilities()
    f = 0
    name = "aggregator"

    def __call__(self, messages: Tensor) -> Tensor:
        return self.apply(messages, self.init_state())[0]

    def init_state(self) -> State:
        return None

    def apply(self, messages: Tensor, state: State) -> tuple[Tensor, State]:
        return self(messages), state

    def run(self, messages: Tensor, f: int, state: State) -> tuple[Tensor, State]:
        """:meth:`apply` on rows already checked to be well formed, with the fault bound
        ``f`` lowered for those discarded (what a chain calls); the rules without ``f``
        ignore it."""
        return self.apply(messages, state)

    def min_workers(self, f: int) -> int:
        return 1

    def check(self, n: int) -> None:
        need = self.min_workers(self.f)
        if n < need:
            raise ValueError(f"aggregator {self.name} needs at least {need} workers, got {n}")


class FunctionAggregator(AggregatorBase):
    """A plain callable ``messages[n, d] -> [d]`` as an aggregator, with the conservative
    capabilities (stateless, reads the wire's ternary values, computed on gathered rows)."""

    def __init__(self, function: Callable[[Tensor], Tensor],
                 capabilities: AggregatorCapabilities | None = None) -> None:
        self.function = function
        self.name = getattr(function, "__name__", "aggregator")  # a function's own name
        if capabilities is not None:
            self.capabilities = capabilities

    def __call__(self, messages: Tensor) -> Tensor:
        return self.function(messages)


def as_aggregator(candidate: Aggregator | Callable[[Tensor], Tensor]) -> Aggregator:
    """``candidate`` if it follows :class:`Aggregator`, else the plain callable wrapped in
    :class:`FunctionAggregator`; anything else is a TypeError."""
    if isinstance(candidate, Aggregator):
        return candidate
    if callable(candidate):
        return FunctionAggregator(candidate)
    raise TypeError(f"an aggregator must be callable as agg(messages[n, d]) -> [d]; got "
                    f"{type(candidate).__name__}")


@dataclass(frozen=True)
class Preview:
    """An aggregator at a given state, callable without changing it: what an attack that
    tunes itself against the server is handed (``ctx.aggregator(messages)``)."""

    aggregator: Aggregator
    state: State = None

    def __call__(self, messages: Tensor) -> Tensor:
        return self.aggregator.apply(messages, self.state)[0]


# --- pre-aggregators ---------------------------------------------------------------------


@dataclass(frozen=True)
class PreAggregatorCapabilities:
    """What a pre-aggregator declares.

    Attributes:
        stateful: it keeps state between calls (bucketing's random generator).
    """

    stateful: bool = False


@runtime_checkable
class PreAggregator(Protocol):
    """A stage in front of an aggregator: messages ``[n, d]`` -> messages ``[n', d]``.

    ``pre(messages, f)`` from the initial state; ``apply(messages, f, state) -> (rows,
    state)``; ``output_rows(n)`` is ``n'``; ``f`` is its own fault bound, or None to take
    the chain's."""

    capabilities: PreAggregatorCapabilities
    f: int | None

    def __call__(self, messages: Tensor, f: int = 0) -> Tensor: ...

    def init_state(self) -> State: ...

    def apply(self, messages: Tensor, f: int, state: State) -> tuple[Tensor, State]: ...

    def output_rows(self, n: int) -> int: ...


class PreAggregatorBase:
    """Defaults of the :class:`PreAggregator` contract: stateless, ``n' = n``, the chain's
    ``f``."""

    capabilities = PreAggregatorCapabilities()
    f: int | None = None

    def __call__(self, messages: Tensor, f: int = 0) -> Tensor:
        return self.apply(messages, f, self.init_state())[0]

    def init_state(self) -> State:
        return None

    def apply(self, messages: Tensor, f: int, state: State) -> tuple[Tensor, State]:
        return self(messages, f), state

    def output_rows(self, n: int) -> int:
        return n


# --- attacks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackCapabilities:
    """What an attack declares.

    Attributes:
        knowledge: what it reads (:data:`Knowledge`); the distributed engine sends an
            omniscient coalition every worker's message first.
        data_level: it acts on the Byzantine workers' batches (``poison_targets``), before
            the gradients; on messages it is the identity.
        uses_aggregator: it evaluates the server's rule (``ctx.aggregator``) to tune itself.
    """

    knowledge: Knowledge = "omniscient"
    data_level: bool = False
    uses_aggregator: bool = False


@runtime_checkable
class Attack(Protocol):
    """An adversary: ``attack(messages[n, d], byzantine_mask[n], ctx) -> messages'[n, d]``,
    replacing only the masked rows and never mutating its input. ``check(workers,
    byzantine)`` raises ValueError when it cannot run with that many; a data-level attack
    also has ``poison_targets(targets[n, b], mask[n], n_classes) -> targets'``."""

    capabilities: AttackCapabilities

    def __call__(self, messages: Tensor, byzantine_mask: Tensor,
                 ctx: AttackContext) -> Tensor: ...

    def check(self, workers: int, byzantine: int) -> None: ...


class AttackBase:
    """Defaults of the :class:`Attack` contract: omniscient (the conservative knowledge:
    the engine gives it every row), message-level, any number of workers."""

    capabilities = AttackCapabilities()

    def check(self, workers: int, byzantine: int) -> None:
        return None

    def poison_targets(self, targets: Tensor, mask: Tensor, n_classes: int | None) -> Tensor:
        return targets


# --- worker rules ------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleCapabilities:
    """What a worker rule declares.

    Attributes:
        sends_signs: its messages are ternary signs (1-2 bits a coordinate on the wire).
        stochastic: it draws coins (needs one generator per worker in ``step``).
        stateful: it keeps state (momentum) between steps.
    """

    sends_signs: bool
    stochastic: bool = False
    stateful: bool = False


@runtime_checkable
class Rule(Protocol):
    """A worker rule: ``step(G[n, d], state, coins) -> (M[n, d], state)``, initial state
    None, never mutating its input."""

    name: str

    @property
    def capabilities(self) -> RuleCapabilities: ...

    def step(self, grads: Tensor, state: Tensor | None,
             generator: Any = None) -> tuple[Tensor, Tensor | None]: ...
