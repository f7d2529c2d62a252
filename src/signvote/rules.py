"""Worker rules: what each worker sends, as a function of its stochastic gradient.

A rule maps the honest gradients ``G[n, d]`` (one row per worker) and its explicit
state to the messages ``M[n, d]`` and the new state. Rules never mutate their inputs.

    sgd              M = m_t                 (m_t = g_t when momentum = 0)
    signsgd          M = sign(g_t)
    signum           M = sign(m_t)
    stochastic-sign  M = +1 with probability (1 + m_t / B) / 2, else -1

with the momentum ``m_t = beta * m_{t-1} + (1 - beta) * g_t``, ``m_0 = 0`` (the
exponential moving average of Bernstein et al. 2018, Algorithm 3, also used by the
paper's seed code for distributed SGD). ``sign(0) = 0``: messages of sign rules are
ternary {-1, 0, +1}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from signvote.contracts import RuleCapabilities
from signvote.registry import Declarations, Registry, parse_spec, to_positive

Coins = torch.Generator | Sequence[torch.Generator] | None
"""Where the stochastic sign's coins come from: one generator, one per row, or the global
one."""

REGISTRY = Registry("rule")
"""The worker rules by name: each factory takes ``momentum`` (and ``bound`` where it has
one) and declares its defaults (:func:`register`)."""


def register(name: str, *, default_lr: float, default_momentum: float
             ) -> Callable[[Callable[..., WorkerRule]], Callable[..., WorkerRule]]:
    """Register a rule factory under ``name`` with its default learning rate and momentum
    (what ``--lr`` and ``--momentum`` default to for it). Adding a rule is this decorator
    on one factory function."""

    def decorate(factory: Callable[..., WorkerRule]) -> Callable[..., WorkerRule]:
        REGISTRY.register(name)(factory)
        _DEFAULT_LR[name], _DEFAULT_MOMENTUM[name] = default_lr, default_momentum
        return factory

    return decorate


_DEFAULT_LR: dict[str, float] = {}
_DEFAULT_MOMENTUM: dict[str, float] = {}
_DECLARED: Declarations[tuple[float, float]] = Declarations()
"""(default lr, default momentum) of the factories declared with :func:`declare`."""


def declare(*, default_lr: float, default_momentum: float
            ) -> Callable[[Callable[..., WorkerRule]], Callable[..., WorkerRule]]:
    """Declare a rule factory's default learning rate and momentum without registering it:
    a plugin rule, named by an entry point or an import spec (:mod:`signvote.plugins`)."""

    def decorate(factory: Callable[..., WorkerRule]) -> Callable[..., WorkerRule]:
        _DECLARED.declare(factory, (float(default_lr), float(default_momentum)))
        return factory

    return decorate


def declared(factory: Callable[..., WorkerRule]) -> tuple[float, float] | None:
    """The ``(default_lr, default_momentum)`` declared for ``factory`` (:func:`declare`),
    or None."""
    return _DECLARED.get(factory)


UNDECLARED_LR = {True: 1e-4, False: 1e-3}
"""The default learning rate of a plugin rule that declares none, by whether it sends
signs: signsgd's and sgd's."""


def momentum_update(momentum: Tensor, grads: Tensor, beta: float) -> Tensor:
    """The exponential moving average ``beta * momentum + (1 - beta) * grads`` (a new tensor),
    computed as ``momentum + (1 - beta) * (grads - momentum)`` in one pass (``torch.lerp``)."""
    return torch.lerp(momentum, grads, 1.0 - beta)


@dataclass(frozen=True)
class WorkerRule:
    """A worker rule: ``step(G, state) -> (M, state)``; the initial state is None.

    Attributes:
        name: the rule's registered name (``sgd``, ``signsgd``, ``signum``).
        beta: the momentum coefficient in [0, 1); 0 keeps no state.
        sends_signs: True when messages are ternary signs (1 bit on the wire).
        stochastic: True for the stochastic sign (needs a generator in :meth:`step`).
        bound: B of the stochastic sign; None: each worker's ``max_j |m_ij|`` this step.
    """

    name: str
    beta: float
    sends_signs: bool
    stochastic: bool = False
    bound: float | None = None

    @property
    def capabilities(self) -> RuleCapabilities:
        """What the rule declares: signs on the wire, coins, momentum state."""
        return RuleCapabilities(self.sends_signs, self.stochastic, self.beta > 0)

    def step(self, grads: Tensor, state: Tensor | None,
             generator: Coins = None) -> tuple[Tensor, Tensor | None]:
        """Messages ``M[n, d]`` from gradients ``G[n, d]``; returns ``(M, new_state)``.
        ``generator`` draws the stochastic sign's coins: one for all, one per worker, or
        None (the global one)."""
        if self.beta > 0:
            if state is None:  # m_0 = 0
                state = torch.zeros_like(grads)
            state = momentum_update(state, grads, self.beta)
            direction = state
        else:
            direction = grads
        if self.stochastic:
            return stochastic_sign(direction, self.bound, generator), state
        messages = torch.sign(direction) if self.sends_signs else direction
        return messages, state


def stochastic_sign(values: Tensor, bound: float | None,
                    generator: Coins = None) -> Tensor:
    r"""``+1`` with probability :math:`(1 + v / B) / 2`, else ``-1``, independently per entry
    (:math:`v/B` clamped to [-1, 1]; ``B = None``: each row's largest ``|v|``, and a zero
    row gives fair coins). Unbiased: :math:`E[M] = v / B` where :math:`|v| \le B`.

    ``generator``: one generator for all coins, or one per row (each worker its own coins,
    so that a worker draws the same coins in every engine), or None (the global one). The
    coins are drawn on ``values``' device, so a generator must be on that device
    (``torch.Generator(device=...)``: on CUDA the coins differ from the CPU's)."""
    if bound is None:
        scale = values.abs().amax(dim=1, keepdim=True)
    else:
        scale = torch.full((), float(bound), dtype=values.dtype, device=values.device)
    ratio = torch.where(scale > 0, values / scale, values.new_zeros(())).clamp(-1.0, 1.0)
    if isinstance(generator, Sequence):
        if len(generator) != values.shape[0]:
            raise ValueError(f"stochastic sign: {len(generator)} generators for "
                             f"{values.shape[0]} rows; valid: one per row")
        coins = torch.stack([torch.rand(values.shape[1:], generator=g, dtype=values.dtype,
                                        device=values.device) for g in generator])
    else:
        coins = torch.rand(values.shape, generator=generator, dtype=values.dtype,
                           device=values.device)
    return torch.where(coins < (1 + ratio) / 2, 1.0, -1.0).to(values.dtype)


@register("sgd", default_lr=1e-3, default_momentum=0.0)
def sgd(momentum: float = 0.0) -> WorkerRule:
    """Distributed SGD: each worker sends its (momentum) gradient in fp32.

    ``M_i = m_i``, ``m_i <- beta m_i + (1 - beta) g_i`` (``m_i = g_i`` when beta = 0).
    The server averages (``mean``) in the textbook algorithm; the paper's baseline "DistSGD".
    """
    return WorkerRule("sgd", float(momentum), sends_signs=False)


@register("signsgd", default_lr=1e-4, default_momentum=0.0)
def signsgd(momentum: float = 0.0) -> WorkerRule:
    """SignSGD: each worker sends ``sign(g_i)``, one bit per coordinate.

    Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
    Non-Convex Problems", ICML 2018 (Algorithm 1); with the majority vote of Bernstein, Zhao,
    Azizzadenesheli & Anandkumar, "signSGD with Majority Vote is Communication Efficient and
    Fault Tolerant", ICLR 2019.
    """
    if momentum != 0.0:
        raise ValueError("rule signsgd takes no momentum; use rule signum for momentum")
    return WorkerRule("signsgd", 0.0, sends_signs=True)


@register("signum", default_lr=1e-4, default_momentum=0.9)
def signum(momentum: float = 0.9) -> WorkerRule:
    """Signum: each worker sends the sign of its momentum, ``sign(m_i)``.

    ``m_i <- beta m_i + (1 - beta) g_i``, ``M_i = sign(m_i)`` (Bernstein et al. 2018,
    Algorithm 3; Bernstein et al. 2019, Algorithm 1 with majority vote).
    """
    return WorkerRule("signum", float(momentum), sends_signs=True)


@register("stochastic-sign", default_lr=1e-4, default_momentum=0.0)
def stochastic_sign_rule(momentum: float = 0.0, bound: float | None = None) -> WorkerRule:
    """Stochastic sign: each worker sends ``+1`` with probability ``(1 + m_i / B) / 2`` and
    ``-1`` otherwise (:func:`stochastic_sign`), an unbiased 1-bit compression of its
    (momentum) gradient, which keeps the majority vote convergent when the workers' data
    differ. Jin, Huang, He, Dai & Wu, "Stochastic-Sign SGD for Federated Learning with
    Theoretical Guarantees", 2020 (sto-SIGNSGD).
    """
    if bound is not None:
        bound = to_positive(bound, "the bound B", "rule stochastic-sign")
    return WorkerRule("stochastic-sign", float(momentum), sends_signs=True, stochastic=True,
                      bound=bound)


class _Defaults(Mapping[str, float]):
    """A live view ``name -> default`` of the registered rules (a rule registered later
    is in it too)."""

    def __init__(self, table: dict[str, float], lr: bool) -> None:
        self._table = table
        self._lr = lr

    def __getitem__(self, name: str) -> float:
        base, params = parse(name)
        factory = REGISTRY.factory(base)  # an unknown name lists the known ones
        if base in self._table:
            return self._table[base]
        found = declared(factory)  # a plugin rule: what it declares
        if found is not None:
            return found[0 if self._lr else 1]
        if not self._lr:
            return 0.0
        return UNDECLARED_LR[REGISTRY.get(base, momentum=0.0, **params).sends_signs]

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __len__(self) -> int:
        return len(names())


def names() -> list[str]:
    """The names of the registered worker rules, in the order they were registered."""
    return REGISTRY.names_in_order()


RULES = tuple(REGISTRY.registered())
"""The built-in rules' names, in the order --help lists them."""

DEFAULT_MOMENTUM: Mapping[str, float] = _Defaults(_DEFAULT_MOMENTUM, lr=False)
DEFAULT_LR: Mapping[str, float] = _Defaults(_DEFAULT_LR, lr=True)
"""A rule's default momentum and learning rate: a registered rule's, a plugin rule's
declared ones (:func:`declare`), else momentum 0 and :data:`UNDECLARED_LR`."""


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """A rule's name and parameters: ``"signum"``, ``"pkg.mod:make_rule(scale=2)"`` (one
    stage of ``registry.parse_spec``; the momentum and the bound have options of their
    own, ``--momentum`` and ``--sign-bound``)."""
    stages = parse_spec(spec, "rule")
    if len(stages) != 1:
        raise ValueError(f"rule {spec!r}: one rule, not {len(stages)} joined by '+'")
    name, params = stages[0]
    for own, option in (("momentum", "--momentum"), ("bound", "--sign-bound")):
        if own in params:
            raise ValueError(f"rule {spec!r}: {own} is set by {option}, not in the spec")
    return name, params


def get(name: str, momentum: float | None = None, bound: float | None = None) -> WorkerRule:
    """The worker rule ``name`` (a spec, :func:`parse`) with ``momentum`` (None: the rule's
    default) and, for rules that take one (``stochastic-sign``), its bound ``B`` (None:
    per worker and step)."""
    base, params = parse(name)
    beta = DEFAULT_MOMENTUM[name] if momentum is None else momentum
    params["momentum"] = beta
    if bound is not None:
        params["bound"] = bound
    return REGISTRY.get(base, **params)
