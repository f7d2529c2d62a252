"""A small name -> factory registry shared by aggregators and attacks."""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable
from typing import Any


class UnknownNameError(ValueError):
    """An unknown name was asked of a registry; the message lists the known ones."""


class Registry:
    """Maps kebab-case names to factories (classes); ``get`` builds one with parameters."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

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

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def names_in_order(self) -> list[str]:
        """The registered names, in the order they were registered."""
        return list(self._factories)

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; unknown names list the known ones."""
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(unknown_name(self.kind, name, self.names())) from None

    def get(self, name: str, **params: Any) -> Any:
        """Build the callable registered under ``name`` with keyword ``params``."""
        factory = self.factory(name)
        accepted = inspect.signature(factory).parameters
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise ValueError(
                f"{self.kind} {name!r} takes no parameter {', '.join(unknown)}; valid: {valid}"
            )
        return factory(**params)


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
    ``(key=value, ...)``. Malformed specs raise ValueError naming the bad part.
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


_STAGE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)\s*(?:\(([^()]*)\))?")
"""A stage: a name (any case, so that a wrong one gets "did you mean" from the registry)
and its bracketed parameters."""


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
