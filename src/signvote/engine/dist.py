"""The distributed engine: one process per worker under torch.distributed (gloo or NCCL).

Every worker rank runs the stages of ``engine/step.py`` on its own row::

    y_i = plan.poison(y_i, workers=[i])       # a label-flipping worker's batch
    g_i = worker_gradients(x, batch_i)        # this worker's batch only
    m_i, state_i = rule.step(g_i, state_i)    # the same WorkerRule the simulator calls
    m_i = plan.blind(m_i, workers=[i])        # a blind worker, from its own message
    m_i = plan.coalition(M)[i]                # Byzantine workers: the attack, run once
    v, agg_state = exchange(m_i, agg_state)   # the wire and the aggregator (engine.protocol)
    x = apply_update(x, v, lr, weight_decay)

The Byzantine coalition's attack runs on its lowest rank, on the matrix the simulator
would give it: the coalition's own rows and, for an omniscient attack, every worker's row,
which the workers send to it first (the paper's "Byzantine server"). The crafted rows are
scattered back to the coalition's ranks, which send them as their messages.

Layouts (``--layout``): ``server``, rank 0 a trusted server and ranks ``1..n`` the workers
(``n + 1`` processes), or ``peer``, ranks ``0..n-1`` the workers, every one aggregating.
For the same config and seed the parameters equal the simulator's after every step: bit
for bit for sign rules (every worker draws the stochastic sign's coins from its own
stream in both engines) and for the aggregators that gather rows, to float rounding for
the mean (an all-reduce sums in another order). Each worker rank keeps its own model
buffers (its row of the simulator's); rank 0 gathers them at every evaluation and
evaluates the model with the simulator's statistics (``run.evaluated_buffers``).

Faults: rank 0 writes ``OUT/checkpoint.pt`` atomically every ``--checkpoint-every`` steps
(every epoch by default; after the evaluation when one falls on the same step, so that
``--steps`` and ``--eval-every`` resume like epochs) with the parameters, every worker's
rule state and model buffers (BatchNorm's running statistics), the random generators,
the aggregator's state and the metrics so far: tensors and plain data only,
read back with ``torch.load(weights_only=True)``. A run that starts (or is
restarted by torchrun, ``--max-restarts``) with a checkpoint of the same config resumes
from it, so a killed worker costs the steps since the last checkpoint and changes nothing
else. A rank that stops answering makes the others fail after ``--dist-timeout`` seconds
with a message that says so.

Devices: rank r computes on ``cuda:(LOCAL_RANK % GPUs)`` with ``--device cuda``
(:func:`rank_device`); ``--backend auto`` is NCCL when every rank has a GPU of its own,
else gloo (:func:`choose_backend`). Under NCCL the collectives move GPU tensors; every
object gathered or saved (checkpoint states, statistics) goes through the CPU
(:func:`on_cpu`), and a checkpoint is read onto each rank's device (:func:`on_device`).

Launch: ``signvote train --engine dist ...`` starts the processes on this machine through
torch's elastic launcher (torchrun's); on several machines run on each
``torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m
signvote train --engine dist ...`` with ``N * P`` the process count.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from signvote.attacks import AttackContext
from signvote.contracts import Preview
from signvote.engine import protocol
from signvote.engine.gradients import WorkerBuffers, worker_gradients
from signvote.engine.run import (
    Display,
    EpochStats,
    RunResult,
    RunSetup,
    attack_generator,
    augmenter,
    by_steps,
    check_overwrite,
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
from signvote.engine.step import apply_update
from signvote.engine.threads import run_threads, torch_threads
from signvote.experiment import runs
from signvote.experiment.config import ConfigError, TrainConfig, trajectory_key

FAULT_ENV = "SIGNVOTE_FAULT"
"""Fault injection for tests: ``kill:RANK:STEP`` (SIGKILL) or ``hang:RANK:STEP`` (sleep
forever) at the start of global step STEP on rank RANK, in the first attempt only."""

CHECKPOINT = "checkpoint.pt"
STARTUP_TIMEOUT = timedelta(seconds=120)
"""How long a rank waits for the others to start (the rendezvous store's timeout)."""


class DistError(RuntimeError):
    """The distributed run failed; the message is one line for the user."""


def world_size(config: TrainConfig) -> int:
    """The number of processes of a run: one per worker, plus the server in ``server``."""
    return config.workers + (1 if config.layout == "server" else 0)


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun / the elastic launcher."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def worker_of(rank: int, layout: str) -> int | None:
    """The worker a rank runs (None for the server)."""
    if layout == "server":
        return None if rank == 0 else rank - 1
    return rank


def rank_of(worker: int, layout: str) -> int:
    """The rank that runs ``worker``."""
    return worker + 1 if layout == "server" else worker


def rank_device(device: str, local_rank: int, gpus: int) -> str:
    """The device of the rank with ``LOCAL_RANK`` ``local_rank`` on a machine with ``gpus``
    visible GPUs, for a resolved ``--device``: ``cpu``; ``cuda`` (and ``auto`` with a GPU)
    one GPU per rank, ``cuda:(local_rank % gpus)``, so ranks share GPUs when there are
    more of them than GPUs; ``cuda:N`` that GPU for every rank."""
    if device == "cpu" or (device == "auto" and gpus == 0):
        return "cpu"
    if device in ("auto", "cuda"):
        if gpus == 0:
            raise ConfigError("--device cuda: no CUDA device is visible; valid: auto, cpu")
        return f"cuda:{local_rank % gpus}"
    return device


def choose_backend(backend: str, device: str, local_world: int, gpus: int) -> str:
    """The torch.distributed backend for a resolved ``--device`` with ``local_world`` ranks
    on a machine with ``gpus`` visible GPUs. The ranks have a GPU each when the device is
    ``cuda`` (or ``auto`` with a GPU) and ``local_world <= gpus``, or when one rank runs on
    ``cuda:N``. ``auto`` is nccl then, else gloo: NCCL refuses two ranks on one GPU
    ("Duplicate GPU detected"), and ranks sharing a GPU compute on it and exchange CPU
    copies of their frames over gloo. ``nccl`` is refused (:class:`ConfigError`) unless
    every rank has a GPU of its own."""
    shared = device not in ("auto", "cuda", "cpu") and local_world > 1  # cuda:N for all
    own_gpu = (device != "cpu" and gpus > 0 and local_world <= gpus and not shared)
    if backend == "auto":
        return "nccl" if own_gpu else "gloo"
    if backend == "nccl" and not own_gpu:
        raise ConfigError(
            f"--backend nccl needs a GPU of its own for each rank; this machine runs "
            f"{local_world} rank(s) on {gpus} GPU(s) with --device {device}; valid: "
            f"--backend gloo or auto, or at most {gpus} rank(s) per machine with --device "
            f"cuda")
    return backend


# --- the launcher ----------------------------------------------------------------------


def launch(config: TrainConfig, argv: list[str]) -> dict[str, Any]:
    """Run ``signvote ARGV`` in ``world_size(config)`` local processes under torch's elastic
    agent (torchrun's), restarting them up to ``--max-restarts`` times; returns the run's
    summary. Raises :class:`DistError` when the run fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    c = prepare(config, engine="dist").config  # every check (data, model, batch) here, once
    check_overwrite(c)  # before any process starts
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choose_backend(c.backend, c.device, world_size(c), gpus)  # nccl without a GPU per rank
    launch_config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=world_size(c), run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=c.max_restarts,
        monitor_interval=0.2)
    threads = max(1, (os.cpu_count() or 1) // world_size(c))
    _quiet_elastic_logs()
    try:
        # TORCH_NCCL_BLOCKING_WAIT: under NCCL a rank waiting past --dist-timeout raises (the
        # one-line message) instead of being torn down by NCCL's watchdog; gloo ignores it
        with scoped_environment(
                OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)),
                TORCH_NCCL_BLOCKING_WAIT=os.environ.get("TORCH_NCCL_BLOCKING_WAIT", "1")):
            elastic_launch(launch_config, sys.executable)("-m", "signvote", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        cause = (f"exit code {failure.exitcode}" if failure.exitcode >= 0
                 else f"signal {signal.Signals(-failure.exitcode).name}")
        raise DistError(f"the distributed run failed after {c.max_restarts} restart(s): rank "
                        f"{rank} ended with {cause} (its message is above)") from None
    summary = Path(c.out) / "summary.json"
    import json

    return json.loads(summary.read_text())


@contextlib.contextmanager
def scoped_environment(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_elastic_logs() -> None:
    import logging

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)


# --- one rank ----------------------------------------------------------------------------


def train(config: TrainConfig, *, progress: bool = True) -> RunResult | None:
    """Run this process's rank (RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun); returns
    the run's result on rank 0, None on the others."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = rank_device(config.device, local_rank, gpus)
    backend = choose_backend(config.backend, config.device, local_world, gpus)
    setup = prepare(config, engine="dist", device=device)
    c = setup.config
    if world != world_size(c):
        server = " and the server" if c.layout == "server" else ""
        raise ConfigError(
            f"--engine dist --layout {c.layout} with --workers {c.workers} needs "
            f"{world_size(c)} processes (one per worker{server}); this run has {world}; "
            f"valid: --nproc-per-node x --nnodes = {world_size(c)}")
    timeout = timedelta(seconds=c.dist_timeout)
    try:
        # the ranks start at different times: wait for them longer than for a step
        store = attempt_store(rank, world, max(timeout, STARTUP_TIMEOUT))
        if backend == "nccl":  # object collectives and barriers use the current device
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", store=store, rank=rank, world_size=world,
                                    timeout=timeout, device_id=torch.device(device))
        else:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                    timeout=timeout)
    except RuntimeError as exc:
        if not is_communication_failure(exc):
            raise
        raise DistError(describe_failure(exc, rank, c.dist_timeout)) from None
    try:
        with (torch_threads(run_threads(c.threads, setup.layout.dim)),
              run_rng(setup.rng_state, setup.x.device, c.seed)):
            return _Rank(setup, rank, world, backend).run(progress and rank == 0)
    except RuntimeError as exc:
        if isinstance(exc, DistError) or not is_communication_failure(exc):
            raise  # a bug (a shape, a dtype) surfaces as what it is, with its traceback
        raise DistError(describe_failure(exc, rank, c.dist_timeout)) from None
    finally:
        dist.destroy_process_group()


def attempt_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT, its keys prefixed by the elastic
    attempt: after a restart the ranks must not read the addresses the previous attempt's
    ranks published there (they did in torch 2.13, and the restarted ranks failed to
    connect)."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank == 0, timeout=timeout,
                          multi_tenant=True)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"signvote/attempt_{attempt}/", store)


COMMUNICATION_MARKERS = ("gloo", "nccl", "connection", "connect", "timed out", "timeout",
                         "broken pipe", "closed", "reset by peer", "socket", "store")
"""Words of the errors that torch.distributed raises as plain RuntimeErrors."""


def is_communication_failure(exc: BaseException) -> bool:
    """True for an error of the communication itself (torch.distributed's ``DistError``,
    or a RuntimeError of the transport); False for any other error, such as a shape or
    dtype mismatch in a computation, which must surface as what it is."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in COMMUNICATION_MARKERS)


def describe_failure(exc: BaseException, rank: int, timeout: float) -> str:
    """One line for a communication failure of ``rank``."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "timed out" in text.lower() or "timeout" in text.lower():
        return (f"rank {rank}: no answer from another rank within --dist-timeout {timeout:g} s; "
                f"a rank hung or is unreachable ({text.split('] ')[-1]})")
    if "closed" in text.lower() or "reset" in text.lower() or "broken pipe" in text.lower():
        return f"rank {rank}: another rank died or closed its connection ({text.split('] ')[-1]})"
    return f"rank {rank}: communication failed: {text}"


class _Rank:
    """One process of a distributed run: its role, its state, its training loop."""

    def __init__(self, setup: RunSetup, rank: int, world: int, backend: str = "gloo") -> None:
        c = setup.config
        self.setup, self.c, self.rank, self.world = setup, c, rank, world
        self.backend = backend
        # where this rank computes (the parameters' device), and where its collectives'
        # buffers live: that GPU under NCCL, the CPU under gloo
        self.home = setup.x.device
        self.wire = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                     else torch.device("cpu"))
        self.plan = setup.plan
        self.worker = worker_of(rank, c.layout)
        self.workers = None if self.worker is None else [self.worker]
        self.traffic = protocol.Traffic()
        self.side_traffic = protocol.Traffic()  # honest rows sent to the coalition
        self.exchange = protocol.Exchange(c.layout, rank, world, setup.layout.dim,
                                          setup.rule.capabilities.sends_signs, setup.aggregator,
                                          self.traffic, home=self.home, wire=self.wire)
        self.byzantine = self.worker is not None and bool(self.plan.byzantine_mask[self.worker])
        attack = self.plan.message_attack
        self.message_attack = attack is not None
        self.omniscient = attack is not None and attack.capabilities.knowledge == "omniscient"
        byzantine_workers = torch.nonzero(self.plan.byzantine_mask).flatten().tolist()
        self.coalition_ranks = [rank_of(w, c.layout) for w in byzantine_workers]
        # Every rank creates every group, in the same order (torch.distributed's rule).
        self.workers_group = (dist.new_group(list(range(1, world)),
                                             timeout=timedelta(seconds=c.dist_timeout))
                              if c.layout == "server" else None)
        self.coalition = (dist.new_group(self.coalition_ranks,
                                         timeout=timedelta(seconds=c.dist_timeout))
                          if self.message_attack else None)
        self.attack_generator = attack_generator(c.seed, self.home)
        self.rule_generators = coin_generators(c.seed, [self.worker or 0], self.home)
        self.augment = (None if self.worker is None  # this worker's own stream only
                        else augmenter(c, setup.data, self.workers))
        self.rule_state: Tensor | None = None
        # this worker's model buffers (BatchNorm's running statistics), its row of the
        # simulator's; None on the server and for a model without buffers
        self.buffers = None if self.worker is None else setup.batched.initial_buffers(1)
        self.agg_state = setup.aggregator.init_state()
        self.fault = _parse_fault(os.environ.get(FAULT_ENV))

    # -- the coalition ----------------------------------------------------------------
    def _coalition(self, row: Tensor, step: int) -> Tensor:
        """This worker's message after the Byzantine coalition has acted on it."""
        n, d = self.c.workers, row.numel()
        leader = self.coalition_ranks[0]
        is_leader = self.rank == leader
        matrix = None
        wire = self.wire
        if self.omniscient:  # every worker's row goes to the coalition first
            rows = [torch.empty(d, device=wire) for _ in range(n)] if is_leader else None
            dist.gather(row.to(wire).contiguous(), rows, dst=leader, group=self.workers_group)
            if not is_leader:
                self.side_traffic.add(sent=4 * d)
            if not self.byzantine:
                return row
            if is_leader:
                matrix = torch.stack(rows).to(self.home)
        elif not self.byzantine:
            return row
        else:
            size = len(self.coalition_ranks)
            rows = [torch.empty(d, device=wire) for _ in range(size)] if is_leader else None
            dist.gather(row.to(wire).contiguous(), rows, dst=leader, group=self.coalition)
            if not is_leader:
                self.side_traffic.add(sent=4 * d)
            if is_leader:
                matrix = torch.zeros(n, d, device=self.home)
                matrix[self.plan.byzantine_mask.to(self.home)] = torch.stack(rows).to(self.home)
        scatter = None
        if is_leader:
            # in the server layout this copy of the aggregator's state is the leader's own
            ctx = AttackContext(step, self.attack_generator,
                                self.setup.rule.capabilities.sends_signs,
                                Preview(self.setup.aggregator, self.agg_state))
            crafted = self.plan.coalition(matrix, ctx)
            if crafted.shape != matrix.shape:
                raise DistError(f"rank {self.rank}: attack {self.c.attack} returned messages "
                                f"of shape {tuple(crafted.shape)}; valid: {tuple(matrix.shape)}")
            scatter = [crafted[w].to(wire, torch.float32).contiguous()
                       for w in torch.nonzero(self.plan.byzantine_mask).flatten().tolist()]
        out = torch.empty(d, device=wire)
        dist.scatter(out, scatter, src=leader, group=self.coalition)
        return out.to(self.home)

    # -- one step -----------------------------------------------------------------------
    def step(self, x: Tensor, inputs: Tensor | None, targets: Tensor | None, lr: float,
             step: int):
        """One step; returns the new parameters and this worker's statistics (None on the
        server)."""
        s = self.setup
        honest = None
        row = None
        if self.worker is not None:
            targets = self.plan.poison(targets, s.n_classes, self.workers)
            honest = worker_gradients(s.batched, x, inputs, targets, s.data.task,
                                      loss=s.loss, buffers=self.buffers)
            self.buffers = honest.buffers
            messages, self.rule_state = s.rule.step(honest.grads, self.rule_state,
                                                    self.rule_generators)
            ctx = AttackContext(step, self.attack_generator, s.rule.capabilities.sends_signs)
            row = self.plan.blind(messages, ctx, self.workers)[0]
            if self.message_attack:
                row = self._coalition(row, step)
        v, self.agg_state = self.exchange(row, self.agg_state)
        return apply_update(x, v, lr, self.c.weight_decay), honest

    # -- checkpoints --------------------------------------------------------------------
    def _local_state(self, epoch_stats: EpochStats, epoch_bytes: dict[str, int]
                     ) -> dict[str, Any]:
        """This rank's state: tensors and plain data only (no pickled object)."""
        return {
            "rule_state": self.rule_state,
            "buffers": (None if self.buffers is None
                        else (self.buffers.floats, self.buffers.counts)),
            "rule_generator": self.rule_generators[0].get_state(),
            "augment_generator": (None if self.augment is None
                                  else self.augment.generators[0].get_state()),
            "attack_generator": self.attack_generator.get_state(),
            "aggregator_state": self.agg_state,
            "epoch": epoch_stats.to_dict(),
            "epoch_bytes": dict(epoch_bytes),
            "traffic": (self.traffic.sent, self.traffic.received),
            "side_traffic": (self.side_traffic.sent, self.side_traffic.received),
        }

    def _restore(self, local: dict[str, Any]) -> tuple[EpochStats, dict[str, int]]:
        """Take back this rank's state from a checkpoint (CPU tensors): the rule state,
        buffers, aggregator state and statistics onto the home device; the generators'
        states stay CPU byte tensors, as ``set_state`` takes them."""
        local = {**local, **{key: on_device(local[key], self.home) for key in
                             ("rule_state", "buffers", "aggregator_state", "epoch")}}
        self.rule_state = local["rule_state"]
        self.buffers = None if local["buffers"] is None else WorkerBuffers(*local["buffers"])
        self.rule_generators[0].set_state(local["rule_generator"])
        if self.augment is not None:
            self.augment.generators[0].set_state(local["augment_generator"])
        self.attack_generator.set_state(local["attack_generator"])
        self.agg_state = local["aggregator_state"]
        self.traffic.sent, self.traffic.received = local["traffic"]
        self.side_traffic.sent, self.side_traffic.received = local["side_traffic"]
        return EpochStats.from_dict(local["epoch"]), dict(local["epoch_bytes"])

    def _save(self, out: Path, step: int, x: Tensor, metrics: list, epoch_stats: EpochStats,
              epoch_bytes: dict[str, int], elapsed: float) -> None:
        states = [None] * self.world if self.rank == 0 else None
        dist.gather_object(on_cpu(self._local_state(epoch_stats, epoch_bytes)), states, dst=0)
        if self.rank == 0:
            buffer = io.BytesIO()
            torch.save({"config": trajectory_key(self.c), "world": self.world, "step": step,
                        "x": on_cpu(x), "metrics": on_cpu(metrics), "ranks": states,
                        "elapsed": elapsed,
                        "rng_state": torch.get_rng_state()}, buffer)
            runs.atomic_write_bytes(out / CHECKPOINT, buffer.getvalue())

    def _load(self, out: Path) -> dict[str, Any] | None:
        """The checkpoint to resume from (rank 0 reads it, every rank receives it), or None.
        Every rank raises the same :class:`ConfigError` when ``out`` holds a finished run
        that the config does not say to overwrite (:func:`check_overwrite`)."""
        found: list[Any] = [None, None]
        if self.rank == 0:
            try:
                check_overwrite(self.c)
            except ConfigError as exc:
                found[1] = str(exc)
            path = out / CHECKPOINT
            if path.exists() and found[1] is None:
                try:  # tensors and plain data only: nothing in it is unpickled as code
                    ckpt = torch.load(path, weights_only=True, map_location="cpu")
                except Exception as exc:  # an unreadable checkpoint: start over
                    print(f"signvote: ignoring unreadable {path}: {exc}", file=sys.stderr)
                    ckpt = None
                if ckpt is not None and (ckpt.get("config") != trajectory_key(self.c)
                                         or ckpt.get("world") != self.world):
                    print(f"signvote: ignoring {path}: it belongs to another config",
                          file=sys.stderr)
                    ckpt = None
                found[0] = ckpt
        dist.broadcast_object_list(found, src=0)
        if found[1] is not None:
            raise ConfigError(found[1])
        return found[0]

    # -- the loop ----------------------------------------------------------------------
    def run(self, progress: bool) -> RunResult | None:
        s, c = self.setup, self.c
        out = Path(c.out)
        ckpt = self._load(out)
        if self.rank == 0 and ckpt is None:
            start_run_folder(s)
        dist.barrier()
        x, step, metrics = s.x, 0, []
        epoch_stats, epoch_bytes = EpochStats(), _no_bytes()
        elapsed = 0.0
        if ckpt is not None:
            x, step, metrics = ckpt["x"].to(self.home), ckpt["step"], ckpt["metrics"]
            epoch_stats, epoch_bytes = self._restore(ckpt["ranks"][self.rank])
            elapsed = ckpt["elapsed"]
            torch.set_rng_state(ckpt["rng_state"])
        resumed_from = step
        per_epoch_steps = len(s.starts)
        total = total_steps(c, per_epoch_steps)
        stepped = by_steps(c)
        every = (per_epoch_steps if c.checkpoint_every is None else c.checkpoint_every)
        t0 = time.perf_counter() - elapsed
        display = Display(c, out if self.rank == 0 else None, progress,
                          done=step if stepped else len(metrics),
                          steps=total if stepped else None)
        scored = self.worker is not None and not self.byzantine
        diverged = False
        for epoch in range(step // per_epoch_steps, math.ceil(total / per_epoch_steps)):
            lr = learning_rate(c, epoch)
            if self.worker is not None:
                inputs, targets = s.walk(epoch, self.workers)
            for k, start in enumerate(s.starts):
                if epoch * per_epoch_steps + k < step:
                    continue  # done before the checkpoint this run resumed from
                if step == total:
                    break
                self._maybe_fault(step)
                xb = yb = None
                if self.worker is not None:
                    xb = inputs[:, start:start + c.batch_size]
                    yb = targets[:, start:start + c.batch_size]
                    if self.augment is not None:
                        xb = self.augment(xb)
                before = self.traffic.sent, self.traffic.received
                x, honest = self.step(x, xb, yb, lr, step)
                epoch_bytes["sent"] += self.traffic.sent - before[0]
                epoch_bytes["received"] += self.traffic.received - before[1]
                if scored:
                    epoch_stats.add(honest.losses, honest.correct, yb.numel())
                step += 1
                if evaluation_due(c, step, per_epoch_steps, total):
                    row, finite = self._epoch_end(epoch, step, epoch_stats, epoch_bytes, x,
                                                  lr, t0)
                    epoch_stats, epoch_bytes = EpochStats(), _no_bytes()
                    if self.rank == 0:
                        display.record(row, metrics)
                    if not finite:
                        diverged = True
                        break
                if every and step % every == 0:  # after the row of an evaluation due here
                    self._save(out, step, x, metrics, epoch_stats, epoch_bytes,
                               time.perf_counter() - t0)
            if diverged:
                break
        display.close()
        totals = self._traffic_totals()
        buffers = self._all_buffers()
        if self.rank != 0:
            return None
        summary = finish_summary(s.summary, metrics, step, t0, diverged, stepped)
        summary.update(self._traffic_summary(totals, step))
        summary.update({"layout": c.layout, "world_size": self.world, "backend": self.backend,
                        "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
                        "resumed_from_step": resumed_from})
        write_results(out, s, x, summary, buffers)
        (out / CHECKPOINT).unlink(missing_ok=True)
        return RunResult(c, summary, metrics, x, evaluated_buffers(s, buffers))

    def _all_buffers(self) -> WorkerBuffers | None:
        """Every worker's buffers, in worker order, at rank 0 (None on the other ranks and
        for a model without buffers): what the simulator's state holds, so that the
        evaluated model (:func:`~signvote.engine.run.evaluated_buffers`) is its."""
        if not self.setup.batched.buffer_layout:
            return None
        mine = (None if self.buffers is None
                else on_cpu((self.worker, self.buffers.floats, self.buffers.counts)))
        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        rows = sorted((g for g in gathered if g is not None), key=lambda g: g[0])
        return WorkerBuffers.cat([WorkerBuffers(floats, counts) for _, floats, counts in rows])

    def _epoch_end(self, epoch: int, step: int, stats: EpochStats, epoch_bytes: dict[str, int],
                   x: Tensor, lr: float, t0: float) -> tuple[dict[str, Any] | None, bool]:
        """Gather the scored workers' batch statistics and every worker's bytes of the
        epoch at rank 0, which evaluates and writes the row; every rank learns whether
        training diverged."""
        mine = None
        if self.worker is not None:
            mine = on_cpu({"stats": stats.to_dict() if not self.byzantine else None,
                           **epoch_bytes})
        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        buffers = self._all_buffers()
        decision: list[Any] = [None]
        row = None
        if self.rank == 0:
            workers = [g for g in gathered if g is not None]
            scored = [EpochStats.from_dict(w["stats"]) for w in workers if w["stats"]]
            merged = EpochStats(
                [torch.cat(step) for step in zip(*(w.losses for w in scored), strict=True)],
                [torch.cat(step) for step in zip(*(w.correct for w in scored), strict=True)],
                sum(w.seen for w in scored))
            row, finite = epoch_row(epoch, step, merged, x, self.setup, lr, t0, buffers)
            row["bytes_sent_per_worker"] = sum(w["sent"] for w in workers) / len(workers)
            row["bytes_received_per_worker"] = (sum(w["received"] for w in workers)
                                                / len(workers))
            decision = [finite]
        dist.broadcast_object_list(decision, src=0)
        return row, bool(decision[0])

    def _traffic_totals(self) -> list[tuple[int, int, int, int]] | None:
        mine = (self.traffic.sent, self.traffic.received, self.side_traffic.sent,
                self.side_traffic.received)
        totals = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, totals, dst=0)
        return totals

    def _traffic_summary(self, totals: list, steps: int) -> dict[str, Any]:
        c, d = self.c, self.setup.layout.dim
        steps = max(steps, 1)
        workers = [t for r, t in enumerate(totals) if worker_of(r, c.layout) is not None]
        result = {
            "bytes_sent_per_worker_per_step": sum(t[0] for t in workers) / len(workers) / steps,
            "bytes_received_per_worker_per_step":
                sum(t[1] for t in workers) / len(workers) / steps,
            "fp32_allreduce_bytes_per_worker_per_step":
                protocol.fp32_allreduce_bytes(d, c.workers),
            "coalition_bytes_per_step": sum(t[2] for t in totals) / steps,
        }
        if c.layout == "server":
            result["server_bytes_sent_per_step"] = totals[0][0] / steps
            result["server_bytes_received_per_step"] = totals[0][1] / steps
        return result

    def _maybe_fault(self, step: int) -> None:
        if self.fault is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return
        kind, rank, at = self.fault
        if rank == self.rank and step == at:
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:  # hang
                time.sleep(3600)


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts, lists and tuples) copied to the CPU: what
    rank 0 pickles, gathers and saves. A CPU tensor is returned itself (no copy)."""
    return on_device(value, torch.device("cpu"))


def on_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (in dicts, lists and tuples) on ``device``; a new
    container, the input unchanged."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: on_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_device(v, device) for v in value)
    return value


def _no_bytes() -> dict[str, int]:
    """A rank's payload bytes of the epoch so far (checkpointed with it)."""
    return {"sent": 0, "received": 0}


def _parse_fault(text: str | None) -> tuple[str, int, int] | None:
    if not text:
        return None
    kind, rank, step = text.split(":")
    if kind not in ("kill", "hang"):
        raise ValueError(f"{FAULT_ENV}={text!r}: kind must be kill or hang")
    return kind, int(rank), int(step)
