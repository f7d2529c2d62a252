"""ResNets that train on a CPU (issue 16, item 8), and the CIFAR-10 configuration that
only needs a device.

- ``resnet20`` with group norm (and with per-worker batch norm) on scikit-learn's digits
  learns: a floor on the test accuracy after three epochs of Signum with the vote (about
  0.94 measured after four; chance is 0.1).
- ``examples/cifar10_resnet20.toml`` resolves to the run it says and trains, shortened, on
  CIFAR-10 files written in the official format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cifar import write_cifar10

from signvote import models
from signvote.cli import main
from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig, from_dict, load_toml, resolve

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar10_resnet20.toml"


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_resnet20_learns_digits_on_a_cpu(norm):
    config = TrainConfig(dataset="digits", model=f"resnet20(norm={norm})", rule="signum",
                         workers=5, batch_size=16, lr=1e-3, epochs=3)
    result = train(config, progress=False, write=False)
    assert result.status == "completed"
    assert result.summary["final_test_acc"] > 0.85, result.metrics


def test_the_cifar10_example_is_resnet20_with_signum_and_augmentation():
    c = resolve(from_dict(load_toml(EXAMPLE)))
    assert (c.dataset, c.model, c.rule, c.aggregator, c.augment) == (
        "cifar10", "resnet20", "signum", "majority-vote", "on")
    module = models.build(c.model, (3, 32, 32), 10)
    assert sum(p.numel() for p in module.parameters()) == 269_722


@pytest.mark.slow
def test_the_cifar10_example_trains_shortened(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGNVOTE_DATA", str(tmp_path / "nowhere"))
    write_cifar10(tmp_path / "data", np.random.default_rng(3), per_batch=8)
    out = tmp_path / "run"
    code = main(["train", "--config", str(EXAMPLE), "--data-dir", str(tmp_path / "data"),
                 "--epochs", "1", "--workers", "2", "--batch-size", "4", "--out", str(out),
                 "--quiet"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["augment"], config["epochs"]) == ("resnet20", "on", 1)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
