import math

import pytest
import torch

from signvote import aggregators
from signvote.packing import (
    pack_bits,
    pack_signs,
    packed_vote,
    packed_vote_torch,
    unpack_bits,
    unpack_signs,
)


def bits_by_hand(bits: torch.Tensor) -> list[list[int]]:
    """Each row's bytes, bit j % 8 of byte j // 8, computed one bit at a time."""
    rows = []
    for row in bits.tolist():
        out = [0] * math.ceil(len(row) / 8)
        for j, bit in enumerate(row):
            if bit:
                out[j // 8] |= 1 << (j % 8)
        rows.append(out)
    return rows


@pytest.mark.parametrize("d", [*range(1, 20), 63, 64, 65, 1000])
def test_pack_bits_matches_a_bit_by_bit_loop_and_round_trips(d, gen):
    bits = torch.rand(3, d, generator=gen) < 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, math.ceil(d / 8))
    assert packed.tolist() == bits_by_hand(bits)
    assert torch.equal(unpack_bits(packed, d), bits)


@pytest.mark.parametrize("d", [*range(1, 34), 127, 1001])
@pytest.mark.parametrize("zeros", [True, False])
def test_ternary_messages_round_trip_at_every_length(d, zeros, gen):
    low = -1 if zeros else 0
    messages = torch.randint(low, 2, (5, d), generator=gen).float()
    if not zeros:
        messages = messages * 2 - 1  # {-1, +1}
    packed = pack_signs(messages)
    assert torch.equal(unpack_signs(packed), messages)
    has_zero = bool((messages == 0).any())
    assert (packed.nonzero is None) == (not has_zero)
    assert packed.nbytes_per_row() == math.ceil(d / 8) * (2 if has_zero else 1)


def test_real_messages_pack_their_signs_and_nan_abstains():
    messages = torch.tensor([[0.3, -2.0, 0.0, float("nan"), float("inf"), -1e-30]])
    assert unpack_signs(pack_signs(messages)).tolist() == [[1, -1, 0, 0, 1, -1]]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 25])
@pytest.mark.parametrize("zeros", [True, False])
def test_the_vote_from_packed_bits_equals_the_vote_from_signs(n, zeros, gen):
    messages = torch.randint(-1 if zeros else 0, 2, (n, 777), generator=gen).float()
    if not zeros:
        messages = messages * 2 - 1
    want = aggregators.get("majority-vote")(messages)
    packed = pack_signs(messages)
    for got in (packed_vote(packed), packed_vote_torch(packed)):
        assert got.dtype == torch.int8
        assert torch.equal(got.float(), want)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 17, 64, 1001])
def test_the_torch_bit_packing_equals_numpys(d, gen):
    from signvote.packing import pack_bits_torch, unpack_bits_torch

    bits = torch.rand(4, d, generator=gen) < 0.5
    packed = pack_bits(bits)
    assert torch.equal(pack_bits_torch(bits), packed)
    assert torch.equal(unpack_bits_torch(packed, d), unpack_bits(packed, d))
