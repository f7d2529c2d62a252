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
   message), drawing from its own random stream (``seed + 1000 * rank``);
3. sends ``s`` bit-packed to every other rank, 1 bit per coordinate (2 where ``s`` has
   zeros), and receives theirs (:class:`signvote.engine.protocol.Exchange`, layout
   ``peer``);
4. returns the majority vote ``v = sign(sum_i s_i)``, computed from the bits; DDP writes it
   into ``param.grad`` and the optimizer steps ``x <- x - lr * (v + wd * x)``.

Steps 1 and 2 are the worker rule and the blind-attack stage of the engines
(``rules.WorkerRule.step`` and ``engine.step.AdversaryPlan.blind``), step 4 the
aggregator of ``signvote train --rule signum`` (Bernstein et al., "signSGD with Majority
Vote is Communication Efficient and Fault Tolerant", ICLR 2019, Algorithm 1 with
momentum), so a run with this hook trains as the engine does. The momentum is kept per
parameter: a bucket's momentum is the concatenation of its parameters' (in the bucket's
order), so when DDP rebuilds its buckets each parameter keeps its own momentum, whatever
bucket it lands in.

The exchange overlaps the rest of the backward pass, as PyTorch's PowerSGD hook does: the
hook computes the bucket's message, all-gathers the frames' 4-byte headers (the zero
counts, which size the payloads), launches the all-gather of the bits and zero payloads
with ``async_op=True`` and returns ``work.get_future().then(decode_and_vote)``; DDP goes on
computing the next buckets' gradients while the bits travel, and the vote is taken in the
callback, which issues no collective (a collective issued from gloo's completion thread
could deadlock or reorder the ranks' collectives). On NCCL the buffers on the wire are on
the gradient's GPU; on gloo on the CPU. :func:`synchronous_signum_vote_hook` is the
previous, blocking hook (the whole exchange before returning a completed future), kept as
the reference the overlapping one is tested against: the two give bit-identical
parameters. See ``examples/ddp_signum.py``.
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations at run time.
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from signvote import aggregators, attacks, rules
from signvote.engine import protocol
from signvote.engine.step import AdversaryPlan

ATTACK_STREAM_STRIDE = 1000
"""Rank r's attack generator is seeded with ``seed + 1000 * r``: every Byzantine rank draws
its own random rows, as the simulator's coalition draws independent rows."""


@dataclass
class SignumVoteState:
    """The state of :func:`signum_vote_hook`.

    Attributes:
        momentum: beta in [0, 1); 0 sends the plain gradient's sign (signSGD).
        byzantine_ranks: the ranks (in ``process_group``) that run ``attack`` on their own
            message, for experiments.
        attack: the attack spec of those ranks; it must read only its own message
            (knowledge ``none`` or ``blind``, not data-level).
        process_group: the group to vote in (None: the default group).
        seed: the base seed of the attack's random generators (rank r: ``seed + 1000 r``).
        momenta: each parameter's momentum (explicit state), by the parameter's identity.
        traffic: the payload bytes this rank sent and received.
        step: the optimizer steps seen (buckets whose ``is_last()`` was true).
    """

    momentum: float = 0.9
    byzantine_ranks: frozenset[int] = frozenset()
    attack: str = "blind-inversion"
    process_group: dist.ProcessGroup | None = None
    seed: int = 0
    momenta: dict[int, Tensor] = field(default_factory=dict)
    traffic: protocol.Traffic = field(default_factory=protocol.Traffic)
    step: int = 0

    def __post_init__(self) -> None:
        self.rule = rules.get("signum" if self.momentum > 0 else "signsgd",
                              self.momentum if self.momentum > 0 else None)
        self.byzantine_ranks = frozenset(self.byzantine_ranks)
        attack = attacks.build(self.attack)
        caps = attack.capabilities
        if caps.knowledge == "omniscient" or caps.data_level:
            raise ValueError(f"attack {self.attack!r} is not a message attack that reads only "
                             f"its own message; valid: attacks of knowledge none or blind")
        self._attack = attack
        self._vote = aggregators.get("majority-vote")
        self._generators: dict[tuple[int, str], torch.Generator] = {}

    def plan(self, world: int, device: torch.device | str = "cpu") -> AdversaryPlan:
        """The adversaries among ``world`` ranks: the Byzantine ranks run the attack on
        their own message, the engines' blind stage (masks on the messages' ``device``)."""
        mask = torch.tensor([r in self.byzantine_ranks for r in range(world)], device=device)
        return AdversaryPlan(mask, torch.zeros(world, dtype=torch.bool, device=device),
                             self._attack)

    def generator(self, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
        """Rank ``rank``'s attack generator (its own stream), on the messages' ``device``
        (one per device: a rank's gradients stay on one)."""
        key = (rank, str(torch.device(device)))
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(
                self.seed + ATTACK_STREAM_STRIDE * rank)
        return self._generators[key]


def bucket_momentum(state: SignumVoteState, bucket: dist.GradBucket, like: Tensor
                    ) -> Tensor | None:
    """The bucket's momentum ``[1, numel]``: its parameters' momenta in the bucket's order
    (zeros for a parameter without one yet); None before any step of a stateless rule."""
    if not state.rule.capabilities.stateful:
        return None
    params = bucket.parameters()
    if not state.momenta:
        return None
    parts = [state.momenta.get(id(p), torch.zeros(p.numel(), dtype=like.dtype,
                                                     device=like.device)).reshape(-1)
             for p in params]
    return torch.cat(parts).reshape(1, -1)


def store_momentum(state: SignumVoteState, bucket: dist.GradBucket, momentum: Tensor) -> None:
    """Keep each parameter's slice of the bucket's new momentum ``[1, numel]``."""
    offset = 0
    for p in bucket.parameters():
        state.momenta[id(p)] = momentum[0, offset:offset + p.numel()]
        offset += p.numel()


def wire_device(group: dist.ProcessGroup | None, grads: Tensor) -> torch.device:
    """Where the hook's collectives move their buffers: the gradient's GPU under NCCL, the
    CPU under any other backend (gloo's all-gather takes CPU tensors)."""
    return grads.device if dist.get_backend(group) == "nccl" else torch.device("cpu")


def signum_vote_hook(state: SignumVoteState, bucket: dist.GradBucket
                     ) -> torch.futures.Future[Tensor]:
    """Replace the bucket's all-reduce by Signum with majority vote, overlapping the
    exchange with the rest of the backward pass (module docstring)."""
    message, exchange = _bucket_message(state, bucket)
    grads = bucket.buffer()
    pending = exchange.start_vote(message)

    def decode_and_vote(_: torch.futures.Future) -> Tensor:
        vote, _state = exchange.finish_vote(pending)
        return vote.to(grads.dtype).reshape(grads.shape)

    return pending.work.get_future().then(decode_and_vote)


def synchronous_signum_vote_hook(state: SignumVoteState, bucket: dist.GradBucket
                                 ) -> torch.futures.Future[Tensor]:
    """The blocking form of :func:`signum_vote_hook`: the whole exchange
    (``Exchange.__call__``) before it returns a completed future; the same parameters, bit
    for bit, without the overlap."""
    message, exchange = _bucket_message(state, bucket)
    grads = bucket.buffer()
    vote, _ = exchange(message)
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(vote.to(grads.dtype).reshape(grads.shape))
    return future


def _bucket_message(state: SignumVoteState, bucket: dist.GradBucket
                    ) -> tuple[Tensor, protocol.Exchange]:
    """This rank's message ``[d]`` for the bucket (the rule, then its attack when
    Byzantine; the momentum kept, the step counted) and the exchange to send it by."""
    group = state.process_group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    grads = bucket.buffer()
    flat = grads.detach().reshape(1, -1).to(torch.float32)
    if sum(p.numel() for p in bucket.parameters()) != flat.shape[1]:
        raise ValueError(f"bucket {bucket.index()}: its parameters hold "
                         f"{sum(p.numel() for p in bucket.parameters())} values, its buffer "
                         f"{flat.shape[1]}")
    messages, momentum = state.rule.step(flat, bucket_momentum(state, bucket, flat))
    if momentum is not None:
        store_momentum(state, bucket, momentum)
    ctx = attacks.AttackContext(state.step, state.generator(rank, flat.device),
                                sign_messages=True)
    messages = state.plan(world, flat.device).blind(messages, ctx, [rank])
    if bucket.is_last():
        state.step += 1
    exchange = protocol.Exchange("peer", rank, world, flat.shape[1], True, state._vote,
                                 state.traffic, group, home=grads.device,
                                 wire=wire_device(group, grads))
    return messages[0], exchange
