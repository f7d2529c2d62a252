"""The training config: one typed field per option, its default, its help, its check.

The command line (``signvote train --weight-decay 1e-4``), a TOML file
(``weight_decay = 1e-4``) and Python (``TrainConfig(weight_decay=1e-4)``) all fill the same
:class:`TrainConfig`; :func:`resolve` fills the defaults that depend on other fields and
checks every value, raising :class:`ConfigError` with one line that names the bad value and
the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signvote import aggregators, attacks, models, rules
from signvote.data import DATASETS, REGRESSION
from signvote.data.partition import NEEDS_LABELS, PARTITIONS

ENGINES = ("sim", "dist")
LAYOUTS = ("server", "peer")


class ConfigError(ValueError):
    """A config value is invalid; the message names it and the valid values."""


def _opt(default: Any, help: str, choices: Any = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the defaults are the paper's logistic setting)."""

    dataset: str = _opt("logreg", "dataset", DATASETS)
    model: str | None = _opt(None, "model (default: the paper's model for the dataset)",
                             tuple(models.MODELS))
    workers: int = _opt(10, "number of workers n, adversaries included")
    rule: str = _opt("signum", "worker rule", rules.RULES)
    sign_bound: float | None = _opt(None, "bound B of --rule stochastic-sign (default: each "
                                    "worker's largest |gradient| of the step)")
    momentum: float | None = _opt(None, "momentum beta in [0, 1) (default: 0.9 for signum, "
                                  "0 for sgd; signsgd takes none)")
    weight_decay: float = _opt(0.0, "weight decay lambda: x <- x - lr * (v + lambda * x)")
    lr: float | None = _opt(None, "learning rate (default: 1e-3 for sgd, 1e-4 for sign rules)")
    lr_decay_step: int = _opt(30, "multiply the learning rate by --lr-decay-rate every this "
                              "many epochs")
    lr_decay_rate: float = _opt(0.1, "learning-rate decay factor, in (0, 1]")
    epochs: int = _opt(80, "training epochs")
    batch_size: int | None = _opt(None, "batch size per worker (default: 128 // workers)")
    aggregator: str | None = _opt(None, "server rule (default: majority-vote for sign rules, "
                                  "mean for sgd); pre-aggregators ("
                                  + ", ".join(aggregators.pre_names()) + ") go in front "
                                  "with '+' and parameters in brackets, e.g. nnm+krum, "
                                  "centered-clipping(tau=5)", "aggregators")
    aggregator_f: int | None = _opt(None, "faults f the aggregator is built to tolerate "
                                    "(default: --byzantine + --blind)")
    attack: str = _opt("vote-cancel", "what the --byzantine workers do; parameters in "
                       "brackets, e.g. alie(z=1.5)", "attacks")
    byzantine: int = _opt(0, "number of Byzantine workers running --attack (the seed's -b)")
    blind: int = _opt(0, "number of blind workers inverting their messages (the seed's -i)")
    partition: str = _opt("iid", "how the training set is cut among workers", PARTITIONS)
    partition_alpha: float = _opt(0.5, "Dirichlet concentration of --partition dirichlet "
                                  "(smaller: more label skew)")
    partition_shards: int = _opt(2, "label-sorted shards per worker of --partition shards")
    partition_gamma: float = _opt(0.5, "iid fraction of --partition gamma (1: iid, 0: sorted "
                                  "by label)")
    data_dir: str | None = _opt(None, "folder with the dataset's files (IDX datasets; default: "
                                "the standard places, see --help of signvote download)")
    seed: int = _opt(8005, "seed of data, model, partition, adversaries and noise")
    engine: str = _opt("sim", "engine: sim (all workers in one process) or dist (one process "
                       "per worker under torch.distributed, gloo; started here, or by "
                       "torchrun on several machines)", ENGINES)
    layout: str = _opt("server", "--engine dist: server (rank 0 a trusted server that "
                       "aggregates, n + 1 processes) or peer (every worker aggregates, n "
                       "processes)", LAYOUTS)
    checkpoint_every: int | None = _opt(None, "--engine dist: write OUT/checkpoint.pt every "
                                        "this many steps (default: every epoch; 0: never)")
    max_restarts: int = _opt(0, "--engine dist: restart the processes this many times after "
                             "a failure, resuming from the last checkpoint")
    dist_timeout: float = _opt(300.0, "--engine dist: seconds a rank waits for another before "
                               "the run fails")
    measure_theory: bool = _opt(False, "measure the theory's quantities every step (the "
                                "simulator; costs a full-batch gradient a step): the "
                                "empirical p, the fraction of wrong vote coordinates, "
                                "quantiles of the signal-to-noise ratio and the vote's "
                                "predicted failure, in metrics.csv")
    tensorboard: bool = _opt(False, "also log every epoch's metrics for TensorBoard in "
                             "OUT/tensorboard (needs pip install 'signvote[tensorboard]')")
    out: str | None = _opt(None, "run folder (default: runs/DATASET_RULE_byzB_blindI_seedS)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SPEC_FIELDS = ("aggregator", "attack")
"""Fields whose value is a spec (``nnm+krum``, ``alie(z=1.5)``), checked by building it."""


def choices_of(name: str) -> tuple[str, ...] | None:
    """The valid values of field ``name``, or None if it is not a choice."""
    choices = FIELDS[name].metadata["choices"]
    if choices == "aggregators":
        return tuple(aggregators.names())
    if choices == "attacks":
        return tuple(attacks.names())
    return choices


def base_type(name: str) -> type:
    """The field's type without ``None``: bool, int, float or str."""
    annotation = str(FIELDS[name].type)
    for t in (bool, int, float, str):
        if annotation.startswith(t.__name__):
            return t
    raise TypeError(annotation)


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` checked against field ``name``'s type (ints accepted for floats)."""
    t = base_type(name)
    ok = (
        (t is bool and isinstance(value, bool))
        or (t is int and isinstance(value, int) and not isinstance(value, bool))
        or (t is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (t is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(
            f"{where}: expected "
            f"{ {int: 'a whole number', bool: 'true or false'}.get(t, t.__name__)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    return float(value) if t is float else value


def load_toml(path: str | Path) -> dict[str, Any]:
    """The fields set by a TOML config file (the option names with underscores)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    values = {}
    for key, value in raw.items():
        if key not in FIELDS:
            valid = ", ".join(FIELDS)
            raise ConfigError(f"{path}: unknown key {key!r}; valid keys: {valid}")
        values[key] = coerce(key, value, f"{path}: key {key!r}")
    return values


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def resolve(config: TrainConfig) -> TrainConfig:
    """``config`` with every default filled in, after checking every value."""
    c = config
    for name in FIELDS:
        value = getattr(c, name)
        if value is not None:
            coerce(name, value, f"--{name.replace('_', '-')}")
        choices = choices_of(name)
        if (choices is not None and value is not None and value not in choices
                and name not in SPEC_FIELDS):
            raise ConfigError(
                f"--{name.replace('_', '-')}: unknown value {value!r}; valid: {', '.join(choices)}"
            )
    _need(c.workers >= 1, f"--workers must be at least 1, got {c.workers}")
    for name in ("byzantine", "blind"):
        count = getattr(c, name)
        _need(count >= 0, f"--{name} must be 0 or more, got {count}")
    _need(
        c.byzantine + c.blind <= c.workers,
        f"--byzantine {c.byzantine} + --blind {c.blind} = {c.byzantine + c.blind} adversaries "
        f"exceed --workers {c.workers}; valid: byzantine + blind <= workers",
    )
    _need(c.byzantine < c.workers,
          f"--byzantine {c.byzantine}: at least one of the {c.workers} workers must not be "
          f"Byzantine; valid: 0 <= byzantine < workers")
    momentum = rules.DEFAULT_MOMENTUM[c.rule] if c.momentum is None else c.momentum
    _need(math.isfinite(momentum) and 0.0 <= momentum < 1.0,
          f"--momentum must be in [0, 1), got {momentum}")
    lr = rules.DEFAULT_LR[c.rule] if c.lr is None else c.lr
    _need(math.isfinite(lr) and lr >= 0.0, f"--lr must be a finite number >= 0, got {lr}")
    _need(math.isfinite(c.weight_decay) and c.weight_decay >= 0.0,
          f"--weight-decay must be a finite number >= 0, got {c.weight_decay}")
    _need(c.lr_decay_step >= 1, f"--lr-decay-step must be at least 1, got {c.lr_decay_step}")
    _need(math.isfinite(c.lr_decay_rate) and 0.0 < c.lr_decay_rate <= 1.0,
          f"--lr-decay-rate must be in (0, 1], got {c.lr_decay_rate}")
    _need(c.epochs >= 1, f"--epochs must be at least 1, got {c.epochs}")
    _need(c.checkpoint_every is None or c.checkpoint_every >= 0,
          f"--checkpoint-every must be 0 or more, got {c.checkpoint_every}")
    _need(c.max_restarts >= 0, f"--max-restarts must be 0 or more, got {c.max_restarts}")
    _need(math.isfinite(c.dist_timeout) and c.dist_timeout > 0,
          f"--dist-timeout must be a finite number of seconds > 0, got {c.dist_timeout}")
    _need(math.isfinite(c.partition_alpha) and c.partition_alpha > 0,
          f"--partition-alpha must be a finite number > 0, got {c.partition_alpha}")
    _need(c.partition_shards >= 1,
          f"--partition-shards must be at least 1, got {c.partition_shards}")
    _need(0.0 <= c.partition_gamma <= 1.0,
          f"--partition-gamma must be in [0, 1], got {c.partition_gamma}")
    _need(c.partition not in NEEDS_LABELS or c.dataset not in REGRESSION,
          f"--partition {c.partition} needs class labels; --dataset {c.dataset} is a "
          f"regression; valid: --partition iid")
    batch_size = max(1, 128 // c.workers) if c.batch_size is None else c.batch_size
    _need(batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}")
    model = models.DEFAULT_MODEL[c.dataset] if c.model is None else c.model
    _need(c.dataset in models.MODELS[model],
          f"--model {model} does not fit --dataset {c.dataset}; valid: "
          + ", ".join(m for m, ds in models.MODELS.items() if c.dataset in ds))
    _need(c.sign_bound is None or (math.isfinite(c.sign_bound) and c.sign_bound > 0),
          f"--sign-bound must be a finite number > 0, got {c.sign_bound}")
    _need(c.sign_bound is None or c.rule == "stochastic-sign",
          f"--sign-bound is the bound of --rule stochastic-sign, not of --rule {c.rule}")
    try:
        sign = rules.get(c.rule, momentum, c.sign_bound).sends_signs
    except ValueError as exc:  # the rule's own check, e.g. signsgd with momentum
        raise ConfigError(f"--momentum {momentum}: {exc}") from None
    aggregator = c.aggregator or ("majority-vote" if sign else "mean")
    aggregator_f = c.byzantine + c.blind if c.aggregator_f is None else c.aggregator_f
    _need(aggregator_f >= 0, f"--aggregator-f must be 0 or more, got {aggregator_f}")
    try:
        aggregators.check(aggregators.build(aggregator, aggregator_f), c.workers)
    except ValueError as exc:
        raise ConfigError(f"--aggregator {aggregator}: {exc}") from None
    try:
        attack = attacks.build(c.attack)
        if c.byzantine and hasattr(attack, "check"):
            attack.check(c.workers, c.byzantine)
    except ValueError as exc:
        raise ConfigError(f"--attack {c.attack}: {exc}") from None
    _need(not c.measure_theory or c.engine == "sim",
          "--measure-theory is measured by the simulator; valid: --engine sim")
    _need(not c.tensorboard or importlib.util.find_spec("tensorboard") is not None,
          "--tensorboard needs the tensorboard package, which is not installed; valid: "
          "pip install 'signvote[tensorboard]', or leave --tensorboard out")
    out = c.out or f"runs/{c.dataset}_{c.rule}_byz{c.byzantine}_blind{c.blind}_seed{c.seed}"
    return dataclasses.replace(
        c, model=model, momentum=momentum, lr=lr, batch_size=batch_size,
        aggregator=aggregator, aggregator_f=aggregator_f, out=out,
    )
