"""The Python entry point: train your own model on your own data.

:func:`train` takes every option of ``signvote train`` as a keyword (checked by the same
:func:`~signvote.experiment.config.resolve`), and the model, the data, the loss, the
worker rule, the aggregator and the attack as names (or specs) or as objects::

    import signvote
    result = signvote.train(model=MyNet(), data=(train_x, train_y, test_x, test_y),
                            rule="signum", aggregator="majority-vote", attack="vote-cancel",
                            byzantine=2, workers=7, epochs=5, lr=1e-3, out="runs/mine")

It writes the run folder ``signvote train`` writes (``config.json``, ``metrics.csv``,
``partition.csv``, ``params.pt``, ``summary.json``) and returns the
:class:`~signvote.engine.run.RunResult`. With names only it is the command line's run,
number for number, in the same default ``out``. A part given as an object is recorded in
``config.json`` as a description in angle brackets (``"<object mymodule.MyNet>"``;
:func:`signvote.engine.parts.describe`) and in ``summary.json``'s ``objects``; such a run
has no identity made of names, hence no default folder: it needs ``out=`` (or
``write=False``). Objects run in the simulator only (``engine="sim"``): the distributed
engine's processes build their run from names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from signvote import contracts, plugins, rules
from signvote.data import Dataset, DatasetError, require_samples
from signvote.data.tensors import check_dataset, tensor_of
from signvote.data.tensors import from_tensors as dataset
from signvote.engine.parts import Loss, ModelFactory, Parts, describe
from signvote.engine.run import RunResult
from signvote.experiment.config import FIELDS, ConfigError, TrainConfig, need, resolve
from signvote.registry import unknown_name

__all__ = ["dataset", "from_datasets", "train"]

DATA_KEYS = ("train_x", "train_y", "test_x", "test_y")
"""The tensors of data given as a mapping or a 4-tuple, in this order."""

KEYWORDS = ("model", "data", "loss", "rule", "aggregator", "attack", "out", "classes",
            "progress", "write")
"""The keywords of :func:`train` besides the config's fields."""


def train(model: str | nn.Module | ModelFactory | None = None,
          data: str | Dataset | Sequence[Any] | Mapping[str, Any] | None = None,
          loss: Loss | None = None,
          rule: str | contracts.Rule | None = None,
          aggregator: str | contracts.Aggregator | Callable[[Tensor], Tensor] | None = None,
          attack: str | contracts.Attack | None = None, *,
          out: str | None = None, classes: int | None = None, progress: bool = True,
          write: bool = True, **options: Any) -> RunResult:
    r"""Train with SignSGD/Signum (or SGD) and a robust aggregator under Byzantine workers,
    as ``signvote train`` does, from names or objects; returns the run's result and writes
    its folder ``out`` (when ``write``).

    Every worker computes ``g_i`` on its own batch, sends ``M_i = rule(g_i)`` (Signum:
    ``sign(m_i)``, ``m_i <- beta m_i + (1 - beta) g_i``; Bernstein et al. 2018, 2019), the
    Byzantine ones send ``attack(M)`` instead, and the parameters move by
    ``x <- x - lr (aggregator(M) + weight_decay x)``.

    Args:
        model: a model name (``"smallcnn"``, an import spec), an ``nn.Module`` (its current
            parameters are the initial point; the run trains a deep copy, the caller's is
            never changed) or a factory ``(input_shape, n_classes) -> nn.Module`` (called
            under the run's seed, as the built-in models are). Default: the dataset's
            model; for data given as objects ``logregnet`` (which flattens any sample),
            ``smallcnn`` for images ``[C, H, W]``, ``linregnet`` for a regression.
        data: a dataset name (``"digits"``), tensors ``(train_x, train_y, test_x,
            test_y)`` (a tuple or a mapping with those keys; numpy arrays too), two
            ``torch.utils.data.Dataset`` objects ``(train, test)`` yielding ``(x, y)``
            pairs, or a :class:`signvote.data.Dataset`. Tensors and datasets are loaded
            into memory once (:func:`dataset`, :func:`from_datasets`): integer labels
            make a classification (``classes`` = the largest label + 1, or ``classes``),
            float targets a regression.
        loss: a per-sample loss ``loss(outputs[N, ...], targets[N]) -> [N]`` (a function,
            or a torch loss built with ``reduction='none'``); each worker descends the
            mean over its batch. Default: cross-entropy for a classification, the squared
            error for a regression.
        rule: a worker rule name (``"signum"``) or an object following
            :class:`signvote.contracts.Rule` (``step(G, state, coins) -> (M, state)`` and
            its declared capabilities), such as a :class:`signvote.rules.WorkerRule`
            (``rules.get("signum", momentum=0.5)``: one equal to a registered rule is
            that name; another carries its own momentum and bound).
        aggregator: a spec (``"nnm+krum"``), an object following
            :class:`signvote.contracts.Aggregator`, or a plain callable ``messages[n, d]
            -> [d]`` (:func:`signvote.contracts.as_aggregator`: the conservative
            capabilities).
        attack: a spec (``"alie(z=1.5)"``), an object following
            :class:`signvote.contracts.Attack` (derive from
            :class:`signvote.contracts.AttackBase`), or a plain function ``(messages,
            byzantine_mask, ctx) -> messages'`` (:class:`signvote.plugins.FunctionAttack`:
            the conservative capabilities); run by ``byzantine`` workers.
        out: the run folder. Default, with names only: the command line's
            (``config.default_out``); a run with objects needs one.
        classes: the number of classes of data given as tensors or datasets (default:
            the largest label + 1).
        progress: show a progress bar on stderr.
        write: write the run folder.
        **options: every option of ``signvote train``, underscores for dashes
            (``workers=7, byzantine=2, epochs=5, lr=1e-3, seed=1``); an unknown one is
            refused naming the valid ones.

    Raises:
        ConfigError: an unknown option, a bad value or an object that does not fit,
            one line naming it and the valid values (before anything is written).
        DatasetError: data that cannot be used (shapes, counts, NaN, negative labels).
    """
    values = _options(options)
    parts: dict[str, Any] = {}
    _model(model, values, parts)
    _data(data, classes, values, parts)
    if loss is not None:
        need(callable(loss), f"loss: expected a function loss(outputs[N, ...], "
                f"targets[N]) -> [N], got {loss!r}")
        parts["loss"] = loss
    _rule(rule, values, parts)
    _component("aggregator", aggregator, values, parts)
    _component("attack", attack, values, parts)
    if out is not None:
        values["out"] = out
    given = Parts(**parts)
    config = TrainConfig(**values)
    if not given.empty and write and out is None:
        raise ConfigError(f"out: a run built from objects ({', '.join(given.descriptions())}) "
                          f"has no default folder (its identity is the objects', not names); "
                          f"valid: out='runs/NAME', or write=False")
    if write:
        _check_out(out if out is not None else resolve(config).out)
    if values.get("engine") == "dist" and given.empty:
        return _distributed(config, progress, write)
    from signvote.engine import sim

    return sim.train(config, progress=progress, write=write, parts=given)


def _check_out(out: str) -> None:
    """Refuse an output folder that cannot be made (:func:`signvote.cli.out_problem`)."""
    from signvote.cli import out_problem

    problem = out_problem(out)
    need(problem is None, f"out {problem}; valid: a folder that can be made and written")


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The config's fields among ``options``; an unknown keyword is refused naming the
    valid ones. The fields that :func:`train` takes by name are not options."""
    valid = [name for name in FIELDS if name not in KEYWORDS]
    for name in options:
        if name not in valid:
            raise ConfigError(unknown_name("option", name, sorted([*KEYWORDS, *valid])))
    return dict(options)


def _model(model: Any, values: dict[str, Any], parts: dict[str, Any]) -> None:
    if model is None or isinstance(model, str):
        if model is not None:
            values["model"] = model
        return
    need(isinstance(model, nn.Module) or callable(model),
            f"model: expected a model name, a torch.nn.Module or a function (input_shape, "
            f"n_classes) -> nn.Module; got a {type(model).__name__}")
    parts["model"] = model


def _data(data: Any, classes: int | None, values: dict[str, Any],
          parts: dict[str, Any]) -> None:
    if "dataset" in values and data is not None:
        raise ConfigError(f"data and dataset={values['dataset']!r}: give the data once; "
                          f"valid: data=NAME_OR_OBJECT, or dataset=NAME, not both")
    if data is None or isinstance(data, str):
        if data is not None:
            values["dataset"] = data
        need(classes is None, f"classes {classes}: a dataset name has classes of its own; "
                f"valid: classes with data given as tensors or datasets")
        return
    if isinstance(data, Dataset):
        need(classes is None, f"classes {classes}: a signvote.data.Dataset has its own "
                f"({data.n_classes}); valid: leave classes out")
        check_dataset(data)
        parts["data"] = data
        return
    if isinstance(data, Mapping):
        missing = [k for k in DATA_KEYS if k not in data]
        extra = [k for k in data if k not in DATA_KEYS]
        need(not missing and not extra,
                f"data: a mapping needs the keys {', '.join(DATA_KEYS)}; "
                + (f"missing {', '.join(missing)}" if missing else
                   f"unknown {', '.join(map(str, extra))}"))
        parts["data"] = dataset(*(data[k] for k in DATA_KEYS), classes=classes)
        return
    if isinstance(data, Sequence) and len(data) == 4:
        parts["data"] = dataset(*data, classes=classes)
        return
    if isinstance(data, Sequence) and len(data) == 2:
        parts["data"] = from_datasets(*data, classes=classes)
        return
    raise ConfigError("data: expected a dataset name, (train_x, train_y, test_x, test_y), "
                      "(train_dataset, test_dataset) or a signvote.data.Dataset; got "
                      + (f"a sequence of {len(data)}" if isinstance(data, Sequence)
                         else f"a {type(data).__name__}"))


def _rule(rule: Any, values: dict[str, Any], parts: dict[str, Any]) -> None:
    if rule is None or isinstance(rule, str):
        if rule is not None:
            values["rule"] = rule
        return
    need(isinstance(rule, contracts.Rule),
            f"rule: expected a rule name ({', '.join(rules.names())}) or an object following "
            f"signvote.contracts.Rule (a name, capabilities and step(G, state, coins)), such "
            f"as rules.get(name, momentum); got a {type(rule).__name__}")
    need(values.get("momentum") is None and values.get("sign_bound") is None,
            f"momentum/sign_bound: the rule object {rule.name} carries its own; valid: "
            f"leave them out")
    if _registered(rule):  # the registered rule of that name: the run is made of names
        values.update(rule=rule.name, momentum=rule.beta, sign_bound=rule.bound)
    else:
        parts["rule"] = rule


def _registered(rule: contracts.Rule) -> bool:
    """Whether ``rule`` is a :class:`~signvote.rules.WorkerRule` equal to what its
    registered name builds with its momentum and bound."""
    if not isinstance(rule, rules.WorkerRule) or rule.name not in rules.names():
        return False
    try:
        return rules.get(rule.name, rule.beta, rule.bound) == rule
    except ValueError:
        return False


def _component(kind: str, value: Any, values: dict[str, Any], parts: dict[str, Any]
               ) -> None:
    """An aggregator or attack given as a spec (recorded in ``values``) or as an object
    (in ``parts``), the object checked as a plugin's is (:func:`signvote.plugins.checked`:
    its declared capabilities and its protocol; a plain function the conservative
    capabilities); a class, or an object of another kind, is one :class:`ConfigError`."""
    if value is None or isinstance(value, str):
        if value is not None:
            values[kind] = value
        return
    _refuse_class(kind, value)
    try:
        parts[kind] = plugins.checked(kind, value, describe(value))
    except plugins.PluginError as exc:
        raise ConfigError(f"{kind}: {exc}; or a spec such as "
                          f"{SPEC_EXAMPLES[kind]!r}") from None


SPEC_EXAMPLES = {"aggregator": "nnm+krum", "attack": "alie(z=1.5)"}
"""A spec of each kind, said where an object is refused."""


def _refuse_class(kind: str, value: Any) -> None:
    if inspect.isclass(value):
        raise ConfigError(f"{kind}: the class {value.__name__}; valid: an instance of it, "
                          f"{value.__name__}(...)")


# --- data ------------------------------------------------------------------------------
# dataset (signvote.data.tensors.from_tensors) and check_dataset: the rule a plugin
# dataset's tensors follow too


def from_datasets(train: Any, test: Any, *, classes: int | None = None) -> Dataset:
    """:func:`dataset` of two ``torch.utils.data.Dataset`` objects (map-style: ``len`` and
    ``ds[i]``; or iterable) or sequences yielding ``(x, y)`` pairs, stacked into tensors
    once: the whole dataset is loaded into memory. Raises
    :class:`~signvote.data.DatasetError` naming the dataset and what is wrong: no dataset,
    an error its items raised (its type and message), an item that is no pair, or whose
    sample differs in shape."""
    (train_x, train_y), (test_x, test_y) = (_stack(ds, split) for ds, split in
                                            ((train, "train"), (test, "test")))
    return dataset(train_x, train_y, test_x, test_y, classes=classes, name="datasets")


def _stack(ds: Any, split: str) -> tuple[Tensor, Tensor]:
    """The samples and targets of a torch dataset, stacked."""
    what = f"{split} dataset {describe(ds)}"
    iterable = isinstance(ds, torch.utils.data.IterableDataset)
    if not isinstance(ds, torch.utils.data.Dataset | Sequence):
        raise DatasetError(f"{what}: not a dataset; valid: a torch.utils.data.Dataset "
                           f"(map-style: len(ds) and ds[i]; or an IterableDataset) or a "
                           f"sequence, of (x, y) pairs")
    try:
        items = list(ds) if iterable else [ds[i] for i in range(len(ds))]
    except Exception as exc:  # the dataset's own error, as one line naming it
        raise DatasetError(f"{what}: reading its items failed: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split()) or '(no message)'}") from None
    require_samples(len(items), what)
    xs, ys = [], []
    for i, item in enumerate(items):
        if not isinstance(item, Sequence) or len(item) != 2:
            raise DatasetError(f"{what}: item {i} is a {type(item).__name__}, not an (x, y) "
                               f"pair")
        xs.append(tensor_of(item[0], f"{what}: item {i}'s x"))
        ys.append(tensor_of(item[1], f"{what}: item {i}'s y"))
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x.shape != xs[0].shape:
            raise DatasetError(f"{what}: item {i}'s x has shape {list(x.shape)}, item 0's "
                               f"{list(xs[0].shape)}; valid: samples of one shape")
        if y.numel() != 1:
            raise DatasetError(f"{what}: item {i}'s y has shape {list(y.shape)}; valid: one "
                               f"target per sample")
    return torch.stack(xs), torch.stack([y.reshape(()) for y in ys])


# --- the distributed engine, from names ------------------------------------------------


def _distributed(config: TrainConfig, progress: bool, write: bool) -> RunResult:
    """Run ``config`` (names only) with the distributed engine: its processes run the
    command line of the resolved config (:func:`command_line`)."""
    from signvote.engine import dist
    from signvote.experiment import runs

    need(write, "write=False: the distributed engine's processes write the run folder; "
            "valid: write=True, or engine='sim'")
    c = resolve(config)
    summary = dist.launch(c, command_line(c, progress))
    folder = runs.read_run(c.out)
    params, buffers = saved_model(c)
    return RunResult(c, summary, folder.metrics, params, buffers)


def saved_model(c: TrainConfig) -> tuple[Tensor, dict[str, Tensor] | None]:
    """The flat parameters and the named buffers (the evaluated running statistics; None
    for a model without any) of resolved config ``c``'s ``OUT/params.pt``, as the
    simulator returns them in :class:`~signvote.engine.run.RunResult`: ``params.pt`` holds
    both in one state dict, told apart by the model's own ``named_parameters`` (the model
    of ``c`` built on its data, under a forked generator)."""
    from signvote.engine.gradients import ParamLayout
    from signvote.engine.run import build_model, load_data

    with torch.random.fork_rng(devices=[]):
        layout = ParamLayout.of(build_model(c, load_data(c)))
    saved = torch.load(f"{c.out}/params.pt", weights_only=True)
    buffers = {k: v for k, v in saved.items() if k not in layout.names}
    return torch.cat([saved[k].reshape(-1) for k in layout.names]), buffers or None


def command_line(config: TrainConfig, progress: bool = True) -> list[str]:
    """The ``signvote train`` command line of a config: ``--FIELD VALUE`` for each field
    set (a true flag alone), ``--quiet`` without ``progress``."""
    words = ["train"]
    for name in FIELDS:
        value = getattr(config, name)
        flag = f"--{name.replace('_', '-')}"
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        else:
            words += [flag, repr(value) if isinstance(value, float) and math.isfinite(value)
                      else str(value)]
    return words + ([] if progress else ["--quiet"])
