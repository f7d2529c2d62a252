"""The training config: one typed field per option, its default, its help, its check.

The command line (``signvote train --weight-decay 1e-4``), a TOML file
(``weight_decay = 1e-4``) and Python (``TrainConfig(weight_decay=1e-4)``) all fill the same
:class:`TrainConfig`; :func:`resolve` fills the defaults that depend on other fields and
checks every value, raising :class:`ConfigError` with one line that names the bad value and
the valid ones.

Every field is declared with its section, which says whether it is part of a run's
identity (:func:`trajectory_key`), with its valid values (``choices``) or its ``check``, and,
when its default depends on other fields, with the ``derive`` function that computes it:

- ``trajectory``: what decides the parameters' path and the numbers of the run folder;
- ``recorded``: what else the run measures into ``metrics.csv`` (``measure_theory``);
- ``recovery``: how the distributed engine communicates and survives failures
  (``backend``, ``max_restarts``, ``dist_timeout``, ``checkpoint_every``), which a resumed
  run may change;
- ``output``: where the run reads and writes and what extra copies it logs (``out``,
  ``data_dir``, ``tensorboard``).

The first two make the identity: two configs with the same :func:`trajectory_key` are the
same run (a sweep's run id and done test, the distributed engine's checkpoint resume).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from signvote import aggregators, attacks, election, models, plugins, rules
from signvote.data import AUGMENTED, DATASETS, REGRESSION, TABULAR
from signvote.data.folder import DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE
from signvote.data.partition import IMBALANCES, NEEDS_LABELS, PARTITIONS
from signvote.registry import unknown_name

SEED_MAX = 2**32 - 1
"""The largest seed: every stream's seed (``seed + 4 + 1000 i`` for worker i, ``seed +
1000 r`` for rank r) stays far inside torch's 64-bit range, and a seed is never two."""
MAX_THREADS = 1024
"""The most ``--threads`` (torch's thread pool crashes the process far above the cores)."""
MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""The longest ``--dist-timeout``: a week (a ``timedelta`` overflows at about 1e14 s)."""
DEFAULT_EPOCHS = 80
"""``--epochs`` when neither it nor ``--steps`` is given (the paper's logistic setting)."""
ENGINES = ("sim", "dist")
LAYOUTS = ("server", "peer")
BACKENDS = ("auto", "gloo", "nccl")
"""``--backend``: ``auto`` is nccl where every rank has a GPU of its own, else gloo
(:func:`signvote.engine.dist.choose_backend`)."""

TRAJECTORY = "trajectory"
RECORDED = "recorded"
RECOVERY = "recovery"
OUTPUT = "output"
SECTIONS = (TRAJECTORY, RECORDED, RECOVERY, OUTPUT)
KEY_SECTIONS = (TRAJECTORY, RECORDED)
"""The sections of a run's identity: a field of the others may change and the run is the
same run."""


class ConfigError(ValueError):
    """A config value is invalid; the message names it and the valid values."""


@dataclass(frozen=True)
class Check:
    """A field's own check: ``ok(value)``, else ``--OPTION {must}, got VALUE``."""

    ok: Callable[[Any], bool]
    must: str

    def message(self, name: str, value: Any) -> str:
        return f"{flag(name)} {self.must}, got {value}"


def at_least(low: int) -> Check:
    """A whole number >= ``low``."""
    return Check(lambda v: v >= low, "must be 0 or more" if low == 0 else
                 f"must be at least {low}")


def finite(op: str, bound: float, what: str = "number") -> Check:
    """A finite number ``> bound`` or ``>= bound`` (``op``)."""
    test = {">": lambda v: v > bound, ">=": lambda v: v >= bound}[op]
    return Check(lambda v: math.isfinite(v) and test(v), f"must be a finite {what} {op} {bound}")


def within(interval: str) -> Check:
    """A finite number in ``interval``, written as in the message: ``[0, 1)``."""
    low, high = (float(t) for t in interval[1:-1].split(","))
    closed_low, closed_high = interval[0] == "[", interval[-1] == "]"
    return Check(lambda v: (math.isfinite(v) and (low <= v if closed_low else low < v)
                            and (v <= high if closed_high else v < high)),
                 f"must be in {interval}")


def _opt(default: Any, help: str, choices: Any = None, *, section: str = TRAJECTORY,
         check: Check | None = None,
         derive: Callable[[TrainConfig], Any] | None = None) -> Any:
    """A field: ``derive(config)`` computes the default of a field whose default is None
    (``config`` has the fields declared before it filled); ``check`` and ``choices`` are
    applied to a value that is set."""
    assert section in SECTIONS, section
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "section": section, "check": check,
                                            "derive": derive})


PLUGIN_HELP = ("; or an installed package's entry point, or an import spec package.module:"
               "attribute, which imports that module (a dotted name on sys.path, never a "
               "file path)")
"""What the help of every option that takes a name says of plugins (:mod:`signvote.plugins`)."""


def _datasets() -> tuple[str, ...]:
    """The built-in datasets, then the entry points' (``signvote.datasets``)."""
    return (*DATASETS, *plugins.dataset_names())


def _default_model(c: TrainConfig) -> str | None:
    """The dataset's default model; None for a plugin dataset, which has none (refused by
    :func:`resolve`: it needs ``--model``)."""
    return models.DEFAULT_MODEL.get(c.dataset)


def _aggregator(c: TrainConfig) -> str:
    return ("majority-vote" if rules.get(c.rule, c.momentum, c.sign_bound).sends_signs
            else "mean")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the defaults are the paper's logistic setting)."""

    dataset: str = _opt("logreg", "dataset" + PLUGIN_HELP + ", with parameters: "
                        "pkg.mod:make(n=100)", _datasets)
    model: str | None = _opt(None, "model (default: the paper's model for the dataset, "
                             "resnet20 for cifar10, cifar100, folder); the ResNets take "
                             "norm=batch|group|none, e.g. resnet20(norm=group)"
                             + PLUGIN_HELP, models.names, derive=_default_model)
    workers: int = _opt(10, "number of workers n, adversaries included", check=at_least(1))
    rule: str = _opt("signum", "worker rule" + PLUGIN_HELP, rules.names)
    sign_bound: float | None = _opt(None, "bound B of --rule stochastic-sign (default: each "
                                    "worker's largest |gradient| of the step)",
                                    check=finite(">", 0))
    momentum: float | None = _opt(None, "momentum beta in [0, 1) (default: 0.9 for signum, "
                                  "0 for sgd; signsgd takes none)", check=within("[0, 1)"),
                                  derive=lambda c: rules.DEFAULT_MOMENTUM[c.rule])
    weight_decay: float = _opt(0.0, "weight decay lambda: x <- x - lr * (v + lambda * x)",
                               check=finite(">=", 0))
    lr: float | None = _opt(None, "learning rate (default: 1e-3 for sgd, 1e-4 for sign rules)",
                            check=finite(">=", 0), derive=lambda c: rules.DEFAULT_LR[c.rule])
    lr_decay_step: int = _opt(30, "multiply the learning rate by --lr-decay-rate every this "
                              "many epochs", check=at_least(1))
    lr_decay_rate: float = _opt(0.1, "learning-rate decay factor, in (0, 1]",
                                check=within("(0, 1]"))
    epochs: int | None = _opt(None, f"training epochs (default: {DEFAULT_EPOCHS}; with "
                              "--steps, none: the steps run into as many epochs as they "
                              "need, and giving both is refused)", check=at_least(1),
                              derive=lambda c: DEFAULT_EPOCHS if c.steps is None else None)
    steps: int | None = _opt(None, "train exactly this many steps instead of --epochs "
                             "epochs: the data order is the epochs', running into further "
                             "epochs as needed; the learning rate still decays by the "
                             "epoch a step falls in (step // steps per epoch)",
                             check=at_least(1))
    eval_every: int | None = _opt(None, "evaluate on the full test set every this many "
                                  "steps and after the last one; metrics.csv has one row "
                                  "per evaluation (default: after every epoch, and after "
                                  "the last step of --steps)", check=at_least(1),
                                  section=RECORDED)
    batch_size: int | None = _opt(None, "batch size per worker (default: 128 // workers)",
                                  check=at_least(1), derive=lambda c: max(1, 128 // c.workers))
    aggregator: str | None = _opt(None, "server rule (default: majority-vote for sign rules, "
                                  "mean for sgd); pre-aggregators ("
                                  + ", ".join(aggregators.pre_names()) + ") go in front "
                                  "with '+' and parameters in brackets, e.g. nnm+krum, "
                                  "centered-clipping(tau=5)" + PLUGIN_HELP + " (any "
                                  "stage)", aggregators.names, derive=_aggregator)
    aggregator_f: int | None = _opt(None, "faults f the aggregator is built to tolerate "
                                    "(default: --byzantine + --blind)", check=at_least(0),
                                    derive=lambda c: c.byzantine + c.blind)
    attack: str = _opt("vote-cancel", "what the --byzantine workers do; parameters in "
                       "brackets, e.g. alie(z=1.5)" + PLUGIN_HELP, attacks.names)
    byzantine: int = _opt(0, "number of Byzantine workers running --attack (the seed's -b)",
                          check=at_least(0))
    blind: int = _opt(0, "number of blind workers inverting their messages (the seed's -i)",
                      check=at_least(0))
    election_code: str = _opt("none", "Election Coding (Sohn et al., NeurIPS 2020): each worker "
                              "sends the majority of the signs of the partitions (the n "
                              "workers' batches) an allocation matrix assigns it; none (the "
                              "plain vote), deterministic (tolerates --election-tolerance "
                              "Byzantines; odd --workers) or bernoulli (each partition "
                              "assigned with probability --election-redundancy / workers); "
                              "signsgd or signum, --engine sim", election.CODES)
    election_redundancy: float | None = _opt(None, "--election-code bernoulli: its expected "
                                             "redundancy r = workers * q, the partition "
                                             "gradients a worker computes per step, in (0, "
                                             "workers]", check=finite(">", 0))
    election_tolerance: int | None = _opt(None, "--election-code deterministic: the Byzantines "
                                          "b it is built for, 2b + 1 <= workers (default: "
                                          "--byzantine)", check=at_least(0),
                                          derive=lambda c: (c.byzantine if c.election_code
                                                            == "deterministic" else None))
    partition: str = _opt("iid", "how the training set is cut among workers", PARTITIONS)
    partition_alpha: float = _opt(0.5, "Dirichlet concentration of --partition dirichlet "
                                  "(smaller: more label skew)", check=finite(">", 0))
    partition_shards: int = _opt(2, "label-sorted shards per worker of --partition shards",
                                 check=at_least(1))
    partition_gamma: float = _opt(0.5, "iid fraction of --partition gamma and gamma-byzfl "
                                  "(1: iid, 0: sorted by label)", check=within("[0, 1]"))
    imbalance: str = _opt("none", "thinning of the training set before the partition: "
                          "long-tail keeps the first floor(n_c * ratio^c) samples of class c "
                          "(Karimireddy et al. 2022, experiment 1)", IMBALANCES)
    imbalance_ratio: float = _opt(0.5, "the ratio of --imbalance long-tail",
                                  check=within("(0, 1]"))
    imbalance_split: str = _opt("train", "what --imbalance thins: the training set, or both "
                                "it and the test set (as Karimireddy et al.'s code does)",
                                ("train", "both"))
    augment: str | None = _opt(None, "random crop (4-pixel black padding) and horizontal "
                               "flip of every worker's batch each step, each worker drawing "
                               "from its own stream of the seed (default: on for "
                               + ", ".join(AUGMENTED) + ", off otherwise)", ("on", "off"),
                               derive=lambda c: "on" if c.dataset in AUGMENTED else "off")
    image_size: int | None = _opt(None, f"--dataset folder: the side S its images are "
                                  f"resized to, S x S pixels (default: {DEFAULT_IMAGE_SIZE}; "
                                  f"the other datasets have a size of their own)",
                                  check=Check(lambda v: 1 <= v <= MAX_IMAGE_SIZE,
                                              f"must be in [1, {MAX_IMAGE_SIZE}]"),
                                  derive=lambda c: (DEFAULT_IMAGE_SIZE if c.dataset == "folder"
                                                    else None))
    data_dir: str | None = _opt(None, "folder with the dataset's files (IDX and CIFAR "
                                "datasets; default: the standard places, see --help of "
                                "signvote download); --dataset folder: the folder holding "
                                "train/CLASS/* and test/CLASS/*",
                                section=OUTPUT)
    seed: int = _opt(8005, "seed of data, model, partition, adversaries and noise, in [0, "
                     "2^32 - 1]", check=Check(lambda v: 0 <= v <= SEED_MAX,
                                              f"must be a whole number in [0, {SEED_MAX}]"))
    engine: str = _opt("sim", "engine: sim (all workers in one process) or dist (one process "
                       "per worker under torch.distributed, see --backend; started here, or by "
                       "torchrun on several machines)", ENGINES)
    layout: str = _opt("server", "--engine dist: server (rank 0 a trusted server that "
                       "aggregates, n + 1 processes) or peer (every worker aggregates, n "
                       "processes)", LAYOUTS)
    backend: str = _opt("auto", "--engine dist: the torch.distributed backend: gloo (ranks on "
                        "CPUs, or sharing GPUs), nccl (a GPU of its own for each rank, "
                        "cuda:LOCAL_RANK), or auto (nccl where every rank has a GPU of its "
                        "own, else gloo); not part of the run's identity", BACKENDS,
                        section=RECOVERY)
    checkpoint_every: int | None = _opt(None, "--engine dist: write OUT/checkpoint.pt every "
                                        "this many steps (default: every epoch; 0: never)",
                                        section=RECOVERY, check=at_least(0))
    max_restarts: int = _opt(0, "--engine dist: restart the processes this many times after "
                             "a failure, resuming from the last checkpoint", section=RECOVERY,
                             check=at_least(0))
    dist_timeout: float = _opt(60.0, "--engine dist: seconds a rank waits for another before "
                               "the run fails", section=RECOVERY,
                               check=Check(lambda v: 0 < v <= MAX_TIMEOUT_S,
                                           f"must be a number of seconds in (0, "
                                           f"{MAX_TIMEOUT_S:g}]"))
    measure_theory: bool = _opt(False, "measure the theory's quantities every step (the "
                                "simulator; costs a full-batch gradient a step): the "
                                "empirical p, the fraction of wrong vote coordinates, "
                                "quantiles of the signal-to-noise ratio and the vote's "
                                "predicted failure, in metrics.csv", section=RECORDED)
    tensorboard: bool = _opt(False, "also log every epoch's metrics for TensorBoard in "
                             "OUT/tensorboard (needs pip install 'signvote[tensorboard]')",
                             section=OUTPUT)
    threads: int | None = _opt(None, "CPU threads of the run's PyTorch ops (default: 1 for "
                               "models under 1M parameters, where more threads only spin, "
                               "else one per core)", section=OUTPUT,
                               check=Check(lambda v: 1 <= v <= MAX_THREADS,
                                           f"must be in [1, {MAX_THREADS}]"))
    device: str = _opt("auto", "where the run computes: auto (the first CUDA device when one "
                       "is visible, else cpu), cpu, cuda or cuda:N; not part of the run's "
                       "identity (summary.json records the device used)", section=OUTPUT)
    compile: bool = _opt(False, "the simulator: run a sign rule's vote and update as one "
                         "torch.compile'd call where that is exact (signsgd or signum, "
                         "majority-vote, no message attack; compiled once per process, "
                         "seconds); not part of the run's identity: the numbers are the "
                         "eager ones, bit for bit, on the CPU", section=OUTPUT)
    overwrite: bool = _opt(False, "replace a finished run in --out (without it, a folder "
                           "holding a finished run is refused)", section=OUTPUT)
    out: str | None = _opt(None, "run folder (default: runs/DATASET_RULE_AGGREGATOR[_ATTACK]"
                           "_byzB_blindI_seedS_ID, ID the run's identity hash, so that runs "
                           "that differ in any option get their own folder)",
                           section=OUTPUT, derive=lambda c: default_out(c))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)
"""Each field's type, e.g. ``float | None``."""
SPEC_FIELDS = ("model", "aggregator", "attack")
"""Fields whose value is a spec (``nnm+krum``, ``alie(z=1.5)``), checked by building it."""
NAME_FIELDS = ("dataset", "rule")
"""Fields whose value is a name from their choices, or a plugin's spec (an import spec, or
parameters: ``pkg.mod:make(n=100)``), checked by resolving it (:func:`check_plugin_names`)."""


def flag(name: str) -> str:
    """The command-line option of field ``name``: ``--weight-decay``."""
    return f"--{name.replace('_', '-')}"


def section_of(name: str) -> str:
    return FIELDS[name].metadata["section"]


def choices_of(name: str) -> tuple[str, ...] | None:
    """The valid values of field ``name``, or None if it is not a choice."""
    choices = FIELDS[name].metadata["choices"]
    if callable(choices):  # a registry's names, read now (a rule registered later counts)
        return tuple(choices())
    return choices


def base_type(name: str) -> type:
    """The field's type without ``None``: bool, int, float or str."""
    hint = TYPES[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = (t for t in typing.get_args(hint) if t is not type(None))
    if hint not in (bool, int, float, str):
        raise TypeError(f"field {name}: type {TYPES[name]}")
    return hint


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


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The table of the TOML file ``path``; a missing, unreadable, non-UTF-8 or malformed
    file raises :class:`ConfigError` naming it (``what``: "config file", "sweep file")."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start}: "
                          f"{exc.reason}); valid: a TOML file") from None
    except RecursionError:
        raise ConfigError(f"{what} {str(path)!r} is nested too deep to read; valid: a TOML "
                          f"table of options") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """The fields set by a TOML config file (the option names with underscores)."""
    values = {}
    for key, value in read_toml(path).items():
        if key not in FIELDS:
            valid = ", ".join(FIELDS)
            raise ConfigError(f"{path}: unknown key {key!r}; valid keys: {valid}")
        values[key] = coerce(key, value, f"{path}: key {key!r}")
    return values


def need(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def _unset(value: Any) -> bool:
    return value is None or value == ""


def fill_defaults(config: TrainConfig) -> TrainConfig:
    """``config`` with each unset field that has a ``derive`` filled from the others, in
    declaration order (unchecked: :func:`resolve` checks, then fills)."""
    c = config
    for name, spec in FIELDS.items():
        derive = spec.metadata["derive"]
        if derive is not None and _unset(getattr(c, name)):
            c = dataclasses.replace(c, **{name: derive(c)})
    return c


def resolve(config: TrainConfig) -> TrainConfig:
    """``config`` with every default filled in, after checking every value."""
    c = config
    values = {}
    for name, spec in FIELDS.items():  # each field's declared type, choices and check
        value = getattr(c, name)
        if value is None and spec.default is not None:
            raise ConfigError(f"{flag(name)}: no value (None); leave it out for its default "
                              f"{spec.default!r}")
        if value is None:
            continue
        value = values[name] = coerce(name, value, flag(name))
        choices = choices_of(name)
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"{flag(name)}: {value!r} holds a NUL character; valid: text "
                              f"without one")
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{flag(name)}: empty" + (f"; valid: {', '.join(choices)}"
                              if choices else "") + " (leave it out for its default)")
        if (choices is not None and value not in choices and name not in SPEC_FIELDS
                and not (name in NAME_FIELDS and any(ch in value for ch in ":("))):
            raise ConfigError(f"{flag(name)}: {unknown_name('value', value, list(choices))}")
        check = spec.metadata["check"]
        if check is not None and not check.ok(value):
            raise ConfigError(check.message(name, value))
    c = dataclasses.replace(c, **values)
    need(c.steps is None or c.epochs is None,
          f"--steps {c.steps} and --epochs {c.epochs} both set the run's length; valid: "
          f"--steps N alone (it runs into as many epochs as it needs) or --epochs E alone")
    check_plugin_names(c)
    need(
        c.byzantine + c.blind <= c.workers,
        f"--byzantine {c.byzantine} + --blind {c.blind} = {c.byzantine + c.blind} adversaries "
        f"exceed --workers {c.workers}; valid: byzantine + blind <= workers",
    )
    need(c.byzantine < c.workers,
          f"--byzantine {c.byzantine}: at least one of the {c.workers} workers must not be "
          f"Byzantine; valid: 0 <= byzantine < workers")
    need(c.partition not in NEEDS_LABELS or c.dataset not in REGRESSION,
          f"--partition {c.partition} needs class labels; --dataset {c.dataset} is a "
          f"regression; valid: --partition iid")
    need(c.imbalance == "none" or c.dataset not in REGRESSION,
          f"--imbalance {c.imbalance} thins classes; --dataset {c.dataset} is a regression; "
          f"valid: --imbalance none")
    need(c.image_size is None or c.dataset == "folder",
          f"--image-size {c.image_size} is the side the folder dataset's images are resized "
          f"to; --dataset {c.dataset} has a size of its own; valid: --dataset folder, or "
          f"leave --image-size out")
    need(c.augment != "on" or c.dataset not in TABULAR,
          f"--augment on crops and flips images; --dataset {c.dataset} has feature vectors; "
          f"valid: --dataset " + ", ".join(d for d in DATASETS if d not in TABULAR)
          + ", or --augment off")
    need(c.sign_bound is None or c.rule == "stochastic-sign",
          f"--sign-bound is the bound of --rule stochastic-sign, not of --rule {c.rule}")
    momentum = rules.DEFAULT_MOMENTUM[c.rule] if c.momentum is None else c.momentum
    try:
        rules.get(c.rule, momentum, c.sign_bound)
    except ValueError as exc:  # the rule's own check, e.g. signsgd with momentum
        raise ConfigError(f"--momentum {momentum}: {exc}") from None
    c = fill_defaults(c)
    need(c.model is not None, f"--dataset {c.dataset} needs --model (a plugin dataset has "
          f"no default model); valid: " + ", ".join(models.names()) + ", or an import spec")
    try:
        fits = models.fits(c.model, c.dataset) or c.dataset not in DATASETS
    except ValueError as exc:  # an unknown model or parameter name
        raise ConfigError(f"--model {c.model}: {exc}") from None
    if not fits:  # the valid ones: the built-in models (an entry point is loaded only if used)
        raise ConfigError(f"--model {c.model} does not fit --dataset {c.dataset}; valid: "
                          + ", ".join(m for m in models.REGISTRY.registered()
                                      if models.fits(m, c.dataset)))
    try:
        aggregators.check(aggregators.build(c.aggregator, c.aggregator_f), c.workers)
    except ValueError as exc:
        raise ConfigError(f"--aggregator {c.aggregator}: {exc}") from None
    try:
        attack = attacks.build(c.attack)
        if c.byzantine:
            attack.check(c.workers, c.byzantine)
    except ValueError as exc:
        raise ConfigError(f"--attack {c.attack}: {exc}") from None
    problem = device_problem(c.device)
    need(problem is None, f"--device {problem}")
    need(c.backend != "nccl" or torch.cuda.is_available(),
          "--backend nccl needs a CUDA GPU and none is visible; valid: --backend auto or gloo")
    need(c.backend != "nccl" or c.device != "cpu",
          "--backend nccl exchanges GPU tensors; --device cpu has none; valid: --backend auto "
          "or gloo with --device cpu, or --device auto or cuda with --backend nccl")
    need(c.backend == "auto" or c.engine == "dist",
          f"--backend {c.backend} is the distributed engine's; valid: --engine dist, or leave "
          f"--backend out")
    need(not c.measure_theory or c.engine == "sim",
          "--measure-theory is measured by the simulator; valid: --engine sim")
    need(not c.compile or c.engine == "sim",
          "--compile compiles the simulator's step; valid: --engine sim, or leave --compile out")
    check_election(c)
    need(not c.tensorboard or importlib.util.find_spec("tensorboard") is not None,
          "--tensorboard needs the tensorboard package, which is not installed; valid: "
          "pip install 'signvote[tensorboard]', or leave --tensorboard out")
    return c


def check_election(c: TrainConfig) -> None:
    """The Election Coding fields of ``c`` (resolved but for the derived
    ``election_tolerance``): each set only with its code; a code only for a sign rule in the
    simulator, with a message attack; the deterministic code's ``n`` and ``b`` buildable,
    the Bernoulli code's ``r`` in (0, workers] (:mod:`signvote.election`)."""
    code = c.election_code
    need(c.election_redundancy is None or code == "bernoulli",
          f"--election-redundancy is the Bernoulli code's expected redundancy; --election-code "
          f"{code} has none; valid: --election-code bernoulli, or leave it out")
    need(c.election_tolerance is None or code == "deterministic",
          f"--election-tolerance is the deterministic code's b; --election-code {code} has "
          f"none; valid: --election-code deterministic, or leave it out")
    if code == "none":
        return
    need(c.engine == "sim",
          f"--election-code {code} forms every worker's message from the partitions' "
          f"gradients in one process; valid: --engine sim, or --election-code none")
    need(c.rule in ("signsgd", "signum"),
          f"--election-code {code} takes the majority of the partitions' signs; --rule "
          f"{c.rule} sends no signs of its own; valid: --rule signsgd or signum, or "
          f"--election-code none")
    try:
        data_level = c.byzantine > 0 and attacks.build(c.attack).capabilities.data_level
    except ValueError:
        data_level = False  # refused with its own message below
    need(not data_level,
          f"--attack {c.attack} poisons a Byzantine worker's own batch; under --election-code "
          f"{code} the batches are partitions that honest workers compute too; valid: a "
          f"message attack, or --election-code none")
    if code == "bernoulli":
        r = c.election_redundancy
        need(r is not None, "--election-code bernoulli needs --election-redundancy r, its "
              f"expected redundancy, in (0, {c.workers}]")
        need(r <= c.workers, f"--election-redundancy {r}: the Bernoulli code assigns each of "
              f"the {c.workers} partitions with probability r / workers; valid: (0, "
              f"{c.workers}]")
    else:
        b = c.byzantine if c.election_tolerance is None else c.election_tolerance
        problem = election.deterministic_problem(c.workers, b)
        need(problem is None, f"--election-code deterministic with --workers {c.workers} and "
              f"--election-tolerance {b}: {problem}")


def device_problem(value: str) -> str | None:
    """Why ``value`` names no device this process can compute on (None when it does):
    ``auto``, ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N`` with ``0 <= N <``
    the visible CUDA devices; ``cuda`` needs one visible (``torch.cuda.is_available()``)."""
    if value in ("auto", "cpu"):
        return None
    if re.fullmatch(r"cuda(:(0|[1-9][0-9]{0,5}))?", value) is None:
        return f"{value!r} is no device; valid: auto, cpu, cuda, cuda:N"
    index = value.partition(":")[2]
    if not torch.cuda.is_available():
        return f"{value!r}: no CUDA device is visible; valid: auto, cpu"
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        return (f"{value!r}: only {count} CUDA device{'s' if count > 1 else ''} visible; "
                f"valid: auto, cpu, cuda, cuda:0 to cuda:{count - 1}")
    return None


def run_device(value: str) -> str:
    """The device a resolved ``--device`` value names, as torch spells it: ``auto`` is
    ``cuda`` when a CUDA device is visible, else ``cpu``."""
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return value


def check_plugin_names(c: TrainConfig) -> None:
    """Resolve the dataset and the rule of ``c`` when they are plugins (an entry point or
    an import spec: :mod:`signvote.plugins`), so that one that cannot be imported, is not
    found, or is not of its kind is refused here, naming its option, before anything
    else reads it (the model, the aggregator and the attack are checked when built)."""
    checks = (("dataset", lambda: plugins.dataset_factory(c.dataset, DATASETS),
               c.dataset not in DATASETS),
              ("rule", lambda: (rules.get(c.rule, rules.DEFAULT_MOMENTUM[c.rule]),
                                rules.DEFAULT_LR[c.rule]),
               rules.REGISTRY.is_plugin(c.rule)))
    for name, resolve_it, plugin in checks:
        if plugin:
            try:
                resolve_it()
            except ValueError as exc:
                raise ConfigError(f"{flag(name)} {getattr(c, name)}: {exc}") from None


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """The config that a run folder's ``config.json`` records: a field it lacks is at its
    default (it was added to the schema later), a key that is no field is ignored."""
    return TrainConfig(**{k: v for k, v in values.items() if k in FIELDS})


def _normal(name: str, value: Any) -> Any:
    if base_type(name) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def trajectory_key(config: TrainConfig) -> dict[str, Any]:
    """The identity of a run: its fields of the :data:`KEY_SECTIONS` whose value is not the
    default that field takes, given the others, when left unset (``lr`` 1e-3 under
    ``rule = "sgd"`` is that default, so it is left out). Two configs are the same run
    exactly when their keys are equal, resolved or not; a field added to the schema with
    a default that keeps the old behaviour adds nothing to any key."""
    c = fill_defaults(dataclasses.replace(config, out="-"))  # out is no part of it
    key = {}
    for name, spec in FIELDS.items():
        if spec.metadata["section"] not in KEY_SECTIONS:
            continue
        derive = spec.metadata["derive"]
        default = derive(c) if derive is not None else spec.default
        value = _normal(name, getattr(c, name))
        if value != _normal(name, default):
            key[name] = value
    return key


def default_out(config: TrainConfig) -> str:
    """The default run folder: the main axes in words, then :func:`trajectory_id` for
    everything else, e.g. ``runs/logreg_signum_krum_alie_byz4_blind0_seed8005_3fa2c19d0b1e``
    (the attack only when a worker runs it). Two runs share it only when they are the same
    run."""
    c = fill_defaults(dataclasses.replace(config, out="-"))  # out is not in the identity
    attack = f"_{c.attack}" if c.byzantine else ""
    words = f"{c.dataset}_{c.rule}_{c.aggregator}{attack}_byz{c.byzantine}_blind{c.blind}"
    safe = "".join(ch if ch.isalnum() or ch in "-_.=," else "-" for ch in words)
    return f"runs/{safe}_seed{c.seed}_{trajectory_id(c)}"


def trajectory_id(config: TrainConfig) -> str:
    """12 hex digits of the SHA-1 of :func:`trajectory_key` as sorted JSON."""
    text = json.dumps(trajectory_key(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def command_line(config: TrainConfig) -> list[str]:
    """The options of ``signvote train`` that give ``config``: ``--name=value`` for each field
    set to a value other than its default (a bool field: its flag when true), in field
    order. Raises :class:`ConfigError` for a field that no option can set back to its
    default (None, or false, where the default is another value)."""
    argv = []
    for name, spec in FIELDS.items():
        value = getattr(config, name)
        if value == spec.default and type(value) is type(spec.default):
            continue
        if value is None or (base_type(name) is bool and not value):
            raise ConfigError(f"{flag(name)}: {value!r} cannot be given on a command line "
                              f"(its default is {spec.default!r})")
        argv.append(flag(name) if base_type(name) is bool else f"{flag(name)}={value!r}"
                    if isinstance(value, float) else f"{flag(name)}={value}")
    return argv
