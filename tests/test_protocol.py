"""The wire frames of the distributed engine: exact ternary round trips and checked input."""

import math

import pytest
import torch

from signvote.aggregators.basic import MajorityVote, ternary_votes
from signvote.engine import protocol
from signvote.packing import packed_vote, unpack_signs


def decode_one(frame, payload, d):
    return unpack_signs(protocol.decode_signs(frame[None], [payload], d))[0]


@pytest.mark.parametrize("d", [*range(1, 34), 255, 256, 257, 1000])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.01, 0.3])
def test_a_frame_round_trips_a_ternary_row_of_every_length(d, zero_fraction, gen):
    row = torch.where(torch.rand(d, generator=gen) < 0.5, -1.0, 1.0)
    row[torch.rand(d, generator=gen) < zero_fraction] = 0.0
    frame, payload = protocol.encode_signs(row)
    zeros = int((row == 0).sum())
    assert frame.dtype == torch.uint8 and frame.numel() == 4 + math.ceil(d / 8)
    assert protocol.zero_counts(frame[None], d) == [zeros]
    # no zeros: 1 bit a coordinate; zeros: the cheaper of their int32 indices and a bit mask
    assert (0 if payload is None else payload.numel()) == (
        0 if zeros == 0 else min(4 * zeros, math.ceil(d / 8)) if 4 * zeros < math.ceil(d / 8)
        else math.ceil(d / 8))
    assert torch.equal(decode_one(frame, payload, d), row)


def test_sparse_zeros_travel_as_indices_and_dense_ones_as_a_bit_mask():
    d = 8000  # a bit mask is 1000 bytes
    few = torch.ones(d)
    few[[3, 4000, 7999]] = 0
    _, payload = protocol.encode_signs(few)
    assert payload.numel() == 12  # three int32 indices
    many = torch.ones(d)
    many[::10] = 0
    _, payload = protocol.encode_signs(many)
    assert payload.numel() == 1000
    for row in (few, many):
        assert torch.equal(decode_one(*protocol.encode_signs(row), d), row)


def test_a_frame_carries_what_a_sign_can_carry():
    row = torch.tensor([2.5, -0.1, 0.0, float("nan"), float("inf"), -float("inf")])
    assert torch.equal(decode_one(*protocol.encode_signs(row), row.numel()),
                       ternary_votes(row))


@pytest.mark.parametrize("d", [5, 8, 13, 100, 4000])
def test_garbage_frames_decode_to_valid_ternary_rows(d, gen):
    n, mask = 6, math.ceil(d / 8)
    frames = torch.randint(0, 256, (n, 4 + mask), generator=gen, dtype=torch.uint8)
    # zero counts: negative, beyond d, small (indices), large (mask), none
    for i, count in enumerate([-7, d + 5, 2, d // 2, 0, 1]):
        frames[i, :4] = torch.tensor([count], dtype=torch.int32).view(torch.uint8)
    payloads = [torch.randint(0, 256, (mask + 64,), generator=gen, dtype=torch.uint8)
                for _ in range(n)]
    decoded = protocol.decode_signs(frames, payloads, d)
    rows = unpack_signs(decoded)
    assert rows.shape == (n, d)
    assert set(rows.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert bool((rows[0] != 0).all()) and bool((rows[4] != 0).all())  # counts <= 0: no zeros
    if 4 * 2 < mask:  # two zeros travel as two indices; out-of-range ones are dropped
        assert int((rows[2] == 0).sum()) <= 2
    # padding bits are cleared, so the vote counts only the d coordinates
    assert int(decoded.positive[:, -1].max()) < (1 << (d % 8 or 8))
    # the vote from the checked bits equals the vote from the decoded rows
    assert torch.equal(packed_vote(decoded).float(), MajorityVote()(rows))


@pytest.mark.parametrize("d", [5, 13, 100, 4000])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_the_vote_from_frames_equals_the_vote_of_the_decoded_rows(d, n, gen):
    """Honest frames with all three zero encodings, and garbage ones (repeated indices
    included), against packed_vote of decode_signs and the float majority vote."""
    rows = torch.where(torch.rand(n, d, generator=gen) < 0.5, -1.0, 1.0)
    rows[torch.rand(n, d, generator=gen) < torch.linspace(0, 0.5, n)[:, None]] = 0.0
    encoded = [protocol.encode_signs(row) for row in rows]
    frames = torch.stack([f for f, _ in encoded])
    payloads = [p for _, p in encoded]
    got = protocol.vote_from_frames(frames, payloads, d)
    assert torch.equal(got.float(), MajorityVote()(rows))
    mask = math.ceil(d / 8)
    garbage = torch.randint(0, 256, (n, 4 + mask), generator=gen, dtype=torch.uint8)
    for i in range(n):
        garbage[i, :4] = torch.tensor([[0, 1, 2, d // 2, d + 3][i % 5]],
                                      dtype=torch.int32).view(torch.uint8)
    junk = [torch.randint(0, 256, (mask + 16,), generator=gen, dtype=torch.uint8)
            for _ in range(n)]
    junk[min(2, n - 1)][:8] = torch.tensor([1, 1], dtype=torch.int32).view(torch.uint8)
    want = packed_vote(protocol.decode_signs(garbage, junk, d))
    assert torch.equal(protocol.vote_from_frames(garbage, junk, d), want)


@pytest.mark.parametrize("row", [torch.ones(7), torch.ones(9), torch.ones(8, dtype=torch.int64),
                                 torch.ones(8, dtype=torch.complex64)])
@pytest.mark.parametrize("layout", protocol.LAYOUTS)
def test_a_message_of_the_wrong_size_or_type_is_refused_before_it_is_sent(row, layout):
    exchange = protocol.Exchange(layout, 1, 3, 8, True, MajorityVote(), protocol.Traffic())
    with pytest.raises(ValueError, match="a message must be 8 real numbers"):
        exchange(row)  # no process group exists: nothing was sent


# --- the torch path (a GPU rank's), against the numpy path on the same inputs --------------


def _garbage(n, d, gen):
    """Frames and payloads a hostile rank could send: every kind of zero count, random
    bits, indices out of range and repeated."""
    mask = math.ceil(d / 8)
    frames = torch.randint(0, 256, (n, 4 + mask), generator=gen, dtype=torch.uint8)
    for i in range(n):
        frames[i, :4] = torch.tensor([[-7, 0, 1, 2, d // 2, d + 3][i % 6]],
                                     dtype=torch.int32).view(torch.uint8)
    payloads = [torch.randint(0, 256, (mask + 16,), generator=gen, dtype=torch.uint8)
                for _ in range(n)]
    payloads[min(3, n - 1)][:8] = torch.tensor([1, 1], dtype=torch.int32).view(torch.uint8)
    return frames, payloads


@pytest.mark.parametrize("d", [1, 7, 8, 9, 31, 100, 257, 8000])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.001, 0.05, 0.6, 1.0])
def test_torch_encoding_writes_the_bytes_of_the_numpy_encoding(d, zero_fraction, gen):
    row = torch.randn(d, generator=gen)
    row[torch.rand(d, generator=gen) < zero_fraction] = 0.0
    if d > 3:
        row[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    want_frame, want_payload = protocol.encode_signs(row)
    frame, payload = protocol.encode_signs_torch(row)
    assert frame.dtype == torch.uint8 and torch.equal(frame, want_frame)
    assert (payload is None) == (want_payload is None)
    if payload is not None:
        assert payload.dtype == torch.uint8 and torch.equal(payload, want_payload)


@pytest.mark.parametrize("d", [5, 13, 100, 4000])
@pytest.mark.parametrize("n", [1, 3, 6, 7])
def test_torch_decoding_and_vote_equal_numpys_on_honest_and_garbage_frames(d, n, gen):
    rows = torch.where(torch.rand(n, d, generator=gen) < 0.5, -1.0, 1.0)
    rows[torch.rand(n, d, generator=gen) < torch.linspace(0, 0.5, n)[:, None]] = 0.0
    encoded = [protocol.encode_signs(row) for row in rows]
    honest = (torch.stack([f for f, _ in encoded]), [p for _, p in encoded])
    for frames, payloads in (honest, _garbage(n, d, gen)):
        want = protocol.decode_signs(frames, payloads, d)
        got = protocol.decode_signs_torch(frames, payloads, d)
        assert torch.equal(got.positive, want.positive)
        assert (got.nonzero is None) == (want.nonzero is None)
        if got.nonzero is not None:
            assert torch.equal(got.nonzero, want.nonzero)
        assert torch.equal(protocol.vote_from_frames_torch(frames, payloads, d),
                           protocol.vote_from_frames(frames, payloads, d))
    assert torch.equal(protocol.vote_from_frames_torch(*honest, d).float(),
                       MajorityVote()(rows))


def test_a_weakened_torch_index_check_would_be_caught():
    """The garbage above does reach the index check: an index payload with entries outside
    [0, d) decodes to what dropping exactly those entries gives."""
    d = 4000
    frame = torch.zeros(4 + math.ceil(d / 8), dtype=torch.uint8)
    frame[:4] = torch.tensor([3], dtype=torch.int32).view(torch.uint8)
    payload = torch.tensor([5, -1, d], dtype=torch.int32).view(torch.uint8)
    for decode in (protocol.decode_signs, protocol.decode_signs_torch):
        rows = unpack_signs(decode(frame[None], [payload], d))[0]
        assert torch.nonzero(rows == 0).flatten().tolist() == [5]
