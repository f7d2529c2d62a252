"""The benchmarks' data splits (issue 19): Karimireddy, He & Jaggi's honest-only label-sorted
and strided splits and their long-tail imbalance, and ByzFL's gamma-similarity, each against
a plain-loop reconstruction of the code it follows (epfml/byzantine-robust-noniid-optimizer
``codes/sampler.py``; LPD-EPFL/byzfl ``fed_framework/data_distributor.py``)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from signvote.cli import main
from signvote.data import Dataset, partition
from signvote.engine.run import apply_imbalance
from signvote.experiment.config import ConfigError, TrainConfig, resolve

UNEVEN = torch.randint(0, 5, (103,), generator=torch.Generator().manual_seed(1))
"""103 samples of 5 classes in random order: no worker count below divides it evenly."""
BALANCED = torch.arange(4).repeat_interleave(15)  # 60 samples, 4 classes, sorted


def gen(seed=7):
    return torch.Generator().manual_seed(seed)


# -- plain-loop references ------------------------------------------------------------------

def sorted_loop(labels):
    """Their list: for each class in turn, its samples in dataset order (a loop)."""
    y = labels.tolist()
    return [i for c in range(max(y) + 1) for i in range(len(y)) if y[i] == c]


def padded_loop(order, h):
    size = math.ceil(len(order) / h)
    return order + order[:size * h - len(order)], size


def honest_sorted_loop(labels, h):
    order, size = padded_loop(sorted_loop(labels), h)
    return [sorted(order[k * size:(k + 1) * size]) for k in range(h)]


def honest_strided_loop(labels, h):
    order, _ = padded_loop(sorted_loop(labels), h)
    return [sorted(order[k::h]) for k in range(h)]


def long_tail_loop(labels, ratio):
    """Walk the samples in dataset order, keeping one while its class has room."""
    y = labels.tolist()
    room = {c: int(y.count(c) * ratio ** c) for c in set(y)}
    kept = []
    for i, c in enumerate(y):
        if room[c] > 0:
            kept.append(i)
            room[c] -= 1
    return kept


def byzfl_gamma_loop(labels, h, gamma, seed):
    """ByzFL's ``gamma_niid_idx`` on a random order of the samples, written as its code
    is (numpy ``array_split``, ``sorted(zip(targets, idx))``), from the same two draws as
    :func:`partition.gamma_byzfl` (the order, then the shuffle of its iid part)."""
    g = gen(seed)
    idx = torch.randperm(labels.numel(), generator=g).tolist()
    nb = int(len(idx) * gamma)
    head = idx[:nb]
    head = [head[j] for j in torch.randperm(nb, generator=g).tolist()]
    iid = np.array_split(np.array(head, dtype=np.int64), h)
    tail = idx[nb:]
    y = labels.tolist()
    niid = (np.array(sorted(zip([y[i] for i in tail], tail, strict=True)))[:, 1] if tail
            else np.zeros(0, dtype=np.int64))
    niid = np.array_split(niid, h)
    return [sorted(np.concatenate([iid[k], niid[k]]).astype(int).tolist()) for k in range(h)]


def honest_of(part, byzantine):
    return [sorted(part[i].tolist()) for i in range(len(part)) if i not in byzantine]


# -- honest-sorted and honest-strided (Karimireddy et al.) ------------------------------------

@pytest.mark.parametrize("labels", [UNEVEN, BALANCED], ids=["uneven", "balanced"])
@pytest.mark.parametrize(("n", "byzantine"), [(7, ()), (7, (2, 5)), (10, (0, 9, 4)),
                                             (4, (3,))])
@pytest.mark.parametrize(("name", "loop"), [("honest-sorted", honest_sorted_loop),
                                            ("honest-strided", honest_strided_loop)])
def test_honest_split_matches_the_loop_over_sorted_labels(labels, n, byzantine, name, loop):
    part = partition.get(name, labels, n, gen(), byzantine=byzantine)
    assert len(part) == n
    assert honest_of(part, byzantine) == loop(labels, n - len(byzantine))


def test_honest_sorted_blocks_are_equal_and_the_last_wraps_to_the_first_class():
    part = partition.honest_sorted(UNEVEN, 5, gen(), byzantine=(1,))  # h = 4, ceil(103/4)=26
    honest = honest_of(part, (1,))
    assert [len(p) for p in honest] == [26] * 4
    counts = torch.bincount(torch.cat([part[i] for i in (0, 2, 3, 4)]), minlength=103)
    assert counts.min() == 1 and int((counts == 2).sum()) == 4 * 26 - 103
    first_class = sorted_loop(UNEVEN)[:1]
    assert first_class[0] in honest[-1]  # the padding is the start of the sorted list


def test_the_loop_reference_tells_a_floor_cut_from_the_ceil_cut():
    """Mutation check: cutting into floor(N/h) blocks (tensor_split's way) would fail the
    comparison above on uneven sizes."""
    h = 4
    order = sorted_loop(UNEVEN)
    floor_cut = [sorted(p.tolist()) for p in torch.tensor(order).tensor_split(h)]
    assert floor_cut != honest_sorted_loop(UNEVEN, h)


def test_honest_strided_gives_every_honest_worker_each_class_within_one():
    part = partition.honest_strided(UNEVEN, 6, gen(), byzantine=(0,))
    hist = partition.label_histogram(part, UNEVEN, 5)[1:]
    assert int((hist.max(0).values - hist.min(0).values).max()) <= 1


def test_byzantine_shares_are_their_distributed_sampler():
    n, byzantine, seed = 9, (1, 4, 8), 11
    h = n - len(byzantine)
    part = partition.honest_sorted(UNEVEN, n, gen(seed), byzantine=byzantine)
    perm = torch.randperm(103, generator=gen(seed)).tolist()  # the first draw
    perm, _ = padded_loop(perm, h)
    for j, worker in enumerate(byzantine):
        assert sorted(part[worker].tolist()) == sorted(perm[j % h::h])
    shares = [set(part[w].tolist()) for w in byzantine]
    assert all(len(s) == math.ceil(103 / h) for s in shares)
    overlap = sum(len(a & b) for a, b in itertools.combinations(shares, 2))
    assert overlap <= h * math.ceil(103 / h) - 103  # only the padding repeats a sample


def test_byzantine_shares_are_iid_in_the_mean():
    """Monte Carlo over 400 seeds: a Byzantine share of 20 samples holds class c in
    expectation 20 * n_c / N; the mean over seeds is within 0.3 samples of it (the
    standard error is about 0.1)."""
    y = BALANCED  # 15 samples a class, all sorted: an honest block holds one class
    counts = torch.zeros(4, dtype=torch.float64)
    for seed in range(400):
        part = partition.honest_sorted(y, 4, gen(seed), byzantine=(2,))  # h = 3, size 20
        counts += torch.bincount(y[part[2]], minlength=4)
    assert torch.allclose(counts / 400, torch.full((4,), 5.0, dtype=torch.float64), atol=0.3)


@pytest.mark.parametrize("name", partition.HONEST_ONLY)
def test_honest_only_partitions_are_seeded(name):
    a = partition.get(name, UNEVEN, 6, gen(5), byzantine=(3,))
    b = partition.get(name, UNEVEN, 6, gen(5), byzantine=(3,))
    c = partition.get(name, UNEVEN, 6, gen(6), byzantine=(3,))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


# -- gamma-byzfl against ByzFL's code, and against signvote's gamma ----------------------------

@pytest.mark.parametrize("gamma", [0.0, 0.33, 0.66, 1.0])
@pytest.mark.parametrize(("n", "byzantine"), [(7, ()), (8, (0, 3)), (11, (10,))])
def test_gamma_byzfl_is_byzfls_gamma_niid_idx(gamma, n, byzantine):
    part = partition.gamma_byzfl(UNEVEN, n, gen(3), gamma, byzantine=byzantine)
    assert honest_of(part, byzantine) == byzfl_gamma_loop(UNEVEN, n - len(byzantine), gamma, 3)
    honest = torch.cat([part[i] for i in range(n) if i not in byzantine])
    assert torch.equal(honest.sort().values, torch.arange(103))  # an exact cover of the honest


def test_gamma_zero_is_contiguous_label_sorted_blocks_in_both():
    """The defining property at gamma = 0, shared by signvote's gamma and ByzFL's: worker
    k's labels all lie at or below worker k+1's, and the pieces are array_split sizes."""
    for part in (partition.gamma_similarity(UNEVEN, 6, gen(), 0.0),
                 partition.gamma_byzfl(UNEVEN, 6, gen(), 0.0)):
        labels = [UNEVEN[p] for p in part]
        assert all(int(a.max()) <= int(b.min()) for a, b in itertools.pairwise(labels))
        assert [p.numel() for p in part] == [18] + [17] * 5


def test_with_byzantine_workers_gamma_loses_classes_that_gamma_byzfl_keeps():
    """The documented difference: signvote's gamma cuts among all n workers, so at gamma = 0
    the Byzantine workers' label-sorted blocks are missing from the honest ones."""
    byzantine = (7, 8, 9)  # blocks of 6: samples 42 to 59, all of class 3 and some of 2
    ours = partition.gamma_similarity(BALANCED, 10, gen(), 0.0)
    theirs = partition.gamma_byzfl(BALANCED, 10, gen(), 0.0, byzantine=byzantine)
    honest_labels = lambda part: set(torch.cat(  # noqa: E731
        [BALANCED[part[i]] for i in range(10) if i not in byzantine]).tolist())
    assert honest_labels(ours) == {0, 1, 2}
    assert honest_labels(theirs) == {0, 1, 2, 3}


# -- long-tail imbalance ---------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3, 0.9])
def test_long_tail_matches_the_loop(ratio):
    assert partition.long_tail(UNEVEN, ratio).tolist() == long_tail_loop(UNEVEN, ratio)


def test_long_tail_at_one_half_halves_each_class_again():
    y = torch.arange(4).repeat(40)  # 40 a class, interleaved
    kept = partition.long_tail(y, 0.5)
    assert torch.bincount(y[kept]).tolist() == [40, 20, 10, 5]
    assert kept.tolist() == sorted(kept.tolist())
    assert torch.equal(partition.imbalance("none", y), torch.arange(160))


@pytest.mark.parametrize("split", ["train", "both"])
def test_apply_imbalance_thins_the_training_set_and_with_both_the_test_set(split):
    x = torch.arange(103, dtype=torch.float32).unsqueeze(1)
    test_y = UNEVEN.flip(0)[:50]
    data = Dataset("toy", x, UNEVEN, x[:50], test_y, "classification", 5)
    c = resolve(TrainConfig(imbalance="long-tail", imbalance_ratio=0.5,
                            imbalance_split=split))
    out = apply_imbalance(c, data)
    kept = long_tail_loop(UNEVEN, 0.5)
    assert out.train_y.tolist() == [UNEVEN[i].item() for i in kept]
    assert out.train_x.flatten().tolist() == [float(i) for i in kept]
    kept_test = long_tail_loop(test_y, 0.5) if split == "both" else list(range(50))
    assert out.test_y.tolist() == [test_y[i].item() for i in kept_test]
    assert data.train_y.numel() == 103 and data.test_y.numel() == 50  # input unchanged


@pytest.mark.parametrize("ratio", [0.0, 1.5, float("nan")])
def test_bad_long_tail_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match=rf"--imbalance-ratio {ratio}: must be in \(0, 1\]"):
        partition.long_tail(UNEVEN, ratio)


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize(("byzantine", "message"), [
    ((7,), r"Byzantine worker 7 is not one of the --workers 5; valid: worker indices 0 to 4"),
    ((-1,), r"Byzantine worker -1 is not one of the --workers 5"),
    ((1, 1), r"Byzantine workers \[1, 1\] repeat an index; valid: distinct"),
    ((0, 1, 2, 3, 4), r"all --workers 5 are Byzantine.*valid: --byzantine below --workers"),
])
@pytest.mark.parametrize("name", partition.HONEST_ONLY)
def test_bad_byzantine_indices_are_refused(name, byzantine, message):
    with pytest.raises(ValueError, match=message):
        partition.get(name, UNEVEN, 5, gen(), byzantine=byzantine)


def test_bad_gamma_and_imbalance_names_are_refused():
    with pytest.raises(ValueError, match=r"--partition-gamma -0.1: must be in \[0, 1\]"):
        partition.gamma_byzfl(UNEVEN, 4, gen(), -0.1)
    with pytest.raises(ValueError, match="unknown imbalance 'zipf'; known: none, long-tail"):
        partition.imbalance("zipf", UNEVEN)


@pytest.mark.parametrize(("fields", "message"), [
    ({"imbalance": "zipf"}, "valid: none, long-tail"),
    ({"imbalance_ratio": 0.0}, "--imbalance-ratio must be in (0, 1]"),
    ({"imbalance": "long-tail", "dataset": "linreg"}, "--imbalance long-tail thins classes; "
                                                       "--dataset linreg is a regression"),
    ({"partition": "honest-sorted", "dataset": "linreg"}, "needs class labels"),
])
def test_bad_config_fields_raise_one_config_error(fields, message):
    with pytest.raises(ConfigError) as info:
        resolve(TrainConfig(**fields))
    assert message in str(info.value) and "\n" not in str(info.value)


# -- signvote train with each option ---------------------------------------------------------

def train(tmp_path, capsys, *args):
    out = tmp_path / "run"
    try:
        code = main(["train", "--quiet", "--out", str(out), "-e", "1", "--workers", "6", *args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, out, captured.err


@pytest.mark.parametrize("args", [
    ["--partition", "honest-sorted", "-b", "2"],
    ["--partition", "honest-strided", "-b", "1"],
    ["--partition", "gamma-byzfl", "--partition-gamma", "0.33", "-b", "2"],
    ["--imbalance", "long-tail", "--partition", "honest-sorted"],
    ["--imbalance", "long-tail", "--imbalance-split", "both", "--imbalance-ratio", "0.3"],
])
def test_signvote_train_runs_each_new_option(args, tmp_path, capsys):
    code, out, err = train(tmp_path, capsys, *args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "partition.csv").read_text().splitlines()
    header = rows[0].split(",")
    table = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    byzantine = set(summary["byzantine_workers"])
    assert {int(r["worker"]) for r in table if r["role"] == "byzantine"} == byzantine
    if "--imbalance" in args:
        assert summary["imbalance"] == "long-tail"
        assert summary["train_samples"] < 8000  # logreg's 8,000 samples, class 1 thinned
        test_thinned = summary["test_samples"] < 2000
        assert test_thinned == ("both" in args)
    if "-b" in args and args[1] != "gamma-byzfl":
        n_samples = summary.get("train_samples", 8000)
        h = 6 - len(byzantine)
        assert all(int(r["samples"]) == math.ceil(n_samples / h) for r in table)
