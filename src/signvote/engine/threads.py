"""How many CPU threads a run's PyTorch ops use (``--threads``), chosen by the work.

PyTorch's intra-op pool has one thread per core by default. For the small models of this
field (the paper's logistic model has 922 parameters) the work of an op is far below what
a second thread can take over, and the threads spin-wait between ops: on a 2-core machine
``signvote train -b 4`` took 51.7 s with another CPU-bound process running against 5.6 s
with ``OMP_NUM_THREADS=1``, the same metrics (issue 15). So a run uses

    threads = --threads                       when it is given,
    threads = 1                               for a model under SMALL_MODEL parameters,
    threads = torch.get_num_threads()         otherwise (the caller's setting: a sweep's
                                              pool process has cores // jobs),

inside :func:`torch_threads`, which puts the caller's count back afterwards (a library
call leaves no process-wide change behind).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL_MODEL = 1_000_000
"""Parameters below which a run uses one thread unless told otherwise."""


def run_threads(requested: int | None, params: int) -> int:
    """The thread count of a run of a model with ``params`` parameters: ``requested``
    (``--threads``) when given, 1 below :data:`SMALL_MODEL`, else the current count."""
    if requested is not None:
        return requested
    return 1 if params < SMALL_MODEL else torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
