"""torch.compile of the simulator's sign-rule, vote and update (``--compile``) against eager.

For each model's parameter count ``d`` (10 workers, ``G[10, d]`` drawn once), on the
threads a run of that model uses (``engine/threads.py``: one below 1M parameters):

- ``rule+vote+update``: eager ``rule.step`` (Signum: lerp, sign) + ``majority-vote`` +
  ``apply_update``, against what ``--compile`` runs (``engine/fused.py``: the lerp eager,
  then the vote of the signs and the update in one compiled kernel);
- ``wire+vote``: the distributed engine's packing and vote from bits (``packing.py``:
  ``pack_signs`` + ``packed_vote``, numpy on the CPU) against the same in torch ops
  compiled (``pack_bits_torch`` + ``packed_vote_torch`` under ``torch.compile``);
- ``sim step`` (models of at most ``--step-max-d`` parameters, where dispatch dominates):
  one whole ``DataPath.step`` (per-worker gradients of 10 x 12 samples, Signum, vote,
  update), eager against ``compiled=True`` (``--compile``), and against
  ``torch.compile(DataPath.step)`` (the whole step traced, models of at most
  ``--whole-max-d``; where tracing fails, its error).

The fused call is measured at every size (``fused.MIN_CPU_DIM`` set to 0 here; a run uses
it on the CPU from that many parameters on). Every compiled call is checked equal to the
eager one (the vote stages bit for bit).
Each measurement is the median over ``--repeats`` interleaved repeats (eager block, then
compiled block) of the mean time a call in a block of ``--calls``; the first call of each
compiled function, compilation included, is reported as ``compile s``. The machine's
load average is printed: it is shared.

Run: ``.venv/bin/python benchmarks/bench_compile.py [--repeats N] [--out FILE]``;
``--smoke``: one repeat of 3 calls on the two smallest models, the whole step not traced
(a check, not a result). The sim step is timed in blocks of ``--calls // 5`` (at least 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from signvote import aggregators, attacks, models, rules
from signvote.data import load
from signvote.engine import fused
from signvote.engine.gradients import BatchedModel, ParamLayout
from signvote.engine.step import AdversaryPlan, DataPath, apply_update
from signvote.engine.threads import run_threads, torch_threads
from signvote.experiment.runs import write_json
from signvote.packing import (
    PackedSigns,
    pack_bits_torch,
    pack_signs,
    packed_vote,
    packed_vote_torch,
)

MODELS = (("logregnet", "logreg"), ("smallcnn", "digits"), ("smallcnn", "mnist-shaped"),
          ("mnistnet", "mnist-shaped"), ("torchnet", "cifar-shaped"))
"""(model, data): the data's shape decides ``d`` (``*-shaped``: synthetic inputs of
MNIST's 1x28x28 or CIFAR's 3x32x32, 10 classes)."""
SHAPES = {"mnist-shaped": ((1, 28, 28), 10), "cifar-shaped": ((3, 32, 32), 10)}
N, B, LR, WD, BETA = 10, 12, 1e-4, 1e-4, 0.9


def module_and_data(model: str, data: str, seed: int = 0
                    ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    """The model, ``inputs[N, B, ...]``, ``targets[N, B]`` and task for ``(model, data)``."""
    torch.manual_seed(seed)
    if data in SHAPES:
        shape, classes = SHAPES[data]
        inputs = torch.randn(N, B, *shape)
        targets = torch.randint(0, classes, (N, B))
    else:
        loaded = load(data, 8005)
        shape, classes = loaded.input_shape, loaded.n_classes
        inputs = loaded.train_x[: N * B].reshape(N, B, *shape)
        targets = loaded.train_y[: N * B].reshape(N, B)
    return models.build(model, shape, classes), inputs, targets, "classification"


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Mean seconds of one ``fn()`` over ``calls`` calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def first_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()``'s result and its seconds (a compiled function's compilation)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compare(eager: Callable[[], Any], compiled: Callable[[], Any], repeats: int, calls: int
            ) -> dict[str, float]:
    """Medians of interleaved repeats of both (after one warm-up call each)."""
    eager(), compiled()
    e, c = [], []
    for _ in range(repeats):
        e.append(timed(eager, calls))
        c.append(timed(compiled, calls))
    return {"eager_us": 1e6 * statistics.median(e), "compiled_us": 1e6 * statistics.median(c),
            "ratio": statistics.median(ci / ei for ci, ei in zip(c, e, strict=True))}


def vote_stage(d: int, repeats: int, calls: int) -> dict[str, Any]:
    """``rule+vote+update``: eager stages against the fused compiled call."""
    gen = torch.Generator().manual_seed(d)
    grads, state = torch.randn(N, d, generator=gen), torch.randn(N, d, generator=gen)
    x = torch.randn(d, generator=gen)
    rule, vote = rules.get("signum", momentum=BETA), aggregators.get("majority-vote")

    def eager() -> tuple[torch.Tensor, torch.Tensor]:
        messages, new = rule.step(grads, state)
        direction, _ = vote.apply(messages, None)
        return apply_update(x, direction, LR, WD), new

    def compiled() -> tuple[torch.Tensor, torch.Tensor]:
        source, new = fused.rule_direction(rule, grads, state)
        return fused.vote_update(WD)(source, x, fused.lr_tensor(LR, x)), new

    got, seconds = first_call(compiled)
    want = eager()
    same = all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    return {**compare(eager, compiled, repeats, calls), "compile_s": seconds,
            "identical": same}


def _wire_torch(messages: torch.Tensor) -> torch.Tensor:
    """pack_signs + packed_vote in torch ops (what compiles), for all-nonzero messages."""
    positive = pack_bits_torch(messages > 0)
    return packed_vote_torch(PackedSigns(positive, None, messages.shape[1]))


def wire_stage(d: int, repeats: int, calls: int) -> dict[str, Any]:
    """``wire+vote``: the numpy packing and vote from bits against torch ops compiled."""
    gen = torch.Generator().manual_seed(d + 1)
    messages = torch.where(torch.rand(N, d, generator=gen) < 0.5, -1.0, 1.0)
    compiled_fn = torch.compile(_wire_torch, dynamic=False)

    def eager() -> torch.Tensor:
        return packed_vote(pack_signs(messages))

    def compiled() -> torch.Tensor:
        return compiled_fn(messages)

    got, seconds = first_call(compiled)
    return {**compare(eager, compiled, repeats, calls), "compile_s": seconds,
            "identical": torch.equal(got, eager())}


def step_stage(model: str, data: str, repeats: int, calls: int, whole: bool
               ) -> dict[str, Any]:
    """``sim step``: a whole DataPath step eager, with ``compiled=True``, and traced whole."""
    module, inputs, targets, task = module_and_data(model, data)
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    blind = torch.zeros(N, dtype=torch.bool)
    plan = AdversaryPlan(blind, blind.clone(), attacks.get("blind-inversion"))

    def path(compiled: bool) -> DataPath:
        return DataPath(BatchedModel(module, layout), rules.get("signum", momentum=BETA),
                        plan, aggregators.get("majority-vote"), task, WD,
                        torch.Generator().manual_seed(0), compiled=compiled)

    eager_path, fused_path = path(False), path(True)
    state = eager_path.initial_state()
    state = eager_path.step(x, state, inputs, targets, LR, 0)[1]  # a momentum to carry

    def eager() -> torch.Tensor:
        return eager_path.step(x, state, inputs, targets, LR, 1)[0]

    def fused_step() -> torch.Tensor:
        return fused_path.step(x, state, inputs, targets, LR, 1)[0]

    got, seconds = first_call(fused_step)
    row: dict[str, Any] = {**compare(eager, fused_step, repeats, calls), "compile_s": seconds,
                           "identical": torch.equal(got, eager())}
    if not whole:
        return row
    traced = torch.compile(eager_path.step, dynamic=False)
    try:
        got, seconds = first_call(lambda: traced(x, state, inputs, targets, LR, 1)[0])
        timing = compare(eager, lambda: traced(x, state, inputs, targets, LR, 1)[0], repeats,
                         calls)
        row["whole"] = {**timing, "compile_s": seconds, "identical": torch.equal(got, eager())}
    except Exception as error:  # tracing the per-worker gradients may fail: say how
        row["whole"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
    return row


def cell(r: dict[str, Any]) -> str:
    """``eager us | compiled us | ratio | compile s | identical`` of one measurement."""
    if "error" in r:
        return f"- | - | - | - | {r['error']}"
    return (f"{r['eager_us']:.0f} | {r['compiled_us']:.0f} | {r['ratio']:.2f} | "
            f"{r['compile_s']:.1f} | {'yes' if r['identical'] else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50, help="calls per timed block")
    parser.add_argument("--step-max-d", type=int, default=30_000,
                        help="time the step for models of at most this many parameters")
    parser.add_argument("--whole-max-d", type=int, default=1_000,
                        help="also trace the whole step for models of at most this many "
                        "parameters (its compilation takes minutes)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--smoke", action="store_true", help="1 repeat of 3 calls, 2 models")
    args = parser.parse_args()
    fused.MIN_CPU_DIM = 0  # the fused call at every size: where it pays is what is measured
    chosen = MODELS[:2] if args.smoke else MODELS
    if args.smoke:
        args.repeats, args.calls, args.whole_max_d = 1, 3, 0
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} "
          f"cores, load average before {os.getloadavg()[0]:.2f}")
    rows = []
    for model, data in chosen:
        module = module_and_data(model, data)[0]
        d = ParamLayout.of(module).dim
        with torch_threads(run_threads(None, d)):
            threads = torch.get_num_threads()
            row: dict[str, Any] = {"model": model, "data": data, "d": d, "threads": threads,
                                   "rule+vote+update": vote_stage(d, args.repeats, args.calls),
                                   "wire+vote": wire_stage(d, args.repeats, args.calls)}
            if d <= args.step_max_d:
                row["sim step"] = step_stage(model, data, args.repeats,
                                             max(2, args.calls // 5), d <= args.whole_max_d)
        rows.append(row)
        print(f"measured {model} ({data}, d = {d:,}, {threads} threads)", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    print("| model (data) | d | threads | stage | eager us | compiled us | compiled / eager "
          "| compile s | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        head = f"| {row['model']} ({row['data']}) | {row['d']:,} | {row['threads']}"
        for stage in ("rule+vote+update", "wire+vote", "sim step"):
            if stage in row:
                print(f"{head} | {stage} | {cell(row[stage])} |")
        if "whole" in row.get("sim step", {}):
            print(f"{head} | whole step traced | {cell(row['sim step']['whole'])} |")
    if args.out is not None:
        write_json(args.out, {"torch": torch.__version__, "repeats": args.repeats,
                                     "calls": args.calls, "rows": rows})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
