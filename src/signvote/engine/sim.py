"""The simulator: all n workers in one process, one batched gradient call per step.

Each step runs the one data path of docs/design.md::

    G = worker_gradients(x, batches)      # [n, d], one forward + one backward for all workers
    M, state = rule.step(G, state)        # sgd / signsgd / signum
    M = attack(M, masks, ctx)             # blind workers, then the Byzantine coalition
    M = ternary(M) for sign rules         # what a bit-packed sign message can carry
    v = aggregator(M)                     # mean / majority vote / ...
    x = x - lr * (v + weight_decay * x)

The training set is partitioned among the workers (``--partition``; iid by default, the
seed's layout); every epoch each worker walks ``N // n`` of its samples as an endless
cycle (``data.partition.epoch_indices``), ``batch_size`` samples a step, the last batch of
an epoch being shorter when that does not divide. The learning rate is
``lr * lr_decay_rate ** (epoch // lr_decay_step)`` (0-based epoch). The test set is
evaluated after every epoch. The same config and seed give a bit-identical metrics.csv on
the same machine.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import signvote
from signvote import aggregators, attacks, models, rules, theory
from signvote.aggregators.basic import ternary_votes
from signvote.data import Dataset, partition
from signvote.data import load as load_dataset
from signvote.engine.gradients import (
    BatchedModel,
    ParamLayout,
    WorkerStep,
    evaluate,
    worker_gradients,
)
from signvote.engine.memory import keep_freed_memory
from signvote.experiment import runs
from signvote.experiment.config import ConfigError, TrainConfig, resolve

# Offsets that give every random stream of a run its own generator from the one seed.
PARTITION_STREAM, ADVERSARY_STREAM, ATTACK_STREAM, RULE_STREAM = 1, 2, 3, 4


@dataclass(frozen=True)
class DataPath:
    """One training step of every engine: gradients -> rule -> attacks -> aggregator -> update.

    Attributes:
        model: the model compiled for per-worker gradients.
        rule: the worker rule.
        plan: ``(attack, mask)`` pairs applied in order (blind first, then Byzantine).
        aggregator: the server rule.
        task: ``classification`` or ``regression``.
        weight_decay: lambda of the update.
        generator: the adversaries' random generator (advanced by random attacks).
        rule_generators: each worker's coins (stochastic sign), :func:`coin_generators`.
        n_classes: the number of classes (None for regression), for data-level attacks.
    """

    model: BatchedModel
    rule: rules.WorkerRule
    plan: list
    aggregator: Any
    task: str
    weight_decay: float
    generator: torch.Generator
    rule_generators: list[torch.Generator] | None = None
    n_classes: int | None = None

    def step(
        self, x: Tensor, state: Tensor | None, inputs: Tensor, targets: Tensor, lr: float,
        step: int,
    ) -> tuple[Tensor, Tensor | None, WorkerStep]:
        """One step from parameters ``x`` on the workers' batches ``inputs[n, b, ...]``;
        returns the new parameters, the new rule state and the honest step statistics."""
        x, state, honest, _, _ = self.step_observed(x, state, inputs, targets, lr, step)
        return x, state, honest

    def step_observed(
        self, x: Tensor, state: Tensor | None, inputs: Tensor, targets: Tensor, lr: float,
        step: int,
    ) -> tuple[Tensor, Tensor | None, WorkerStep, Tensor, Tensor]:
        """:meth:`step`, also returning the workers' own messages (before any attack) and
        the aggregate."""
        honest = worker_gradients(self.model, x, inputs,
                                  attacks.poison_targets(self.plan, targets, self.n_classes),
                                  self.task)
        own, state = self.rule.step(honest.grads, state, self.rule_generators)
        messages = own
        if self.plan:
            ctx = attacks.AttackContext(step, self.generator, self.rule.sends_signs,
                                        self.aggregator)
            messages = attacks.apply_all(self.plan, messages, ctx)
            # only a ternary value survives the 1-2 bit wire (a vote reads it so itself)
            if self.rule.sends_signs and not getattr(self.aggregator, "reads_signs", False):
                messages = ternary_votes(messages)
        direction = self.aggregator(messages)
        return apply_update(x, direction, lr, self.weight_decay), state, honest, own, direction


@dataclass
class RunResult:
    """What a run returns (and wrote to its folder)."""

    config: TrainConfig
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    params: Tensor | None = None

    @property
    def status(self) -> str:
        return self.summary["status"]


def coin_generators(seed: int, workers: range | list[int]) -> list[torch.Generator]:
    """The generators of the given workers' coins: worker ``i`` draws from
    ``seed + RULE_STREAM + 1000 i`` in every engine."""
    return [torch.Generator().manual_seed(seed + RULE_STREAM + 1000 * i) for i in workers]


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
    """Upload size of one worker's message: 1 bit per coordinate for signs, 4 bytes for fp32."""
    return math.ceil(dim / 8) if sends_signs else 4 * dim


def apply_update(x: Tensor, direction: Tensor, lr: float, weight_decay: float) -> Tensor:
    """The server's step ``x - lr * (direction + weight_decay * x)`` (a new tensor)."""
    if weight_decay:
        direction = direction + weight_decay * x
    return x - lr * direction


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The step-decayed learning rate of 0-based ``epoch``."""
    return config.lr * config.lr_decay_rate ** (epoch // config.lr_decay_step)


@dataclass
class RunSetup:
    """Everything a run builds from its config before the first step (both engines).

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
        blind_mask, byzantine_mask: the adversaries among the workers.
        plan: ``(attack, mask)`` pairs applied in order (blind first, then Byzantine).
        summary: the summary fields known before training.
        workers_table: one row per worker (``partition.csv``).
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
    aggregator: Any
    blind_mask: Tensor
    byzantine_mask: Tensor
    plan: list
    summary: dict[str, Any]
    workers_table: list[dict[str, Any]]

    @property
    def n_classes(self) -> int | None:
        return self.data.n_classes if self.data.task == "classification" else None

    @property
    def fixed_order(self) -> bool:
        """True when every worker walks the same samples every epoch."""
        return all(idx.numel() == self.per_epoch for idx in self.part)

    def walk(self, epoch: int) -> tuple[Tensor, Tensor]:
        """The inputs ``[n, per_epoch, ...]`` and targets of every worker in ``epoch``."""
        walk = partition.epoch_indices(self.part, self.per_epoch, epoch)
        return self.data.train_x[walk], self.data.train_y[walk]


def prepare(config: TrainConfig, engine: str = "sim") -> RunSetup:
    """Resolve ``config`` and build the data, model, partition, rules and adversaries."""
    c = resolve(config)
    keep_freed_memory()
    torch.manual_seed(c.seed)
    data = load_dataset(c.dataset, c.seed, Path(c.data_dir) if c.data_dir else None)
    try:
        module = models.build(c.model, data.input_shape, data.n_classes)
    except ValueError as exc:
        raise ConfigError(f"--model {c.model}: {exc}") from None
    module.train()
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    batched = BatchedModel(module, layout)

    try:
        part = partition.get(
            c.partition, data.train_y, c.workers,
            torch.Generator().manual_seed(c.seed + PARTITION_STREAM),
            alpha=c.partition_alpha, shards_per_worker=c.partition_shards,
            gamma=c.partition_gamma)
    except ValueError as exc:
        raise ConfigError(f"--partition {c.partition}: {exc}") from None
    per_epoch = data.train_x.shape[0] // c.workers  # samples each worker walks an epoch
    if c.batch_size > per_epoch:
        raise ConfigError(
            f"--batch-size {c.batch_size} exceeds the {per_epoch} samples per worker and "
            f"epoch; valid: 1 to {per_epoch}"
        )

    rule = rules.get(c.rule, c.momentum, c.sign_bound)
    aggregator = aggregators.build(c.aggregator, c.aggregator_f)
    blind_mask, byzantine_mask = choose_adversaries(c.workers, c.blind, c.byzantine, c.seed)
    plan = []
    if c.blind:
        plan.append((attacks.get("blind-inversion"), blind_mask))
    if c.byzantine:
        plan.append((attacks.build(c.attack), byzantine_mask))

    summary: dict[str, Any] = {
        "status": "completed",
        "engine": engine,
        "params": layout.dim,
        "workers": c.workers,
        "blind_workers": torch.nonzero(blind_mask).flatten().tolist(),
        "byzantine_workers": torch.nonzero(byzantine_mask).flatten().tolist(),
        "bytes_sent_per_worker_per_step": message_bytes(layout.dim, rule.sends_signs),
        "signvote_version": signvote.__version__,
        "torch_version": torch.__version__,
    }
    workers_table = partition_table(part, data, blind_mask, byzantine_mask)
    summary["partition"] = c.partition
    if data.task == "classification":
        summary["mean_worker_label_entropy_bits"] = round(
            sum(r["label_entropy_bits"] for r in workers_table) / c.workers, 6)
        summary["dataset_label_entropy_bits"] = round(float(partition.label_entropy(
            torch.bincount(data.train_y, minlength=data.n_classes))), 6)
    return RunSetup(c, data, module, layout, x, batched, part, per_epoch,
                    range(0, per_epoch, c.batch_size), rule, aggregator, blind_mask,
                    byzantine_mask, plan, summary, workers_table)


def start_run_folder(setup: RunSetup) -> Path:
    """Create the run folder, drop a previous run's summary and metrics, write the config
    and the partition table; returns the folder."""
    out = Path(setup.config.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "metrics.csv", "params.pt"):
        (out / stale).unlink(missing_ok=True)
    runs.write_json(out / "config.json", setup.config.to_dict())
    runs.write_csv(out / "partition.csv", setup.workers_table[0].keys(), setup.workers_table)
    return out


def epoch_row(epoch: int, step: int, losses: list[Tensor], correct: list[Tensor], seen: int,
              x: Tensor, setup: RunSetup, lr: float, t0: float
              ) -> tuple[dict[str, Any], bool]:
    """The metrics row of 0-based ``epoch`` (the workers' mean batch loss and accuracy over
    the epoch, the test loss and accuracy of ``x``) and whether the training loss and the
    parameters are finite (the test metrics are NaN and None when not)."""
    train_loss = float(torch.stack(losses).mean())
    train_acc = float(torch.stack(correct).sum()) / seen if correct else None
    finite = math.isfinite(train_loss) and bool(torch.isfinite(x).all())
    data = setup.data
    test_loss, test_acc = (
        evaluate(setup.module, setup.layout, x, data.test_x, data.test_y, data.task)
        if finite else (float("nan"), None)
    )
    return {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
            "test_loss": test_loss, "train_acc": train_acc, "test_acc": test_acc,
            "lr": lr, "wall_s": round(time.perf_counter() - t0, 6)}, finite


def finish_summary(summary: dict[str, Any], metrics: list[dict[str, Any]], step: int,
                   t0: float, diverged: bool) -> dict[str, Any]:
    """``summary`` with the final and best metrics, the status and the counts filled in
    (``diverged``: the last epoch's loss or parameters were not finite)."""
    summary = dict(summary)
    if diverged:
        summary["status"] = "diverged"
        summary["diverged_at_epoch"] = metrics[-1]["epoch"]
    summary.update(_final_metrics(metrics))
    summary["epochs_completed"] = len(metrics)
    summary["steps"] = step
    summary["wall_s"] = round(time.perf_counter() - t0, 6)
    return summary


def train(config: TrainConfig, *, progress: bool = True, write: bool = True) -> RunResult:
    """Train with the simulator; writes the run folder ``config.out`` when ``write``."""
    setup = prepare(config)
    c, x = setup.config, setup.x
    path = DataPath(setup.batched, setup.rule, setup.plan, setup.aggregator, setup.data.task,
                    c.weight_decay, torch.Generator().manual_seed(c.seed + ATTACK_STREAM),
                    coin_generators(c.seed, range(c.workers)), setup.n_classes)
    if write:
        out = start_run_folder(setup)

    metrics: list[dict[str, Any]] = []
    state = None
    step = 0
    t0 = time.perf_counter()
    bar = _progress_bar(c.epochs, progress)
    board = runs.TensorBoardLog(out / "tensorboard") if write and c.tensorboard else None
    for epoch in range(c.epochs):
        lr = learning_rate(c, epoch)
        if epoch == 0 or not setup.fixed_order:
            inputs, targets = setup.walk(epoch)  # [n, per_epoch, ...]
        batch_losses, batch_correct, seen = [], [], 0
        measured: list[dict[str, float]] = []
        agreement = torch.zeros(2, setup.layout.dim, dtype=torch.int64)  # agreed, counted
        for start in setup.starts:
            xb, yb = inputs[:, start:start + c.batch_size], targets[:, start:start + c.batch_size]
            if c.measure_theory:
                x_before = x
                x, state, honest, own, vote = path.step_observed(x, state, xb, yb, lr, step)
                measured.append(measure(setup, x_before, honest, own, vote, agreement))
            else:
                x, state, honest = path.step(x, state, xb, yb, lr, step)
            batch_losses.append(honest.losses)
            if honest.correct is not None:
                batch_correct.append(honest.correct)
            seen += yb.numel()
            step += 1
        row, finite = epoch_row(epoch, step, batch_losses, batch_correct, seen, x, setup, lr,
                                t0)
        for key in theory.MEASURE_STEP_COLUMNS if measured else ():
            row[key] = math.fsum(m[key] for m in measured) / len(measured)
        if measured:
            row["theory_vote_wrong_predicted"] = theory.predicted_vote_wrong(
                agreement[0], agreement[1], c.workers, c.blind, c.byzantine)
        record_epoch(row, metrics, out if write else None, board, bar)
        if not finite:
            break
    if bar is not None:
        bar.close()
    if board is not None:
        board.close()
    summary = finish_summary(setup.summary, metrics, step, t0, not finite)
    if write:
        write_results(out, setup, x, summary)
    return RunResult(c, summary, metrics, x)


def write_results(out: Path, setup: RunSetup, x: Tensor, summary: dict[str, Any]) -> None:
    """Write the final parameters (``params.pt``, named as the model's) and then
    ``summary.json``, whose presence marks a finished run."""
    runs.write_params(out / "params.pt",
                      {k: v.clone() for k, v in setup.layout.unflatten(x).items()})
    runs.write_json(out / "summary.json", summary)


def record_epoch(row: dict[str, Any], metrics: list[dict[str, Any]], out: Path | None,
                 board: runs.TensorBoardLog | None, bar) -> None:
    """Append an epoch's row and show it: ``OUT/metrics.csv`` (when ``out``), TensorBoard,
    the progress bar."""
    metrics.append(row)
    if out is not None:
        runs.write_metrics(out / "metrics.csv", metrics)
    if board is not None:
        board.log(row)
    if bar is not None:
        bar.set_postfix_str(_postfix(row), refresh=False)
        bar.update(1)


def measure(setup: RunSetup, x: Tensor, honest: WorkerStep, own: Tensor, vote: Tensor,
            agreement: Tensor) -> dict[str, float]:
    """:func:`signvote.theory.measure_step` at parameters ``x``: the full-batch gradient of
    the whole training set against the honest workers' gradients and messages. Adds each
    coordinate's agreeing and counted (honest worker) pairs to ``agreement[2, d]``."""
    data = setup.data
    full = worker_gradients(setup.batched, x, data.train_x[None], data.train_y[None],
                            data.task).grads[0]
    keep = ~(setup.blind_mask | setup.byzantine_mask)
    truth = torch.sign(full)
    agree = torch.sign(own[keep]) == truth
    live = (truth != 0).expand_as(agree)
    agreement[0] += (agree & live).sum(0)
    agreement[1] += live.sum(0)
    return theory.measure_step(full, honest.grads[keep], own[keep], vote)


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


def _final_metrics(metrics: list[dict[str, Any]]) -> dict[str, Any]:
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
        if finite[0]["test_acc"] is not None:
            best_acc = max(finite, key=lambda r: r["test_acc"])
            result["best_test_acc"], result["best_test_acc_epoch"] = (
                best_acc["test_acc"], best_acc["epoch"])
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            result[key] = None  # JSON has no NaN
    return result


def _postfix(row: dict[str, Any]) -> str:
    text = f"loss {row['train_loss']:.4f} test {row['test_loss']:.4f}"
    if row["test_acc"] is not None:
        text += f" acc {100 * row['test_acc']:.2f}%"
    return text


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # In a log file (not a terminal) every refresh is a new line: refresh rarely there.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc="epochs", unit="ep", file=sys.stderr, leave=True,
                dynamic_ncols=True, mininterval=interval)
