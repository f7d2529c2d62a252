"""The data path of every engine, as stages: one step, written once.

::

    params x[d]
      -> poison         targets'   data-level attacks on the Byzantine workers' batches
      -> gradients      G[n, d]    engine/gradients.py:worker_gradients
      -> own messages   M[n, d]    the worker rule: (M, state) = rule.step(G, state)
      -> adversaries    M'[n, d]   blind workers first, then the Byzantine coalition
      -> wire           M''[n, d]  sign rules: only a ternary value survives the 1-2 bit wire
      -> aggregate      v[d]       (v, agg_state) = aggregator.apply(M'', agg_state)
      -> update         x <- x - lr * (v + weight_decay * x)

The simulator (:class:`DataPath`) runs all ``n`` rows at once. The distributed engine
(``engine/dist.py``) runs the same stages on one row per process, with the real exchange
(``engine/protocol.py``) as its wire and aggregation; the DDP hook (``engine/ddp_hook.py``)
runs the rule and the blind-attack stage on each gradient bucket. Every stage is a pure
function of tensors and explicit state; the random generators it is handed are the only
things it advances.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from signvote import contracts, election
from signvote.aggregators.basic import ternary_votes
from signvote.attacks import AttackContext
from signvote.engine import fused
from signvote.engine.gradients import (
    BatchedModel,
    Loss,
    WorkerBuffers,
    WorkerStep,
    worker_gradients,
)
from signvote.rules import Coins, WorkerRule

Workers = list[int] | None
"""Which workers' rows a stage sees: a list of worker indices (one process's rows in the
distributed engine), or None for all ``n`` (the simulator)."""


@dataclass(frozen=True)
class AdversaryPlan:
    """Who the adversaries are and what they do, declared once per run.

    Attributes:
        blind_mask: ``[n]`` bool, the blind workers (they invert their own messages).
        byzantine_mask: ``[n]`` bool, the Byzantine coalition (disjoint from the blind).
        blind_attack: what the blind workers run (``blind-inversion``; knowledge blind).
        attack: what the coalition runs (None when there is no Byzantine worker). A
            data-level attack (``attack.capabilities.data_level``) acts on the coalition's
            batches (:meth:`poison`); any other acts on its messages (:meth:`coalition`).
    """

    blind_mask: Tensor
    byzantine_mask: Tensor
    blind_attack: contracts.Attack
    attack: contracts.Attack | None = None

    @property
    def data_attack(self) -> contracts.Attack | None:
        """The coalition's attack if it acts on data, else None."""
        a = self.attack
        return a if a is not None and a.capabilities.data_level else None

    @property
    def message_attack(self) -> contracts.Attack | None:
        """The coalition's attack if it acts on messages, else None."""
        a = self.attack
        return a if a is not None and not a.capabilities.data_level else None

    @functools.cached_property
    def host_masks(self) -> tuple[Tensor, Tensor]:
        """``(blind, byzantine)`` on the host, read once: which stages run is decided in
        Python, and a device mask's ``any()`` would synchronise a GPU every step."""
        return self.blind_mask.cpu(), self.byzantine_mask.cpu()

    @property
    def alters_messages(self) -> bool:
        """True when some adversary acts on messages (blind workers, or a coalition whose
        attack is not data-level)."""
        return self.message_attack is not None or bool(self.host_masks[0].any())

    @property
    def honest_mask(self) -> Tensor:
        """``[n]`` bool: the workers that are neither blind nor Byzantine."""
        return ~(self.blind_mask | self.byzantine_mask)

    def poison(self, targets: Tensor, n_classes: int | None, workers: Workers = None
               ) -> Tensor:
        """``targets[k, b]`` of ``workers`` (all when None) after the data-level attack on
        the Byzantine ones among them (the targets themselves when there is none)."""
        attack = self.data_attack
        if attack is None:
            return targets
        if not bool(_rows(self.host_masks[1], workers).any()):
            return targets
        return attack.poison_targets(targets, _rows(self.byzantine_mask, workers), n_classes)

    def blind(self, messages: Tensor, ctx: AttackContext, workers: Workers = None) -> Tensor:
        """``messages[k, d]`` of ``workers`` after the blind workers among them have acted
        (they read only their own rows)."""
        if not bool(_rows(self.host_masks[0], workers).any()):
            return messages
        return self.blind_attack(messages, _rows(self.blind_mask, workers), ctx)

    def coalition(self, messages: Tensor, ctx: AttackContext) -> Tensor:
        """All ``messages[n, d]`` after the Byzantine coalition's message attack (rows it
        may not read are given to it as they are; the engine decides what it passes)."""
        attack = self.message_attack
        if attack is None:
            return messages
        return attack(messages, self.byzantine_mask, ctx)

    def apply(self, messages: Tensor, ctx: AttackContext) -> Tensor:
        """Every adversary on all rows: the blind workers first, then the coalition (which
        therefore counts the blind workers' inverted messages among the others, as the
        seed's "Byzantine server" did)."""
        return self.coalition(self.blind(messages, ctx), ctx)


def _rows(mask: Tensor, workers: Workers) -> Tensor:
    return mask if workers is None else mask[workers]


def wire(messages: Tensor, sends_signs: bool, aggregator: contracts.Aggregator) -> Tensor:
    """What the server reads: a sign rule's messages as the ternary values a bit-packed
    frame can carry (:func:`~signvote.aggregators.basic.ternary_votes`), unless the
    aggregator reads them so itself (``capabilities.reads_signs``); real-valued messages
    as they are."""
    if sends_signs and not aggregator.capabilities.reads_signs:
        return ternary_votes(messages)
    return messages


def apply_update(x: Tensor, direction: Tensor, lr: float, weight_decay: float) -> Tensor:
    """The server's step ``x - lr * (direction + weight_decay * x)`` (a new tensor)."""
    if weight_decay:
        direction = direction + weight_decay * x
    return x - lr * direction


@dataclass(frozen=True)
class StepState:
    """The explicit state a step carries to the next: the worker rule's (momentum; None
    before the first step), the aggregator's (``aggregator.init_state()`` at the start)
    and every worker's model buffers (BatchNorm's running statistics; None for a model
    without buffers, :meth:`BatchedModel.initial_buffers` at the start)."""

    rule: Tensor | None = None
    aggregator: contracts.State = None
    buffers: WorkerBuffers | None = None


@dataclass(frozen=True)
class Observed:
    """What :meth:`DataPath.step_observed` also returns: the workers' own messages
    (before any attack) and the aggregate."""

    own: Tensor
    direction: Tensor


@dataclass(frozen=True)
class DataPath:
    """One training step of all ``n`` workers in one process (the simulator's).

    Attributes:
        model: the model compiled for per-worker gradients.
        rule: the worker rule.
        plan: the adversaries.
        aggregator: the server rule.
        task: ``classification`` or ``regression``.
        weight_decay: lambda of the update.
        generator: the adversaries' random generator (advanced by random attacks).
        rule_generators: each worker's coins (stochastic sign), one per worker.
        n_classes: the number of classes (None for regression), for data-level attacks.
        loss: the per-sample loss (None: the task's default,
            :func:`~signvote.engine.gradients.default_loss`).
        compiled: ``--compile``: :meth:`step` runs the rule's signs, the vote and the
            update as one compiled call where that is exact (``engine/fused.py``).
        allocation: ``--election-code``'s ``G[n, n]``: the rows are then partitions, and
            worker i's own message is :func:`signvote.election.encode`'s majority of the
            rule's messages of its partitions ``{j : G[i, j] = 1}`` (None: no code).
    """

    model: BatchedModel
    rule: WorkerRule
    plan: AdversaryPlan
    aggregator: contracts.Aggregator
    task: str
    weight_decay: float
    generator: torch.Generator
    rule_generators: Coins = None
    n_classes: int | None = None
    loss: Loss | None = None
    compiled: bool = False
    allocation: Tensor | None = None

    def initial_state(self) -> StepState:
        """The state before the first step: every worker with the model's own buffers."""
        return StepState(None, self.aggregator.init_state(),
                         self.model.initial_buffers(self.plan.blind_mask.shape[0]))

    def step(self, x: Tensor, state: StepState, inputs: Tensor, targets: Tensor, lr: float,
             step: int) -> tuple[Tensor, StepState, WorkerStep]:
        """One step from parameters ``x`` on the workers' batches ``inputs[n, b, ...]``;
        returns the new parameters, the new state and the workers' step statistics."""
        if self.compiled and self.allocation is None and fused.applies(
                self.rule, self.aggregator, self.plan.alters_messages, x):
            return self._fused_step(x, state, inputs, targets, lr)
        x, state, honest, _ = self.step_observed(x, state, inputs, targets, lr, step)
        return x, state, honest

    def _fused_step(self, x: Tensor, state: StepState, inputs: Tensor, targets: Tensor,
                    lr: float) -> tuple[Tensor, StepState, WorkerStep]:
        """:meth:`step` where :func:`fused.applies`: the gradients and the momentum eager,
        then the vote of the signs and the update in one compiled call (bit-identical)."""
        honest = worker_gradients(self.model, x, inputs,
                                  self.plan.poison(targets, self.n_classes), self.task,
                                  loss=self.loss, buffers=state.buffers)
        source, rule_state = fused.rule_direction(self.rule, honest.grads, state.rule)
        x = fused.vote_update(self.weight_decay)(source, x, fused.lr_tensor(lr, x))
        return x, StepState(rule_state, state.aggregator, honest.buffers), honest

    def step_observed(self, x: Tensor, state: StepState, inputs: Tensor, targets: Tensor,
                      lr: float, step: int
                      ) -> tuple[Tensor, StepState, WorkerStep, Observed]:
        """:meth:`step`, also returning the workers' own messages and the aggregate."""
        honest = worker_gradients(self.model, x, inputs,
                                  self.plan.poison(targets, self.n_classes), self.task,
                                  loss=self.loss, buffers=state.buffers)
        own, rule_state = self.rule.step(honest.grads, state.rule, self.rule_generators)
        if self.allocation is not None:  # Election Coding: rows were partitions, now workers
            own = election.encode(self.allocation, own)
        ctx = AttackContext(step, self.generator, self.rule.capabilities.sends_signs,
                            contracts.Preview(self.aggregator, state.aggregator))
        messages = own
        if self.plan.alters_messages:  # a rule's own messages are ternary already
            messages = wire(self.plan.apply(own, ctx), self.rule.capabilities.sends_signs,
                            self.aggregator)
        direction, agg_state = self.aggregator.apply(messages, state.aggregator)
        return (apply_update(x, direction, lr, self.weight_decay),
                StepState(rule_state, agg_state, honest.buffers), honest,
                Observed(own, direction))
