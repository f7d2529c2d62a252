"""Plugins: names that resolve to code outside signvote.

Wherever a name is accepted (``--model``, ``--dataset``, ``--rule``, ``--aggregator``
including each stage of a chain, ``--attack``, and the same keys of a TOML file), a
registry (:class:`signvote.registry.Registry`) resolves it, in this order, to

1. a registered (built-in) name: ``krum``;
2. an entry point of that name in the kind's group (:data:`GROUPS`), which an installed
   package declares in its ``pyproject.toml``::

       [project.entry-points."signvote.aggregators"]
       sign-median = "signvote_example_plugin.aggregators:SignOfMedian"

   (its names appear in ``--help`` and in every "valid:" list; a built-in name shadows an
   entry point of the same name);
3. an import spec ``package.module:attribute``: the module is imported with
   :func:`importlib.import_module` and the attribute read from it.

Each may carry parameters, ``pkg.mod:MyAgg(k=2)``, which a class or factory takes as
keywords. The grammar of a stage is::

    stage     := name [ "(" key=value { "," key=value } ")" ]
    name      := [A-Za-z0-9][A-Za-z0-9_-]*          (registered or entry point)
               | module ":" attribute                (import spec)
    module    := identifier { "." identifier }       (a module on sys.path, never a file)
    attribute := identifier { "." identifier }

Importing a module runs its code: an import spec names a module by its dotted name only
(``./x.py:f``, ``/abs/x.py:f`` and relative names are refused), found on ``sys.path``
as any ``import`` is (``python -m`` puts the current folder on it; the console script
does not). The library prints nothing; the command line says once per module, on stderr,
``signvote: importing plugin module mypkg.aggs (named by --aggregator)`` through
:func:`import_notices`.

What the attribute must be is each kind's contract (:func:`adapt`), decided from what it
declares (a class's ``capabilities``), its signature, and what a call returns, never from
its name:

- aggregator: an object or class following :class:`signvote.contracts.Aggregator`
  (``AggregatorBase``); a plain callable ``messages[n, d] -> [d]``, a function whose first
  parameter has no default, the spec's parameters bound as keywords, with the
  conservative capabilities (:class:`signvote.contracts.FunctionAggregator`); or a class
  declaring its capabilities (``AggregatorBase``), built with the spec's parameters. A
  function that takes no messages first is never called with a spec's parameters (any
  installed package's function with defaults would be reachable from a sweep file);
- pre-aggregator (a chain's stage before the last): a
  :class:`signvote.contracts.PreAggregator` object or class;
- attack: a :class:`signvote.contracts.Attack` object or class, or a plain
  function ``(messages, byzantine_mask, ctx, **params) -> messages`` (:class:`FunctionAttack`:
  omniscient, message-level, the conservative capabilities);
- rule: a factory ``(momentum, **params) -> signvote.rules.WorkerRule``, its default
  learning rate and momentum declared with :func:`signvote.rules.declare` (else momentum 0
  and the learning rate of sgd, 1e-3, or of the sign rules, 1e-4, by what it sends);
- model: a class or function ``(input_shape, n_classes, **params) -> torch.nn.Module``,
  its :class:`signvote.models.ModelInfo` declared with :func:`signvote.models.declare`
  (else the conservative ``ModelInfo()``);
- dataset: a function ``(seed, data_dir, **params)`` returning a
  :class:`signvote.data.Dataset` or the tensors ``(train_x, train_y, test_x, test_y)``:
  a classification with ``max(y) + 1`` classes when the labels are integers, a
  regression when they are floating point (:func:`as_dataset`).

A spec that cannot be resolved raises :class:`PluginError` (a ValueError), one line naming
the module or attribute and why: not importable, not found, not of the kind.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signvote.registry import Registry, parse_spec, unknown_name

if TYPE_CHECKING:
    from torch import Tensor

    from signvote.attacks import AttackContext
    from signvote.data import Dataset

GROUPS = {"aggregator": "signvote.aggregators", "pre-aggregator": "signvote.preaggregators",
          "attack": "signvote.attacks", "rule": "signvote.rules", "model": "signvote.models",
          "dataset": "signvote.datasets"}
"""Registry kind -> the entry point group an installed package registers its names in."""

FLAGS = {"aggregator": "--aggregator", "pre-aggregator": "--aggregator",
         "attack": "--attack", "rule": "--rule", "model": "--model", "dataset": "--dataset"}
"""Registry kind -> the command-line option that names it."""

_ARTICLE = {"aggregator": "an", "attack": "an"}

VALID = {
    "aggregator": "an Aggregator class or object (signvote.contracts.AggregatorBase), or a "
                  "function messages[n, d] -> [d]",
    "pre-aggregator": "a PreAggregator class or object (signvote.contracts."
                      "PreAggregatorBase)",
    "attack": "an Attack class or object (signvote.contracts.AttackBase), or a function "
              "(messages, byzantine_mask, ctx) -> messages",
    "rule": "a class or function (momentum, ...) -> signvote.rules.WorkerRule",
    "model": "a class or function (input_shape, n_classes, ...) -> torch.nn.Module",
    "dataset": "a function (seed, data_dir, ...) -> signvote.data.Dataset or (train_x, "
               "train_y, test_x, test_y)",
}
"""Kind -> what an attribute of that kind must be (said when it is not)."""

DATASETS = Registry("dataset")
"""The datasets of entry points (group ``signvote.datasets``) and import specs; the
built-in ones are :data:`signvote.data.DATASETS`, loaded by :func:`signvote.data.load`."""

_IDENTIFIERS = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_IMPORT_SPEC = re.compile(rf"({_IDENTIFIERS}):({_IDENTIFIERS})")
_ENTRY_POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""The entry point names a spec can name (others are not listed)."""

_NOTICE: ContextVar[Callable[[str, str], None] | None] = ContextVar("signvote_import_notice",
                                                                     default=None)


class PluginError(ValueError):
    """A plugin cannot be resolved: not importable, not found, or not of its kind; the
    message is one line saying which and why."""


def is_import_spec(name: str) -> bool:
    """Whether a stage's name is an import spec (it holds a ``:``), not a registered or
    entry point name."""
    return ":" in name


def check_import_spec(name: str) -> tuple[str, str]:
    """``"pkg.mod:Attr"`` -> ``("pkg.mod", "Attr")``; a file path, a relative module or
    anything else that is not dotted identifiers around one colon raises
    :class:`PluginError` saying so."""
    match = _IMPORT_SPEC.fullmatch(name)
    module = name.rpartition(":")[0]
    if match is not None and not module.endswith(".py"):
        refuse_standard_library(match.group(1), repr(name))
        return match.group(1), match.group(2)
    valid = ("valid: package.module:attribute, dotted names of a module on sys.path "
             "(a file is never imported by its path)")
    if "/" in name or "\\" in name or module.endswith(".py") or module.startswith("."):
        raise PluginError(f"{name!r} names a file or a relative module, not a module; {valid}")
    raise PluginError(f"{name!r} is not an import spec; {valid}")


def refuse_standard_library(module: str, where: str) -> None:
    """Refuse a module of Python's standard library (``sys.stdlib_module_names``) before it
    is imported: it holds no plugin, and its functions, called as a factory with a spec's
    parameters, do anything a program can (``subprocess:run(args=..., shell=true)`` runs a
    shell command, ``sys:exit`` ends the command, ``os:abort`` kills it)."""
    if module.partition(".")[0] in sys.stdlib_module_names:
        raise PluginError(f"{where} names {module}, a module of Python's standard library, "
                          f"which holds no plugin (nothing in it is called); valid: "
                          f"package.module:attribute of a package installed or on sys.path")


def call_plugin(where: str, function: Callable[..., Any], *args: Any, **params: Any) -> Any:
    """``function(*args, **params)``, a plugin's own code: a ValueError (what it says is
    wrong with its parameters) passes as it is, anything else it raises (``SystemExit``
    too) is one :class:`PluginError` line naming ``where``; a KeyboardInterrupt stays one."""
    try:
        return function(*args, **params)
    except ValueError:
        raise
    except (Exception, SystemExit) as exc:  # the plugin's own code may raise anything
        raise PluginError(f"{where} raised {_reason(exc)}") from None


@contextlib.contextmanager
def import_notices(notice: Callable[[str, str], None]) -> Iterator[None]:
    """Within the block, call ``notice(module, why)`` before a plugin module is first
    imported (``why``: ``named by --aggregator``, or the entry point and its
    distribution): what the command line prints. Nothing is printed outside it."""
    token = _NOTICE.set(notice)
    try:
        yield
    finally:
        _NOTICE.reset(token)


def _import(module: str, why: str) -> Any:
    """Import ``module`` (first telling :func:`import_notices`'s callback, if it is not
    imported yet)."""
    notice = _NOTICE.get()
    if notice is not None and module not in sys.modules:
        notice(module, why)
    return importlib.import_module(module)


def _reason(exc: BaseException) -> str:
    """An exception as one line: an ImportError's own message, else its type and message."""
    text = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def import_attribute(spec: str, kind: str) -> Any:
    """The attribute named by import spec ``spec`` (:func:`check_import_spec`), its module
    imported; ``kind`` says which option named it (for the notice). A module that cannot
    be imported (missing, or its code raised) or an attribute it lacks raise
    :class:`PluginError`."""
    module_name, path = check_import_spec(spec)
    try:
        found = _import(module_name, f"named by {FLAGS.get(kind, kind)}")
    except (Exception, SystemExit) as exc:  # the module's own code may raise anything
        raise PluginError(f"module {module_name} is not importable ({_reason(exc)})") from None
    for i, part in enumerate(path.split(".")):
        try:
            found = getattr(found, part)  # what an import spec names, by its name
        except AttributeError:
            owner = ".".join([module_name, *path.split(".")[:i]])
            what = "module" if i == 0 else "attribute"
            raise PluginError(f"{what} {owner} has no attribute {part}") from None
    return found


def find_entry_points(group: str | None) -> dict[str, list[importlib.metadata.EntryPoint]]:
    """The installed distributions' entry points of ``group`` by name (none loaded); a
    name two distributions define maps to both (refused when used)."""
    if group is None:
        return {}
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for point in importlib.metadata.entry_points(group=group):
        if _ENTRY_POINT_NAME.fullmatch(point.name):
            found.setdefault(point.name, []).append(point)
    return found


def distribution(point: importlib.metadata.EntryPoint) -> str:
    """The name of the distribution that declares entry point ``point``."""
    return point.dist.name if point.dist is not None else "an unknown distribution"


def load_entry_point(found: list[importlib.metadata.EntryPoint], kind: str) -> Any:
    """The object of the entry point ``found`` (one name's entry points, which must be
    one); a failure to load raises :class:`PluginError` naming the distribution, the
    entry point and the reason."""
    point = found[0]
    if len(found) > 1:
        owners = ", ".join(sorted(distribution(p) for p in found))
        raise PluginError(f"{kind} {point.name!r} is an entry point of {len(found)} "
                          f"distributions ({owners}); valid: uninstall all but one, or name "
                          f"it by its import spec ({found[0].value})")
    where = (f"entry point {point.name} = {point.value} of distribution "
             f"{distribution(point)} (group {point.group})")
    try:
        refuse_standard_library(point.module, where)
        _import(point.module, f"entry point {point.name} of {distribution(point)}")
        return point.load()
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:  # the module's own code may raise anything
        raise PluginError(f"{where} cannot be loaded ({_reason(exc)})") from None


# --- what an attribute of each kind must be --------------------------------------------


def wrong_kind(kind: str, where: str, what: str) -> PluginError:
    """``WHERE is not a KIND (WHAT; valid: ...)``."""
    return PluginError(f"{where} is not {_ARTICLE.get(kind, 'a')} {kind} ({what}; valid: "
                       f"{VALID[kind]})")


def _a(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _signature(attribute: Any, kind: str, where: str) -> inspect.Signature:
    try:
        return inspect.signature(attribute)
    except (TypeError, ValueError):
        raise wrong_kind(kind, where, f"{_a(attribute)} whose signature cannot be "
                                      f"read") from None


def _takes_input_first(signature: inspect.Signature) -> bool:
    """Whether the first parameter is positional without a default: a function of the
    messages itself, not a factory of one."""
    first = next(iter(signature.parameters.values()), None)
    return (first is not None and first.default is inspect.Parameter.empty
            and first.kind in (inspect.Parameter.POSITIONAL_ONLY,
                               inspect.Parameter.POSITIONAL_OR_KEYWORD))


def _without_first(signature: inspect.Signature) -> inspect.Signature:
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _bind(signature: inspect.Signature, args: tuple[Any, ...], params: dict[str, Any],
          kind: str, where: str, call: str) -> None:
    """Refuse a call ``call`` that ``signature`` cannot take (a parameter missing)."""
    try:
        signature.bind(*args, **params)
    except TypeError as exc:
        raise wrong_kind(kind, where, f"it cannot be called as {call}: {exc}") from None


def _factory(build: Callable[..., Any], signature: inspect.Signature,
             source: Any) -> Callable[..., Any]:
    """A factory calling ``build``, whose signature (what a registry checks parameters
    against, and whether it takes ``f``) is ``signature``."""

    def factory(*args: Any, **params: Any) -> Any:
        return build(*args, **params)

    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__doc__ = inspect.getdoc(source)
    return factory


def declared_kind(value: Any) -> str | None:
    """The kind whose capabilities ``value`` declares (``capabilities`` an instance of
    :class:`~signvote.contracts.AggregatorCapabilities`, ``PreAggregatorCapabilities`` or
    ``AttackCapabilities``), or None where it declares none."""
    from signvote import contracts

    capabilities = getattr(value, "capabilities", None)  # the contracts' declared field
    for kind, declared in (("aggregator", contracts.AggregatorCapabilities),
                           ("pre-aggregator", contracts.PreAggregatorCapabilities),
                           ("attack", contracts.AttackCapabilities)):
        if isinstance(capabilities, declared):
            return kind
    return None


_PROTOCOL_MEMBERS = {
    "aggregator": ("capabilities", "f", "__call__", "init_state", "apply", "run",
                   "min_workers", "check"),
    "pre-aggregator": ("capabilities", "f", "__call__", "init_state", "apply", "output_rows"),
    "attack": ("capabilities", "__call__", "check"),
}


def _protocol(kind: str) -> type:
    from signvote import contracts

    return {"aggregator": contracts.Aggregator, "pre-aggregator": contracts.PreAggregator,
            "attack": contracts.Attack}[kind]


def checked(kind: str, value: Any, where: str, what: str = "it is") -> Any:
    """``value`` if it is a ``kind`` (``aggregator``, ``pre-aggregator``, ``attack``) by its
    declared capabilities and its protocol; a plain callable (no capabilities declared)
    is wrapped as the conservative aggregator or attack
    (:class:`~signvote.contracts.FunctionAggregator`, :class:`FunctionAttack`); anything
    else is :func:`wrong_kind` (``where`` names it, ``what`` begins the reason: ``it is``,
    ``it returned``). The one check of an object of these kinds, named by a spec or given
    to :func:`signvote.train`."""
    declared = declared_kind(value)
    if declared == kind:
        if not isinstance(value, _protocol(kind)):
            missing = [m for m in _PROTOCOL_MEMBERS[kind] if not hasattr(value, m)]
            raise wrong_kind(kind, where, f"{what} {_a(value)} that declares {kind} "
                                          f"capabilities but lacks {', '.join(missing)}")
        if kind == "attack" and value.capabilities.data_level and not callable(
                getattr(value, "poison_targets", None)):
            raise wrong_kind(kind, where, f"{what} {_a(value)} that declares data_level but "
                                          f"has no poison_targets")
        return value
    if declared is not None:
        raise wrong_kind(kind, where, f"{what} {'an' if declared[0] in 'ae' else 'a'} "
                                      f"{declared}")
    if kind in ("aggregator", "attack") and callable(value) and not inspect.isclass(value):
        return _as_function(kind, value)
    raise wrong_kind(kind, where, f"{what} {_a(value)}")


def _as_function(kind: str, function: Callable[..., Any]) -> Any:
    from signvote.contracts import FunctionAggregator

    return FunctionAggregator(function) if kind == "aggregator" else FunctionAttack(function)


def _component(kind: str, attribute: Any, where: str) -> Callable[..., Any]:
    """An aggregator's, pre-aggregator's or attack's factory (see the module's doc)."""
    if declared_kind(attribute) is not None and not inspect.isclass(attribute):
        used = checked(kind, attribute, where, "it is")  # an object: used as it is
        return _factory(lambda: used, inspect.Signature(), attribute)
    if not callable(attribute):
        raise wrong_kind(kind, where, _a(attribute))
    signature = _signature(attribute, kind, where)
    if (kind != "pre-aggregator" and not inspect.isclass(attribute)
            and _takes_input_first(signature)):  # the function of the messages itself
        rest = _without_first(signature)
        inputs = (None,) * (1 if kind == "aggregator" else 3)
        call = "f(messages, ...)" if kind == "aggregator" else "f(messages, mask, ctx, ...)"

        def bound(**params: Any) -> Any:
            _bind(signature, inputs, params, kind, where, call)
            function = functools.partial(attribute, **params) if params else attribute
            built = _as_function(kind, function)
            built.name = where
            return built

        return _factory(bound, rest, attribute)
    # a factory is called with the spec's parameters before what it builds is known: only
    # a class that declares capabilities (a class of a plugin) is. A function is never
    # called with a spec's parameters alone: any installed package's function whose
    # parameters all have defaults would be reachable from a sweep file someone sent
    if not inspect.isclass(attribute):
        raise wrong_kind(kind, where, "a function that takes no messages first, never "
                                      "called as a factory (a factory is a class that "
                                      "declares capabilities)")
    if declared_kind(attribute) is None:
        raise wrong_kind(kind, where, "a class that declares no capabilities, never "
                                      "instantiated")

    def build(**params: Any) -> Any:
        _bind(signature, (), params, kind, where, "a factory of the spec's parameters")
        return checked(kind, call_plugin(where, attribute, **params), where, "it returned")

    return _factory(build, signature, attribute)


def _rule(attribute: Any, where: str) -> Callable[..., Any]:
    """A worker rule's factory: called with ``momentum`` (and the spec's parameters), it
    must return a :class:`signvote.rules.WorkerRule`; its declared defaults carry over."""
    from signvote import rules

    if not callable(attribute):
        raise wrong_kind("rule", where, _a(attribute))
    signature = _signature(attribute, "rule", where)
    parameters = signature.parameters.values()
    if "momentum" not in signature.parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise wrong_kind("rule", where, "it takes no momentum parameter")

    def build(**params: Any) -> Any:
        _bind(signature, (), params, "rule", where, "f(momentum=..., ...)")
        rule = call_plugin(where, attribute, **params)
        if not isinstance(rule, rules.WorkerRule):
            raise wrong_kind("rule", where, f"it returned {_a(rule)}")
        return rule

    factory = _factory(build, signature, attribute)
    declared = rules.declared(attribute)
    if declared is not None:
        rules.declare(default_lr=declared[0], default_momentum=declared[1])(factory)
    return factory


def _model(attribute: Any, where: str) -> Callable[..., Any]:
    """A model's factory is the attribute itself: :func:`signvote.models.build` checks its
    signature and that it returns an ``nn.Module``, and reads what it declares
    (:func:`signvote.models.declare`) by its identity."""
    from torch import nn

    if isinstance(attribute, nn.Module):  # a built model, not what builds one per run
        raise wrong_kind("model", where, "a torch.nn.Module object, not a factory of one")
    if not callable(attribute):
        raise wrong_kind("model", where, _a(attribute))
    return attribute


def _dataset(attribute: Any, where: str) -> Callable[..., Any]:
    """A dataset's factory: ``(seed, data_dir, **params)``, what it returns checked by
    :func:`as_dataset`."""
    if not callable(attribute):
        raise wrong_kind("dataset", where, _a(attribute))
    signature = _signature(attribute, "dataset", where)

    def build(seed: int, data_dir: Path | None, **params: Any) -> Any:
        _bind(signature, (seed, data_dir), params, "dataset", where,
              "f(seed, data_dir, ...)")
        return call_plugin(where, attribute, seed, data_dir, **params)

    return _factory(build, signature, attribute)


_ADAPTERS: dict[str, Callable[[Any, str], Callable[..., Any]]] = {
    "aggregator": functools.partial(_component, "aggregator"),
    "pre-aggregator": functools.partial(_component, "pre-aggregator"),
    "attack": functools.partial(_component, "attack"),
    "rule": _rule,
    "model": _model,
    "dataset": _dataset,
}


def adapt(kind: str, attribute: Any, where: str) -> Callable[..., Any]:
    """The registry factory of a plugin's ``attribute`` of ``kind`` (named ``where`` in
    messages), following the kind's contract (see the module's doc): what the factory
    builds is checked to be of the kind when it is called. A registry of another kind
    takes the attribute as its factory."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        if not callable(attribute):
            raise PluginError(f"{where} is not callable ({_a(attribute)})")
        return attribute
    return adapter(attribute, where)


class FunctionAttack:
    """A plain function ``(messages, byzantine_mask, ctx) -> messages'`` as an attack, with
    the conservative capabilities (omniscient: it is given every row; message-level), as
    :class:`signvote.contracts.FunctionAggregator` is for aggregators."""

    def __init__(self, function: Callable[..., Tensor]) -> None:
        from signvote.contracts import AttackCapabilities

        self.function = function
        self.capabilities = AttackCapabilities()
        self.name = "attack"

    def __call__(self, messages: Tensor, byzantine_mask: Tensor,
                 ctx: AttackContext) -> Tensor:
        return self.function(messages, byzantine_mask, ctx)

    def check(self, workers: int, byzantine: int) -> None:
        return None

    def poison_targets(self, targets: Tensor, mask: Tensor, n_classes: int | None) -> Tensor:
        return targets


# --- datasets -----------------------------------------------------------------------------


def dataset_names() -> list[str]:
    """The entry points' dataset names (group ``signvote.datasets``), sorted."""
    return DATASETS.names()


def as_dataset(value: Any, name: str) -> Dataset:
    """What a plugin dataset returned, as a :class:`signvote.data.Dataset` named ``name``:
    a Dataset as it is (renamed; checked by :func:`signvote.data.tensors.check_dataset`),
    or ``(train_x, train_y, test_x, test_y)`` made into one by the rule tensors given to
    :func:`signvote.train` follow (:func:`signvote.data.tensors.from_tensors`: features
    as float32, integer labels a classification with ``max(y) + 1`` classes, floating-point
    targets a regression, every value finite). Anything else raises
    :class:`signvote.data.DatasetError`, one line naming the dataset and what is wrong."""
    import dataclasses

    from signvote.data import Dataset, DatasetError
    from signvote.data.tensors import check_dataset, from_tensors

    where = f"dataset {name}"
    if not isinstance(value, Dataset) and (not isinstance(value, tuple | list)
                                           or len(value) != 4):
        raise DatasetError(f"{where}: its function returned {_a(value)}; valid: a "
                           f"signvote.data.Dataset or four tensors (train_x, train_y, "
                           f"test_x, test_y)")
    try:
        if isinstance(value, Dataset):
            check_dataset(value)
            return dataclasses.replace(value, name=name)
        return from_tensors(*value, name=name)
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def dataset_spec(name: str) -> tuple[str, dict[str, Any]]:
    """A dataset spec's one stage ``(name, params)``, as a model's (``pkg.mod:make(n=100)``)."""
    stages = parse_spec(name, "dataset")
    if len(stages) != 1:
        raise PluginError(f"dataset {name!r}: one dataset, not {len(stages)} joined by '+'")
    return stages[0]


def dataset_factory(name: str, builtin: tuple[str, ...]) -> Callable[..., Any]:
    """The factory of plugin dataset ``name`` (an entry point or import spec, parameters
    checked); an unknown name lists ``builtin`` and the entry points' names. Raises
    :class:`PluginError` (a ValueError)."""
    stage, params = dataset_spec(name)
    if not is_import_spec(stage) and stage not in DATASETS.entry_points():
        raise PluginError(unknown_name("dataset", stage, [*builtin, *dataset_names()]))
    factory = DATASETS.factory(stage)
    from signvote.registry import check_params

    check_params(factory, params, f"dataset {stage!r}", given=("seed", "data_dir"))
    return functools.partial(factory, **params)


def load_dataset(name: str, seed: int, data_dir: Path | None,
                 builtin: tuple[str, ...]) -> Dataset:
    """The plugin dataset ``name`` (:func:`dataset_factory`) loaded with ``seed`` and
    ``data_dir`` and checked (:func:`as_dataset`); any failure is a
    :class:`signvote.data.DatasetError` of one line."""
    from signvote.data import DatasetError

    shown = name if name.isprintable() else repr(name)  # one line, whatever the name holds
    try:
        value = dataset_factory(name, builtin)(seed, data_dir)
    except DatasetError:
        raise
    except ValueError as exc:  # the spec, or what the function raised (call_plugin)
        raise DatasetError(f"--dataset {shown}: {exc}") from None
    return as_dataset(value, name)



def rescan() -> None:
    """Read the installed packages' entry points again in every registry on its next use
    (after a package was installed, or a test put one on ``sys.path``)."""
    from signvote import aggregators, attacks, models, rules

    for registry in (aggregators.REGISTRY, aggregators.PRE_REGISTRY, attacks.REGISTRY,
                     rules.REGISTRY, models.REGISTRY, DATASETS):
        registry.rescan()
