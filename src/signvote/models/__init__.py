"""Models by name: a registry of factories ``(input_shape, n_classes, **params) -> nn.Module``.

Use a spec, as for aggregators::

    >>> from signvote import models
    >>> net = models.build("resnet20(norm=group, groups=4)", (3, 32, 32), 10)
    >>> models.info("resnet20").independent_samples
    True

A spec is one name with optional ``(key=value, ...)`` (``registry.parse_spec``); the
parameters go to the factory after the two that the data gives (``input_shape``: one
sample's shape, ``n_classes``). The built-in models are the paper's five
(:mod:`signvote.models.paper`), the benchmarks' ``karimireddy-cnn`` and ``byzfl-cnn``
(:mod:`signvote.models.benchmarks`) and the ResNets (:mod:`signvote.models.resnet`: ``resnet20``,
``resnet18``, ``resnet18-imagenet``, ``resnet50-imagenet``, each with ``norm=batch|group|
none``).

Each model declares what it can do in a :class:`ModelInfo`, given when it is registered
(:func:`register`) or declared on a factory that is not (:func:`declare`); a factory that
declares nothing gets ``ModelInfo()``, the conservative defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from signvote.models import benchmarks, paper, resnet
from signvote.registry import Declarations, Registry, check_params, parse_spec

REGISTRY = Registry("model")

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What a model declares (the defaults are the conservative ones).

    Attributes:
        fits: the built-in datasets it is meant for (the task: ``linregnet`` outputs one
            real number, ``logregnet`` class scores); None: any dataset whose samples it
            accepts. A dataset that is not built in is judged by its sample shape alone.
        independent_samples: its forward treats every sample on its own except inside
            normalisation layers (BatchNorm), i.e. ``f(x)[i]`` depends on ``x[i]`` only, so
            the simulator may fold the workers' batches into one big batch.
        min_side: None, or it takes images ``[channels, height, width]`` with
            ``min(height, width) >= min_side`` only.
    """

    fits: tuple[str, ...] | None = None
    independent_samples: bool = False
    min_side: int | None = None


_DECLARED: Declarations[ModelInfo] = Declarations()
"""Each factory's declared info (:func:`declare`)."""


def declare(*, fits: tuple[str, ...] | None = None, independent_samples: bool = False,
            min_side: int | None = None) -> Callable[[Factory], Factory]:
    """Decorator: declare a factory's :class:`ModelInfo` (for a model used by import spec,
    which is not registered by name)."""

    def decorate(factory: Factory) -> Factory:
        _DECLARED.declare(factory, ModelInfo(fits, independent_samples, min_side))
        return factory

    return decorate


def register(name: str, *, fits: tuple[str, ...] | None = None,
             independent_samples: bool = False,
             min_side: int | None = None) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory`` as model ``name`` with its declared capabilities."""

    def decorate(factory: Factory) -> Factory:
        REGISTRY.register(name)(factory)
        return declare(fits=fits, independent_samples=independent_samples,
                       min_side=min_side)(factory)

    return decorate


def names() -> list[str]:
    """The names of all registered models."""
    return REGISTRY.names()


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """``"resnet20(norm=group)"`` -> ``("resnet20", {"norm": "group"})``: one stage of
    ``registry.parse_spec`` (a model is not a chain)."""
    stages = parse_spec(spec, "model")
    if len(stages) != 1:
        raise ValueError(f"model {spec!r}: one model, not {len(stages)} joined by '+'; "
                         f"expected NAME or NAME(key=value, ...)")
    return stages[0]


def info(model: str | Callable[..., nn.Module]) -> ModelInfo:
    """The declared :class:`ModelInfo` of a spec's model (its name and parameter names
    checked) or of a factory; ``ModelInfo()`` for a factory that declares none."""
    if isinstance(model, str):
        name, params = parse(model)
        factory = REGISTRY.factory(name)
        _check_params(name, factory, params)
    else:
        factory = model
    declared = _DECLARED.get(factory)
    return ModelInfo() if declared is None else declared


def fits(spec: str, dataset: str) -> bool:
    """Whether the model of ``spec`` is meant for ``dataset`` (its ``fits`` holds it, or
    it declares None). Raises ValueError for an unknown model or parameter."""
    declared = info(spec).fits
    return declared is None or dataset in declared


def build(spec: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The model of ``spec`` for samples of ``input_shape`` and ``n_classes`` outputs,
    initialised from torch's global generator. An unknown name or parameter, a sample
    shape it does not take (see ``ModelInfo.min_side``), or a parameter value its factory
    refuses raise ValueError with one line naming it and the valid ones."""
    name, params = parse(spec)
    factory = REGISTRY.factory(name)
    _check_params(name, factory, params)
    _check_shape(info(factory).min_side, input_shape)
    if REGISTRY.is_plugin(name):  # a plugin's own code: what it raises is one line
        from signvote.plugins import call_plugin

        module = call_plugin(f"model {name}", factory, tuple(input_shape), n_classes, **params)
    else:
        module = factory(tuple(input_shape), n_classes, **params)
    if not isinstance(module, nn.Module):
        raise ValueError(f"model {name!r}: its factory returned a {type(module).__name__}, "
                         f"expected a torch.nn.Module")
    return module


def _check_params(name: str, factory: Callable[..., Any], params: dict[str, Any]) -> None:
    """Refuse spec parameters that ``factory`` does not take, or that the data sets (its
    first two parameters)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): the call decides
        return
    kinds = inspect.Parameter
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in (kinds.POSITIONAL_ONLY,
                                                       kinds.POSITIONAL_OR_KEYWORD)]
    takes_rest = any(p.kind is kinds.VAR_POSITIONAL for p in parameters)
    if len(positional) < 2 and not takes_rest:
        raise ValueError(f"model {name!r}: a model factory takes (input_shape, n_classes, "
                         f"**params), this one takes ({', '.join(map(str, parameters))})")
    from_data = [p.name for p in positional[:2]]
    given = sorted(set(params) & set(from_data))
    if given:
        raise ValueError(f"model {name!r}: {', '.join(given)} is set by the data, not by "
                         f"the spec")
    check_params(factory, params, f"model {name!r}", given=tuple(from_data))


def _check_shape(min_side: int | None, input_shape: tuple[int, ...]) -> None:
    """Refuse samples that are not images ``[c, h, w]`` with ``min(h, w) >= min_side``."""
    if min_side is None:
        return
    if len(input_shape) != 3:
        raise ValueError(f"needs images [channels, height, width], got samples of shape "
                         f"{tuple(input_shape)}")
    if min(input_shape[1:]) < min_side:
        raise ValueError(f"needs images of at least {min_side}x{min_side} pixels, got "
                         f"{input_shape[1]}x{input_shape[2]}")


class _Table(Mapping[str, Any]):
    """A read-only view of one field of the registered models' :class:`ModelInfo`, read
    from the registry at each access (a model registered later counts). Only registered
    names: reading it never imports an entry point's module."""

    def __init__(self, read: Callable[[ModelInfo], Any], keep: Callable[[Any], bool]) -> None:
        self._read = read
        self._keep = keep

    def _value(self, name: str) -> Any:
        return self._read(info(REGISTRY.factory(name)))

    def __getitem__(self, name: str) -> Any:
        if name not in REGISTRY.registered() or not self._keep(self._value(name)):
            raise KeyError(name)
        return self._value(name)

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in sorted(REGISTRY.registered()) if self._keep(self._value(n))])

    def __len__(self) -> int:
        return len(list(iter(self)))


IMAGE_DATASETS = ("mnist", "fashion-mnist", "digits", "idx", "cifar10", "cifar100", "folder")
"""The built-in image datasets (``[channels, height, width]`` samples)."""

# The built-in models and what they declare: every one computes each sample on its own
# (ReLU, Dropout with a mask per sample, pooling; BatchNorm is the normalisation exception).
for _name, _factory, _fits, _min_side in (
    ("linregnet", paper.linregnet, ("linreg",), None),
    ("logregnet", paper.logregnet, ("logreg",), None),
    ("torchnet", paper.torchnet, IMAGE_DATASETS, 6),
    ("mnistnet", paper.mnistnet, ("mnist", "fashion-mnist", "idx"), 20),
    ("smallcnn", paper.smallcnn, IMAGE_DATASETS, 4),
    ("karimireddy-cnn", benchmarks.karimireddy_cnn, IMAGE_DATASETS, 6),
    ("byzfl-cnn", benchmarks.byzfl_cnn, IMAGE_DATASETS, 16),
    ("resnet20", resnet.resnet20, IMAGE_DATASETS, 1),
    ("resnet18", resnet.resnet18, IMAGE_DATASETS, 1),
    ("resnet18-imagenet", resnet.resnet18_imagenet, IMAGE_DATASETS, 1),
    ("resnet50-imagenet", resnet.resnet50_imagenet, IMAGE_DATASETS, 1),
):
    register(_name, fits=_fits, independent_samples=True, min_side=_min_side)(_factory)
del _name, _factory, _fits, _min_side

MODELS: Mapping[str, tuple[str, ...] | None] = _Table(lambda i: i.fits, lambda v: True)
"""Model name -> the built-in datasets it fits (None: any), a live view of ``info``."""

MIN_IMAGE_SIZE: Mapping[str, int] = _Table(lambda i: i.min_side, lambda v: v is not None)
"""Model name -> the smallest image side it takes, for the models that need images (a
live view of ``info(name).min_side``)."""

DEFAULT_MODEL = {"linreg": "linregnet", "logreg": "logregnet", "mnist": "mnistnet",
                 "fashion-mnist": "smallcnn", "digits": "smallcnn", "idx": "smallcnn",
                 "cifar10": "resnet20", "cifar100": "resnet20", "folder": "resnet20"}
"""Dataset -> the model trained on it by default (the paper's, He et al.'s ResNet-20 for
the 32x32 colour images)."""
