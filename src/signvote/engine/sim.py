"""The simulator: all n workers in one process, one batched gradient call per step.

Each step is :class:`signvote.engine.step.DataPath` (the stages of ``engine/step.py``) on
all ``n`` workers' rows at once; the run's construction and folder are ``engine/run.py``'s.
This module is the loop only.

The training set is partitioned among the workers (``--partition``; iid by default, the
seed's layout); every epoch each worker walks ``N // n`` of its samples as an endless
cycle (``data.partition.epoch_indices``), ``batch_size`` samples a step, the last batch of
an epoch being shorter when that does not divide; under ``--augment on`` each worker's batch
is cropped and flipped by the numbers of its own stream (``data/augment.py``). The
learning rate is ``lr * lr_decay_rate ** (epoch // lr_decay_step)`` (0-based epoch). The
test set is evaluated after every epoch, or every ``--eval-every`` steps; ``--steps N``
stops after N steps, within an epoch or beyond the first (``engine.run.evaluation_due``).
The same config and seed give a bit-identical metrics.csv on the same machine.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from signvote import theory
from signvote.engine.gradients import WorkerStep, worker_gradients
from signvote.engine.parts import Parts
from signvote.engine.run import (
    Display,
    EpochStats,
    RunResult,
    RunSetup,
    attack_generator,
    augmenter,
    by_steps,
    coin_generators,
    epoch_row,
    evaluated_buffers,
    evaluation_due,
    finish_summary,
    learning_rate,
    prepare,
    run_rng,
    start_run_folder,
    total_steps,
    write_results,
)
from signvote.engine.step import DataPath
from signvote.engine.threads import run_threads, torch_threads
from signvote.experiment.config import TrainConfig


def data_path(setup: RunSetup) -> DataPath:
    """The simulator's step for ``setup``: all workers, their coins, the attack stream
    (the generators on the parameters' device, where the coins and the noise are drawn)."""
    c, device = setup.config, setup.x.device
    return DataPath(setup.batched, setup.rule, setup.plan, setup.aggregator, setup.data.task,
                    c.weight_decay, attack_generator(c.seed, device),
                    coin_generators(c.seed, range(c.workers), device), setup.n_classes,
                    setup.loss, compiled=c.compile, allocation=setup.allocation)


def train(config: TrainConfig, *, progress: bool = True, write: bool = True,
          parts: Parts | None = None) -> RunResult:
    """Train with the simulator; writes the run folder ``config.out`` when ``write``.
    ``parts``: objects the run is built from instead of the config's names
    (:class:`~signvote.engine.parts.Parts`; :func:`signvote.train` makes them)."""
    setup = prepare(config, parts=parts)
    with (torch_threads(run_threads(setup.config.threads, setup.layout.dim)),
          run_rng(setup.rng_state, setup.x.device, setup.config.seed)):
        return _loop(setup, progress, write)


def _loop(setup: RunSetup, progress: bool, write: bool) -> RunResult:
    c, x = setup.config, setup.x
    path = data_path(setup)
    augment = augmenter(c, setup.data, range(c.workers))  # None under --augment off
    out = start_run_folder(setup) if write else None
    scored = ~setup.plan.byzantine_mask  # the train metrics' workers
    n_scored = int(scored.sum())
    every_worker_scored = n_scored == c.workers
    metrics: list[dict[str, Any]] = []
    state = path.initial_state()
    step = 0
    t0 = time.perf_counter()
    per_epoch_steps = len(setup.starts)
    total = total_steps(c, per_epoch_steps)
    stepped = by_steps(c)
    display = Display(c, out, progress, steps=total if stepped else None)
    finite = True

    device = x.device

    def fresh() -> tuple[EpochStats, list[dict[str, float]], Tensor]:
        """The statistics of the steps since the last evaluation: none yet."""
        return EpochStats(), [], torch.zeros(2, setup.layout.dim, dtype=torch.int64,
                                             device=device)  # agreed, counted

    stats, measured, agreement = fresh()
    for epoch in range(math.ceil(total / per_epoch_steps)):
        lr = learning_rate(c, epoch)
        if epoch == 0 or not setup.fixed_order:
            inputs, targets = setup.walk(epoch)  # [n, per_epoch, ...]
        for start in setup.starts:
            if step == total:
                break
            xb, yb = inputs[:, start:start + c.batch_size], targets[:, start:start + c.batch_size]
            if augment is not None:
                xb = augment(xb)  # every worker's batch, from its own stream
            if c.measure_theory:
                x_before = x
                x, state, honest, seen = path.step_observed(x, state, xb, yb, lr, step)
                measured.append(measure(setup, x_before, honest, seen.own, seen.direction,
                                        agreement))
            else:
                x, state, honest = path.step(x, state, xb, yb, lr, step)
            stats.add(honest.losses, honest.correct, yb.shape[1] * n_scored)
            step += 1
            if not evaluation_due(c, step, per_epoch_steps, total):
                continue
            if not every_worker_scored:
                stats = stats.scored(scored)
            row, finite = epoch_row(epoch, step, stats, x, setup, lr, t0, state.buffers)
            for key in theory.MEASURE_STEP_COLUMNS if measured else ():
                row[key] = math.fsum(m[key] for m in measured) / len(measured)
            if measured:
                counts = agreement.cpu()  # once a row; the prediction computes on the CPU
                row["theory_vote_wrong_predicted"] = theory.predicted_vote_wrong(
                    counts[0], counts[1], c.workers, c.blind, c.byzantine)
                row |= theory.p_coordinate_spread(counts[0], counts[1])
            display.record(row, metrics)
            stats, measured, agreement = fresh()
            if not finite:
                break
        if not finite:
            break
    display.close()
    summary = finish_summary(setup.summary, metrics, step, t0, not finite, stepped)
    if out is not None:
        write_results(out, setup, x, summary, state.buffers)
    return RunResult(c, summary, metrics, x, evaluated_buffers(setup, state.buffers))


def measure(setup: RunSetup, x: Tensor, honest: WorkerStep, own: Tensor, vote: Tensor,
            agreement: Tensor) -> dict[str, float]:
    """:func:`signvote.theory.measure_step` at parameters ``x``: the full-batch gradient of
    the whole training set against the honest workers' gradients and messages. Adds each
    coordinate's agreeing and counted (honest worker) pairs to ``agreement[2, d]``."""
    data = setup.data
    full = worker_gradients(setup.batched, x, data.train_x[None], data.train_y[None],
                            data.task, loss=setup.loss).grads[0]
    keep = setup.plan.honest_mask
    truth = torch.sign(full)
    agree = torch.sign(own[keep]) == truth
    live = (truth != 0).expand_as(agree)
    agreement[0] += (agree & live).sum(0)
    agreement[1] += live.sum(0)
    return theory.measure_step(full, honest.grads[keep], own[keep], vote)
