"""A run's construction and lifecycle, shared by every engine.

:func:`prepare` turns a config into a :class:`RunSetup`: the data, the model and its
initial parameters, the partition, the worker rule, the aggregator, the adversaries
(:class:`~signvote.engine.step.AdversaryPlan`) and the summary fields known before
training. The rest of this module is the run folder's lifecycle, the same for every
engine: :func:`start_run_folder`, one :func:`epoch_row` per epoch shown by
:func:`record_epoch` (``metrics.csv``, TensorBoard, the progress bar),
:func:`finish_summary` and :func:`write_results` (``params.pt``, then ``summary.json``).

Random streams: every random choice of a run has its own generator from the one seed:
the data from ``seed``, the partition from ``seed + 1``, the adversaries from ``seed + 2``,
random attacks from ``seed + 3``, worker i's stochastic-sign coins from ``seed + 4 +
1000 i``, worker i's augmentation (crops and flips) from ``seed + 5 + 1000 i``; the
model's initialisation (and dropout) from torch's global generator seeded with ``seed``,
inside :func:`run_rng` so that the caller's global generator is left as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import signvote
from signvote import aggregators, attacks, contracts, election, models, rules
from signvote.data import Dataset, augment, partition
from signvote.data import load as load_dataset
from signvote.engine import protocol
from signvote.engine.gradients import (
    BATCH_NORM_TYPES,
    BatchedModel,
    Loss,
    ParamLayout,
    WorkerBuffers,
    evaluate,
)
from signvote.engine.parts import Parts, build_module, check_exchange, check_fit, resolve_parts
from signvote.engine.step import AdversaryPlan
from signvote.experiment import runs
from signvote.experiment.config import ConfigError, TrainConfig, run_device
from signvote.registry import parse_spec

# Offsets that give every random stream of a run its own generator from the one seed.
PARTITION_STREAM, ADVERSARY_STREAM, ATTACK_STREAM, RULE_STREAM = 1, 2, 3, 4
AUGMENT_STREAM = 5
ELECTION_STREAM = 6  # the Bernoulli code's allocation matrix (signvote.election)


@dataclass
class RunResult:
    """What a run returns (and wrote to its folder)."""

    config: TrainConfig
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    params: Tensor | None = None
    buffers: dict[str, Tensor] | None = None  # the evaluated running statistics, by name

    @property
    def status(self) -> str:
        return self.summary["status"]


def coin_generators(seed: int, workers: range | list[int], device: torch.device | str = "cpu"
                    ) -> list[torch.Generator]:
    """The generators of the given workers' coins: worker ``i`` draws from
    ``seed + RULE_STREAM + 1000 i`` in every engine, on ``device`` (where its ``[d]`` coins
    are drawn; a CUDA generator's numbers are not the CPU's)."""
    return [torch.Generator(device=device).manual_seed(seed + RULE_STREAM + 1000 * i)
            for i in workers]


def augment_generators(seed: int, workers: range | list[int]) -> list[torch.Generator]:
    """The generators of the given workers' augmentation (crops and flips): worker ``i``
    draws from ``seed + AUGMENT_STREAM + 1000 i`` in every engine."""
    return [torch.Generator().manual_seed(seed + AUGMENT_STREAM + 1000 * i) for i in workers]


def augmenter(c: TrainConfig, data: Dataset, workers: range | list[int]
              ) -> augment.Augmenter | None:
    """The augmentation of resolved config ``c``'s ``workers`` (their batches ``[k, b, C,
    H, W]``, in this order) on ``data``, padding with its black; None under ``augment =
    "off"``."""
    if c.augment != "on":
        return None
    return augment.Augmenter(augment_generators(c.seed, workers), augment.black(data))


def attack_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The adversaries' generator (random attacks), from ``seed + ATTACK_STREAM``, on
    ``device`` (random attacks draw their ``[f, d]`` noise on the messages' device)."""
    return torch.Generator(device=device).manual_seed(seed + ATTACK_STREAM)


def choose_adversaries(
    workers: int, blind: int, byzantine: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Boolean masks ``(blind, byzantine)`` over the workers, disjoint, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed + ADVERSARY_STREAM)
    order = torch.randperm(workers, generator=generator)
    blind_mask = torch.zeros(workers, dtype=torch.bool)
    byzantine_mask = torch.zeros(workers, dtype=torch.bool)
    blind_mask[order[:blind]] = True
    byzantine_mask[order[blind:blind + byzantine]] = True
    return blind_mask, byzantine_mask


def message_bytes(dim: int, sends_signs: bool) -> int:
    """Upload size of one worker's message, the distributed engine's frame
    (:func:`signvote.engine.protocol.frame_bytes`): for signs the 4-byte header and 1 bit
    per coordinate, ``4 + ceil(d / 8)`` (a row without zeros, which is what the wire sends
    for it); 4 bytes a coordinate for fp32."""
    return protocol.frame_bytes(dim) if sends_signs else 4 * dim


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The step-decayed learning rate of 0-based ``epoch`` (under ``--steps`` too: a step's
    epoch is the one its batch comes from, ``t // steps_per_epoch`` for 0-based step
    ``t``)."""
    return config.lr * config.lr_decay_rate ** (epoch // config.lr_decay_step)


def by_steps(config: TrainConfig) -> bool:
    """Whether the run is scheduled by steps (``--steps`` or ``--eval-every`` given): its
    metrics rows are evaluations, not epochs, and its progress bar counts steps."""
    return config.steps is not None or config.eval_every is not None


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The steps a run takes: ``--steps``, else ``--epochs`` times the steps of an epoch."""
    return config.steps if config.steps is not None else config.epochs * steps_per_epoch


def evaluation_due(config: TrainConfig, step: int, steps_per_epoch: int, total: int) -> bool:
    """Whether the run evaluates after its ``step``-th step (1-based: ``step`` steps
    done): after the last step (``step == total``) and, before it, every ``--eval-every``
    steps, or at the end of every epoch (``step`` a multiple of ``steps_per_epoch``)
    without it."""
    every = steps_per_epoch if config.eval_every is None else config.eval_every
    return step == total or step % every == 0


def evaluation_steps(config: TrainConfig, steps_per_epoch: int) -> list[int]:
    """The step counts after which the run evaluates (:func:`evaluation_due`), in order:
    ``metrics.csv``'s ``step`` column of a run that does not diverge."""
    total = total_steps(config, steps_per_epoch)
    return [t for t in range(1, total + 1)
            if evaluation_due(config, t, steps_per_epoch, total)]


@contextlib.contextmanager
def run_rng(state: Tensor, device: torch.device | str = "cpu", seed: int = 0
            ) -> Iterator[None]:
    """Run with torch's global CPU generator at ``state`` (dropout on the CPU draws from
    it) and, for a CUDA ``device``, that device's global generator seeded with ``seed``
    (dropout on the GPU draws from it); give the caller's generators back as they were
    afterwards."""
    device = torch.device(device)
    cuda = [] if device.type != "cuda" else [
        device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.set_rng_state(state)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@dataclass
class RunSetup:
    """Everything a run builds from its config before the first step (every engine).

    Attributes:
        config: the resolved config.
        data: the dataset.
        module: the model (its parameters are the initial point).
        layout: where the parameters sit in the flat vector.
        x: the initial parameters ``[d]``.
        batched: the model compiled for per-worker gradients.
        part: the training-set indices of every worker.
        per_epoch: the samples each worker walks an epoch.
        starts: the first sample of every step within an epoch.
        rule, aggregator: the worker rule and the server rule.
        plan: the adversaries (masks and attacks).
        summary: the summary fields known before training.
        workers_table: one row per worker (``partition.csv``).
        rng_state: torch's global generator after the model's initialisation, where the
            run's dropout draws continue (:func:`run_rng`).
        loss: the per-sample loss (None: the task's default,
            :func:`~signvote.engine.gradients.default_loss`).
        allocation: ``--election-code``'s allocation matrix ``G[n, n]`` (worker i computes
            the partitions j with ``G[i, j] = 1``), None without a code.
    """

    config: TrainConfig
    data: Dataset
    module: torch.nn.Module
    layout: ParamLayout
    x: Tensor
    batched: BatchedModel
    part: partition.Partition
    per_epoch: int
    starts: range
    rule: rules.WorkerRule
    aggregator: contracts.Aggregator
    plan: AdversaryPlan
    summary: dict[str, Any]
    workers_table: list[dict[str, Any]]
    rng_state: Tensor
    loss: Loss | None = None
    allocation: Tensor | None = None

    @property
    def n_classes(self) -> int | None:
        return self.data.n_classes if self.data.task == "classification" else None

    @property
    def fixed_order(self) -> bool:
        """True when every worker walks the same samples every epoch."""
        return all(idx.numel() == self.per_epoch for idx in self.part)

    def walk(self, epoch: int, workers: list[int] | None = None) -> tuple[Tensor, Tensor]:
        """The inputs ``[k, per_epoch, ...]`` and targets of ``workers`` (all when None)
        in ``epoch``."""
        walk = partition.epoch_indices(self.part, self.per_epoch, epoch)
        if workers is not None:
            walk = walk[workers]
        walk = walk.to(self.data.train_x.device)  # one copy an epoch, where the data is
        return self.data.train_x[walk], self.data.train_y[walk]


def build_plan(config: TrainConfig, attack: contracts.Attack | None = None) -> AdversaryPlan:
    """The adversaries of a resolved config: who (drawn from the seed) and what (``attack``,
    else the config's ``--attack``)."""
    c = config
    blind_mask, byzantine_mask = choose_adversaries(c.workers, c.blind, c.byzantine, c.seed)
    if attack is None and c.byzantine:
        attack = attacks.build(c.attack)
    return AdversaryPlan(blind_mask, byzantine_mask, attacks.get("blind-inversion"),
                         attack if c.byzantine else None)


def build_model(c: TrainConfig, data: Dataset) -> torch.nn.Module:
    """The model of resolved config ``c`` for ``data`` (initialised from torch's global
    generator); a model that does not fit the data, or that there is no memory for (torch's
    allocator refuses, e.g. for a huge class count), raises :class:`ConfigError`."""
    try:
        return models.build(c.model, data.input_shape, data.n_classes)
    except ValueError as exc:
        raise ConfigError(f"--model {c.model}: {exc}") from None
    except RuntimeError as exc:  # torch's allocator: "can't allocate memory: ... N bytes"
        reason = " ".join(str(exc).split())
        raise ConfigError(f"--model {c.model}: building it for samples "
                          f"{list(data.input_shape)} and {data.n_classes} classes failed: "
                          f"{reason}") from None


def build_partition(c: TrainConfig, data: Dataset) -> partition.Partition:
    """The workers' training-set indices of resolved config ``c`` (drawn from
    ``seed + PARTITION_STREAM``); one that cannot be made raises :class:`ConfigError`."""
    if c.partition in partition.NEEDS_LABELS and data.task != "classification":
        raise ConfigError(f"--partition {c.partition} needs class labels; --dataset "
                          f"{c.dataset} is a regression; valid: --partition iid")
    byzantine = tuple(torch.nonzero(
        choose_adversaries(c.workers, c.blind, c.byzantine, c.seed)[1]).flatten().tolist())
    try:
        return partition.get(
            c.partition, data.train_y, c.workers,
            torch.Generator().manual_seed(c.seed + PARTITION_STREAM),
            alpha=c.partition_alpha, shards_per_worker=c.partition_shards,
            gamma=c.partition_gamma, byzantine=byzantine)
    except ValueError as exc:
        raise ConfigError(f"--partition {c.partition}: {exc}") from None


def apply_imbalance(c: TrainConfig, data: Dataset) -> Dataset:
    """``data`` with its training set (and with ``--imbalance-split both`` its test set)
    thinned by ``--imbalance`` (:func:`signvote.data.partition.imbalance`), before the
    partition is cut; the standardisation statistics stay those of the full set; ``data``
    itself under ``--imbalance none``."""
    if c.imbalance == "none":
        return data
    if data.task != "classification":
        raise ConfigError(f"--imbalance {c.imbalance} thins classes; --dataset {c.dataset} "
                          f"is a regression; valid: --imbalance none")
    try:
        keep = partition.imbalance(c.imbalance, data.train_y, c.imbalance_ratio)
        keep_test = (partition.imbalance(c.imbalance, data.test_y, c.imbalance_ratio)
                     if c.imbalance_split == "both" else torch.arange(data.test_y.numel()))
    except ValueError as exc:
        raise ConfigError(f"--imbalance {c.imbalance}: {exc}") from None
    keep, keep_test = keep.to(data.train_y.device), keep_test.to(data.test_y.device)
    return dataclasses.replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep],
                               test_x=data.test_x[keep_test], test_y=data.test_y[keep_test])


def samples_per_epoch(c: TrainConfig, data: Dataset) -> int:
    """The samples each worker walks an epoch, ``N // n``; a batch larger than that
    raises :class:`ConfigError`."""
    per_epoch = data.train_x.shape[0] // c.workers
    if c.batch_size > per_epoch:
        raise ConfigError(
            f"--batch-size {c.batch_size} exceeds the {per_epoch} samples per worker and "
            f"epoch; valid: 1 to {per_epoch}"
        )
    return per_epoch


def batch_sizes(c: TrainConfig, per_epoch: int) -> tuple[int, ...]:
    """The sizes of a worker's batches in an epoch of ``per_epoch`` samples: ``batch_size``,
    and the shorter last batch where ``batch_size`` does not divide ``per_epoch``."""
    last = per_epoch - (per_epoch - 1) // c.batch_size * c.batch_size
    return (c.batch_size,) if last == c.batch_size else (c.batch_size, last)


def check_batch_norm(c: TrainConfig, module: torch.nn.Module, data: Dataset,
                     per_epoch: int) -> None:
    """Refuse, with one :class:`ConfigError` before the run starts, a run in which a
    BatchNorm layer of ``module`` would see a single value per channel of a worker's
    batch (``b * S = 1``, ``b`` the batch, ``S`` the spatial size at that layer), where
    its batch variance is undefined: torch refuses such a batch in training, and so does
    the per-worker batch norm (:mod:`signvote.engine.gradients`), mid-run otherwise. The
    smallest batch of :func:`batch_sizes` goes through ``module`` once in eval mode
    (no gradients, no running statistics changed, torch's generator left as it was) to
    read each BatchNorm's input shape; the module's modes are given back."""
    norms = [(name, m) for name, m in module.named_modules() if isinstance(m, BATCH_NORM_TYPES)]
    if not norms:
        return
    smallest = min(batch_sizes(c, per_epoch))
    seen: dict[str, torch.Size] = {}

    def record(name: str) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def hook(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(name, args[0].shape)  # returns None: the input is left as it is

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in norms]
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            module(data.train_x[:smallest])
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes.items():
            m.training = training
    for name, shape in seen.items():
        if shape[0] * math.prod(shape[2:]) <= 1:
            which = (f"--batch-size {c.batch_size}" if smallest == c.batch_size else
                     f"an epoch's last batch of {smallest} (the {per_epoch} samples per "
                     f"worker and epoch in batches of --batch-size {c.batch_size})")
            raise ConfigError(
                f"--model {c.model}: BatchNorm {name} would see 1 value per channel of a "
                f"worker's batch ({which}; its input {list(shape)}), where the batch "
                f"variance is undefined; valid: a --batch-size whose batches, the last "
                f"one included, hold at least 2 samples")


def load_data(c: TrainConfig) -> Dataset:
    """The dataset of resolved config ``c`` (its name, seed, ``--data-dir`` and
    ``--image-size``)."""
    return load_dataset(c.dataset, c.seed, Path(c.data_dir) if c.data_dir else None,
                        c.image_size)


def check_augment(c: TrainConfig, data: Dataset) -> None:
    """Refuse ``--augment on`` for data whose samples are not images ``[C, H, W]`` (a
    :class:`ConfigError`): crops and flips need rows and columns."""
    if c.augment == "on" and len(data.input_shape) != 3:
        raise ConfigError(f"--augment on crops and flips images [channels, height, width]; "
                          f"--dataset {c.dataset} has samples of shape "
                          f"{tuple(data.input_shape)}; valid: --augment off")


def check_buildable(c: TrainConfig, data: Dataset) -> None:
    """Raise the :class:`ConfigError` that :func:`prepare` would raise for resolved config
    ``c`` on ``data`` (the model does not fit, the partition cannot be made, the batch is
    too large, or too small for a BatchNorm: :func:`check_batch_norm`), without building
    anything else; torch's global generator is left as it was."""
    data = apply_imbalance(c, data)
    with torch.random.fork_rng(devices=[]):
        module = build_model(c, data)
    build_partition(c, data)
    check_batch_norm(c, module, data, samples_per_epoch(c, data))
    check_augment(c, data)


def prepare(config: TrainConfig, engine: str = "sim", parts: Parts | None = None,
            device: torch.device | str | None = None) -> RunSetup:
    """Resolve ``config`` and build the data, model, partition, rules and adversaries;
    those that ``parts`` gives as objects are taken from it
    (:func:`~signvote.engine.parts.resolve_parts`: the config then records a description
    of each, and the model and loss are tried on two training samples first).

    ``device``: where the run computes (None: ``--device`` for the simulator, the CPU for
    another engine, which chooses its own). Everything is built and checked on the CPU,
    from the same generators as on any device; then the model, the data and the
    adversaries' masks are moved there once (on the CPU, a move is the tensor itself).

    Leaves no process-wide trace: torch's global generator is seeded for the model's
    initialisation inside a fork and given back (the run continues from
    ``RunSetup.rng_state``)."""
    parts = Parts() if parts is None else parts
    c = resolve_parts(config, parts)
    data = apply_imbalance(c, parts.data if parts.data is not None else load_data(c))
    check_augment(c, data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        module = (build_model(c, data) if parts.model is None
                  else build_module(parts.model, data))
        rng_state = torch.get_rng_state()
    module.train()
    if parts.model is not None or parts.data is not None or parts.loss is not None:
        check_fit(module, data, parts.loss, c.model)
    part = build_partition(c, data)
    per_epoch = samples_per_epoch(c, data)
    check_batch_norm(c, module, data, per_epoch)
    if device is None:
        device = run_device(c.device) if engine == "sim" else "cpu"
    device = torch.device(device)
    module.to(device)  # the run's own copy (build_module); on the CPU, nothing moves
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    try:
        batched = BatchedModel(module, layout,
                               independent_samples=independent_samples(c, parts.model))
    except ValueError as exc:  # a layer the per-worker gradients cannot run
        raise ConfigError(f"--model {c.model}: {exc}") from None

    rule = parts.rule if parts.rule is not None else rules.get(c.rule, c.momentum,
                                                                  c.sign_bound)
    aggregator = (parts.aggregator if parts.aggregator is not None
                  else aggregators.build(c.aggregator, c.aggregator_f))
    plan = build_plan(c, parts.attack)
    probe_aggregator, probe_attack = own_components(c, parts)
    if probe_aggregator or probe_attack:  # a plugin's or an object: tried on probe messages
        check_exchange(aggregator, plan.attack if probe_attack else None, plan.byzantine_mask,
                       layout.dim, rule.capabilities.sends_signs, c.aggregator, c.attack)

    summary: dict[str, Any] = {
        "status": "completed",
        "engine": engine,
        "params": layout.dim,
        "workers": c.workers,
        "blind_workers": torch.nonzero(plan.blind_mask).flatten().tolist(),
        "byzantine_workers": torch.nonzero(plan.byzantine_mask).flatten().tolist(),
        "bytes_sent_per_worker_per_step": message_bytes(layout.dim, rule.capabilities.sends_signs),
        "signvote_version": signvote.__version__,
        "torch_version": torch.__version__,
        "device": device_name(device),
    }
    if not parts.empty:
        summary["objects"] = parts.descriptions()
    workers_table = partition_table(part, data, plan.blind_mask, plan.byzantine_mask)
    summary["partition"] = c.partition
    if c.imbalance != "none":
        summary["imbalance"], summary["imbalance_split"] = c.imbalance, c.imbalance_split
        summary["train_samples"] = data.train_y.numel()
        summary["test_samples"] = data.test_y.numel()
    if data.classes is not None:  # label k is classes[k] (the folder dataset's subfolders)
        summary["classes"] = list(data.classes)
    if data.task == "classification":
        summary["mean_worker_label_entropy_bits"] = round(
            sum(r["label_entropy_bits"] for r in workers_table) / c.workers, 6)
        summary["dataset_label_entropy_bits"] = round(float(partition.label_entropy(
            torch.bincount(data.train_y, minlength=data.n_classes))), 6)
    allocation = election_allocation(c)
    if allocation is not None:
        summary["election_code"] = c.election_code
        summary["allocation"] = ["".join(map(str, row)) for row in allocation.tolist()]
        summary["gradient_computations_per_step"] = int(allocation.sum())
        summary["redundancy"] = election.redundancy(allocation)
    return RunSetup(c, data_on(data, device), module, layout, x, batched, part, per_epoch,
                    range(0, per_epoch, c.batch_size), rule, aggregator, plan_on(plan, device),
                    summary, workers_table, rng_state, parts.loss,
                    None if allocation is None else allocation.to(device))


def election_allocation(c: TrainConfig) -> Tensor | None:
    """``--election-code``'s allocation matrix ``G[n, n]`` (int64, on the CPU) for resolved
    ``c``: the deterministic code for ``--election-tolerance`` Byzantines, or the Bernoulli
    code with ``q = --election-redundancy / n`` drawn from ``seed + ELECTION_STREAM``;
    None for ``none`` (:mod:`signvote.election`)."""
    if c.election_code == "deterministic":
        return election.deterministic_allocation(c.workers, c.election_tolerance)
    if c.election_code == "bernoulli":
        generator = torch.Generator().manual_seed(c.seed + ELECTION_STREAM)
        try:
            return election.bernoulli_allocation(c.workers, c.election_redundancy / c.workers,
                                                 generator)
        except ValueError as exc:
            raise ConfigError(f"--election-redundancy {c.election_redundancy}: {exc}") from None
    return None


def device_name(device: torch.device) -> str:
    """How ``summary.json`` records the device a run computed on: ``cpu``, or the CUDA
    device with its index and name, ``cuda:0 (NVIDIA H200)``."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def data_on(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its four tensors on ``device`` (``data`` itself when they are
    there)."""
    if data.train_x.device == device:
        return data
    return dataclasses.replace(data, **{name: getattr(data, name).to(device) for name in
                                        ("train_x", "train_y", "test_x", "test_y")})


def plan_on(plan: AdversaryPlan, device: torch.device) -> AdversaryPlan:
    """``plan`` with its masks on ``device`` (``plan`` itself when they are there)."""
    if plan.blind_mask.device == device:
        return plan
    return dataclasses.replace(plan, blind_mask=plan.blind_mask.to(device),
                               byzantine_mask=plan.byzantine_mask.to(device))


def own_components(c: TrainConfig, parts: Parts) -> tuple[bool, bool]:
    """Whether the aggregator, and the Byzantine coalition's attack, of resolved config
    ``c`` are not signvote's own: an object of ``parts``, or a spec with a stage that is
    no registered name (an entry point's or an import spec's), which
    :func:`~signvote.engine.parts.check_exchange` tries before the run."""
    own = {*aggregators.REGISTRY.registered(), *aggregators.PRE_REGISTRY.registered()}
    aggregator = parts.aggregator is not None or any(
        name not in own for name, _ in parse_spec(c.aggregator, "aggregator"))
    attack = bool(c.byzantine) and (parts.attack is not None or parse_spec(
        c.attack, "attack")[0][0] not in attacks.REGISTRY.registered())
    return aggregator, attack


def independent_samples(c: TrainConfig, model: Any = None) -> bool:
    """Whether the run's model declares ``independent_samples`` (``models.info``), which
    lets the simulator fold the workers' batches (``BatchedModel``): a model by spec, a
    factory given as an object by its declaration (``models.declare``); a module given as
    an object declares nothing (the vmap fallback, correct for any module)."""
    if model is None:
        return models.info(c.model).independent_samples
    if isinstance(model, torch.nn.Module):
        return False
    return models.info(model).independent_samples


def check_overwrite(config: TrainConfig) -> None:
    """Refuse to start a run in a folder that holds a finished run
    (:func:`signvote.experiment.runs.read_run`) unless ``config.overwrite``: a finished run
    is never replaced without being asked. A folder with a partial or damaged run (no
    ``summary.json``, or files that disagree) is reused. A config without ``out`` (a run
    built from objects, :mod:`signvote.engine.parts`) has no folder. Raises
    :class:`ConfigError`."""
    if config.out is None:
        raise ConfigError("a run built from objects has no default folder (its identity is "
                          "the objects'); valid: out='runs/NAME', or write=False")
    out = Path(config.out)
    if not config.overwrite and runs.run_problem(out) is None:
        raise ConfigError(f"--out {out} holds a finished run; valid: --overwrite to "
                          f"replace it, or another --out")


def start_run_folder(setup: RunSetup) -> Path:
    """Create the run folder (refused by :func:`check_overwrite` when it holds a finished
    run and the config does not say ``overwrite``), drop a previous run's summary, metrics
    and parameters (``summary.json`` first, so that from here on the folder is not a
    finished run) and a sweep's record of its failure, write the config and the partition
    table; returns the folder."""
    check_overwrite(setup.config)
    out = Path(setup.config.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "metrics.csv", "params.pt", runs.FAILED_FILE):
        (out / stale).unlink(missing_ok=True)
    runs.write_json(out / "config.json", setup.config.to_dict())
    runs.write_csv(out / "partition.csv", setup.workers_table[0].keys(), setup.workers_table)
    return out


@dataclass
class EpochStats:
    """The training statistics of an epoch so far, over the workers that are not
    Byzantine (a label-flipping worker is not scored on its flipped labels): each step's
    batch losses and correct counts, and the samples seen."""

    losses: list[Tensor] = field(default_factory=list)
    correct: list[Tensor] = field(default_factory=list)
    seen: int = 0

    def add(self, losses: Tensor, correct: Tensor | None, samples: int) -> None:
        """One step's ``[k]`` batch losses and correct counts of ``k`` scored workers
        over ``samples`` samples."""
        self.losses.append(losses)
        if correct is not None:
            self.correct.append(correct)
        self.seen += samples

    def scored(self, mask: Tensor) -> EpochStats:
        """The statistics of the workers in ``mask[n]`` only, from steps that recorded all
        ``n`` (one index per epoch, not per step); ``seen`` is kept as given."""
        if not self.losses:
            return self
        return EpochStats([torch.stack(self.losses)[:, mask]],
                          [torch.stack(self.correct)[:, mask]] if self.correct else [],
                          self.seen)

    def to_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "correct": self.correct, "seen": self.seen}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochStats:
        return cls(list(d["losses"]), list(d["correct"]), int(d["seen"]))


def evaluated_buffers(setup: RunSetup, buffers: WorkerBuffers | None
                      ) -> dict[str, Tensor] | None:
    """The buffers (BatchNorm's running statistics) of the model that is evaluated and
    saved, by name: the mean over the honest workers (``plan.honest_mask``) of their
    running statistics, or over the workers that are not Byzantine when every worker is
    blind; None for a model without buffers.

    The running statistics are no part of the protocol the paper attacks (only the
    messages are): the evaluated model is the one an honest party would hold, so it
    trusts no adversary's statistics. A blind worker's are computed on its true data, but
    it is an adversary (it inverts its messages), and the rule stays simple."""
    if buffers is None:
        return None
    mask = setup.plan.honest_mask
    if not bool(mask.any()):
        mask = ~setup.plan.byzantine_mask
    return setup.batched.buffer_layout.named(buffers.mean(mask))


def epoch_row(epoch: int, step: int, stats: EpochStats, x: Tensor, setup: RunSetup,
              lr: float, t0: float, buffers: WorkerBuffers | None = None
              ) -> tuple[dict[str, Any], bool]:
    """The metrics row of an evaluation after ``step`` steps, the last of them in 0-based
    ``epoch`` (the scored workers' mean batch loss and accuracy over the steps since the
    previous evaluation: the epoch, when the run evaluates once an epoch; the test loss
    and accuracy of ``x`` with the running
    statistics :func:`evaluated_buffers` of every worker's ``buffers``) and whether the
    training loss and the parameters are finite (the test metrics are NaN and None when
    not). An epoch whose training loss is not finite has no training accuracy either
    (None): it counted predictions of parameters that diverged within it."""
    train_loss = float(torch.cat([t.reshape(-1) for t in stats.losses]).mean())
    train_acc = (float(torch.stack([t.sum() for t in stats.correct]).sum()) / stats.seen
                 if stats.correct and math.isfinite(train_loss) else None)
    finite = math.isfinite(train_loss) and bool(torch.isfinite(x).all())
    data = setup.data
    test_loss, test_acc = (
        evaluate(setup.module, setup.layout, x, data.test_x, data.test_y, data.task,
                 loss=setup.loss, buffers=evaluated_buffers(setup, buffers))
        if finite else (float("nan"), None)
    )
    return {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
            "test_loss": test_loss, "train_acc": train_acc, "test_acc": test_acc,
            "lr": lr, "wall_s": round(time.perf_counter() - t0, 6)}, finite


def finish_summary(summary: dict[str, Any], metrics: list[dict[str, Any]], step: int,
                   t0: float, diverged: bool, stepped: bool = False) -> dict[str, Any]:
    """``summary`` with the final and best metrics, the status and the counts filled in
    (``diverged``: the last evaluation's loss or parameters were not finite).
    ``stepped``: the run is scheduled by steps (:func:`by_steps`); its rows are
    evaluations, counted in ``evaluations``, and ``epochs_completed`` is the epoch its last
    step fell in (1-based; that epoch possibly cut short). Otherwise a row is an epoch and
    ``epochs_completed`` counts them."""
    summary = dict(summary)
    if diverged:
        summary["status"] = "diverged"
        summary["diverged_at_epoch"] = metrics[-1]["epoch"]
        if stepped:
            summary["diverged_at_step"] = metrics[-1]["step"]
    summary.update(final_metrics(metrics))
    summary["epochs_completed"] = (metrics[-1]["epoch"] if stepped and metrics
                                   else len(metrics))
    if stepped:
        summary["evaluations"] = len(metrics)
    summary["steps"] = step
    summary["wall_s"] = round(time.perf_counter() - t0, 6)
    return summary


def write_results(out: Path, setup: RunSetup, x: Tensor, summary: dict[str, Any],
                  buffers: WorkerBuffers | None = None) -> None:
    """Write the final parameters (``params.pt``, named as the model's, with the evaluated
    running statistics :func:`evaluated_buffers` of every worker's ``buffers``: a state
    dict ``load_state_dict`` takes) and then ``summary.json``, whose presence marks a
    finished run. The tensors are saved on the CPU, whatever the run's device, so that
    any machine loads them."""
    params = {k: v.to("cpu", copy=True) for k, v in setup.layout.unflatten(x).items()}
    kept = {k: v.cpu() for k, v in (evaluated_buffers(setup, buffers) or {}).items()}
    runs.write_params(out / "params.pt", {**params, **kept})
    runs.write_json(out / "summary.json", summary)


class Display:
    """Where a run shows its epochs: ``OUT/metrics.csv`` (when there is a folder),
    TensorBoard (``--tensorboard``) and the progress bar (when ``progress``)."""

    def __init__(self, config: TrainConfig, out: Path | None, progress: bool,
                 done: int = 0, steps: int | None = None) -> None:
        """``steps``: the run's total steps when it is scheduled by steps
        (:func:`by_steps`): the bar then counts steps, and ``done`` is the steps done (a
        resumed run's); else it counts epochs, ``done`` of them done."""
        self.out = out
        self.steps = steps
        self.done = done
        self.board = (runs.TensorBoardLog(out / "tensorboard")
                      if out is not None and config.tensorboard else None)
        self.bar = (progress_bar(config.epochs, progress) if steps is None
                    else progress_bar(steps, progress, "steps", "step"))
        if self.bar is not None and done:
            self.bar.update(done)

    def record(self, row: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
        """Append an epoch's row to ``metrics`` and show it."""
        metrics.append(row)
        if self.out is not None:
            runs.write_metrics(self.out / "metrics.csv", metrics)
        if self.board is not None:
            self.board.log(row, "epoch" if self.steps is None else "step")
        if self.bar is not None:
            self.bar.set_postfix_str(postfix(row), refresh=False)
            self.bar.update(1 if self.steps is None else row["step"] - self.done)
        if self.steps is not None:
            self.done = row["step"]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()


def partition_table(part: partition.Partition, data: Dataset, blind_mask: Tensor,
                    byzantine_mask: Tensor) -> list[dict[str, Any]]:
    """One row per worker: its role, sample count and, for classification, its label
    entropy (bits) and label histogram (columns ``label_0`` ... ``label_{C-1}``)."""
    rows = []
    histogram = (partition.label_histogram(part, data.train_y, data.n_classes)
                 if data.task == "classification" else None)
    for i, idx in enumerate(part):
        role = ("byzantine" if byzantine_mask[i] else "blind" if blind_mask[i] else "honest")
        row: dict[str, Any] = {"worker": i, "role": role, "samples": idx.numel()}
        if histogram is not None:
            row["label_entropy_bits"] = round(float(partition.label_entropy(histogram[i])), 6)
            row.update({f"label_{k}": int(v) for k, v in enumerate(histogram[i].tolist())})
        rows.append(row)
    return rows


def final_metrics(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best test metrics (best by test accuracy, or by test loss for regression)."""
    finite = [r for r in metrics if math.isfinite(r["test_loss"])]
    result: dict[str, Any] = {
        "final_test_loss": metrics[-1]["test_loss"] if metrics else None,
        "final_test_acc": metrics[-1]["test_acc"] if metrics else None,
        "final_train_loss": metrics[-1]["train_loss"] if metrics else None,
    }
    if finite:
        best_loss = min(finite, key=lambda r: r["test_loss"])
        result["best_test_loss"], result["best_test_loss_epoch"] = (
            best_loss["test_loss"], best_loss["epoch"])
        result["best_test_loss_step"] = best_loss["step"]
        if finite[0]["test_acc"] is not None:
            best_acc = max(finite, key=lambda r: r["test_acc"])
            result["best_test_acc"], result["best_test_acc_epoch"] = (
                best_acc["test_acc"], best_acc["epoch"])
            result["best_test_acc_step"] = best_acc["step"]
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            result[key] = None  # JSON has no NaN
    return result


def postfix(row: dict[str, Any]) -> str:
    """The progress bar's text for an epoch's row."""
    text = f"loss {row['train_loss']:.4f} test {row['test_loss']:.4f}"
    if row["test_acc"] is not None:
        text += f" acc {100 * row['test_acc']:.2f}%"
    return text


def progress_bar(total: int, enabled: bool, desc: str = "epochs", unit: str = "ep"):
    """A tqdm bar over ``total`` epochs (or steps: ``desc``, ``unit``) on stderr (None when
    not ``enabled``)."""
    if not enabled:
        return None
    from tqdm import tqdm

    # In a log file (not a terminal) every refresh is a new line: refresh rarely there.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True,
                dynamic_ncols=True, mininterval=interval)
