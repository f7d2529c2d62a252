import math

import pytest
import torch

from signvote import aggregators, attacks
from signvote.engine.run import choose_adversaries, learning_rate, message_bytes
from signvote.engine.sim import train
from signvote.engine.step import apply_update
from signvote.experiment import runs
from signvote.experiment.config import ConfigError, TrainConfig, resolve


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, **overrides})


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    config = quick(byzantine=2, blind=1, rule="signum")
    a = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "a")}), progress=False)
    b = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "b")}), progress=False)
    rows_a = runs.read_metrics(tmp_path / "a" / "metrics.csv")
    rows_b = runs.read_metrics(tmp_path / "b" / "metrics.csv")
    assert len(rows_a) == 3
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ra.pop("wall_s"), rb.pop("wall_s")  # the one column that measures time
        assert ra == rb
    assert torch.equal(a.params, b.params)
    c = train(quick(byzantine=2, blind=1, seed=1), progress=False, write=False)
    assert not torch.equal(a.params, c.params)


def test_run_folder_contents(tmp_path):
    result = train(quick(out=str(tmp_path / "run")), progress=False)
    import json

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["seed"] == 8005 and config["lr"] == 1e-4 and config["batch_size"] == 12
    assert config["aggregator"] == "majority-vote" and config["momentum"] == 0.9
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3 * 67
    assert summary["bytes_sent_per_worker_per_step"] == 4 + math.ceil(922 / 8)  # the frame
    assert summary["final_test_acc"] == result.metrics[-1]["test_acc"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,step,train_loss,test_loss,train_acc,test_acc,lr,wall_s"
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_regression_rows_leave_accuracy_empty(tmp_path):
    train(quick(dataset="linreg", epochs=2, out=str(tmp_path)), progress=False)
    rows = runs.read_metrics(tmp_path / "metrics.csv")
    assert [r["test_acc"] for r in rows] == ["", ""]
    assert float(rows[-1]["test_loss"]) < float("inf")


def test_distsgd_with_one_byzantine_stays_at_chance_while_honest_distsgd_learns():
    attacked = train(quick(rule="sgd", aggregator="sum", byzantine=1, epochs=10),
                     progress=False, write=False)
    honest = train(quick(rule="sgd", aggregator="sum", epochs=10), progress=False, write=False)
    assert attacked.summary["final_test_acc"] < 0.6
    assert attacked.summary["final_test_loss"] == pytest.approx(math.log(2), abs=0.01)
    assert honest.summary["final_test_acc"] > 0.9


@pytest.mark.slow
def test_signum_with_four_of_ten_byzantine_reaches_ninety_percent():
    # the paper's logistic setting: 80 epochs, lr 1e-4, beta 0.9, batch 12, seed 8005
    result = train(TrainConfig(rule="signum", byzantine=4), progress=False, write=False)
    assert result.summary["final_test_acc"] >= 0.90


def test_majority_vote_keeps_parameters_finite_under_nan_attack():
    result = train(quick(rule="signum", attack="nan", byzantine=3), progress=False, write=False)
    assert result.status == "completed"
    assert bool(torch.isfinite(result.params).all())
    assert result.summary["final_test_acc"] > 0.7


def test_mean_under_nan_attack_is_reported_as_diverged(tmp_path):
    result = train(quick(rule="sgd", attack="nan", byzantine=1, out=str(tmp_path)),
                   progress=False)
    assert result.status == "diverged"
    assert result.summary["diverged_at_epoch"] == 1
    assert (tmp_path / "summary.json").exists()
    assert len(runs.read_metrics(tmp_path / "metrics.csv")) == 1


def test_adversary_masks_are_disjoint_and_sized():
    blind, byz = choose_adversaries(10, 3, 4, seed=11)
    assert int(blind.sum()) == 3 and int(byz.sum()) == 4 and not bool((blind & byz).any())


def test_learning_rate_steps_down_every_decay_step():
    c = resolve(TrainConfig(lr=1.0, lr_decay_step=30, lr_decay_rate=0.1))
    assert [learning_rate(c, e) for e in (0, 29, 30, 59, 60)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01])


def test_message_bytes():
    assert message_bytes(922, True) == 120 and message_bytes(922, False) == 3688


def test_update_rule_by_hand():
    x = torch.tensor([1.0, -2.0, 0.5])
    v = torch.tensor([1.0, 0.0, -1.0])
    # x - lr * (v + wd * x) with lr = 0.1, wd = 0.5
    expected = torch.tensor([1.0 - 0.1 * (1.0 + 0.5), -2.0 - 0.1 * (0.0 - 1.0),
                             0.5 - 0.1 * (-1.0 + 0.25)])
    assert torch.allclose(apply_update(x, v, 0.1, 0.5), expected)
    assert torch.equal(x, torch.tensor([1.0, -2.0, 0.5]))


def test_weight_decay_shrinks_the_trained_parameters():
    base = quick(epochs=1, weight_decay=5.0, lr=0.01, rule="signsgd")
    decayed = train(base, progress=False, write=False)
    plain = train(TrainConfig(**{**base.to_dict(), "weight_decay": 0.0}), progress=False,
                  write=False)
    assert float(decayed.params.norm()) < 0.5 * float(plain.params.norm())


SIGN_ONLY = {"majority-vote", "weighted-majority-vote"}
PAIR_AGGREGATORS = [*aggregators.names(), "nnm+krum", "bucketing(s=2)+median",
                    "arc+trimmed-mean", "clipping(c=1)+mean"]


@pytest.mark.parametrize("aggregator", PAIR_AGGREGATORS)
def test_every_aggregator_trains_under_every_attack(aggregator):
    rule = "signum" if aggregator in SIGN_ONLY else "sgd"
    for attack in attacks.names():
        config = TrainConfig(epochs=1, workers=11, byzantine=2, rule=rule,
                             aggregator=aggregator, attack=attack, batch_size=256, lr=1e-3)
        result = train(config, progress=False, write=False)
        assert result.status in ("completed", "diverged"), (aggregator, attack)
        if aggregator not in ("mean", "sum", "clipping(c=1)+mean") or attack not in (
                "nan", "inf"):
            assert result.status == "completed", (aggregator, attack)
            assert bool(torch.isfinite(result.params).all()), (aggregator, attack)


def test_label_flip_poisons_the_byzantine_gradients_only():
    base = dict(epochs=2, workers=10, byzantine=4, rule="sgd", aggregator="mean", lr=0.05)
    flipped = train(TrainConfig(**base, attack="label-flip"), progress=False, write=False)
    honest = train(TrainConfig(**base, attack="none"), progress=False, write=False)
    assert flipped.summary["final_test_acc"] < honest.summary["final_test_acc"]


def test_aggregator_f_defaults_to_the_adversaries_and_can_be_set():
    c = resolve(TrainConfig(workers=11, byzantine=2, blind=1, aggregator="krum"))
    assert c.aggregator_f == 3
    c = resolve(TrainConfig(workers=11, byzantine=2, aggregator="krum", aggregator_f=1))
    assert c.aggregator_f == 1
    with pytest.raises(ConfigError, match="bulyan with f=3 needs at least 15 workers"):
        resolve(TrainConfig(workers=11, byzantine=3, aggregator="bulyan"))


def test_stochastic_sign_rule_trains_and_sends_one_bit():
    result = train(TrainConfig(epochs=3, rule="stochastic-sign", lr=1e-3), progress=False,
                   write=False)
    assert result.summary["bytes_sent_per_worker_per_step"] == 4 + math.ceil(
        result.summary["params"] / 8)
    assert result.summary["final_test_acc"] > 0.8
