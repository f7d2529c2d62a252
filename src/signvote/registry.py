"""A small name -> factory registry shared by aggregators and attacks."""

from __future__ import annotations

import inspect
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

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; unknown names list the known ones."""
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

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
