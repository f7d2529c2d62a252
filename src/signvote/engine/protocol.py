"""The distributed engine's wire protocol: fixed-size frames, one exchange per step for
each layout, and the bytes every rank moves.

A step's exchange turns every worker's message row ``m_i[d]`` into the aggregate ``v[d]``
on every rank. What travels depends on the worker rule:

- **sign rules** (signsgd, signum, stochastic-sign): a *frame* of ``4 + B`` bytes,
  ``B = ceil(d / 8)``: the row's number of zeros ``z`` (int32, little-endian) then the
  bits of ``m > 0`` (:mod:`signvote.packing`). Only a row with zeros sends a second
  payload, which says where they are: their indices (int32) when ``4 z < B``, else the
  ``B`` bytes of the bits of ``m != 0``. So a message costs 1 bit per coordinate, plus
  ``min(32 z, d)`` bits with ``z`` zeros, and carries exactly the ternary value (NaN is
  read as 0, abstaining). A ternary aggregate (majority vote) returns the same way, any
  other aggregate as fp32.
- **real-valued rules** (sgd): fp32 rows of ``4 d`` bytes.

Two layouts:

- ``server`` (the paper's): rank 0 is a trusted server, ranks ``1..n`` the workers. The
  workers' frames are gathered at the server, each zero payload follows point to point,
  the server aggregates (the majority vote straight from the bits,
  :func:`signvote.packing.packed_vote`) and broadcasts the aggregate.
- ``peer`` (decentralised): ranks ``0..n-1`` are the workers; every rank all-gathers every
  frame, then (when any row has zeros) every zero payload, padded to the largest, and
  aggregates itself. The mean of fp32 rows is an all-reduce, as DDP does.

Devices: a rank's messages and aggregate live on its ``home`` device (where it computes),
the buffers on the wire on its ``wire`` device: the rank's GPU under NCCL, the CPU under
gloo (gloo's collectives other than broadcast and all-reduce take CPU tensors only). A row
is encoded where it lies and frames are decoded and voted on the home device: in numpy on
the CPU, in torch operations elsewhere (``*_torch``, the same bytes and votes). A GPU rank
therefore moves only frames between its GPU and the wire, and reads on the host only what
decides a size: its own zero count (the payload's size) and the gathered headers (the
sizes of the receives). On the CPU every copy is a no-op and every byte and number is what
it was before devices existed.

Every size follows from ``d``, the rule and the frames' zero counts, which every receiver
reads before it posts a receive. A frame is checked on arrival: a zero count outside
``[0, d]`` is clamped, indices outside ``[0, d)`` are dropped, bits beyond ``d`` and
positive bits of zero coordinates are cleared. Any byte string of the right size decodes
to a ternary row, so a worker cannot make another rank misread its message.

Bytes are counted as payload (no transport headers): a gather or point-to-point send
moves its buffer once; a broadcast is counted as the root sending its buffer to each of
the ``p - 1`` others; an all-gather as every rank sending its buffer to, and receiving one
from, each of the ``p - 1`` others; an all-reduce of ``S`` bytes as the ring algorithm's
``2 (p - 1) / p * S`` sent and received per rank.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from signvote import packing
from signvote.contracts import Aggregator, State

LAYOUTS = ("server", "peer")
HEADER = 4
"""Bytes of a frame's header: the row's zero count, int32 little-endian."""


@dataclass
class Traffic:
    """Payload bytes one rank sent and received (see the module docstring)."""

    sent: int = 0
    received: int = 0

    def add(self, sent: int = 0, received: int = 0) -> None:
        self.sent += sent
        self.received += received


def mask_bytes(dim: int) -> int:
    """``B = ceil(d / 8)``: the bytes of one bit per coordinate."""
    return -(-dim // 8)


def frame_bytes(dim: int) -> int:
    """The size of a sign frame: the header and ``B`` bytes of bits."""
    return HEADER + mask_bytes(dim)


def zeros_as_indices(zeros: int, dim: int) -> bool:
    """True when ``zeros`` zeros travel as int32 indices: when those are smaller than a
    ``B``-byte bit mask."""
    return 4 * zeros < mask_bytes(dim)


def zeros_bytes(zeros: int, dim: int) -> int:
    """The size of the payload that locates ``zeros`` zeros: 0 without zeros, else their
    indices or the bit mask (:func:`zeros_as_indices`)."""
    if zeros <= 0:
        return 0
    return 4 * zeros if zeros_as_indices(zeros, dim) else mask_bytes(dim)


def encode_signs(row: Tensor) -> tuple[Tensor, Tensor | None]:
    """The frame ``[4 + B]`` uint8 of a message row ``[d]`` and its zero payload
    (:func:`zeros_bytes`; None when the row has no zeros and only the frame travels), on
    the row's device (:func:`encode_signs_torch` off the CPU)."""
    if row.device.type != "cpu":
        return encode_signs_torch(row)
    m = row.detach().reshape(-1).to(torch.float32).numpy()
    positive, negative = m > 0, m < 0
    zeros = m.size - np.count_nonzero(positive) - np.count_nonzero(negative)
    header = np.array([zeros], dtype="<i4").view(np.uint8)
    frame = torch.from_numpy(np.concatenate(
        [header, np.packbits(positive, bitorder="little")]))
    if zeros == 0:
        return frame, None
    nonzero = positive | negative
    if zeros_as_indices(zeros, m.size):
        payload = np.flatnonzero(~nonzero).astype("<i4").view(np.uint8)
    else:
        payload = np.packbits(nonzero, bitorder="little")
    return frame, torch.from_numpy(payload)


def encode_signs_torch(row: Tensor) -> tuple[Tensor, Tensor | None]:
    """:func:`encode_signs` in torch operations, on the row's device (any device; the
    same bytes). Its one host read is the zero count, which decides the payload's size."""
    m = row.detach().reshape(-1)
    positive = m > 0
    nonzero = positive | (m < 0)
    count = (~nonzero).sum(dtype=torch.int32).reshape(1)
    frame = torch.cat([_little_endian_bytes(count), packing.pack_bits_torch(positive[None])[0]])
    zeros = int(count)
    if zeros == 0:
        return frame, None
    if zeros_as_indices(zeros, m.numel()):
        index = torch.nonzero(~nonzero).reshape(-1).to(torch.int32)
        return frame, _little_endian_bytes(index)
    return frame, packing.pack_bits_torch(nonzero[None])[0]


def _little_endian_bytes(values: Tensor) -> Tensor:
    """The bytes of an int32 tensor ``[k]``, little-endian: ``[4 k]`` uint8 (a view)."""
    if sys.byteorder != "little":  # torch's view is the machine's order
        raise RuntimeError("the wire format is little-endian; this machine is not")
    return values.contiguous().view(torch.uint8)


def zero_counts(frames: Tensor, dim: int) -> list[int]:
    """The zero count of each frame of ``frames[k, 4 + B]``, clamped to ``[0, d]`` (read
    on the host: a copy of the headers from a device)."""
    counts = np.ascontiguousarray(frames[:, :HEADER].cpu().numpy()).view("<i4")[:, 0]
    return np.clip(counts, 0, dim).tolist()


def decode_signs(frames: Tensor, payloads: list[Tensor | None], dim: int
                 ) -> packing.PackedSigns:
    """The checked packed rows of ``frames[k, 4 + B]`` and their zero payloads (None for
    a row without zeros; longer payloads are read up to :func:`zeros_bytes`), on the
    frames' device (:func:`decode_signs_torch` off the CPU)."""
    if frames.device.type != "cpu":
        return decode_signs_torch(frames, payloads, dim)
    return _decode(frames, payloads, dim, _nonzero_bits)


def decode_signs_torch(frames: Tensor, payloads: list[Tensor | None], dim: int
                       ) -> packing.PackedSigns:
    """:func:`decode_signs` in torch operations (any device; the same bits). Its one host
    read is the frames' headers."""
    return _decode(frames, payloads, dim, _nonzero_bits_torch)


def _decode(frames: Tensor, payloads: list[Tensor | None], dim: int,
            nonzero_bits: Callable[[Tensor, int, int], Tensor]) -> packing.PackedSigns:
    """:func:`decode_signs`, reading each zero payload with ``nonzero_bits``."""
    valid = _valid_bits(dim).to(frames.device)
    positive = frames[:, HEADER:] & valid
    counts = zero_counts(frames, dim)
    if not any(counts):
        return packing.PackedSigns(positive, None, dim)
    nonzero = valid.repeat(len(counts), 1)
    for i, (zeros, payload) in enumerate(zip(counts, payloads, strict=True)):
        if zeros:
            nonzero[i] = nonzero_bits(payload[:zeros_bytes(zeros, dim)], zeros, dim) & valid
    return packing.PackedSigns(positive & nonzero, nonzero, dim)


def vote_from_frames(frames: Tensor, payloads: list[Tensor | None], dim: int) -> Tensor:
    """The majority vote ``[d]`` (int8) of the rows of ``frames`` and their zero payloads:
    ``packed_vote(decode_signs(frames, payloads, dim))``, without building a bit mask for
    a row whose zeros come as indices. Per coordinate it counts the positive bits and the
    rows that abstain; the sign of ``2 #positive - (n - #abstaining)`` is the vote. Off
    the CPU: :func:`vote_from_frames_torch`."""
    if frames.device.type != "cpu":
        return vote_from_frames_torch(frames, payloads, dim)
    n = frames.shape[0]
    positive = (frames[:, HEADER:] & _valid_bits(dim)).numpy()
    count_type = np.uint8 if n < 1 << 7 else np.int64  # 2 n fits
    plus = np.zeros(dim, dtype=count_type)
    abstain = np.zeros(dim, dtype=count_type)
    for i, zeros in enumerate(zero_counts(frames, dim)):
        row = positive[i]
        if zeros:
            payload = payloads[i][:zeros_bytes(zeros, dim)].numpy()
            if zeros_as_indices(zeros, dim):
                index = _zero_indices(payload, dim)
                if index.size > 1 and not bool((index[1:] > index[:-1]).all()):
                    index = np.unique(index)  # a repeated index must not abstain twice
                row = row.copy()
                np.bitwise_and.at(row, index >> 3,
                                  ~np.left_shift(1, index & 7).astype(np.uint8))
                abstain[index] += 1
            else:
                row = row & payload
                abstain += 1 - np.unpackbits(payload, count=dim, bitorder="little")
        plus += np.unpackbits(row, count=dim, bitorder="little")
    twice = plus * count_type(2)
    voters = count_type(n) - abstain
    vote = (twice > voters).view(np.int8) - (twice < voters).view(np.int8)
    return torch.from_numpy(vote)


def vote_from_frames_torch(frames: Tensor, payloads: list[Tensor | None], dim: int
                           ) -> Tensor:
    """:func:`vote_from_frames` in torch operations, on the frames' device (the same
    vote): :func:`signvote.packing.packed_vote_torch` of :func:`decode_signs`."""
    return packing.packed_vote_torch(decode_signs_torch(frames, payloads, dim))


def _zero_indices(payload: np.ndarray, dim: int) -> np.ndarray:
    """The int32 indices of an index payload, those outside ``[0, d)`` dropped."""
    index = np.ascontiguousarray(payload).view("<i4")
    return index[(index >= 0) & (index < dim)]


def _nonzero_bits(payload: Tensor, zeros: int, dim: int) -> Tensor:
    """The bits of ``m != 0`` ``[B]`` from a zero payload (indices or bit mask)."""
    if not zeros_as_indices(zeros, dim):
        return payload
    index = _zero_indices(payload.numpy(), dim)
    nonzero = np.ones(dim, dtype=bool)
    nonzero[index] = False
    return torch.from_numpy(np.packbits(nonzero, bitorder="little"))


def _nonzero_bits_torch(payload: Tensor, zeros: int, dim: int) -> Tensor:
    """:func:`_nonzero_bits` in torch operations, on the payload's device."""
    if not zeros_as_indices(zeros, dim):
        return payload
    index = payload.contiguous().view(torch.int32).long()
    # an index outside [0, d) is sent to a spare slot: dropped without a host read
    index = torch.where((index >= 0) & (index < dim), index, dim)
    nonzero = torch.ones(dim + 1, dtype=torch.bool, device=payload.device)
    nonzero[index] = False
    return packing.pack_bits_torch(nonzero[None, :dim])[0]


@functools.lru_cache(maxsize=8)
def _valid_bits(dim: int) -> Tensor:
    """``[B]`` uint8 with the bits of coordinates ``0..dim-1`` set (padding clear); cached,
    so never written to."""
    valid = torch.full((mask_bytes(dim),), 255, dtype=torch.uint8)
    if dim % 8:
        valid[-1] = (1 << (dim % 8)) - 1
    return valid


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
        home: the device of this rank's messages, aggregate and aggregator state.
        wire: the device of the buffers the collectives move (the GPU under NCCL).
    """

    def __init__(self, layout: str, rank: int, world: int, dim: int, sends_signs: bool,
                 aggregator: Aggregator, traffic: Traffic,
                 group: dist.ProcessGroup | None = None, *,
                 home: torch.device | str = "cpu", wire: torch.device | str = "cpu") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.layout, self.rank, self.world, self.dim = layout, rank, world, dim
        self.sends_signs, self.aggregator, self.traffic = sends_signs, aggregator, traffic
        self.group = group
        self.home, self.wire = torch.device(home), torch.device(wire)
        self.workers = world - 1 if layout == "server" else world
        self.frame = frame_bytes(dim)
        self.returns_signs = aggregator.capabilities.returns_signs
        self.reduction = aggregator.capabilities.reduction

    def __call__(self, row: Tensor | None, state: State = None) -> tuple[Tensor, State]:
        """The aggregate ``[d]`` of every worker's ``row[d]`` (None on the server rank)
        and the aggregator's new state (``state`` itself on a rank that does not
        aggregate).

        A row that is not ``d`` real numbers is refused here, before anything is sent: the
        sizes on the wire follow from ``d`` alone."""
        if row is not None and (row.numel() != self.dim or row.is_complex()
                                or not row.is_floating_point()):
            raise ValueError(f"a message must be {self.dim} real numbers; got "
                             f"{tuple(row.shape)} {row.dtype}")
        if self.layout == "server":
            if self.rank == 0:
                v, state = self._gather_at_server(state)
                self._broadcast_result(v)
                return v.to(self.home), state
            self._send_to_server(row)
            return self._broadcast_result(None).to(self.home), state
        v, state = self._peer(row, state)
        return v.to(self.home), state

    # -- aggregation ------------------------------------------------------------------
    def _aggregate(self, rows: Tensor, state: State) -> tuple[Tensor, State]:
        """The aggregate of fp32 rows ``[n, d]``, on the home device."""
        return self.aggregator.apply(rows.to(self.home), state)

    def _aggregate_frames(self, frames: Tensor, payloads: list[Tensor | None],
                          state: State) -> tuple[Tensor, State]:
        """The aggregate of sign frames: the vote straight from the bits (an aggregator
        whose ``reduction`` is ``vote``), or the aggregator on the decoded ternary rows."""
        frames = frames.to(self.home)
        payloads = [None if p is None else p.to(self.home) for p in payloads]
        if self.reduction == "vote":
            return vote_from_frames(frames, payloads, self.dim).to(torch.float32), state
        return self._aggregate(
            packing.unpack_signs(decode_signs(frames, payloads, self.dim)), state)

    # -- server layout ----------------------------------------------------------------
    def _send_to_server(self, row: Tensor) -> None:
        if self.sends_signs:
            frame, payload = encode_signs(row)
            dist.gather(frame.to(self.wire), None, dst=0)
            self.traffic.add(sent=self.frame)
            if payload is not None:
                dist.send(payload.to(self.wire), 0)
                self.traffic.add(sent=payload.numel())
        else:
            dist.gather(row.to(self.wire, torch.float32).contiguous(), None, dst=0)
            self.traffic.add(sent=4 * self.dim)

    def _gather_at_server(self, state: State) -> tuple[Tensor, State]:
        """The server's aggregate of the workers' messages."""
        n = self.workers
        if not self.sends_signs:
            rows = [torch.empty(self.dim, device=self.wire) for _ in range(self.world)]
            dist.gather(torch.zeros(self.dim, device=self.wire), rows, dst=0)
            self.traffic.add(received=4 * self.dim * n)
            return self._aggregate(torch.stack(rows[1:]), state)
        frames = [torch.empty(self.frame, dtype=torch.uint8, device=self.wire)
                  for _ in range(self.world)]
        dist.gather(torch.zeros(self.frame, dtype=torch.uint8, device=self.wire), frames, dst=0)
        self.traffic.add(received=self.frame * n)
        stacked = torch.stack(frames[1:])
        payloads: list[Tensor | None] = []
        for i, zeros in enumerate(zero_counts(stacked, self.dim)):
            payload = None
            if zeros:
                payload = torch.empty(zeros_bytes(zeros, self.dim), dtype=torch.uint8,
                                      device=self.wire)
                dist.recv(payload, i + 1)
                self.traffic.add(received=payload.numel())
            payloads.append(payload)
        return self._aggregate_frames(stacked, payloads, state)

    def _broadcast_result(self, v: Tensor | None) -> Tensor:
        root = self.rank == 0
        others = self.world - 1
        if self.returns_signs:
            if root:
                frame, payload = encode_signs(v)
                frame = frame.to(self.wire)
                payload = None if payload is None else payload.to(self.wire)
            else:
                frame = torch.empty(self.frame, dtype=torch.uint8, device=self.wire)
                payload = None
            dist.broadcast(frame, 0)
            self._count_broadcast(self.frame, others)
            zeros = zero_counts(frame.unsqueeze(0), self.dim)[0]
            if zeros:
                if payload is None:
                    payload = torch.empty(zeros_bytes(zeros, self.dim), dtype=torch.uint8,
                                          device=self.wire)
                dist.broadcast(payload, 0)
                self._count_broadcast(payload.numel(), others)
            if root:
                return v
            return packing.unpack_signs(decode_signs(
                frame.unsqueeze(0).to(self.home),
                [None if payload is None else payload.to(self.home)], self.dim))[0]
        out = (v.to(self.wire, torch.float32).contiguous() if root
               else torch.empty(self.dim, device=self.wire))
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

    def _peer(self, row: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.sends_signs:
            row = row.to(self.wire, torch.float32)
            if self.reduction in ("mean", "sum"):  # DDP's all-reduce
                total = row.clone()
                dist.all_reduce(total, group=self.group)
                size = fp32_allreduce_bytes(self.dim, self.world)
                self.traffic.add(sent=size, received=size)
                return (total / self.world if self.reduction == "mean" else total), state
            return self._aggregate(self._all_gather(row.contiguous()), state)
        frame, payload = encode_signs(row)
        frames = self._all_gather(frame.to(self.wire))
        counts = zero_counts(frames, self.dim)
        width = max(zeros_bytes(z, self.dim) for z in counts)
        payloads: list[Tensor | None] = [None] * self.world
        if width:  # every payload padded to the largest, read back to its own size
            padded = torch.zeros(width, dtype=torch.uint8, device=self.wire)
            if payload is not None:
                padded[:payload.numel()] = payload
            payloads = list(self._all_gather(padded))
        return self._aggregate_frames(frames, payloads, state)

    # -- the overlapping peer exchange (the DDP hook) ------------------------------------
    def start_vote(self, row: Tensor) -> PendingVote:
        """Launch the peer exchange of a sign row and return at once (the DDP hook's
        overlap): the frames' headers (the zero counts, 4 bytes a rank) are all-gathered
        first, synchronously, so that every rank knows the payload width; then the bits
        and the zero payloads, padded to that width, in one asynchronous all-gather
        (``async_op=True``). :meth:`finish_vote` aggregates once it has completed. Bytes
        and result are :meth:`__call__`'s (peer layout): the same frames and payloads."""
        if self.layout != "peer" or not self.sends_signs:
            raise ValueError(f"start_vote is the peer layout's sign exchange; this one is "
                             f"layout {self.layout}, sends_signs {self.sends_signs}")
        frame, payload = encode_signs(row)
        headers = self._all_gather(frame[:HEADER].to(self.wire))
        width = max(zeros_bytes(z, self.dim) for z in zero_counts(headers, self.dim))
        bits = self.frame - HEADER
        body = torch.zeros(bits + width, dtype=torch.uint8, device=self.wire)
        body[:bits] = frame[HEADER:]
        if payload is not None:
            body[bits:bits + payload.numel()] = payload
        out = [torch.empty_like(body) for _ in range(self.world)]
        work = dist.all_gather(out, body, group=self.group, async_op=True)
        size = body.numel() * (self.world - 1)
        self.traffic.add(sent=size, received=size)
        return PendingVote(work, out, headers, width)

    def finish_vote(self, pending: PendingVote, state: State = None) -> tuple[Tensor, State]:
        """The aggregate ``[d]`` (home device) of a completed :meth:`start_vote`."""
        bodies = torch.stack(pending.bodies)
        bits = self.frame - HEADER
        frames = torch.cat([pending.headers, bodies[:, :bits]], dim=1)
        payloads: list[Tensor | None] = (list(bodies[:, bits:]) if pending.width
                                         else [None] * self.world)
        v, state = self._aggregate_frames(frames, payloads, state)
        return v.to(self.home), state


@dataclass
class PendingVote:
    """A launched :meth:`Exchange.start_vote`: the all-gather's work, its output buffers
    (each rank's bits then its zero payload, padded to ``width``), and the gathered
    headers ``[world, 4]`` (CPU)."""

    work: dist.Work
    bodies: list[Tensor]
    headers: Tensor
    width: int


def fp32_allreduce_bytes(dim: int, world: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``d`` fp32 values: DDP's
    default, the baseline the packed protocol is compared with."""
    return 4 * dim * 2 * (world - 1) // world
