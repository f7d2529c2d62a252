"""A run built from objects as well as names: :class:`Parts` and its config.

``signvote.train`` (:mod:`signvote.api`) takes a model, data, a loss, a worker rule, an
aggregator and an attack as objects; the simulator's :func:`~signvote.engine.run.prepare`
builds a run from the :class:`Parts` it is handed instead of from the config's names for
those. The config still holds every other option, checked by the same
:func:`~signvote.experiment.config.resolve` as the command line's:
:func:`resolve_parts` resolves the config with a stand-in name for each object (one that
passes the same cross-checks, e.g. ``sgd`` for a rule object that sends real numbers, so
that ``lr`` defaults to sgd's 1e-3 as the help says), checks each object against the
options (``aggregator.check(workers)``, ``attack.check(workers, byzantine)``), and then
records, in each field given as an object, a description in angle brackets
(:func:`describe`, ``"<object mymodule.MyNet>"``): no name or import spec has one, so a
reader of ``config.json`` sees that the run was not made from names, and nothing mistakes
it for one (``resolve`` refuses such a config, so no run of names has its
:func:`~signvote.experiment.config.trajectory_key`). Its identity is the objects', which no
name says, hence no default ``out``: a run built from objects is written only to a folder
it is given.

Objects stay in this process: the distributed engine, whose ranks build their run from
the command line, is refused with them.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from signvote import contracts, rules
from signvote.data import Dataset
from signvote.data.partition import NEEDS_LABELS
from signvote.engine.gradients import Loss
from signvote.experiment.config import ConfigError, TrainConfig, need, resolve
from signvote.plugins import FunctionAttack

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
"""A model factory ``(input_shape, n_classes) -> nn.Module``, as the built-in models."""


PROBE_SAMPLES = 2
"""The training samples a run built from objects runs through the model (and the loss)
once before it starts, to refuse one that does not fit the data in one line."""


@dataclass(frozen=True)
class Parts:
    """The objects a run is built from instead of the config's names (None: the name).

    Attributes:
        model: an ``nn.Module`` (its parameters are the initial point; the run trains a
            deep copy) or a factory ``(input_shape, n_classes) -> nn.Module`` (called under
            the run's seed, as the built-in models are).
        data: the dataset, in memory.
        loss: a per-sample loss ``loss(outputs[N, ...], targets[N]) -> [N]``; None: the
            task's default (cross-entropy, squared error).
        rule: the worker rule.
        aggregator: the server rule (:class:`signvote.contracts.Aggregator`).
        attack: what the Byzantine workers run (:class:`signvote.contracts.Attack`).
    """

    model: nn.Module | ModelFactory | None = None
    data: Dataset | None = None
    loss: Loss | None = None
    rule: contracts.Rule | None = None
    aggregator: contracts.Aggregator | None = None
    attack: contracts.Attack | None = None

    def fields(self) -> dict[str, Any]:
        """The config field -> object of every part given (``data`` is ``dataset``'s)."""
        given = {"dataset": self.data, "model": self.model, "rule": self.rule,
                 "aggregator": self.aggregator, "attack": self.attack}
        return {name: value for name, value in given.items() if value is not None}

    @property
    def empty(self) -> bool:
        """True when nothing is given as an object (the run is its config's names)."""
        return not self.fields() and self.loss is None

    def descriptions(self) -> dict[str, str]:
        """The field -> :func:`describe` of every part given, the loss included."""
        found = {name: describe(value) for name, value in self.fields().items()}
        if self.loss is not None:
            found["loss"] = describe(self.loss)
        return found


def describe(part: Any) -> str:
    """What ``config.json`` records for an object: ``<object MODULE.QUALNAME>`` of a
    function or class (of an instance: its class), ``<data NAME: train [N, ...], test
    [M, ...]>`` of a dataset."""
    if isinstance(part, Dataset):
        return (f"<data {part.name}: train {list(part.train_x.shape)}, test "
                f"{list(part.test_x.shape)}>")
    if isinstance(part, contracts.FunctionAggregator | FunctionAttack):
        part = part.function  # a plain function, wrapped: the function's own name
    kind = part if inspect.isroutine(part) or inspect.isclass(part) else type(part)
    return f"<object {kind.__module__}.{kind.__qualname__}>"


def stand_in_dataset(data: Dataset) -> str:
    """The registered dataset whose name stands in for ``data`` while the config is
    resolved: ``linreg`` for a regression, ``digits`` for images ``[C, H, W]`` (the
    default model is then ``smallcnn``), ``logreg`` for other samples (``logregnet``,
    which flattens any sample)."""
    if data.task == "regression":
        return "linreg"
    return "digits" if len(data.input_shape) == 3 else "logreg"


def resolve_parts(config: TrainConfig, parts: Parts) -> TrainConfig:
    """``config`` resolved for a run built from ``parts``: every option checked and filled
    as :func:`~signvote.experiment.config.resolve` does, each field given as an object
    holding its :func:`describe`, ``momentum``/``sign_bound`` the rule object's own
    (``beta``, ``bound``), ``aggregator_f`` the aggregator object's ``f``, ``model`` a
    name given with a data object as given (:func:`~signvote.engine.run.build_model`
    checks it fits). ``out`` stays as given (None: the run cannot be written). Options
    that an object carries itself are refused beside it; so is ``engine = "dist"``.
    With no object given, this is ``resolve(config)``. Raises :class:`ConfigError`."""
    if parts.empty:
        return resolve(config)
    c = config
    given = parts.fields()
    named = ", ".join(parts.descriptions())
    need(c.engine == "sim", f"--engine {c.engine}: a run built from objects ({named}) "
            f"runs in this process, and the distributed engine's processes build theirs from "
            f"names; valid: engine='sim', or names and import specs for engine='dist'")
    stand: dict[str, Any] = {}
    data = parts.data
    if data is not None:
        need(c.data_dir is None, f"--data-dir {c.data_dir}: the data is given as an "
                f"object; valid: leave data_dir out")
        need(data.task == "classification" or c.partition not in NEEDS_LABELS,
                f"--partition {c.partition} needs class labels; the data given is a "
                f"regression (float targets); valid: --partition iid")
        need(c.image_size is None, f"--image-size {c.image_size} is the side the folder "
                f"dataset's images are resized to; the data given has samples of shape "
                f"{list(data.input_shape)}; valid: leave image_size out")
        need(c.augment != "on" or len(data.input_shape) == 3,
                f"--augment on crops and flips images [channels, height, width]; the data "
                f"given has samples of shape {list(data.input_shape)}; valid: augment='off'")
        stand["dataset"] = stand_in_dataset(data)
        stand["model"] = None  # the stand-in's default: the name or object is put back after
    if "model" in given:
        stand["model"] = None
    rule = parts.rule
    if rule is not None:
        need(c.momentum is None and c.sign_bound is None,
                f"--momentum/--sign-bound: the rule object {describe(rule)} carries its own; "
                f"valid: leave them out")
        stand["rule"] = "signsgd" if rule.capabilities.sends_signs else "sgd"
    aggregator = parts.aggregator
    if aggregator is not None:
        need(c.aggregator_f is None,
                f"--aggregator-f {c.aggregator_f}: the aggregator object "
                f"{describe(aggregator)} carries its own f ({aggregator.f}); valid: leave "
                f"aggregator_f out")
        stand["aggregator"] = "mean"  # takes any number of workers
    if parts.attack is not None:
        stand["attack"] = "none"  # runs with any number of workers
    if c.out is None:
        stand["out"] = "-"  # no default folder for a run of objects (see the module)
    r = resolve(dataclasses.replace(c, **stand))
    if aggregator is not None:
        try:
            aggregator.check(r.workers)
        except ValueError as exc:
            raise ConfigError(f"--aggregator {describe(aggregator)}: {exc}") from None
    if parts.attack is not None and r.byzantine:
        try:
            parts.attack.check(r.workers, r.byzantine)
        except ValueError as exc:
            raise ConfigError(f"--attack {describe(parts.attack)}: {exc}") from None
    recorded: dict[str, Any] = {name: describe(value) for name, value in given.items()}
    if "model" not in given and data is not None and c.model is not None:
        recorded["model"] = c.model
    if isinstance(rule, rules.WorkerRule):  # its momentum and bound, as the CLI records
        recorded.update(momentum=rule.beta, sign_bound=rule.bound)
    elif rule is not None:  # a rule of its own: no momentum or bound of signvote's
        recorded.update(momentum=None, sign_bound=None)
    if aggregator is not None:
        recorded["aggregator_f"] = aggregator.f
    recorded["out"] = c.out
    return dataclasses.replace(r, **recorded)


def build_module(model: nn.Module | ModelFactory, data: Dataset) -> nn.Module:
    """The module a run trains: a deep copy of ``model`` (the caller's is never changed),
    or ``model(data.input_shape, data.n_classes)`` (from torch's global generator, which
    the caller seeds). Its parameters must be float32 on the CPU, as the data; raises
    :class:`ConfigError` naming the model otherwise."""
    what = describe(model)
    if isinstance(model, nn.Module):
        module = copy.deepcopy(model)
    else:
        try:
            module = model(data.input_shape, data.n_classes)
        except ValueError as exc:  # the factory's own refusal of the data
            raise ConfigError(f"--model {what}: {exc}") from None
        except Exception as exc:  # the factory's own error (or no memory for the model)
            raise ConfigError(f"--model {what}: building it for samples "
                              f"{list(data.input_shape)} and {data.n_classes} classes failed: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None
        need(isinstance(module, nn.Module),
                f"--model {what}: the factory returned a {type(module).__name__}; valid: a "
                f"function (input_shape, n_classes) -> torch.nn.Module")
    params = list(module.parameters())
    need(bool(params), f"--model {what}: the model has no parameters to train")
    for name, p in module.named_parameters():
        need(p.dtype == torch.float32 and p.device.type == "cpu",
                f"--model {what}: parameter {name} is {p.dtype} on {p.device}; valid: "
                f"float32 on the CPU (model.float().cpu())")
    return module


def check_fit(module: nn.Module, data: Dataset, loss: Loss | None, what: str) -> None:
    """Refuse, with one :class:`ConfigError`, a model that does not fit the data or a loss
    that is not per sample: the first :data:`PROBE_SAMPLES` training samples go through
    ``module`` (in eval mode, without gradients, torch's global generator left as it
    was), and through a copy of it in training mode (which must give outputs of the same
    shape; the copy's running statistics are thrown away); its outputs must be ``[N,
    n_classes]`` for the default cross-entropy, ``[N, 1]`` for the default squared error,
    and a given ``loss(outputs, targets)`` must return ``[N]`` floating-point values that
    depend on the outputs (one loss per sample: torch's losses with
    ``reduction='none'``)."""
    xb, yb = data.train_x[:PROBE_SAMPLES], data.train_y[:PROBE_SAMPLES]
    n = xb.shape[0]
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out = _forward(module, xb, what, data, "a forward pass")
            need(isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == n,
                    f"--model {what}: returned {_shape_of(out)} for {n} samples; valid: "
                    f"a tensor [N, ...], one row per sample")
            trained = _forward(copy.deepcopy(module).train(), xb, what, data,
                               "a forward pass in training mode")
            need(isinstance(trained, Tensor) and trained.shape == out.shape,
                 f"--model {what}: returned {_shape_of(trained)} for {n} samples in "
                 f"training mode, {_shape_of(out)} in evaluation mode; valid: one shape")
            if loss is None:
                want = [n, data.n_classes] if data.task == "classification" else [n, 1]
                kind = ("cross-entropy, one score per class"
                        if data.task == "classification" else "squared error, one output")
                need(list(out.shape) == want,
                        f"--model {what}: outputs {list(out.shape)} for {n} samples; the "
                        f"default loss ({kind}) needs {want}")
                return
            leaf = out.detach().requires_grad_(True)  # what the loss's gradient is taken of
            try:
                with torch.enable_grad():
                    value = loss(leaf, yb)
            except Exception as exc:  # the loss's own error, as one line
                raise ConfigError(
                    f"loss {describe(loss)}: on outputs {list(out.shape)} and targets "
                    f"{list(yb.shape)} it failed: {type(exc).__name__}: "
                    f"{_first_line(exc)}") from None
            need(isinstance(value, Tensor) and list(value.shape) == [n],
                    _loss_message(describe(loss), value, n))
            need(value.dtype.is_floating_point, f"loss {describe(loss)}: returned "
                 f"{value.dtype} values; valid: floating-point losses, one a sample")
            need(value.requires_grad, f"loss {describe(loss)}: its value does not depend on "
                 f"the outputs (no gradient reaches them); valid: a loss of the model's "
                 f"outputs")
    finally:
        module.train(was_training)


def _forward(module: nn.Module, xb: Tensor, what: str, data: Dataset, which: str) -> Any:
    """``module(xb)``; what the model raises is one ConfigError line naming it."""
    try:
        return module(xb)
    except Exception as exc:  # the model's own error, as one line
        raise ConfigError(
            f"--model {what}: {which} on {xb.shape[0]} training samples of shape "
            f"{list(data.input_shape)} failed: {type(exc).__name__}: "
            f"{_first_line(exc)}") from None


def check_exchange(aggregator: contracts.Aggregator, attack: contracts.Attack | None,
                   byzantine_mask: Tensor, dim: int, sends_signs: bool, aggregator_what: str,
                   attack_what: str) -> None:
    """Refuse, with one :class:`ConfigError`, an aggregator or an attack (a plugin's or an
    object) that breaks its contract on probe messages ``M [n, d]`` (``n`` workers, ``d``
    the model's parameters; the signs of standard normal numbers for a rule that sends
    signs, else the numbers, drawn from a generator of the probe's own): a message-level
    ``attack`` (None: none to probe) must return ``M' [n, d]`` of a real dtype that keeps
    the messages float32, the aggregator, from its initial state, one direction ``[d]``
    that keeps the parameters float32 (``x - lr v``; issue 8's contracts); what either
    raises is one line naming it. Nothing of the run is used or changed (the attack's
    context has a generator of its own, the aggregator its own initial state)."""
    from signvote.attacks import AttackContext

    n = byzantine_mask.shape[0]
    messages = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    if sends_signs:
        messages = messages.sign()
    shape = f"messages [{n}, {dim}]"
    if attack is not None and not attack.capabilities.data_level:
        ctx = AttackContext(0, torch.Generator().manual_seed(1), sends_signs,
                            contracts.Preview(aggregator, aggregator.init_state()))
        try:
            crafted = attack(messages.clone(), byzantine_mask.clone(), ctx)
        except Exception as exc:  # the attack's own error, as one line
            raise ConfigError(f"--attack {attack_what}: on {shape} it failed: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None
        need(isinstance(crafted, Tensor) and list(crafted.shape) == [n, dim],
             f"--attack {attack_what}: returned {_shape_of(crafted)} for {shape}; valid: "
             f"messages [n, d] = [{n}, {dim}], one row a worker")
        need(_keeps_float32(crafted), f"--attack {attack_what}: returned {crafted.dtype} "
             f"messages; valid: float32 (or a type that keeps them float32)")
    try:
        direction, _ = aggregator.apply(messages.clone(), aggregator.init_state())
    except Exception as exc:  # the aggregator's own error, as one line
        raise ConfigError(f"--aggregator {aggregator_what}: on {shape} it failed: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from None
    need(isinstance(direction, Tensor) and list(direction.shape) == [dim],
         f"--aggregator {aggregator_what}: returned {_shape_of(direction)} for {shape}; "
         f"valid: one direction [d] = [{dim}]")
    need(_keeps_float32(direction), f"--aggregator {aggregator_what}: returned "
         f"{direction.dtype}; valid: float32 (or a type that keeps the parameters float32)")


def _keeps_float32(t: Tensor) -> bool:
    """Whether float32 combined with ``t`` stays float32 (integers, bools, float16 do)."""
    return not t.is_complex() and torch.promote_types(torch.float32, t.dtype) == torch.float32


def _loss_message(what: str, value: Any, n: int) -> str:
    if isinstance(value, Tensor) and value.dim() == 0:
        return (f"loss {what}: returned one number for {n} samples; valid: one loss per "
                f"sample, shape [N] (torch's losses: reduction='none')")
    return (f"loss {what}: returned {_shape_of(value)} for {n} samples; valid: one loss per "
            f"sample, shape [N] (torch's losses: reduction='none')")


def _shape_of(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
