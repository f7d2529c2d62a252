"""The wire frames of the distributed engine: exact ternary round trips and checked input."""

import pytest
import torch

from signvote.aggregators.basic import MajorityVote, ternary_votes
from signvote.engine import protocol
from signvote.packing import packed_vote, unpack_signs


def ternary_rows(n, d, gen, zeros=True):
    rows = torch.randint(-1 if zeros else 0, 2, (n, d), generator=gen).float()
    if not zeros:
        rows = rows * 2 - 1  # {-1, +1}
    return rows


@pytest.mark.parametrize("d", [*range(1, 34), 255, 256, 257, 1000])
@pytest.mark.parametrize("zeros", [True, False])
def test_a_frame_round_trips_a_ternary_row_of_every_length(d, zeros, gen):
    row = ternary_rows(1, d, gen, zeros)[0]
    frame, nonzero = protocol.encode_signs(row)
    assert frame.dtype == torch.uint8 and frame.numel() == protocol.frame_bytes(d)
    has_zero = bool((row == 0).any())
    assert (nonzero is not None) == has_zero == bool(frame[0])  # 1 bit a coordinate without
    decoded = protocol.decode_signs(frame[None], None if nonzero is None else nonzero[None], d)
    assert torch.equal(unpack_signs(decoded)[0], row)


def test_a_frame_carries_what_a_sign_can_carry(gen):
    row = torch.tensor([2.5, -0.1, 0.0, float("nan"), float("inf"), -float("inf")])
    frame, nonzero = protocol.encode_signs(row)
    decoded = protocol.decode_signs(frame[None], nonzero[None], row.numel())
    assert torch.equal(unpack_signs(decoded)[0], ternary_votes(row))


@pytest.mark.parametrize("d", [5, 8, 13, 100])
def test_garbage_frames_decode_to_valid_ternary_rows(d, gen):
    n = 6
    frames = torch.randint(0, 256, (n, protocol.frame_bytes(d)), generator=gen,
                           dtype=torch.uint8)
    nonzero = torch.randint(0, 256, (n, protocol.frame_bytes(d) - 1), generator=gen,
                            dtype=torch.uint8)
    decoded = protocol.decode_signs(frames, nonzero, d)
    rows = unpack_signs(decoded)
    assert rows.shape == (n, d)
    assert set(rows.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # padding bits are cleared, so the vote counts only the d coordinates
    assert int(decoded.positive[:, -1].max()) < (1 << (d % 8 or 8))
    # a row whose flag byte is 0 has no zeros, whatever its zero bits said
    for i in range(n):
        if frames[i, 0] == 0:
            assert bool((rows[i] != 0).all())
    # the vote from the checked bits equals the vote from the decoded rows
    assert torch.equal(packed_vote(decoded).float(), MajorityVote()(rows))

