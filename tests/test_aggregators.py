import itertools

import pytest
import torch

from signvote import aggregators


def brute_force_vote(messages: torch.Tensor) -> torch.Tensor:
    """Majority vote by counting, one coordinate at a time."""
    n, d = messages.shape
    out = torch.zeros(d)
    for j in range(d):
        plus = sum(1 for i in range(n) if messages[i, j] > 0)
        minus = sum(1 for i in range(n) if messages[i, j] < 0)
        out[j] = 1.0 if plus > minus else (-1.0 if minus > plus else 0.0)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_majority_vote_equals_counting_on_random_ternary_messages(n, gen):
    messages = torch.randint(-1, 2, (n, 500), generator=gen).float()
    assert torch.equal(aggregators.get("majority-vote")(messages), brute_force_vote(messages))


def test_majority_vote_every_ternary_column_of_three_workers():
    columns = torch.tensor(list(itertools.product([-1.0, 0.0, 1.0], repeat=3))).T  # [3, 27]
    got = aggregators.get("majority-vote")(columns)
    assert torch.equal(got, brute_force_vote(columns))
    assert (got == 0).sum() == 7  # the tied columns: all zeros, and one +1 against one -1 (x6)


def test_majority_vote_reads_real_messages_by_sign_and_nan_abstains():
    messages = torch.tensor([[0.3, -2.0, float("nan"), float("inf")],
                             [5.0, 1e-9, float("nan"), -1.0],
                             [-0.1, -7.0, 1.0, -1.0]])
    assert torch.equal(aggregators.get("majority-vote")(messages),
                       torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_mean_and_sum_against_loops(gen):
    messages = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    loop_sum = torch.zeros(50, dtype=torch.float64)
    for row in messages:
        loop_sum += row
    assert torch.allclose(aggregators.get("sum")(messages), loop_sum)
    assert torch.allclose(aggregators.get("mean")(messages), loop_sum / 6)


@pytest.mark.parametrize("name", aggregators.names())
def test_no_aggregator_mutates_its_input(name, gen):
    messages = torch.randn(5, 40, generator=gen)
    messages[0, :3] = float("nan")
    before = messages.clone()
    aggregators.get(name)(messages)
    assert torch.equal(messages.isnan(), before.isnan())
    assert torch.equal(messages.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("name", aggregators.names())
def test_aggregators_are_invariant_to_worker_order(name, gen):
    messages = torch.randint(-3, 4, (7, 30), generator=gen).float()
    perm = torch.randperm(7, generator=gen)
    agg = aggregators.get(name)
    assert torch.allclose(agg(messages), agg(messages[perm]))


def test_registry_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match=r"known: .*majority-vote.*mean"):
        aggregators.get("nope")
    with pytest.raises(ValueError, match="takes no parameter f"):
        aggregators.get("mean", f=2)
