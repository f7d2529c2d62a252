"""Run a sweep's runs as Ray tasks (``signvote sweep --backend ray``).

Each run not done is one task of :func:`run_task`, which trains it in the task's worker
process exactly as a pool process would (:func:`signvote.experiment.sweep.train_run`) and
writes the same run folder; the driver (this process) keeps the sweep's lock, progress bar
and tables, so folders, IDs and the done rule are the sweep's own. Ray's side:

- the cluster: ``address`` None starts a local Ray instance with this machine's CPUs (or
  ``jobs x cpus_per_run``) and stops it at the end; ``auto`` or ``HOST:PORT`` joins a
  running cluster (``ray start --head`` / ``ray start --address``), whose every node must
  have signvote installed and see the sweep folder at the same path;
- resources: each task declares ``num_cpus = cpus_per_run`` and ``num_gpus =
  gpus_per_run``, so Ray places GPU runs on GPU nodes; a run uses that many torch threads
  (at least 1);
- faults: a task whose worker process dies (killed, out of memory, its node lost) is run
  again up to ``retries`` times by Ray, from the start (a run cut short has no
  ``summary.json``); past that, it is recorded as failed with Ray's account
  (:func:`signvote.experiment.sweep.record_failure`) and the others go on. A run that
  raises is recorded by the task itself and not retried. A driver killed (``kill -9``)
  takes its tasks with it (Ray ends a job's workers when its driver goes), and the same
  command run again keeps every finished run;
- ``--engine dist`` runs: the task starts the run's ranks as local processes of its node
  under torch's elastic agent (:func:`signvote.engine.dist.launch`), so a distributed run
  is placed on one node; give it ``--cpus-per-run`` of its world size for a core per rank.

A local instance is started without its dashboard and with usage statistics off
(``RAY_USAGE_STATS_ENABLED=0``, for the processes it starts), and it talks to no other
machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from signvote.experiment.config import ConfigError, TrainConfig

INSTALL = "pip install 'signvote[ray]'"
"""How to install the optional dependency."""

LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
"""The object store of a local instance: runs pass only their configs and statuses."""

WAIT_S = 1.0
"""How long the driver waits for a task at a time (it stays responsive to Ctrl-C)."""


def import_ray() -> Any:
    """The ``ray`` module; raises :class:`ConfigError` saying how to install it when it is
    not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--backend ray needs Ray, which is not installed; install it "
                          f"with {INSTALL} (valid: --backend pool, the default, which "
                          f"needs nothing)") from None
    return ray


def run_task(config: TrainConfig, threads: int) -> str:
    """A run of the sweep in a Ray worker process: ``threads`` torch threads (restored
    afterwards: the worker process runs other tasks), freed memory kept for reuse (as in a
    pool process), then :func:`signvote.experiment.sweep.train_run`; returns its status."""
    from signvote.engine.memory import keep_freed_memory
    from signvote.engine.threads import torch_threads
    from signvote.experiment.sweep import train_run

    keep_freed_memory()
    with torch_threads(threads):
        return train_run(config)


def _start(ray: Any, address: str | None, cpus: int | None) -> bool:
    """Connect to the cluster at ``address``, or start a new local instance with ``cpus``
    CPUs (None: this machine's), never joining a cluster found on the machine; True when
    this call did either (and must end it: stop the instance, or disconnect), False when
    Ray was already initialised by the caller. A cluster that cannot be reached or started
    raises :class:`ConfigError` with Ray's reason."""
    from signvote.engine.dist import scoped_environment

    if ray.is_initialized():
        return False
    where = ("start a local Ray instance" if address is None else
             f"join the Ray cluster at {address}")
    try:
        if address is not None:
            check_reachable(address)
            ray.init(address=address, configure_logging=False, log_to_driver=False)
        else:
            with scoped_environment(RAY_USAGE_STATS_ENABLED="0"):
                ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                         configure_logging=False, log_to_driver=False,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = first_line(exc) or type(exc).__name__
        valid = ("valid: --address auto for the cluster ray start began on this machine, or "
                 "HOST:PORT of its head node" if address is not None else
                 "valid: --backend pool")
        raise ConfigError(f"--backend ray: could not {where}: {reason}; {valid}") from None
    return True


CONNECT_TIMEOUT_S = 5.0
"""How long the head node at ``--address HOST:PORT`` has to accept a connection."""


def check_reachable(address: str) -> None:
    """Raise ConnectionError when nothing accepts a TCP connection within
    :data:`CONNECT_TIMEOUT_S` at the head node ``address`` names (Ray itself retries for
    minutes, at a stale address too): ``HOST:PORT``, or ``auto`` resolved as Ray resolves
    it (``RAY_ADDRESS``, else the cluster ``ray start`` last began on this machine). Other
    forms (``ray://``) are left to Ray."""
    import socket

    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # another Ray than the pinned one: Ray resolves it itself
            return
        address = canonicalize_bootstrap_address_or_die("auto")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectionError(f"nothing answers at {address} ({reason}); is the cluster "
                              f"running?") from None


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message ('' for none): Ray's run over many lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def describe(exc: BaseException) -> str:
    """One line for a task Ray could not finish (its worker died past the retries, its node
    was lost, it was cancelled)."""
    first = first_line(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def connected(options: Any, jobs: int | None = None) -> Iterator[None]:
    """Ray initialised for the block (``options``:
    :class:`signvote.experiment.sweep.RayOptions`): the cluster at ``options.address``
    joined, or a new local instance started with ``jobs x cpus_per_run`` CPUs (None: this
    machine's), then left or stopped however the block ends; nothing is done when the
    caller has initialised Ray already. Raises :class:`ConfigError` when Ray is missing or
    the cluster cannot be reached or started."""
    ray = import_ray()
    cpus = None if jobs is None else max(1, round(jobs * options.cpus_per_run))
    owned = _start(ray, options.address, cpus)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()  # a local instance stops; a cluster is left, and keeps running


def run_ray(todo: list[TrainConfig], finished_one: Callable[[str], None],
            options: Any, jobs: int | None = None) -> None:
    """Run ``todo`` as Ray tasks (``options``: :class:`signvote.experiment.sweep.RayOptions`)
    on the cluster this process is connected to (:func:`connected`), at most ``jobs`` in
    flight on a cluster of ``--address`` (a local instance has only the CPUs for them),
    calling ``finished_one(status)`` as each ends. On KeyboardInterrupt (Ctrl-C; SIGTERM
    meanwhile is turned into one) the tasks are cancelled, their worker processes ended,
    and the interruption raised again."""
    from signvote.experiment.sweep import _sigterm_as_interrupt, record_failure

    ray = import_ray()
    task = ray.remote(run_task).options(
        num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
        max_retries=options.retries, retry_exceptions=False)
    threads = max(1, int(options.cpus_per_run))
    queue = list(reversed(todo))
    window = len(todo) if jobs is None or options.address is None else jobs
    pending: dict[Any, TrainConfig] = {}
    try:
        with _sigterm_as_interrupt():
            while queue or pending:
                while queue and len(pending) < window:
                    config = queue.pop()
                    pending[task.remote(config, threads)] = config
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    config = pending.pop(ref)
                    try:
                        status = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # past the retries, or lost
                        status = record_failure(config, describe(exc), str(exc))
                    finished_one(status)
    except (KeyboardInterrupt, SystemExit):
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
