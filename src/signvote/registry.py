"""A small name -> factory registry shared by aggregators, attacks, rules and models.

A name resolves, in this order, to a factory registered here (the built-ins), to an
installed package's entry point in the registry's group (``signvote.aggregators``, ...),
or to an import spec ``package.module:attribute``; the last two are plugins
(:mod:`signvote.plugins`: what their attribute must be, and the one-line errors).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any, Generic, TypeVar

Declared = TypeVar("Declared")


class UnknownNameError(ValueError):
    """An unknown name was asked of a registry; the message lists the known ones."""


class Registry:
    """Maps kebab-case names to factories (classes); ``get`` builds one with parameters.

    Besides the registered names, a registry resolves the entry points of its ``group``
    (by default the kind's, :data:`signvote.plugins.GROUPS`: ``signvote.aggregators`` for
    ``Registry("aggregator")``), read lazily on the first :meth:`names` or :meth:`factory`
    and each loaded on its first use, and import specs ``package.module:attribute``."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}
        self._group = group
        self._entry_points: dict[str, list[EntryPoint]] | None = None
        self._plugins: dict[str, Callable[..., Any]] = {}

    @property
    def group(self) -> str | None:
        """The entry point group whose names this registry resolves (None: no group)."""
        if self._group is not None:
            return self._group
        from signvote.plugins import GROUPS

        return GROUPS.get(self.kind)

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Class decorator: register ``factory`` under ``name``."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            factory.name = name  # type: ignore[attr-defined]
            return factory

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (what a test that registered a rule of its own cleans up)."""
        self.factory(name)
        del self._factories[name]

    def entry_points(self) -> dict[str, list[EntryPoint]]:
        """The installed packages' entry points of :attr:`group` by name (read once, none
        loaded); a name registered here is the built-in's, the entry point is shadowed."""
        if self._entry_points is None:
            from signvote.plugins import find_entry_points

            self._entry_points = find_entry_points(self.group)
        return {k: v for k, v in self._entry_points.items() if k not in self._factories}

    def rescan(self) -> None:
        """Read the installed packages' entry points again on the next use (after a package
        was installed in this process, as a test does)."""
        self._entry_points = None
        self._plugins = {k: v for k, v in self._plugins.items() if ":" in k}

    def names(self) -> list[str]:
        """The registered names and the entry points' names, sorted."""
        return sorted([*self._factories, *self.entry_points()])

    def names_in_order(self) -> list[str]:
        """The registered names, in the order they were registered, then the entry
        points' names, sorted."""
        return [*self._factories, *sorted(self.entry_points())]

    def registered(self) -> list[str]:
        """The registered (built-in) names alone, in the order they were registered."""
        return list(self._factories)

    def is_plugin(self, name: str) -> bool:
        """Whether ``name`` is not a registered name: an entry point or an import spec."""
        return name not in self._factories

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory of ``name``: the one registered under it, else the entry point of
        that name (loaded and checked once), else the import spec ``package.module:
        attribute`` (imported and checked once). An unknown name lists the known ones; a
        plugin that cannot be loaded, or is not of this kind, raises
        :class:`signvote.plugins.PluginError` (a ValueError), one line saying why."""
        if name in self._factories:
            return self._factories[name]
        if name in self._plugins:
            return self._plugins[name]
        from signvote import plugins

        if plugins.is_import_spec(name):
            factory = plugins.adapt(self.kind, plugins.import_attribute(name, self.kind), name)
        else:
            found = self.entry_points().get(name)
            if found is None:
                raise UnknownNameError(unknown_name(self.kind, name, self.names()))
            attribute = plugins.load_entry_point(found, self.kind)
            factory = plugins.adapt(self.kind, attribute, f"{found[0].value} (entry point "
                                    f"{name} of {plugins.distribution(found[0])})")
        self._plugins[name] = factory
        return factory

    def get(self, name: str, **params: Any) -> Any:
        """Build the callable registered under ``name`` with keyword ``params``."""
        factory = self.factory(name)
        check_params(factory, params, f"{self.kind} {name!r}")
        return factory(**params)


class Declarations(Generic[Declared]):
    """What factories declare of themselves (``models.declare``, ``rules.declare``), by
    the factory's identity: a factory need not be hashable, and none is told by its name.
    The factory is kept beside its declaration, so its ``id`` cannot be reused by another
    object while the entry exists."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Callable[..., Any], Declared]] = {}

    def declare(self, factory: Callable[..., Any], declared: Declared) -> None:
        """Record ``declared`` for ``factory`` (replacing what it declared before)."""
        self._by_id[id(factory)] = (factory, declared)

    def get(self, factory: Callable[..., Any]) -> Declared | None:
        """What ``factory`` itself declared, or None."""
        entry = self._by_id.get(id(factory))
        return entry[1] if entry is not None and entry[0] is factory else None


def check_params(factory: Callable[..., Any], params: dict[str, Any], owner: str,
                 given: tuple[str, ...] = ()) -> None:
    """Refuse ``params`` that ``factory`` does not take (all are taken where it has
    ``**kwargs``), naming the valid ones; ``given``: parameters the caller passes itself,
    not listed as valid."""
    accepted = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(k for k, p in accepted.items() if k not in given
                          and p.kind is not inspect.Parameter.VAR_POSITIONAL) or "none"
        raise ValueError(f"{owner} takes no parameter {', '.join(unknown)}; valid: {valid}")


def unknown_name(kind: str, name: str, known: list[str]) -> str:
    """``unknown KIND 'NAME'``, the closest known name when one is close (any case), and
    the valid ones."""
    lowered = {k.lower(): k for k in known}
    close = ([lowered[name.lower()]] if name.lower() in lowered
             else difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6))
    hint = f", did you mean {close[0]}?" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid: {', '.join(known)}"


def parse_value(text: str) -> Any:
    """A spec parameter's value: ``true``/``false``, a whole number, a number, else text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_spec(spec: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Split ``"nnm+krum(f=2)"`` into ``[("nnm", {}), ("krum", {"f": 2})]``.

    A spec is one or more stages joined by ``+``; a stage is a name with optional
    ``(key=value, ...)``, the name a registered one, an entry point's, or an import spec
    ``package.module:attribute`` (dotted identifiers, one colon; never a file path:
    :func:`signvote.plugins.check_import_spec`). Malformed specs raise ValueError naming the
    bad part.
    """
    if not spec.strip():
        raise ValueError(f"{kind} {spec!r}: empty; expected NAME or NAME(key=value, ...), "
                         f"stages joined by '+'")
    stages = []
    for part in spec.split("+"):
        match = _STAGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{kind} {spec!r}: cannot read {part.strip()!r}; expected NAME or "
                             f"NAME(key=value, ...), stages joined by '+'")
        name, body = match.group(1), match.group(2)
        if ":" in name:
            from signvote.plugins import check_import_spec

            try:
                check_import_spec(name)
            except ValueError as exc:
                raise ValueError(f"{kind} {spec!r}: {exc}") from None
        elif _NAME.fullmatch(name) is None:
            raise ValueError(f"{kind} {spec!r}: cannot read {part.strip()!r}; expected NAME or "
                             f"NAME(key=value, ...), stages joined by '+'")
        params: dict[str, Any] = {}
        for item in (p.strip() for p in (body or "").split(",")):
            if not item and body is not None and body.strip():
                raise ValueError(f"{kind} {spec!r}: empty parameter in {part.strip()!r}; "
                                 f"expected key=value, ...")
            if not item:
                continue
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key.isidentifier() or not value.strip():
                raise ValueError(f"{kind} {spec!r}: cannot read parameter {item!r}; expected "
                                 f"key=value")
            if key in params:
                raise ValueError(f"{kind} {spec!r}: parameter {key!r} is given twice in "
                                 f"{part.strip()!r}; give it once")
            params[key] = parse_value(value)
        stages.append((name, params))
    return stages


_STAGE = re.compile(r"([^\s()]+)\s*(?:\(([^()]*)\))?")
"""A stage: a name and its bracketed parameters."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""A registered or entry point name (any case, so that a wrong one gets "did you mean" from
the registry)."""


def to_float(value: Any, what: str, owner: str) -> float:
    """``value`` as a float, or a ValueError naming ``owner``'s parameter ``what``."""
    message = f"{owner}: {what} must be a number, got {value!r}; valid: e.g. {what}=1.5"
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None


def to_int(value: Any, what: str, owner: str, minimum: int | None = None) -> int:
    """``value`` as a whole number (``>= minimum`` if given), or a ValueError naming
    ``owner``'s parameter ``what``."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or (minimum is not None and value < minimum)):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{owner}: {what} must be a whole number{bound}, got {value!r}")
    return value


def to_finite(value: Any, what: str, owner: str, minimum: float | None = None) -> float:
    """``value`` as a finite float (``>= minimum`` if given), or a ValueError naming
    ``owner``'s parameter ``what``."""
    number = to_float(value, what, owner)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(f"{owner}: {what} must be a finite number{bound}, got {value!r}")
    return number


def to_positive(value: Any, what: str, owner: str) -> float:
    """``value`` as a finite float > 0, or a ValueError naming ``owner``'s ``what``."""
    number = to_float(value, what, owner)
    if not 0 < number < float("inf"):
        raise ValueError(f"{owner}: {what} must be a finite number > 0, got {value!r}")
    return number
