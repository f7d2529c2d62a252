"""The field's two robust-aggregation benchmarks as ``signvote reproduce`` targets.

``signvote reproduce TARGET`` runs one benchmark's grid with its published settings (a
resumable sweep in ``OUT/TARGET``), draws its tables as heatmaps (``OUT/TARGET.png`` and
``.svg``) and rewrites ``OUT/BENCHMARKS.md``: our numbers beside the published ones, the
scale, the runs' own time, and the paper's claims as holds / does not hold lines computed
from the tables (each a :class:`signvote.theory.as_printed.Verdict`).

Targets (:data:`TARGETS`):

- ``karimireddy-exp1``, ``karimireddy-exp2``, ``karimireddy-exp3``: Karimireddy, He & Jaggi,
  "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022 (arXiv
  2006.09365), their experiments 1-3 as their code (epfml/byzantine-robust-noniid-optimizer,
  ``exp1.py``-``exp3.py``, ``utils.py``) runs them: MNIST, their CNN (``karimireddy-cnn``),
  batch 32 per worker, SGD lr 0.01 without decay, evaluation every 30 iterations; the
  reported number is the mean of each run's last 5 evaluations (their plotting code:
  ``accs[-5:]``), then the mean over seeds 0, 1, 2 (:func:`khj_number`).
- ``byzfl``: ByzFL's benchmark (LPD-EPFL/byzfl, ``byzfl/benchmark/``, its default
  configuration): 10 honest workers and f in {1, 2, 3, 4} Byzantine ones, 800 steps, the
  reported number of a (gamma, f) cell is the minimum over attacks of the maximum over
  evaluations of the seed-averaged accuracy (:func:`byzfl_number`).

Beside each table of SGD aggregators, the same cells are run with Signum and the majority
vote (``majority-vote``) and the weighted vote (``weighted-majority-vote``), Signum's lr
:data:`SIGN_LR` (our choice, not tuned, and not from either benchmark).

Momentum (:func:`khj_scaled`): Karimireddy et al.'s workers keep ``m = beta m + g``,
signvote's ``m = beta m + (1 - beta) g``, i.e. ``(1 - beta)`` times theirs. We chose to
match their honest trajectories: lr divided by ``(1 - beta)`` (0.01 -> 0.1 at beta 0.9),
CClip's tau and RFA's smoothing nu multiplied by ``(1 - beta)`` (10 -> 1, 0.1 -> 0.01).
Every other rule and attack of the grid is equivariant to a common scale. Their bit-flip
and label-flip workers send raw gradients without momentum; ours go through the worker
rule, so at beta 0.9 our bit flip sends minus its momentum (10 times theirs relative to the
honest rows). The report states it.

Data: MNIST from the user's IDX files (``--data-dir``, or the standard places). Where MNIST
is absent, ``--scale reduced`` falls back to Fashion-MNIST, then to digits, and says so;
``--scale full`` refuses (run it with ``--dataset`` to choose another). On a dataset whose
images the benchmark's model cannot take (``byzfl-cnn`` on the 8x8 digits) the reduced scale
uses ``smallcnn``, and says so.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signvote.experiment import plots, results, runs, sweep
from signvote.experiment.config import ConfigError, TrainConfig, resolve

KHJ = ("Karimireddy, He & Jaggi, \"Byzantine-Robust Learning on Heterogeneous Datasets via "
       "Bucketing\", ICLR 2022 (arXiv 2006.09365; code epfml/byzantine-robust-noniid-"
       "optimizer)")
BYZFL = "ByzFL's benchmark (LPD-EPFL/byzfl, byzfl/benchmark/, its default configuration)"
SCALES = ("full", "reduced")
SIGN_LR = 1e-3
"""Signum's learning rate in the vote rows (our choice: one sign step of 1e-3 per
coordinate, the size of Adam's first steps at its usual 1e-3; not tuned)."""
VOTES = (("Signum + MV", "majority-vote"), ("Signum + WMV", "weighted-majority-vote"))
"""The vote rows beside every SGD table: label, aggregator (rule ``signum``)."""
FALLBACK = ("fashion-mnist", "digits")
"""The datasets ``--scale reduced`` tries, in order, where MNIST cannot be loaded."""

# --- Karimireddy, He & Jaggi ---------------------------------------------------------------

KHJ_AGGREGATORS = ("mean", "Krum", "median", "RFA", "CClip")
KHJ_ATTACKS = {"BF": "blind-inversion", "LF": "label-flip", "mimic": "mimic(warmup=1)",
               "IPM": "ipm(epsilon=0.1)", "ALIE": "alie(quantile=honest)"}
"""Their attacks (``--attack`` of their ``utils.py``) -> signvote's spec with their
parameters (docs/reproduction.md, "The field's benchmarks: components")."""
KHJ_SPLITS = {"iid": "honest-strided", "non-iid": "honest-sorted"}
KHJ_COLUMNS = ("iid", "non-iid", "iid s=2", "non-iid s=2")
"""The columns of experiments 1 and 2: split, without and with bucketing (s = 2)."""
KHJ_LR = 0.01
KHJ_LAST_K = 5


def khj_scaled(momentum: float) -> float:
    """The factor ``1 - beta`` between signvote's momentum rows and theirs (1 at beta 0)."""
    return 1.0 - momentum


def _num(value: float) -> str:
    """A parameter written short and exact enough: ``1`` for 0.9999999999999998."""
    return f"{round(value, 10):g}"


def khj_aggregator(label: str, momentum: float, bucketing: int) -> str:
    """Their aggregator ``label`` (:data:`KHJ_AGGREGATORS`) as a signvote spec at worker
    momentum ``momentum``, behind ``bucketing(s=...)`` when ``bucketing`` > 0: mean; Krum
    with m = 1 and their fourth-power score (``krum(power=4)``); coordinate-wise median;
    RFA, T = 8 smoothed Weiszfeld steps from 0 with nu = 0.1; CClip, tau = 10, 3
    iterations. nu and tau are multiplied by ``1 - momentum`` (:func:`khj_scaled`)."""
    scale = khj_scaled(momentum)
    spec = {"mean": "mean", "Krum": "krum(power=4)", "median": "median",
            "RFA": f"geometric-median(iterations=8, nu={_num(0.1 * scale)}, tol=0, "
                   f"start=zero)",
            "CClip": f"centered-clipping(tau={_num(10 * scale)}, iterations=3)"}[label]
    return f"bucketing(s={bucketing})+{spec}" if bucketing else spec


@dataclass(frozen=True)
class Plan:
    """What one scale of a target runs."""

    steps: int
    eval_every: int
    last_k: int
    seeds: tuple[int, ...]
    momenta: tuple[float, ...] = (0.0,)
    aggregators: tuple[str, ...] = KHJ_AGGREGATORS
    attacks: tuple[str, ...] = tuple(KHJ_ATTACKS)
    columns: tuple[str, ...] = KHJ_COLUMNS
    gammas: tuple[float, ...] = (1.0, 0.66, 0.33, 0.0)
    fs: tuple[int, ...] = (1, 2, 3, 4)
    note: str = ""
    model: str | None = None  # None: the benchmark's


@dataclass(frozen=True)
class Target:
    """One benchmark experiment: its title, source, model and plans per scale."""

    name: str
    title: str
    source: str
    model: str
    plans: Mapping[str, Plan]
    number: str  # how a cell's number is made, in words (K: last_k, E: eval_every)


TARGETS = {
    "karimireddy-exp1": Target(
        "karimireddy-exp1", "Karimireddy et al., experiment 1: no attack, long-tailed MNIST, "
        "24 workers", KHJ, "karimireddy-cnn",
        {"full": Plan(4500, 30, KHJ_LAST_K, (0, 1, 2)),
         "reduced": Plan(210, 30, 3, (0,), model="smallcnn",
                         note="reduced: smallcnn (paper: their CNN), 210 iterations (paper: "
                         "4,500), mean of the last 3 evaluations (paper: 5), seed 0 (paper: "
                         "0, 1, 2)")},
        "mean of each run's last K evaluations (every E iterations), then over seeds"),
    "karimireddy-exp2": Target(
        "karimireddy-exp2", "Karimireddy et al., experiment 2: mimic attack, 5 of 25 "
        "workers, momentum 0", KHJ, "karimireddy-cnn",
        {"full": Plan(600, 30, KHJ_LAST_K, (0, 1, 2), attacks=("mimic",)),
         "reduced": Plan(150, 30, 2, (0,), attacks=("mimic",), model="smallcnn",
                         note="reduced: smallcnn (paper: their CNN), 150 iterations (paper: "
                         "600), mean of the last 2 evaluations (paper: 5), seed 0 (paper: 0, "
                         "1, 2)")},
        "mean of each run's last K evaluations (every E iterations), then over seeds"),
    "karimireddy-exp3": Target(
        "karimireddy-exp3", "Karimireddy et al., experiment 3: every attack, 5 of 25 "
        "workers, non-iid", KHJ, "karimireddy-cnn",
        {"full": Plan(600, 30, KHJ_LAST_K, (0, 1, 2), momenta=(0.0, 0.9),
                      aggregators=("Krum", "median", "RFA", "CClip")),
         "reduced": Plan(90, 30, 1, (0,), momenta=(0.9,),
                         aggregators=("Krum", "median", "RFA", "CClip"), model="smallcnn",
                         note="reduced: smallcnn (paper: their CNN), momentum 0.9 only "
                         "(paper: 0 and 0.9), 90 iterations (paper: 600), the last "
                         "evaluation (paper: mean of the last 5), seed 0 (paper: 0, 1, "
                         "2)")},
        "mean of each run's last K evaluations (every E iterations), then over seeds"),
    "byzfl": Target(
        "byzfl", "ByzFL's benchmark: gamma-similarity x f Byzantine of 10 + f workers",
        BYZFL, "byzfl-cnn",
        {"full": Plan(800, 50, 1, (0, 1, 2), momenta=(0.9,)),
         "reduced": Plan(50, 25, 1, (0,), momenta=(0.9,), gammas=(1.0, 0.0), fs=(1, 4),
                         model="smallcnn",
                         note="reduced: smallcnn (paper: byzfl-cnn), gamma in {1, 0} "
                         "(paper: 1, 0.66, 0.33, 0), f in {1, 4} (paper: 1-4), 50 steps "
                         "evaluated every 25 (paper: 800, every 50), seed 0 (paper: 0, 1, "
                         "2)")},
        "min over attacks of the max over evaluations (every E steps) of the "
        "seed-averaged accuracy"),
}
"""The benchmark targets of ``signvote reproduce``."""

BYZFL_AGGREGATORS = {
    "TrMean": "clipping(c=2)+nnm+trimmed-mean",
    "GM": "clipping(c=2)+nnm+geometric-median(iterations=3, nu=0.1, tol=0, start=zero)"}
"""ByzFL's default pre-aggregation (Clipping with c = 2, then NNM) and its two aggregators,
the declared f being the run's (docs/reproduction.md, components)."""
BYZFL_ATTACKS = {"SF": "sign-flip", "opt-IPM": "optimal-ipm(search=forward)",
                 "opt-ALIE": "optimal-alie(search=forward, sign=1)"}

# Published numbers. Experiments 1 and 2: their tables as their plotting code wrote them
# (outputs/exp1/all/output/exp1.tex and exp1_bucketing.tex, outputs/exp2/all/output/exp2.tex
# and exp2_bucketing.tex, in epfml/byzantine-robust-noniid-optimizer at 0e27349); mean over
# seeds 0-2 of each run's mean of its last 5 evaluations. Experiment 2's non-bucketed and
# non-iid bucketed columns are the table.
KHJ_PUBLISHED: dict[str, dict[tuple[str, str], float]] = {
    "karimireddy-exp1": {
        ("mean", "iid"): 98.79, ("mean", "non-iid"): 98.75,
        ("mean", "iid s=2"): 98.80, ("mean", "non-iid s=2"): 98.74,
        ("Krum", "iid"): 97.95, ("Krum", "non-iid"): 89.90,
        ("Krum", "iid s=2"): 98.35, ("Krum", "non-iid s=2"): 93.27,
        ("median", "iid"): 97.72, ("median", "non-iid"): 80.36,
        ("median", "iid s=2"): 98.26, ("median", "non-iid s=2"): 95.59,
        ("RFA", "iid"): 98.62, ("RFA", "non-iid"): 82.60,
        ("RFA", "iid s=2"): 98.75, ("RFA", "non-iid s=2"): 97.34,
        ("CClip", "iid"): 98.78, ("CClip", "non-iid"): 98.78,
        ("CClip", "iid s=2"): 98.79, ("CClip", "non-iid s=2"): 98.75},
    "karimireddy-exp2": {
        ("mean", "iid"): 93.20, ("mean", "non-iid"): 92.73,
        ("mean", "iid s=2"): 93.17, ("mean", "non-iid s=2"): 92.67,
        ("Krum", "iid"): 90.36, ("Krum", "non-iid"): 37.33,
        ("Krum", "iid s=2"): 91.64, ("Krum", "non-iid s=2"): 53.15,
        ("median", "iid"): 90.80, ("median", "non-iid"): 64.27,
        ("median", "iid s=2"): 91.91, ("median", "non-iid s=2"): 78.60,
        ("RFA", "iid"): 92.92, ("RFA", "non-iid"): 78.93,
        ("RFA", "iid s=2"): 93.00, ("RFA", "non-iid s=2"): 91.17,
        ("CClip", "iid"): 93.16, ("CClip", "non-iid"): 91.53,
        ("CClip", "iid s=2"): 93.17, ("CClip", "non-iid s=2"): 92.56},
}
"""Karimireddy et al.'s experiments 1 and 2 (test accuracy %), (aggregator, column)."""

_EXP3_AGG = {"krum": "Krum", "cm": "median", "rfa": "RFA", "cp": "CClip"}
_EXP3_CODE = """
krum BF 0 0 27.85|krum LF 0 0 1.03|krum mimic 0 0 37.33|krum IPM 0 0 36.93|krum ALIE 0 0 78.88
krum BF 0 2 45.11|krum LF 0 2 20.19|krum mimic 0 2 53.15|krum IPM 0 2 54.09|krum ALIE 0 2 72.54
krum BF .9 0 9.92|krum LF .9 0 1.02|krum mimic .9 0 29.01|krum IPM .9 0 9.99|krum ALIE .9 0 11.37
krum BF .9 2 25.50|krum LF .9 2 43.29|krum mimic .9 2 64.84|krum IPM .9 2 46.82|krum ALIE .9 2 10.13
cm BF 0 0 37.15|cm LF 0 0 35.57|cm mimic 0 0 64.27|cm IPM 0 0 50.27|cm ALIE 0 0 78.92
cm BF 0 2 46.92|cm LF 0 2 52.68|cm mimic 0 2 78.60|cm IPM 0 2 67.52|cm ALIE 0 2 86.87
cm BF .9 0 42.89|cm LF .9 0 50.61|cm mimic .9 0 57.17|cm IPM .9 0 36.23|cm ALIE .9 0 9.94
cm BF .9 2 63.81|cm LF .9 2 70.55|cm mimic .9 2 76.46|cm IPM .9 2 59.28|cm ALIE .9 2 46.34
cp BF 0 0 75.19|cp LF 0 0 90.93|cp mimic 0 0 91.53|cp IPM 0 0 91.82|cp ALIE 0 0 91.11
cp BF 0 2 91.66|cp LF 0 2 91.83|cp mimic 0 2 92.56|cp IPM 0 2 92.63|cp ALIE 0 2 91.26
cp BF .9 0 97.65|cp LF .9 0 97.64|cp mimic .9 0 97.78|cp IPM .9 0 97.63|cp ALIE .9 0 98.04
cp BF .9 2 97.68|cp LF .9 2 97.69|cp mimic .9 2 97.82|cp IPM .9 2 97.66|cp ALIE .9 2 98.03
rfa BF 0 0 68.75|rfa LF 0 0 90.34|rfa mimic 0 0 78.93|rfa IPM 0 0 14.61|rfa ALIE 0 0 79.66
rfa BF 0 2 87.63|rfa LF 0 2 91.60|rfa mimic 0 2 91.17|rfa IPM 0 2 90.60|rfa ALIE 0 2 91.18
rfa BF .9 0 82.77|rfa LF .9 0 95.77|rfa mimic .9 0 85.92|rfa IPM .9 0 13.49|rfa ALIE .9 0 11.37
rfa BF .9 2 96.78|rfa LF .9 2 97.40|rfa mimic .9 2 97.14|rfa IPM .9 2 95.90|rfa ALIE .9 2 91.66
"""


def _exp3_published() -> dict[tuple[float, str, str], float]:
    """Their experiment 3 (a figure of curves, no table): the mean over seeds 0-2 of each
    run's mean of its last 5 evaluations, computed by us from their logs in their
    repository (``outputs/exp3/all/AGG_ATK_MOMENTUM_sS_seedK/stats``, the ``validation``
    entries' ``top1``, 20 per run). Keyed (momentum, row, attack), row ``Krum`` or
    ``Krum s=2``. Their momentum-0 mimic cells equal experiment 2's non-iid ones (the same
    runs)."""
    table = {}
    for item in _EXP3_CODE.replace("\n", "|").split("|"):
        if not item.strip():
            continue
        agg, attack, momentum, bucketing, value = item.split()
        row = _EXP3_AGG[agg] + (" s=2" if bucketing == "2" else "")
        table[(float(momentum), row, attack)] = float(value)
    return table


EXP3_PUBLISHED = _exp3_published()


# --- the grids -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """Where a run's number goes: ``table`` (a heatmap of the figure), ``row``, ``column``,
    and ``attack`` (ByzFL's cells take the minimum over it; empty elsewhere)."""

    table: str
    row: str
    column: str
    attack: str = ""


def _base(target: Target, plan: Plan, dataset: str, model: str | None, data_dir: str | None,
          device: str) -> dict[str, Any]:
    return {"dataset": dataset, "model": model or target.model, "steps": plan.steps,
            "eval_every": plan.eval_every, "lr_decay_rate": 1.0, "data_dir": data_dir,
            "device": device}


def khj_cells(name: str, plan: Plan, base: dict[str, Any]
              ) -> list[tuple[Cell, dict[str, Any]]]:
    """Karimireddy et al.'s cells and each one's options (without the seed)."""
    exp1 = name == "karimireddy-exp1"
    common = {**base, "batch_size": 32,
              "workers": 24 if exp1 else 25, "byzantine": 0 if exp1 else 5}
    if exp1:
        common.update(imbalance="long-tail", imbalance_ratio=0.5, imbalance_split="both")
    cells: list[tuple[Cell, dict[str, Any]]] = []
    sign = {"rule": "signum", "lr": SIGN_LR}
    if name in ("karimireddy-exp1", "karimireddy-exp2"):
        attack = {} if exp1 else {"attack": KHJ_ATTACKS[plan.attacks[0]]}
        for column in plan.columns:
            split, _, bucket = column.partition(" ")
            bucketing = 2 if bucket else 0
            for label in plan.aggregators:
                cells.append((Cell("SGD", label, column), {
                    **common, **attack, "partition": KHJ_SPLITS[split], "rule": "sgd",
                    "momentum": 0.0, "lr": KHJ_LR,
                    "aggregator": khj_aggregator(label, 0.0, bucketing)}))
            if not bucketing:
                for label, aggregator in VOTES:
                    cells.append((Cell("vote", label, column), {
                        **common, **attack, **sign, "partition": KHJ_SPLITS[split],
                        "aggregator": aggregator}))
        return cells
    for momentum in plan.momenta:
        for label in plan.aggregators:
            for bucketing in (0, 2):
                row = label + (" s=2" if bucketing else "")
                for attack in plan.attacks:
                    cells.append((Cell(f"SGD, momentum {momentum:g}", row, attack), {
                        **common, "attack": KHJ_ATTACKS[attack], "partition": "honest-sorted",
                        "rule": "sgd", "momentum": momentum,
                        "lr": KHJ_LR / khj_scaled(momentum),
                        "aggregator": khj_aggregator(label, momentum, bucketing)}))
    for label, aggregator in VOTES:
        for attack in plan.attacks:
            cells.append((Cell("vote", label, attack), {
                **common, **sign, "attack": KHJ_ATTACKS[attack], "partition": "honest-sorted",
                "aggregator": aggregator}))
    return cells


def byzfl_cells(plan: Plan, base: dict[str, Any]) -> list[tuple[Cell, dict[str, Any]]]:
    """ByzFL's cells: per aggregator, gamma, f and attack; 10 honest workers + f."""
    cells = []
    tables = [(label, {"rule": "sgd", "momentum": 0.9, "lr": 0.1, "aggregator": spec})
              for label, spec in BYZFL_AGGREGATORS.items()]
    tables += [(label, {"rule": "signum", "lr": SIGN_LR, "aggregator": spec})
               for label, spec in VOTES]
    for label, options in tables:
        for gamma in plan.gammas:
            for f in plan.fs:
                for attack, spec in BYZFL_ATTACKS.items():
                    cells.append((Cell(label, f"gamma {gamma:g}", f"f={f}", attack), {
                        **base, **options, "workers": 10 + f, "byzantine": f,
                        "attack": spec, "batch_size": 25, "weight_decay": 1e-4,
                        "partition": "gamma-byzfl", "partition_gamma": gamma}))
    return cells


def grid(name: str, scale: str, seeds: Sequence[int] | None = None,
         dataset: str = "mnist", model: str | None = None, data_dir: str | None = None,
         device: str = "auto") -> list[tuple[Cell, TrainConfig]]:
    """Target ``name``'s runs at ``scale``: every cell x seed (default: the plan's seeds),
    each with its resolved :class:`TrainConfig`."""
    target = TARGETS[name]
    plan = target.plans[scale]
    base = _base(target, plan, dataset, model, data_dir, device)
    cells = byzfl_cells(plan, base) if name == "byzfl" else khj_cells(name, plan, base)
    return [(cell, resolve(TrainConfig(seed=seed, **options)))
            for cell, options in cells for seed in (seeds or plan.seeds)]


# --- inputs ----------------------------------------------------------------------------------


def _fits(model: str, dataset: Any) -> bool:
    """Whether ``model`` builds for ``dataset`` and takes one of its inputs."""
    import torch

    from signvote import models

    try:
        net = models.build(model, dataset.input_shape, dataset.n_classes)
        with torch.no_grad():
            net.eval()(torch.zeros(1, *dataset.input_shape))
    except (ValueError, RuntimeError):
        return False
    return True


def choose_inputs(name: str, scale: str, dataset: str | None = None,
                  data_dir: str | None = None, model: str | None = None
                  ) -> tuple[str, str | None, str, str | None]:
    """The dataset, model (None: the benchmark's), a note of what differs from the
    benchmark (empty when nothing does) and the data folder target ``name`` runs with at
    ``scale``. Without ``dataset``: MNIST (from ``data_dir`` or the standard places), and
    at the reduced scale where MNIST cannot be loaded, :data:`FALLBACK` in order, from the
    standard places; at the reduced scale a dataset the benchmark's model cannot take gets
    ``smallcnn``.

    Raises :class:`ConfigError` for an unknown target or scale, or a model that does not fit
    (full scale), and :class:`signvote.data.DatasetError` when no dataset can be loaded."""
    from signvote import data

    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}; valid: {', '.join(SCALES)}")
    if dataset in data.REGRESSION:
        raise ConfigError(f"--dataset {dataset}: a regression task, and the benchmarks "
                          f"report accuracies; valid: a classification dataset")
    folder = Path(data_dir) if data_dir else None
    tries = [dataset] if dataset else ["mnist", *(FALLBACK if scale == "reduced" else ())]
    found = chosen = None
    error: Exception | None = None
    for candidate in tries:
        try:
            found = data.load(candidate, 0, folder if candidate == (dataset or "mnist")
                              else None)
            chosen = candidate
            break
        except data.DatasetError as exc:
            error = error or exc
    if found is None or chosen is None:
        assert error is not None
        raise error
    target = TARGETS[name]
    default = target.plans[scale].model or target.model
    notes = [] if chosen == "mnist" else [f"dataset {chosen} (the benchmark: mnist"
                                          + (", not found here)" if not dataset else ")")]
    use = model or default
    if not _fits(use, found):
        if scale == "full" or model or use == "smallcnn":
            raise ConfigError(f"--model {use} does not take {chosen}'s "
                              f"{'x'.join(map(str, found.input_shape))} inputs; valid: a "
                              f"28x28 dataset such as mnist or fashion-mnist")
        notes.append(f"model smallcnn ({use} does not take "
                     f"{'x'.join(map(str, found.input_shape))} inputs)")
        use = "smallcnn"
    if use != target.model and model:
        notes.append(f"model {use} (the benchmark: {target.model})")
    folder_used = data_dir if chosen == (dataset or "mnist") else None
    return chosen, (None if use == target.model else use), "; ".join(notes), folder_used


# --- the reported numbers --------------------------------------------------------------------


def run_series(rows: Sequence[dict[str, Any]], metric: str = "test_acc"
               ) -> dict[str, list[tuple[int, float | None]]]:
    """Each run's evaluations in order, ``(step, metric)``, from a sweep's tidy rows."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    out = {}
    for run, run_rows in by_run.items():
        ordered = sorted(run_rows, key=results._when)
        out[run] = [(results._when(r)[1], None if r.get(metric) is None
                     else float(r[metric])) for r in ordered]
    return out


def khj_number(series: Sequence[Sequence[float | None]], k: int) -> float | None:
    """Karimireddy et al.'s number of a cell: ``(1/S) sum_s (1/k) sum_{t > T-k} a_{s,t}``,
    the mean over the cell's S seeds of each run's mean of its last ``k`` evaluations
    (:func:`signvote.experiment.results.mean_of_last`; their plotting code,
    ``exp2.py``: ``sum(accs[-5:]) / len(accs[-5:])``, then the mean over seeds). NaN when a
    run has a non-finite one among them; None without runs."""
    if not series:
        return None
    return math.fsum(results.mean_of_last(list(s), k) for s in series) / len(series)


def byzfl_number(curves: Mapping[str, Sequence[Mapping[int, float | None]]]
                 ) -> tuple[float | None, str | None]:
    """ByzFL's number of a cell and its worst attack: ``min_a max_t (1/S) sum_s
    a_{a,s,t}``, the minimum over attacks ``a`` of the best evaluation of the mean over
    seeds (:func:`signvote.experiment.results.peak_of_mean`; ByzFL's
    ``benchmark/evaluate_results.py``). An attack whose runs share no finite evaluation
    has no value: it is the worst, and the cell's value is None."""
    worst: tuple[float | None, str | None] = (None, None)
    for attack, runs_ in curves.items():
        value = results.peak_of_mean(list(runs_))
        if value is None:
            return None, attack
        if worst[0] is None or value < worst[0]:
            worst = (value, attack)
    return worst


def tables(name: str, cells: Sequence[tuple[Cell, TrainConfig]],
           series: Mapping[str, list[tuple[int, float | None]]], last_k: int
           ) -> dict[str, dict[str, Any]]:
    """Per table: its rows, columns and our numbers (accuracy %, None where no run
    finished), and for ByzFL the worst attack of each cell. ``series`` is
    :func:`run_series` by run id."""
    grouped: dict[Cell, list[list[tuple[int, float | None]]]] = {}
    for cell, config in cells:
        found = series.get(sweep.run_id(config))
        grouped.setdefault(cell, [])
        if found is not None:
            grouped[cell].append(found)
    out: dict[str, dict[str, Any]] = {}
    for cell in grouped:
        table = out.setdefault(cell.table, {"rows": [], "columns": [], "ours": {},
                                            "worst": {}})
        if cell.row not in table["rows"]:
            table["rows"].append(cell.row)
        if cell.column not in table["columns"]:
            table["columns"].append(cell.column)
    for table_name, table in out.items():
        for row in table["rows"]:
            for column in table["columns"]:
                key = f"{row}|{column}"
                if name == "byzfl":
                    curves = {c.attack: [dict(s) for s in runs_]
                              for c, runs_ in grouped.items()
                              if (c.table, c.row, c.column) == (table_name, row, column)}
                    if not curves or not all(curves.values()):
                        table["ours"][key] = None
                        continue
                    value, attack = byzfl_number(curves)
                    table["ours"][key] = None if value is None else 100 * value
                    table["worst"][key] = attack
                else:
                    runs_ = grouped.get(Cell(table_name, row, column), [])
                    value = khj_number([[v for _, v in s] for s in runs_], last_k)
                    table["ours"][key] = None if value is None else 100 * value
    return out


def published(name: str, table: str, row: str, column: str) -> float | None:
    """The published number of a cell, None where there is none (the vote rows, ByzFL)."""
    if name in KHJ_PUBLISHED and table == "SGD":
        return KHJ_PUBLISHED[name].get((row, column))
    if name == "karimireddy-exp3" and table.startswith("SGD, momentum "):
        return EXP3_PUBLISHED.get((float(table.rsplit(" ", 1)[1]), row, column))
    return None


# --- the claims ----------------------------------------------------------------------------


def _value(tables_: Mapping[str, Mapping[str, Any]], table: str, row: str, column: str,
           source: str, name: str) -> float | None:
    if source == "published":
        return published(name, table, row, column)
    value = tables_.get(table, {}).get("ours", {}).get(f"{row}|{column}")
    return None if value is None or not math.isfinite(value) else value


def claims(name: str, tables_: Mapping[str, Mapping[str, Any]], source: str = "ours"
           ) -> list[tuple[str, Any]]:
    """The benchmark's claims as :class:`signvote.theory.as_printed.Verdict` (each a claim
    ``lhs <= rhs`` at its cells), with their text; on our numbers (``source="ours"``) or
    on the published ones (``"published"``). Cells without a value are left out.

    Karimireddy et al. (ICLR 2022, Section 6 and Tables 1-2): bucketing (s = 2) raises
    Krum, median and RFA on non-iid data (``acc(no bucketing) <= acc(s=2)``); with no
    attacker or under mimic, non-iid data costs Krum, median and RFA more than 2 points
    (``2 <= acc(iid) - acc(non-iid)``; 2 points is our threshold, their text says the
    rules "fail" without one), while CClip stays within 2 points (``acc(iid) -
    acc(non-iid) <= 2``); in experiment 3, worker momentum 0.9 does not lower any rule
    with bucketing (``acc(beta 0) <= acc(beta 0.9)``). ByzFL: heterogeneity lowers the
    reported accuracy (``acc(gamma 0) <= acc(gamma 1)`` at each f)."""
    from signvote.theory.as_printed import verdict

    def value(table: str, row: str, column: str) -> float | None:
        return _value(tables_, table, row, column, source, name)

    def check(text: str, points: list[tuple[dict[str, Any], float | None, float | None]]
              ) -> None:
        kept = [(w, a, b) for w, a, b in points if a is not None and b is not None]
        if kept:
            out.append((text, verdict(text, KHJ if name != "byzfl" else BYZFL, name, kept)))

    out: list[tuple[str, Any]] = []
    if name in ("karimireddy-exp1", "karimireddy-exp2"):
        check("bucketing (s=2) raises Krum, median and RFA on non-iid data",
              [({"aggregator": a}, value("SGD", a, "non-iid"), value("SGD", a, "non-iid s=2"))
               for a in ("Krum", "median", "RFA")])
        pairs = [(a, value("SGD", a, "iid"), value("SGD", a, "non-iid"))
                 for a in ("Krum", "median", "RFA")]
        check("non-iid data costs Krum, median and RFA more than 2 points (no bucketing)",
              [({"aggregator": a}, 2.0, None if i is None or n is None else i - n)
               for a, i, n in pairs])
        i, n = value("SGD", "CClip", "iid"), value("SGD", "CClip", "non-iid")
        check("CClip without bucketing stays within 2 points of its iid accuracy on "
              "non-iid data", [({"aggregator": "CClip"},
                                None if i is None or n is None else i - n, 2.0)])
    elif name == "karimireddy-exp3":
        for table in sorted(t for t in tables_ if t.startswith("SGD")) or [
                f"SGD, momentum {m:g}" for m in (0.0, 0.9)]:
            check(f"bucketing (s=2) raises Krum, median and RFA under every attack "
                  f"({table.removeprefix('SGD, ')})",
                  [({"aggregator": a, "attack": k}, value(table, a, k),
                    value(table, f"{a} s=2", k))
                   for a in ("Krum", "median", "RFA") for k in KHJ_ATTACKS])
        check("worker momentum 0.9 does not lower a bucketed rule",
              [({"row": f"{a} s=2", "attack": k},
                value("SGD, momentum 0", f"{a} s=2", k),
                value("SGD, momentum 0.9", f"{a} s=2", k))
               for a in ("Krum", "median", "RFA", "CClip") for k in KHJ_ATTACKS])
    else:
        for table in BYZFL_AGGREGATORS:
            columns = tables_.get(table, {}).get("columns", [])
            check(f"{table}: gamma 0 (sorted by label) scores at most gamma 1 (iid) at every f",
                  [({"f": c}, value(table, "gamma 0", c), value(table, "gamma 1", c))
                   for c in columns])
    return out


def claim_lines(name: str, tables_: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per claim: holds or not on our numbers (at how many cells), and on the
    published numbers where there are any."""
    theirs = {text: v for text, v in claims(name, tables_, "published")}
    lines = []
    for text, v in claims(name, tables_):
        held = v.points - v.failures
        line = (f"- {'holds' if not v.failures else 'DOES NOT HOLD'} on ours "
                f"({held} of {v.points} cells): {text}")
        if v.failures:
            line += f"; worst at {_where(v.worst)}"
        if text in theirs:
            t = theirs[text]
            line += (f" (published: {'holds' if not t.failures else 'does not hold'}, "
                     f"{t.points - t.failures} of {t.points})")
        lines.append(line)
    return lines or ["- no claim could be checked (no finished cells)"]


def _where(worst: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in worst.items())


def vote_lines(tables_: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per column of the vote table: the best SGD aggregator of the table beside it and the
    votes' numbers."""
    lines = []
    if all(label in tables_ for label, _ in VOTES):  # ByzFL: a table per rule
        for row in tables_[VOTES[0][0]]["rows"]:
            for column in tables_[VOTES[0][0]]["columns"]:
                key = f"{row}|{column}"
                field = [(tables_[t]["ours"].get(key), t) for t in BYZFL_AGGREGATORS
                         if t in tables_]
                field = [(v, t) for v, t in field if v is not None and math.isfinite(v)]
                best = [f"best of the field: {max(field)[1]} {max(field)[0]:.1f}%"] if field else []
                votes = [f"{label} {_fmt(tables_[label]['ours'].get(key))}%"
                         for label, _ in VOTES]
                lines.append(f"- {row}, {column}: " + "; ".join(best + votes))
    if "vote" in tables_:
        vote = tables_
        sgd = [t for t in tables_ if t.startswith("SGD")]
        for column in vote["vote"]["columns"]:
            best = []
            for t in sgd:
                cells = [(tables_[t]["ours"].get(f"{r}|{column}"), r)
                         for r in tables_[t]["rows"]]
                cells = [(v, r) for v, r in cells if v is not None and math.isfinite(v)]
                if cells:
                    v, r = max(cells)
                    best.append(f"best of {t}: {r} {v:.1f}%")
            votes = [f"{label} {_fmt(vote['vote']['ours'].get(f'{label}|{column}'))}%"
                     for label, _ in VOTES]
            lines.append(f"- {column}: " + "; ".join(best + votes))
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- running, drawing, reporting ----------------------------------------------------------


def reproduce(name: str, out: str | Path, scale: str = "reduced",
              seeds: Sequence[int] | None = None, dataset: str | None = None,
              data_dir: str | None = None, jobs: int | None = None,
              progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """Run (or finish) target ``name``'s sweep in ``OUT/NAME``, draw ``OUT/NAME.png`` and
    ``.svg``, write ``OUT/NAME/report.json`` and rewrite ``OUT/BENCHMARKS.md``; returns
    the section's data. :func:`choose_inputs` runs first: a target that cannot run
    raises before anything is written."""
    from signvote.experiment.reproduce import runs_time

    chosen, model, note, data_dir = choose_inputs(name, scale, dataset, data_dir)
    target = TARGETS[name]
    plan = target.plans[scale]
    seeds = list(seeds or plan.seeds)
    out = Path(out)
    cells = grid(name, scale, seeds, chosen, model, data_dir, device)
    configs = [c for _, c in cells]
    sweep.run_sweep(configs, out / name, jobs, progress)
    placed = sweep.place(configs, out / name)
    rows = results.tidy_rows(out / name)
    notes = "; ".join(n for n in (plan.note if scale == "reduced" else "", note) if n)
    section = {"name": name, "scale": scale, "note": notes, "seeds": seeds,
               "dataset": chosen, "model": model or target.model, "runs": len(placed),
               "wall_s": round(runs_time(placed), 1), "last_k": plan.last_k,
               "eval_every": plan.eval_every,
               "tables": tables(name, cells, run_series(rows), plan.last_k)}
    runs.write_json(out / name / "report.json", section)
    plots.save(figure(name, section), out / name)
    write_report(out)
    return section


def figure(name: str, section: Mapping[str, Any]):
    """One heatmap per table of the section: our number in each cell, the published one
    below it in brackets where there is one, the worst attack for ByzFL."""
    import numpy as np

    plt = plots.pyplot()
    tables_ = section["tables"]
    count = max(1, len(tables_))
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.6), squeeze=False)
    for ax, (table_name, table) in zip(axes[0], tables_.items(), strict=False):
        rows, columns = table["rows"], table["columns"]
        values = np.array([[np.nan if table["ours"].get(f"{r}|{c}") is None
                            else table["ours"][f"{r}|{c}"] for c in columns] for r in rows],
                          dtype=float)
        ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, r in enumerate(rows):
            for j, c in enumerate(columns):
                text = _fmt(table["ours"].get(f"{r}|{c}"))
                theirs = published(name, table_name, r, c)
                if theirs is not None:
                    text += f"\n({theirs:.1f})"
                if table["worst"].get(f"{r}|{c}"):
                    text += f"\n{table['worst'][f'{r}|{c}']}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if not values[i, j] > 60 else "black")
        ax.set_xticks(range(len(columns)), [plots.plain(c) for c in columns], fontsize=8)
        ax.set_yticks(range(len(rows)), [plots.plain(r) for r in rows], fontsize=8)
        ax.set_title(plots.plain(table_name), fontsize=9)
    title = TARGETS[name].title
    note = section.get("note") or "the benchmark's settings"
    prefix = "" if note.startswith(section["scale"]) else f"{section['scale']} scale: "
    width = int(4.2 * count * 13)  # characters of a 9-point line across the figure
    text = "\n".join([title, *textwrap.wrap(f"{prefix}{note}", width, break_on_hyphens=False),
                      "ours (published); test accuracy %"])
    fig.suptitle(plots.plain(text), fontsize=9)
    title_in = 0.17 * (text.count("\n") + 1)  # the title's height, inches, added on top
    fig.set_figheight(fig.get_figheight() + title_in)
    fig.tight_layout()  # it leaves the suptitle its room
    return fig


GAPS = {
    "khj": [
        "Momentum: their workers keep m = beta m + g, ours m = beta m + (1 - beta) g. At "
        "beta 0.9 we ran lr 0.1 (theirs 0.01), CClip tau 1 (theirs 10) and RFA nu 0.01 "
        "(theirs 0.1), which gives their honest trajectories for every rule of the grid.",
        "Their bit-flip and label-flip workers keep no momentum (plain workers sending raw "
        "gradients); ours go through the worker rule, so at beta 0.9 they send minus (or the "
        "flipped-label) momentum: relative to the honest rows, 10 times theirs.",
        "Their bucketing permutes with numpy's generator, ours with the stage's seeded torch "
        "generator; mimic's random start is drawn on the CPU. Other buckets and starts, the "
        "same distributions.",
        "Their seeds are their code's (torch and numpy seeded 0-2); ours are signvote seeds: "
        "another initialisation, batch order and partition walk.",
    ],
    "byzfl": [
        "ByzFL evaluates at step 0 too; we evaluate every --eval-every steps and after the "
        "last one, not at step 0 (the untrained model scores about 10%, below every later "
        "evaluation of a run that learns, so the maximum over evaluations is the same "
        "unless a run never learns).",
        "ByzFL trains on a random 80% of the training set (the rest is its validation set); "
        "we train on all of it.",
        "ByzFL's Byzantine clients hold no data; ours compute gradients on iid shares "
        "(gamma-byzfl gives them), which none of the three attacks uses: each builds its "
        "rows from the honest ones.",
        "ByzFL publishes no table of these numbers in its code; ours stand alone.",
    ],
}


def _number_text(target: Target, section: Mapping[str, Any]) -> str:
    """The target's number in words, with its K and E (a report.json without
    ``eval_every`` is read at the full scale's)."""
    every = section.get("eval_every")
    if every is None:
        every = target.plans["full"].eval_every
    return (target.number.replace("last K", f"last {section['last_k']}")
            .replace("every E", f"every {every}"))


def write_report(out: str | Path) -> Path:
    """``OUT/BENCHMARKS.md`` from every target reproduced in ``OUT``."""
    out = Path(out)
    lines = ["# The field's benchmarks", "",
             "Our numbers beside the published ones, written by `signvote reproduce "
             "TARGET` (signvote's docs/reproduction.md says how the published ones were "
             "read). Test accuracy, %.", ""]
    from signvote.experiment.reproduce import reproduced

    for name, section in reproduced(out, TARGETS):
        target = TARGETS[name]
        lines += [f"## {target.title} (`{name}`)", "", f"Source: {target.source}.", "",
                  f"Scale: {section['scale']}"
                  + (f" ({section['note']})" if section["note"] else " (the benchmark's "
                                                                    "settings)")
                  + f"; dataset {section['dataset']}, model {section['model']}; seeds "
                  + ", ".join(map(str, section["seeds"])) + f"; {section['runs']} runs, "
                  f"{section['wall_s']} s of training (the runs' own time). Figure: "
                  f"`{name}.png`.", "",
                  f"Each number: {_number_text(target, section)}."
                  + (" Brackets: the published number." if name != "byzfl" else
                     " Beside it: the attack that gave the minimum."), ""]
        for table_name, table in section["tables"].items():
            lines += [f"**{table_name}**", "",
                      "| | " + " | ".join(table["columns"]) + " |",
                      "|---" * (len(table["columns"]) + 1) + "|"]
            for row in table["rows"]:
                cells = []
                for column in table["columns"]:
                    text = _fmt(table["ours"].get(f"{row}|{column}"))
                    theirs = published(name, table_name, row, column)
                    if theirs is not None:
                        text += f" ({theirs:.2f})"
                    if table["worst"].get(f"{row}|{column}"):
                        text += f" {table['worst'][f'{row}|{column}']}"
                    cells.append(text)
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["The claims, on our numbers and on the published ones:", "",
                  *claim_lines(name, section["tables"]), ""]
        votes = vote_lines(section["tables"])
        if votes:
            lines += ["The vote beside the field's rules:", "", *votes, ""]
        lines += ["Known differences from the benchmark's code:", "",
                  *[f"- {g}" for g in GAPS["byzfl" if name == "byzfl" else "khj"]], ""]
    path = out / "BENCHMARKS.md"
    runs.atomic_write_text(path, "\n".join(lines))
    return path
