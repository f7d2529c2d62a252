"""The distributed engine's wire protocol: fixed-size frames, one exchange per step for
each layout, and the bytes every rank moves.

A step's exchange turns every worker's message row ``m_i[d]`` into the aggregate ``v[d]``
on every rank. What travels depends on the worker rule:

- **sign rules** (signsgd, signum, stochastic-sign): a *frame* of ``1 + B`` bytes,
  ``B = ceil(d / 8)``: a flag byte (1 if the row has zeros) then the bits of ``m > 0``
  (:mod:`signvote.packing`). Only a row with zeros sends a second frame, ``B`` bytes of
  ``m != 0``. So a message costs 1 bit per coordinate, 2 with zeros, and carries exactly
  the ternary value (NaN is read as 0, abstaining). A ternary aggregate (majority vote)
  returns the same way, any other aggregate as fp32.
- **real-valued rules** (sgd): fp32 rows of ``4 d`` bytes.

Two layouts:

- ``server`` (the paper's): rank 0 is a trusted server, ranks ``1..n`` the workers. The
  workers' frames are gathered at the server, which aggregates (the majority vote straight
  from the bits, :func:`signvote.packing.packed_vote`) and broadcasts the aggregate.
- ``peer`` (decentralised): ranks ``0..n-1`` are the workers; every rank all-gathers every
  frame and aggregates itself. The mean of fp32 rows is an all-reduce, as DDP does.

Every size is fixed by ``d`` and the rule before training starts; a frame is checked on
arrival (a flag other than 0 or 1 reads as 1, bits beyond ``d`` and positive bits of zero
coordinates are cleared), so a worker cannot make another rank misread its message.

Bytes are counted as payload (no transport headers): a gather or point-to-point send
moves its buffer once; a broadcast is counted as the root sending its buffer to each of
the ``p - 1`` others; an all-gather as every rank sending its buffer to, and receiving one
from, each of the ``p - 1`` others; an all-reduce of ``S`` bytes as the ring algorithm's
``2 (p - 1) / p * S`` sent and received per rank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from signvote import packing
from signvote.aggregators.basic import MajorityVote, Mean, Sum

LAYOUTS = ("server", "peer")


@dataclass
class Traffic:
    """Payload bytes one rank sent and received (see the module docstring)."""

    sent: int = 0
    received: int = 0

    def add(self, sent: int = 0, received: int = 0) -> None:
        self.sent += sent
        self.received += received


def frame_bytes(dim: int) -> int:
    """The size of a sign frame: the flag byte and ``ceil(d / 8)`` bytes of bits."""
    return 1 + -(-dim // 8)


def encode_signs(row: Tensor) -> tuple[Tensor, Tensor | None]:
    """The frame ``[1 + B]`` uint8 of a message row ``[d]`` and its zero bits ``[B]`` (None
    when the row has no zeros and only the frame travels)."""
    packed = packing.pack_signs(row.reshape(1, -1))
    flag = torch.tensor([0 if packed.nonzero is None else 1], dtype=torch.uint8)
    frame = torch.cat([flag, packed.positive[0]])
    return frame, (None if packed.nonzero is None else packed.nonzero[0])


def decode_signs(frames: Tensor, nonzero: Tensor | None, dim: int) -> packing.PackedSigns:
    """The checked packed rows of ``frames[k, 1 + B]`` and their zero bits ``[k, B]`` (None:
    no zeros in any row): padding bits cleared, the zero bits of a row whose flag is clear
    ignored, a positive bit where the zero bit says 0 cleared."""
    valid = _valid_bits(dim)
    positive = frames[:, 1:] & valid
    if nonzero is not None:
        nonzero = torch.where(has_zeros(frames).unsqueeze(1), nonzero & valid, valid)
        positive = positive & nonzero
    return packing.PackedSigns(positive, nonzero, dim)


def has_zeros(frames: Tensor) -> Tensor:
    """The flags of ``frames[k, 1 + B]`` as booleans ``[k]`` (any nonzero byte is set)."""
    return frames[:, 0] != 0


@functools.lru_cache(maxsize=8)
def _valid_bits(dim: int) -> Tensor:
    """``[B]`` uint8 with the bits of coordinates ``0..dim-1`` set (padding clear); cached,
    so never written to."""
    valid = torch.full((-(-dim // 8),), 255, dtype=torch.uint8)
    if dim % 8:
        valid[-1] = (1 << (dim % 8)) - 1
    return valid


def all_nonzero(dim: int) -> Tensor:
    """The zero bits ``[B]`` of a row without zeros (a new tensor)."""
    return _valid_bits(dim).clone()


class Exchange:
    """One rank's end of a step's exchange (see the module docstring).

    Args:
        layout: ``server`` or ``peer``.
        rank: this process's rank; world: the number of processes.
        dim: ``d``.
        sends_signs: True for sign rules (bit-packed frames), False for fp32.
        aggregator: the aggregator, on the ranks that aggregate (the server; every peer).
        traffic: the counter this rank's bytes are added to.
        group: the process group (``rank`` and ``world`` within it; None: the default).
    """

    def __init__(self, layout: str, rank: int, world: int, dim: int, sends_signs: bool,
                 aggregator, traffic: Traffic, group: dist.ProcessGroup | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.layout, self.rank, self.world, self.dim = layout, rank, world, dim
        self.sends_signs, self.aggregator, self.traffic = sends_signs, aggregator, traffic
        self.group = group
        self.workers = world - 1 if layout == "server" else world
        self.frame = frame_bytes(dim)
        self.bits = self.frame - 1
        self.returns_signs = bool(getattr(aggregator, "returns_signs", False))

    def __call__(self, row: Tensor | None) -> Tensor:
        """The aggregate ``[d]`` of every worker's ``row[d]`` (None on the server rank)."""
        if self.layout == "server":
            if self.rank == 0:
                v = self._aggregate(self._gather_at_server())
                self._broadcast_result(v)
                return v
            self._send_to_server(row)
            return self._broadcast_result(None)
        return self._peer(row)

    # -- aggregation ------------------------------------------------------------------
    def _aggregate(self, rows: Tensor | packing.PackedSigns) -> Tensor:
        if isinstance(rows, packing.PackedSigns):
            if type(self.aggregator) is MajorityVote:  # the vote straight from the bits
                return packing.packed_vote(rows).to(torch.float32)
            rows = packing.unpack_signs(rows)
        return self.aggregator(rows)

    # -- server layout ----------------------------------------------------------------
    def _send_to_server(self, row: Tensor) -> None:
        if self.sends_signs:
            frame, nonzero = encode_signs(row)
            dist.gather(frame, None, dst=0)
            self.traffic.add(sent=self.frame)
            if nonzero is not None:
                dist.send(nonzero, 0)
                self.traffic.add(sent=self.bits)
        else:
            dist.gather(row.to(torch.float32).contiguous(), None, dst=0)
            self.traffic.add(sent=4 * self.dim)

    def _gather_at_server(self) -> Tensor | packing.PackedSigns:
        n = self.workers
        if not self.sends_signs:
            rows = [torch.empty(self.dim) for _ in range(self.world)]
            dist.gather(torch.zeros(self.dim), rows, dst=0)
            self.traffic.add(received=4 * self.dim * n)
            return torch.stack(rows[1:])
        frames = [torch.empty(self.frame, dtype=torch.uint8) for _ in range(self.world)]
        dist.gather(torch.zeros(self.frame, dtype=torch.uint8), frames, dst=0)
        self.traffic.add(received=self.frame * n)
        stacked = torch.stack(frames[1:])
        flags = has_zeros(stacked)
        nonzero = None
        if bool(flags.any()):
            nonzero = all_nonzero(self.dim).repeat(n, 1)
            for i in torch.nonzero(flags).flatten().tolist():
                dist.recv(nonzero[i], i + 1)
                self.traffic.add(received=self.bits)
        return decode_signs(stacked, nonzero, self.dim)

    def _broadcast_result(self, v: Tensor | None) -> Tensor:
        root = self.rank == 0
        others = self.world - 1
        if self.returns_signs:
            if root:
                frame, nonzero = encode_signs(v)
            else:
                frame, nonzero = torch.empty(self.frame, dtype=torch.uint8), None
            dist.broadcast(frame, 0)
            self._count_broadcast(self.frame, others)
            if frame[0] != 0:
                if nonzero is None:
                    nonzero = torch.empty(self.bits, dtype=torch.uint8)
                dist.broadcast(nonzero, 0)
                self._count_broadcast(self.bits, others)
            if root:
                return v
            packed = decode_signs(frame.unsqueeze(0), None if frame[0] == 0
                                  else nonzero.unsqueeze(0), self.dim)
            return packing.unpack_signs(packed)[0]
        out = v.to(torch.float32).contiguous() if root else torch.empty(self.dim)
        dist.broadcast(out, 0)
        self._count_broadcast(4 * self.dim, others)
        return out

    def _count_broadcast(self, size: int, others: int) -> None:
        if self.rank == 0:
            self.traffic.add(sent=size * others)
        else:
            self.traffic.add(received=size)

    # -- peer layout ------------------------------------------------------------------
    def _all_gather(self, tensor: Tensor) -> Tensor:
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(out, tensor, group=self.group)
        size = tensor.numel() * tensor.element_size() * (self.world - 1)
        self.traffic.add(sent=size, received=size)
        return torch.stack(out)

    def _peer(self, row: Tensor) -> Tensor:
        if not self.sends_signs:
            row = row.to(torch.float32)
            if type(self.aggregator) in (Mean, Sum):  # DDP's all-reduce
                total = row.clone()
                dist.all_reduce(total, group=self.group)
                size = fp32_allreduce_bytes(self.dim, self.world)
                self.traffic.add(sent=size, received=size)
                return total / self.world if type(self.aggregator) is Mean else total
            return self._aggregate(self._all_gather(row.contiguous()))
        frame, nonzero = encode_signs(row)
        frames = self._all_gather(frame)
        zero_bits = None
        if bool(has_zeros(frames).any()):
            zero_bits = self._all_gather(all_nonzero(self.dim) if nonzero is None else nonzero)
        return self._aggregate(decode_signs(frames, zero_bits, self.dim))


def fp32_allreduce_bytes(dim: int, world: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``d`` fp32 values: DDP's
    default, the baseline the packed protocol is compared with."""
    return 4 * dim * 2 * (world - 1) // world
