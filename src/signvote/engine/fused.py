"""The fused sign-rule, vote and update of the simulator's step, compiled (``--compile``).

Eager, a Signum step with the majority vote reads and writes ``[n, d]`` several times:
the momentum (``torch.lerp``), the messages ``sign(m)``, the vote's ``sign`` again and its
``nansum``. Under ``--compile`` the simulator computes

    m      <- torch.lerp(m, g, 1 - beta)                   eager, one pass (as the rule)
    x      <- x - lr * (sign(sum_i sign(m_i)) + wd * x)    one compiled kernel over m

so the messages are never written: the vote reads the momentum once. Results are
bit-identical to the eager path on the CPU (``tests/test_compile.py``), by construction:

- the momentum stays eager: inductor decomposes ``lerp`` into a subtraction and an
  addition that, without contraction, rounds differently from eager's fused multiply-add
  (measured on torch 2.13: differences of 1 ulp within 20 steps), and the momentum is
  carried, so one ulp flips a sign some steps later;
- every other value is exact or rounded once in eager's order: ``sign`` is exact, the
  ``nansum`` of ternary values is a small integer, ``lr * v`` with ``v`` in {-1, 0, +1} is
  exact, and inductor's C++ on the CPU does not contract ``v + wd * x`` (its default
  ``-ffp-contract=off``).

On CUDA inductor emits Triton, whose compiler may contract multiply-adds: the ``gpu`` test
compares the compiled and eager runs there and says whether they are identical.

The fused step applies where it computes what the eager stages do and nothing is observed
in between, and where it pays (:func:`applies`): a sign rule without coins, the plain
majority vote, no adversary acting on messages, a GPU or at least :data:`MIN_CPU_DIM`
parameters. Elsewhere ``--compile`` runs the eager stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from signvote import contracts
from signvote.aggregators.basic import MajorityVote
from signvote.rules import WorkerRule, momentum_update

VoteUpdate = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(signs_source[n, d], x[d], lr[]) -> x_new[d]``: the vote of the rows' signs and the
update, in one call."""


MIN_CPU_DIM = 100_000
"""The fewest parameters for which the fused call runs on the CPU: below, a compiled
call's fixed cost exceeds what it saves (benchmarks/bench_compile.py, 10 workers, one
thread: compiled / eager 1.6 at d = 20k, 0.64 at 253k, 0.42 at 1.6M). On a GPU it always
runs (not yet measured there)."""


def applies(rule: WorkerRule, aggregator: contracts.Aggregator, alters_messages: bool,
            x: Tensor) -> bool:
    """True when the fused step computes exactly the eager stages and pays: ``rule`` is a
    built-in :class:`WorkerRule` sending deterministic signs (``signsgd``, ``signum``; a
    plugin rule's ``step`` may compute anything), ``aggregator`` is the plain
    majority vote (stateless), no adversary alters the messages, and the parameters
    ``x[d]`` are on a GPU or number at least :data:`MIN_CPU_DIM`."""
    caps = rule.capabilities
    return (type(rule) is WorkerRule and caps.sends_signs and not caps.stochastic
            and not alters_messages
            and type(aggregator) is MajorityVote
            and (x.device.type != "cpu" or x.numel() >= MIN_CPU_DIM))


def vote_update_eager(source: Tensor, x: Tensor, lr: Tensor, weight_decay: float) -> Tensor:
    """``x - lr * (v + weight_decay * x)`` with ``v = sign(sum_i sign(sign(source_i)))``,
    NaN abstaining: the majority vote of the messages ``sign(source)`` and the server's
    update, in the eager stages' order of operations (``weight_decay = 0``: no term)."""
    vote = torch.sign(torch.sign(source).nansum(dim=0))
    direction = vote + weight_decay * x if weight_decay else vote
    return x - lr * direction


@functools.lru_cache(maxsize=16)
def vote_update(weight_decay: float) -> VoteUpdate:
    """:func:`vote_update_eager` for ``weight_decay``, compiled (``torch.compile``, static
    shapes: one compilation per shape, dtype and device, paid at the first call; cached
    for the process). ``lr`` is a 0-d tensor so that a learning-rate decay never
    recompiles."""

    def fn(source: Tensor, x: Tensor, lr: Tensor) -> Tensor:
        return vote_update_eager(source, x, lr, weight_decay)

    return torch.compile(fn, dynamic=False)


def lr_tensor(lr: float, x: Tensor) -> Tensor:
    """``lr`` as the 0-d tensor of ``x``'s dtype and device (eager multiplies a float32
    tensor by a Python float rounded to float32, the same number)."""
    return torch.tensor(lr, dtype=x.dtype, device=x.device)


def rule_direction(rule: WorkerRule, grads: Tensor, state: Tensor | None
                   ) -> tuple[Tensor, Tensor | None]:
    """What ``rule`` takes the sign of, and its new state: the momentum
    (:func:`signvote.rules.momentum_update`, eager) or the gradients themselves."""
    if rule.beta <= 0:
        return grads, state
    momentum = torch.zeros_like(grads) if state is None else state
    new = momentum_update(momentum, grads, rule.beta)
    return new, new
