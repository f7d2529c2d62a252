"""Training on real images: scikit-learn's digits (always there) and Fashion-MNIST (Debian's
``dataset-fashion-mnist``, installed by .ci/run; these tests skip without it)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from signvote.data import images, load
from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig

FASHION = images.SYSTEM_DATA_DIR / "fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not in {FASHION}: apt-get install dataset-fashion-mnist",
)
pytestmark = pytest.mark.slow


def run(tmp_path, **fields):
    return train(TrainConfig(out=str(tmp_path / "run"), **fields), progress=False)


@needs_fashion
def test_fashion_mnist_is_read_whole_and_balanced():
    data = load("fashion-mnist", 0)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10  # 6,000 images per class
    assert torch.bincount(data.test_y).tolist() == [1000] * 10


@needs_fashion
def test_signum_smallcnn_learns_fashion_mnist_in_200_steps(tmp_path):
    """200 steps of 10 x 12 images, two fifths of an epoch: 85% test accuracy (one epoch
    reaches 88%, chance is 10%)."""
    result = run(tmp_path, dataset="fashion-mnist", model="smallcnn", rule="signum",
                 workers=10, steps=200, lr=1e-3)
    assert result.summary["final_test_acc"] > 0.75
    with open(tmp_path / "run" / "partition.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["samples"]) for r in rows] == [6000] * 10


def test_signum_on_digits_survives_three_byzantine_workers_of_ten(tmp_path):
    result = run(tmp_path, dataset="digits", rule="signum", byzantine=3, epochs=20, lr=1e-3)
    assert len(result.summary["byzantine_workers"]) == 3
    assert result.summary["final_test_acc"] >= 0.85


def test_one_byzantine_worker_breaks_distributed_sgd_on_digits(tmp_path):
    """The attack of the previous test is live: plain averaging does not survive one."""
    result = run(tmp_path, dataset="digits", rule="sgd", aggregator="mean", byzantine=1,
                 epochs=10, lr=1e-1)
    clean = run(tmp_path / "clean", dataset="digits", rule="sgd", aggregator="mean",
                epochs=10, lr=1e-1)
    assert clean.summary["final_test_acc"] > 0.8
    assert result.summary["final_test_acc"] < 0.3


def test_dirichlet_run_records_each_workers_label_histogram(tmp_path):
    result = run(tmp_path, dataset="digits", partition="dirichlet", partition_alpha=0.1,
                 epochs=2, lr=1e-3, byzantine=2)
    folder = Path(result.config.out)
    with open(folder / "partition.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and sum(int(r["samples"]) for r in rows) == 1437
    assert [r["role"] for r in rows].count("byzantine") == 2
    histogram = [[int(r[f"label_{c}"]) for c in range(10)] for r in rows]
    assert all(sum(h) == int(r["samples"]) for h, r in zip(histogram, rows, strict=True))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["partition"] == "dirichlet"
    assert summary["mean_worker_label_entropy_bits"] < 0.7 * summary[
        "dataset_label_entropy_bits"]
