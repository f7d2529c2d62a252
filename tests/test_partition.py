import math

import pytest
import torch

from signvote.data import partition

LABELS = {
    "balanced": torch.arange(10).repeat_interleave(100),  # 1,000 samples, 10 classes
    "uneven": torch.randint(0, 7, (1003,), generator=torch.Generator().manual_seed(0)),
}


def make(name, labels, n, seed=3, **params):
    return partition.get(name, labels, n, torch.Generator().manual_seed(seed), **params)


@pytest.mark.parametrize("labels", sorted(LABELS))
@pytest.mark.parametrize("name", [p for p in partition.PARTITIONS
                                  if p not in partition.HONEST_ONLY])
def test_every_sample_goes_to_exactly_one_worker(name, labels):
    # the honest-only partitions pad and overlap: tests/test_partitions_benchmarks.py
    y = LABELS[labels]
    part = make(name, y, 10)
    assert len(part) == 10
    assert all(idx.numel() > 0 and idx.dtype == torch.int64 for idx in part)
    assert torch.equal(torch.cat(part).sort().values, torch.arange(y.numel()))


@pytest.mark.parametrize("name", partition.PARTITIONS)
def test_partitions_are_seeded(name):
    y = LABELS["uneven"]
    a, b, c = make(name, y, 6, seed=5), make(name, y, 6, seed=5), make(name, y, 6, seed=6)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_iid_is_the_seeds_layout_when_n_divides_the_samples():
    y = LABELS["balanced"]
    part = partition.iid(y, 10, torch.Generator().manual_seed(7))
    reference = torch.randperm(1000, generator=torch.Generator().manual_seed(7)).view(10, 100)
    assert torch.equal(torch.stack(part), reference)


def test_iid_sizes_differ_by_at_most_one():
    sizes = [idx.numel() for idx in make("iid", LABELS["uneven"], 10)]
    assert sizes == [101, 101, 101] + [100] * 7


def mean_entropy(part, labels, n_classes):
    return float(partition.label_entropy(
        partition.label_histogram(part, labels, n_classes)).mean())


def test_dirichlet_with_small_alpha_is_skewed_and_large_alpha_is_not():
    y = LABELS["balanced"]
    iid = mean_entropy(make("iid", y, 10), y, 10)
    skewed = mean_entropy(make("dirichlet", y, 10, alpha=0.1), y, 10)
    flat = mean_entropy(make("dirichlet", y, 10, alpha=1000.0), y, 10)
    assert iid > 3.0  # close to log2(10) = 3.32
    assert skewed < 0.6 * iid
    assert flat > 0.95 * iid


def test_shards_give_each_worker_at_most_two_labels_per_shard():
    y = LABELS["balanced"]  # 100 samples a class; 20 shards of 50: one label each
    part = make("shards", y, 10, shards_per_worker=2)
    for idx in part:
        assert idx.numel() == 100
        assert y[idx].unique().numel() <= 2
    one = make("shards", y, 10, shards_per_worker=1)  # one shard of 100 = one class
    assert all(y[idx].unique().numel() == 1 for idx in one)


def test_gamma_interpolates_between_sorted_and_iid():
    y = LABELS["balanced"]
    entropies = [mean_entropy(make("gamma", y, 10, gamma=g), y, 10) for g in (0.0, 0.5, 1.0)]
    assert entropies[0] == pytest.approx(0.0)  # sorted: each worker holds one class
    assert entropies[0] < entropies[1] < entropies[2]
    assert entropies[2] == pytest.approx(mean_entropy(make("iid", y, 10), y, 10), abs=0.05)
    # gamma = 0.5: half of each worker's samples come from the sorted half (one label)
    part = make("gamma", y, 10, gamma=0.5)
    assert all(idx.numel() == 100 for idx in part)


def test_label_histogram_and_entropy_match_a_loop():
    y = LABELS["uneven"]
    part = make("dirichlet", y, 4, alpha=0.3)
    hist = partition.label_histogram(part, y, 7)
    for i, idx in enumerate(part):
        for c in range(7):
            assert hist[i, c] == sum(1 for s in idx.tolist() if y[s] == c)
        counts = [int(v) for v in hist[i] if v > 0]
        total = sum(counts)
        expected = -sum(k / total * math.log2(k / total) for k in counts)
        assert float(partition.label_entropy(hist[i])) == pytest.approx(expected)
    assert float(partition.label_entropy(torch.tensor([5, 5, 5, 5]))) == pytest.approx(2.0)
    assert float(partition.label_entropy(torch.tensor([0, 9, 0]))) == 0.0


def test_epoch_indices_cycle_through_each_workers_samples():
    part = (torch.tensor([4, 5, 6]), torch.tensor([0, 1, 2, 3, 7]), torch.tensor([8, 9]))
    per_epoch = 3
    for epoch in range(4):
        walk = partition.epoch_indices(part, per_epoch, epoch)
        for i, idx in enumerate(part):
            expected = [idx[(epoch * per_epoch + j) % idx.numel()].item()
                        for j in range(per_epoch)]
            assert walk[i].tolist() == expected


@pytest.mark.parametrize(("name", "params", "message"), [
    ("iid", {}, "--workers 2000 exceeds the 1000 training samples"),
    ("dirichlet", {"alpha": 0.0}, "--partition-alpha 0.0: must be"),
    ("gamma", {"gamma": 1.5}, r"--partition-gamma 1.5: must be in \[0, 1\]"),
    ("shards", {"shards_per_worker": 0}, "--partition-shards 0: at least one"),
    ("nope", {}, "known: iid, dirichlet, shards, gamma"),
])
def test_bad_partition_parameters_are_rejected(name, params, message):
    n = 2000 if name == "iid" else 4
    with pytest.raises(ValueError, match=message):
        make(name, LABELS["balanced"], n, **params)
