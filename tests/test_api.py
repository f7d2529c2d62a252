"""signvote.train, the Python entry point: names give the command line's run, objects give
the run of the same thing by name, and bad input is one clear error.

Each object is checked against an independent reference: the same model, data, rule,
aggregator or attack by name (a factory, a module built under the seed, the dataset's own
tensors, a hand-written cross-entropy, a lambda majority vote, a hand-written inversion),
or a closed form (a loss scaled by 2 under SGD is the learning rate scaled by 2, exactly).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch import nn

import signvote
from signvote import aggregators, cli, models, rules
from signvote.api import command_line, dataset, from_datasets, saved_model
from signvote.attacks.basic import replace_rows
from signvote.contracts import (
    AggregatorBase,
    AggregatorCapabilities,
    AttackBase,
    AttackCapabilities,
    RuleCapabilities,
)
from signvote.data import DatasetError
from signvote.data import load as load_dataset
from signvote.engine.sim import train as sim_train
from signvote.experiment.config import (
    ConfigError,
    TrainConfig,
    default_out,
    from_dict,
    resolve,
)

QUIET = {"progress": False, "write": False}
SMALL = {"workers": 4, "epochs": 1}
"""Four workers, one epoch: a dozen steps on digits."""


def numbers(result) -> list[dict]:
    """The metrics of a run without the wall time."""
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in result.metrics]


def same_run(a, b) -> None:
    assert numbers(a) == numbers(b)
    assert torch.equal(a.params, b.params)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 8005)


def tensors(d):
    return d.train_x, d.train_y, d.test_x, d.test_y


# -- names: the command line's run -------------------------------------------------------


def test_names_are_the_simulators_run():
    options = {"rule": "signum", "aggregator": "krum", "attack": "alie(z=1.5)",
               "workers": 7, "byzantine": 2, "epochs": 2, "lr": 3e-4, "seed": 3}
    api = signvote.train(data="logreg", **options, **QUIET)
    engine = sim_train(TrainConfig(dataset="logreg", **options), **QUIET)
    same_run(api, engine)
    assert api.config == resolve(TrainConfig(dataset="logreg", **options))


def test_names_write_the_command_lines_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--workers", "5", "--byzantine", "1", "--epochs", "2", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    folder = tmp_path / default_out(TrainConfig(workers=5, byzantine=1, epochs=2))
    cli_metrics = (folder / "metrics.csv").read_text()
    cli_config = json.loads((folder / "config.json").read_text())
    # the same default folder: a finished run there is not replaced unasked
    with pytest.raises(ConfigError, match="holds a finished run"):
        signvote.train(workers=5, byzantine=1, epochs=2, progress=False)
    result = signvote.train(workers=5, byzantine=1, epochs=2, overwrite=True, progress=False)
    assert result.config.out == str(folder.relative_to(tmp_path))
    assert json.loads((folder / "config.json").read_text()) == {**cli_config, "overwrite": True}

    def drop_time(text):
        return [line.rsplit(",", 1)[0] for line in text.splitlines()]  # wall_s is last

    assert drop_time((folder / "metrics.csv").read_text()) == drop_time(cli_metrics)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "metrics.csv", "params.pt",
                                                   "partition.csv", "summary.json"}


def test_a_rule_object_equal_to_a_registered_rule_is_its_name():
    result = signvote.train(rule=rules.get("signum", 0.5), **SMALL, **QUIET)
    assert (result.config.rule, result.config.momentum) == ("signum", 0.5)
    assert "objects" not in result.summary
    same_run(result, signvote.train(rule="signum", momentum=0.5, **SMALL, **QUIET))


# -- objects equal the same thing by name ------------------------------------------------


def test_a_model_factory_and_a_module_equal_the_model_by_name(digits):
    by_name = signvote.train(data="digits", model="smallcnn", **SMALL, **QUIET)

    def factory(input_shape, n_classes):
        return models.build("smallcnn", input_shape, n_classes)

    same_run(signvote.train(data="digits", model=factory, **SMALL, **QUIET), by_name)
    torch.manual_seed(8005)  # the run's seed, as the engine seeds a model by name
    module = models.build("smallcnn", digits.input_shape, digits.n_classes)
    before = [p.clone() for p in module.parameters()]
    result = signvote.train(data="digits", model=module, **SMALL, **QUIET)
    same_run(result, by_name)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    assert result.config.model.startswith("<object ") and result.config.dataset == "digits"


def test_tensors_and_torch_datasets_equal_the_dataset_by_name(digits):
    by_name = signvote.train(data="digits", **SMALL, **QUIET)
    from_tensors = signvote.train(data=tensors(digits), **SMALL, **QUIET)
    same_run(from_tensors, by_name)  # images: the stand-in's default model is smallcnn
    as_dict = dict(zip(("train_x", "train_y", "test_x", "test_y"), tensors(digits),
                       strict=True))
    same_run(signvote.train(data=as_dict, **SMALL, **QUIET), by_name)
    pairs = (torch.utils.data.TensorDataset(digits.train_x, digits.train_y),
             torch.utils.data.TensorDataset(digits.test_x, digits.test_y))
    same_run(signvote.train(data=pairs, **SMALL, **QUIET), by_name)
    assert from_tensors.config.dataset == ("<data tensors: train [1437, 1, 8, 8], test "
                                           "[360, 1, 8, 8]>")


def test_numpy_features_and_labels_make_the_same_dataset(digits):
    made = dataset(*(t.numpy() for t in tensors(digits)))
    assert made.task == "classification" and made.n_classes == 10
    for a, b in zip(tensors(made), tensors(digits), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_float_targets_make_a_regression_equal_to_linreg():
    d = load_dataset("linreg", 8005)
    by_name = signvote.train(data="linreg", **SMALL, **QUIET)
    same_run(signvote.train(data=tensors(d), **SMALL, **QUIET), by_name)
    squared = signvote.train(data=tensors(d), loss=lambda out, y: (out.squeeze(-1) - y) ** 2,
                             **SMALL, **QUIET)
    same_run(squared, by_name)


def test_a_hand_written_cross_entropy_equals_the_default(digits):
    default = signvote.train(data="digits", **SMALL, **QUIET)

    def cross_entropy(outputs, targets):
        return -outputs.log_softmax(dim=-1).gather(1, targets[:, None]).squeeze(1)

    same_run(signvote.train(data="digits", loss=cross_entropy, **SMALL, **QUIET), default)
    same_run(signvote.train(data="digits", loss=nn.CrossEntropyLoss(reduction="none"),
                            **SMALL, **QUIET), default)


def test_a_loss_scaled_by_two_under_sgd_is_the_learning_rate_scaled_by_two():
    # d(2 l)/dx = 2 dl/dx exactly (scaling by 2 is exact), so x - lr (2 g) = x - (2 lr) g
    options = {"rule": "sgd", "data": "logreg", **SMALL, **QUIET}
    doubled = signvote.train(loss=lambda out, y: 2 * nn.functional.cross_entropy(
        out, y, reduction="none"), lr=1e-2, **options)
    plain = signvote.train(lr=2e-2, **options)
    assert torch.equal(doubled.params, plain.params)
    for a, b in zip(doubled.metrics, plain.metrics, strict=True):
        assert a["train_loss"] == pytest.approx(2 * b["train_loss"], rel=1e-6)
        assert a["test_loss"] == pytest.approx(2 * b["test_loss"], rel=1e-6)
        assert a["test_acc"] == b["test_acc"]


def test_a_plain_callable_aggregator_is_the_majority_vote():
    options = {"workers": 7, "byzantine": 2, "epochs": 2, "attack": "vote-cancel", **QUIET}
    vote = signvote.train(aggregator=lambda m: m.sign().sum(0).sign(), **options)
    same_run(vote, signvote.train(aggregator="majority-vote", **options))
    assert vote.config.aggregator.startswith("<object ") and "lambda" in vote.config.aggregator


class Mean(AggregatorBase):
    """v = (1/n) sum_i m_i, written here."""

    def __call__(self, messages):
        return messages.sum(dim=0) / messages.shape[0]


def test_an_aggregator_object_is_the_aggregator_by_name():
    options = {"rule": "sgd", "workers": 5, "byzantine": 1, "attack": "sign-flip",
               "epochs": 1, **QUIET}
    ours = signvote.train(aggregator=Mean(), **options)
    theirs = signvote.train(aggregator="mean", **options)
    for a, b in zip(numbers(ours), numbers(theirs), strict=True):
        assert a == pytest.approx(b, rel=1e-5)  # a sum over n, not torch's mean: rounding
    torch.testing.assert_close(ours.params, theirs.params)
    assert ours.config.aggregator_f == 0


class Inversion(AttackBase):
    """m'_b = -m_b for every Byzantine worker b, written here."""

    capabilities = AttackCapabilities(knowledge="blind")

    def __call__(self, messages, byzantine_mask, ctx):
        return replace_rows(messages, byzantine_mask, -messages[byzantine_mask])


def test_an_attack_object_and_a_plain_function_are_the_attack_by_name():
    options = {"workers": 5, "byzantine": 2, "epochs": 2, **QUIET}
    by_name = signvote.train(attack="blind-inversion", **options)
    same_run(signvote.train(attack=Inversion(), **options), by_name)

    def invert(messages, byzantine_mask, ctx):
        return replace_rows(messages, byzantine_mask, -messages[byzantine_mask])

    plain = signvote.train(attack=invert, **options)
    same_run(plain, by_name)
    assert plain.config.attack.endswith(".invert>")


def test_a_rule_object_of_its_own_trains_with_its_momentum():
    own = rules.WorkerRule("my-sign", 0.9, sends_signs=True)
    result = signvote.train(rule=own, **SMALL, **QUIET)
    assert (result.config.momentum, result.config.lr) == (0.9, 1e-4)  # a sign rule's lr
    assert result.config.aggregator == "majority-vote"  # the default for sign messages
    same_run(result, signvote.train(rule="signum", **SMALL, **QUIET))  # signum is that rule


class PlainSign:
    """A rule written against signvote.contracts.Rule alone (no WorkerRule): M = sign(G)."""

    name = "plain-sign"
    capabilities = RuleCapabilities(sends_signs=True)

    def step(self, grads, state, generator=None):
        return torch.sign(grads), state


def test_a_rule_following_the_contract_alone_trains_as_the_same_rule_by_name():
    result = signvote.train(rule=PlainSign(), **SMALL, **QUIET)
    assert result.config.rule == "<object test_api.PlainSign>"
    assert (result.config.momentum, result.config.lr) == (None, 1e-4)  # a sign rule's lr
    assert result.config.aggregator == "majority-vote"
    same_run(result, signvote.train(rule="signsgd", **SMALL, **QUIET))


def test_an_object_that_is_no_rule_is_refused():
    with pytest.raises(ConfigError, match=r"signvote\.contracts\.Rule"):
        signvote.train(rule=lambda g, s: (g, s), **SMALL, **QUIET)


def test_a_run_of_objects_records_them(tmp_path, digits):
    out = tmp_path / "mine"
    signvote.train(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data=tensors(digits),
                   aggregator=lambda m: m.sign().sum(0).sign(), attack=Inversion(),
                   byzantine=1, out=str(out), **SMALL, progress=False)
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["model"] == "<object torch.nn.modules.container.Sequential>"
    assert config["dataset"].startswith("<data tensors: train [1437, 1, 8, 8]")
    assert config["attack"].endswith("Inversion>") and config["out"] == str(out)
    assert set(summary["objects"]) == {"model", "dataset", "aggregator", "attack"}
    assert summary["status"] == "completed"
    assert (out / "params.pt").exists() and (out / "partition.csv").exists()
    # its config is no config of names: resolve refuses it, so no sweep's run is this one
    with pytest.raises(ConfigError, match="--dataset <data tensors"):
        resolve(from_dict(config))


# -- bad input: one clear error ----------------------------------------------------------


def test_a_loss_that_returns_one_number_is_refused():
    with pytest.raises(ConfigError, match=r"returned one number .* reduction='none'"):
        signvote.train(loss=nn.CrossEntropyLoss(), **SMALL, **QUIET)


def test_unknown_options_and_bad_values_are_refused_naming_them():
    with pytest.raises(ConfigError, match=r"unknown option 'epoch', did you mean epochs\?"):
        signvote.train(epoch=1, **QUIET)
    with pytest.raises(ConfigError, match="--epochs must be at least 1, got 0"):
        signvote.train(epochs=0, **QUIET)
    with pytest.raises(ConfigError, match="--workers: expected a whole number, got '4'"):
        signvote.train(workers="4", **QUIET)
    with pytest.raises(ConfigError, match="--rule: unknown value 'signun', did you mean signum"):
        signvote.train(rule="signun", **QUIET)
    with pytest.raises(ConfigError, match="give the data once; valid: data=NAME_OR_OBJECT, "
                                          "or dataset=NAME, not both"):
        signvote.train(data="digits", dataset="logreg", **QUIET)


@pytest.mark.parametrize("edit, message", [
    (lambda t: (t[0][:-1], *t[1:]), "train_x has 1436 samples, train_y 1437 targets"),
    (lambda t: (t[0], t[1], t[2][:, :, :4], t[3]), "train_x has samples of shape"),
    (lambda t: (t[0].clone().index_fill_(0, torch.tensor([3]), float("nan")), *t[1:]),
     "train_x: 64 values are NaN or infinite"),
    (lambda t: (t[0], t[1] - 1, *t[2:]), "train_y: label -1 is negative"),
    (lambda t: (t[0], t[1].float(), *t[2:]), "train_y holds float targets, test_y integer"),
    (lambda t: (t[0], t[1][:, None], *t[2:]), r"train_y: shape \[1437, 1\]"),
    (lambda t: (t[0][:0], t[1][:0], *t[2:]), "no sample"),
])
def test_bad_tensors_are_refused_naming_them(digits, edit, message):
    with pytest.raises(DatasetError, match=message):
        signvote.train(data=edit(tensors(digits)), **QUIET)


def test_bad_data_of_other_kinds_is_refused(digits):
    with pytest.raises(DatasetError, match="classes 5: the labels go up to 9"):
        dataset(*tensors(digits), classes=5)
    with pytest.raises(ConfigError, match="data: expected a dataset name"):
        signvote.train(data=(digits.train_x, digits.train_y, digits.test_x), **QUIET)
    with pytest.raises(DatasetError, match="item 0 is a Tensor, not an"):
        from_datasets([digits.train_x[0]], [digits.test_x[0]])
    with pytest.raises(DatasetError, match="item 1's x has shape"):
        from_datasets([(torch.zeros(2), 0), (torch.zeros(3), 1)], [(torch.zeros(2), 0)])
    with pytest.raises(DatasetError, match=r"train dataset <object builtins\.set>: not a "
                                           r"dataset; valid: a torch\.utils\.data\.Dataset"):
        from_datasets({1, 2}, [(torch.zeros(2), 0)])


class BrokenItems(torch.utils.data.Dataset):
    """A map-style dataset whose items raise a TypeError of its own."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(2), int(None)


def test_an_error_a_dataset_raises_is_its_own_not_a_wrong_kind():
    # the dataset's TypeError is said as its own, not taken for "no len() or ds[i]"
    with pytest.raises(DatasetError, match=r"test dataset <object .*BrokenItems>: reading its "
                                           r"items failed: TypeError: int\(\) argument"):
        from_datasets([(torch.zeros(2), 0)], BrokenItems())


def test_a_model_that_does_not_fit_is_refused_in_one_line(digits):
    with pytest.raises(ConfigError, match=r"a forward pass on 2 training samples of shape "
                                          r"\[1, 8, 8\] failed: RuntimeError"):
        signvote.train(model=nn.Sequential(nn.Flatten(), nn.Linear(10, 10)), data="digits",
                       **QUIET)
    with pytest.raises(ConfigError, match=r"outputs \[2, 3\] for 2 samples; the default loss "
                                          r"\(cross-entropy, one score per class\) needs "
                                          r"\[2, 10\]"):
        signvote.train(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), data="digits",
                       **QUIET)
    with pytest.raises(ConfigError, match=r"is torch\.float64 on cpu; valid: float32"):
        signvote.train(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double(),
                       data="digits", **QUIET)
    with pytest.raises(ConfigError, match="the factory returned a str"):
        signvote.train(model=lambda shape, classes: "net", **QUIET)


def test_objects_need_an_out_and_the_simulator():
    with pytest.raises(ConfigError, match=r"out: a run built from objects .* no default folder"):
        signvote.train(attack=Inversion(), byzantine=1, progress=False)
    with pytest.raises(ConfigError, match="--engine dist: a run built from objects"):
        signvote.train(attack=Inversion(), byzantine=1, engine="dist", **QUIET)


def test_an_out_that_cannot_be_made_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"lies under .* which is a file; valid: a folder"):
        signvote.train(out=str(tmp_path / "file" / "run"), progress=False)


def test_options_an_object_carries_are_refused_beside_it():
    with pytest.raises(ConfigError, match="carries its own f"):
        signvote.train(aggregator=Mean(), aggregator_f=1, **QUIET)
    with pytest.raises(ConfigError, match="momentum/sign_bound: the rule object"):
        signvote.train(rule=rules.get("signum"), momentum=0.5, **QUIET)


def test_objects_are_checked_against_the_options():
    class NeedsMany(Mean):
        def min_workers(self, f):
            return 9

    with pytest.raises(ConfigError, match="needs at least 9 workers, got 4"):
        signvote.train(aggregator=NeedsMany(), workers=4, **QUIET)
    with pytest.raises(ConfigError, match="attack: the class Inversion; valid: an instance"):
        signvote.train(attack=Inversion, byzantine=1, **QUIET)
    with pytest.raises(ConfigError, match=r"attack: <object .*Mean> is not an attack \(it is "
                                          r"an aggregator; valid: "):
        signvote.train(attack=Mean(), byzantine=1, **QUIET)
    with pytest.raises(ConfigError, match=r"aggregator: <object .*Inversion> is not an "
                                          r"aggregator \(it is an attack; "):
        signvote.train(aggregator=Inversion(), **QUIET)


class HalfAnAggregator:
    """Declares an aggregator's capabilities (it returns signs) but is no Aggregator: it
    lacks init_state, apply, run, min_workers and check."""

    capabilities = AggregatorCapabilities(returns_signs=True)
    f = 0

    def __call__(self, messages):
        return torch.sign(messages.sum(dim=0))


class DataLevelWithoutTargets:
    """Declares a data-level attack but has no poison_targets to poison batches with."""

    capabilities = AttackCapabilities(knowledge="blind", data_level=True)

    def __call__(self, messages, byzantine_mask, ctx):
        return messages

    def check(self, workers, byzantine):
        return None


def test_an_object_declaring_capabilities_it_does_not_follow_is_refused():
    # as an import spec's object is (plugins.checked), never taken for a plain function
    # with the conservative capabilities, which would drop what it declares
    with pytest.raises(ConfigError, match=r"aggregator: <object .*HalfAnAggregator> is not an "
                                          r"aggregator \(it is a HalfAnAggregator that "
                                          r"declares aggregator capabilities but lacks "
                                          r"init_state, apply, run, min_workers, check;"):
        signvote.train(aggregator=HalfAnAggregator(), **QUIET)
    with pytest.raises(ConfigError, match=r"attack: .* \(it is a DataLevelWithoutTargets "
                                          r"that declares data_level but has no "
                                          r"poison_targets;"):
        signvote.train(attack=DataLevelWithoutTargets(), byzantine=1, **QUIET)


def test_the_command_line_of_a_config_is_that_config():
    c = resolve(TrainConfig(rule="sgd", aggregator="nnm+krum", workers=7, byzantine=2,
                            lr=1.5e-3, tensorboard=False, overwrite=True, out="runs/x"))
    args = cli.build_parser().parse_args(command_line(c))
    assert cli.config_from_args(args) == c
    assert aggregators.build(c.aggregator, c.aggregator_f) is not None


def test_the_distributed_result_reads_parameters_and_buffers_apart(tmp_path):
    # params.pt of a BatchNorm model holds its running statistics beside its parameters:
    # the result's flat parameters are the module's parameters only, its buffers the rest
    c = resolve(TrainConfig(dataset="digits", model="resnet20", out=str(tmp_path)))
    module = models.build("resnet20", (1, 8, 8), 10)
    with torch.no_grad():
        module.bn1.running_mean.add_(1.5)
        module.bn1.num_batches_tracked.add_(7)
    torch.save(module.state_dict(), tmp_path / "params.pt")
    params, buffers = saved_model(c)
    assert torch.equal(params, torch.cat([p.detach().reshape(-1)
                                          for p in module.parameters()]))
    assert buffers is not None
    assert buffers.keys() == dict(module.named_buffers()).keys()
    assert all(torch.equal(buffers[k], b) for k, b in module.named_buffers())
    c = resolve(TrainConfig(dataset="digits", model="smallcnn", out=str(tmp_path)))
    plain = models.build("smallcnn", (1, 8, 8), 10)
    torch.save(plain.state_dict(), tmp_path / "params.pt")
    params, buffers = saved_model(c)
    assert buffers is None
    assert torch.equal(params, torch.cat([p.detach().reshape(-1) for p in plain.parameters()]))


@pytest.mark.slow
@pytest.mark.dist
def test_names_with_the_distributed_engine_equal_the_simulator(tmp_path):
    options = {"workers": 3, "byzantine": 1, "epochs": 1}
    result = signvote.train(engine="dist", out=str(tmp_path / "dist"), progress=False,
                            **options)
    simulated = signvote.train(**options, **QUIET)
    without_traffic = [{k: v for k, v in row.items() if not k.startswith("bytes_")}
                       for row in numbers(result)]  # the distributed engine's own columns
    assert without_traffic == numbers(simulated)
    assert torch.equal(result.params, simulated.params)
    assert result.summary["engine"] == "dist"
