"""Sweep files: a TOML file of training options in which any option may be a list.

    dataset = "logreg"
    rule = ["sgd", "signsgd", "signum"]
    byzantine = [0, 1, 2, 3, 4]
    seed = [1, 2, 3]
    epochs = 20

A list makes a grid: the runs are the product of all lists, in the order of the options
in :class:`signvote.experiment.config.TrainConfig` (the seed, last of them, varies
fastest). Every key is checked against the schema: an unknown key, a nested table or a
value of the wrong type is refused with its key path (``byzantine[2]``) and the expected
type. Overrides (``--set rule=signum``, ``--set 'byzantine=[0, 4]'``) replace a key with a
TOML value.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from signvote.experiment.config import (
    FIELDS,
    ConfigError,
    TrainConfig,
    coerce,
    read_toml,
    resolve,
)

NOT_IN_SWEEP = ("out", "overwrite")
"""Options a sweep sets itself (every run's folder lies in the sweep's folder, and the
sweep alone decides which of them to run again)."""


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """The raw key -> value (or list of values) table of a sweep file."""
    return read_toml(path, "sweep file")


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE in TOML (``lr=1e-3``, ``rule="sgd"``, ``seed=[1, 2]``); a
    bare word is read as a string (``rule=sgd``)."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set lr=1e-3")
    try:
        return key, tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value.strip()
    except RecursionError:
        raise ConfigError(f"--set {key}=...: the value is nested too deep to read; valid: a "
                          f"TOML value or list") from None


def check_table(table: Mapping[str, Any], where: str) -> dict[str, list[Any]]:
    """Every key's values as a list, each checked against its option's type."""
    grid: dict[str, list[Any]] = {}
    for key, value in table.items():
        if key not in FIELDS or key in NOT_IN_SWEEP:
            valid = ", ".join(k for k in FIELDS if k not in NOT_IN_SWEEP)
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        if isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r} is a table; expected a value or a list "
                              f"of values")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"{where}: key {key!r} is an empty list; expected at least "
                              f"one value")
        grid[key] = [coerce(key, v, f"{where}: key {key}[{i}]" if isinstance(value, list)
                            else f"{where}: key {key}")
                     for i, v in enumerate(values)]
    return grid


def expand(grid: Mapping[str, list[Any]]) -> list[TrainConfig]:
    """The runs of a grid: the product of its lists, options in :data:`FIELDS` order (the
    last option varying fastest); every run resolved (checked, defaults filled)."""
    keys = [k for k in FIELDS if k in grid]
    runs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        try:
            runs.append(resolve(TrainConfig(**point)))
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in point.items() if len(grid[k]) > 1)
            raise ConfigError(f"grid point {shown or '(the only one)'}: {exc}") from None
    return runs


def load_grid(path: str | Path, overrides: Iterable[str] = ()) -> list[TrainConfig]:
    """The runs of sweep file ``path`` after the ``KEY=VALUE`` overrides."""
    grid = check_table(read_sweep_file(path), str(path))
    for text in overrides:
        key, value = parse_override(text)
        grid.update(check_table({key: value}, f"--set {text!r}"))
    return expand(grid)
