"""A DistributedDataParallel communication hook: Signum with majority vote.

Two lines turn an existing DDP training script into Signum with majority vote::

    state = SignumVoteState(momentum=0.9)
    ddp_model.register_comm_hook(state, signum_vote_hook)

and the optimizer becomes plain SGD without momentum (the momentum lives in the hook)::

    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=1e-4, weight_decay=wd)

For every gradient bucket, each rank

1. updates its momentum ``m <- beta * m + (1 - beta) * g`` (``m_0 = 0``; ``beta = 0`` is
   signSGD), with ``g`` its own bucket gradient, not the average DDP would compute;
2. takes the sign ``s = sign(m)``; a rank listed in ``byzantine_ranks`` then replaces it
   with its attack (``blind-inversion``: ``-s``; any attack that reads only its own
   message);
3. sends ``s`` bit-packed to every other rank, 1 bit per coordinate (2 where ``s`` has
   zeros), and receives theirs (:class:`signvote.engine.protocol.Exchange`, layout
   ``peer``);
4. returns the majority vote ``v = sign(sum_i s_i)``, computed from the bits; DDP writes it
   into ``param.grad`` and the optimizer steps ``x <- x - lr * (v + wd * x)``.

This is the worker rule and aggregator of ``signvote train --rule signum`` (Bernstein et
al., "signSGD with Majority Vote is Communication Efficient and Fault Tolerant", ICLR
2019, Algorithm 1 with momentum), so a run with this hook trains as the engine does. The
exchange is synchronous: the hook returns a completed future, so communication does not
overlap the rest of the backward pass. See ``examples/ddp_signum.py``.
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations at run time.
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from signvote import attacks, rules
from signvote.aggregators.basic import MajorityVote
from signvote.engine import protocol


@dataclass
class SignumVoteState:
    """The state of :func:`signum_vote_hook`.

    Attributes:
        momentum: beta in [0, 1); 0 sends the plain gradient's sign (signSGD).
        byzantine_ranks: the ranks (in ``process_group``) that run ``attack`` on their own
            message, for experiments.
        attack: the attack spec of those ranks; it must read only its own message
            (knowledge ``none`` or ``blind``).
        process_group: the group to vote in (None: the default group).
        seed: the seed of the attack's random generator.
        buffers: each bucket's momentum, by bucket index (explicit state).
        traffic: the payload bytes this rank sent and received.
    """

    momentum: float = 0.9
    byzantine_ranks: frozenset[int] = frozenset()
    attack: str = "blind-inversion"
    process_group: dist.ProcessGroup | None = None
    seed: int = 0
    buffers: dict[int, Tensor] = field(default_factory=dict)
    traffic: protocol.Traffic = field(default_factory=protocol.Traffic)
    step: int = 0

    def __post_init__(self) -> None:
        self.rule = rules.signum(self.momentum) if self.momentum > 0 else rules.signsgd()
        self.byzantine_ranks = frozenset(self.byzantine_ranks)
        self._attack = attacks.build(self.attack)
        if getattr(self._attack, "knowledge", "none") == "omniscient" or getattr(
                self._attack, "data_level", False):
            raise ValueError(f"attack {self.attack!r} is not a message attack that reads only "
                             f"its own message; valid: attacks of knowledge none or blind")
        self._generator = torch.Generator().manual_seed(self.seed)


def signum_vote_hook(state: SignumVoteState, bucket: dist.GradBucket
                     ) -> torch.futures.Future[Tensor]:
    """Replace the bucket's all-reduce by Signum with majority vote (module docstring)."""
    group = state.process_group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    grads = bucket.buffer()
    flat = grads.detach().reshape(1, -1).to(torch.float32)
    momentum = state.buffers.get(bucket.index())
    if momentum is not None and momentum.shape != flat.shape:  # DDP rebuilt its buckets
        momentum = None
    messages, momentum = state.rule.step(flat, momentum)
    if momentum is not None:
        state.buffers[bucket.index()] = momentum
    if rank in state.byzantine_ranks:
        ctx = attacks.AttackContext(state.step, state._generator, sign_messages=True)
        messages = state._attack(messages, torch.tensor([True]), ctx)
    if bucket.is_last():
        state.step += 1
    exchange = protocol.Exchange("peer", rank, world, flat.shape[1], True, MajorityVote(),
                                 state.traffic, group)
    vote = exchange(messages[0]).to(grads.dtype).reshape(grads.shape)
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(vote)
    return future
