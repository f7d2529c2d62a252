"""Simulator speed on the paper's logistic-regression setting.

1. End to end: Signum, 10 workers of which 4 Byzantine (vote-cancel), 80 epochs, seed 8005
   (``train()`` wall time: data, model, 5,360 steps, 80 test evaluations); median of runs.
   Also the whole ``signvote train`` command (Python start-up and imports included).
2. Per step: one simulator step (per-worker gradients of all 10 workers, Signum, the
   vote-cancelling attack, majority vote, update) divided by one plain single-process SGD
   step (``nn.Module`` forward/backward on the same 10 x 12 samples + ``torch.optim.SGD``),
   timed side by side, interleaved, median over repeats.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_sim.py [--repeats N]``);
``--smoke`` measures once, on 1 epoch and blocks of 5 steps (a check that it still works).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from signvote import aggregators, attacks, models, rules
from signvote.data import load
from signvote.engine.gradients import BatchedModel, ParamLayout
from signvote.engine.memory import keep_freed_memory
from signvote.engine.run import choose_adversaries
from signvote.engine.sim import train
from signvote.engine.step import AdversaryPlan, DataPath
from signvote.experiment.config import TrainConfig


def end_to_end(repeats: int, epochs: int = 80) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train(TrainConfig(rule="signum", byzantine=4, epochs=epochs), progress=False,
              write=False)
        times.append(time.perf_counter() - t0)
    return times


def command(repeats: int, epochs: int = 80) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "signvote", "train", "--byzantine", "4",
                            "--epochs", str(epochs), "--quiet", "--out", out], check=True,
                           capture_output=True)
            times.append(time.perf_counter() - t0)
    return times


def per_step(repeats: int, steps: int = 500) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    data = load("logreg", 8005)
    n, b = 10, 12
    module = models.build("logregnet", data.input_shape, data.n_classes)
    layout = ParamLayout.of(module)
    x = layout.flatten(module)
    inputs = data.train_x[: n * b].view(n, b, -1)
    targets = data.train_y[: n * b].view(n, b)
    blind, byz = choose_adversaries(n, 0, 4, 8005)
    plan = AdversaryPlan(blind, byz, attacks.get("blind-inversion"), attacks.get("vote-cancel"))
    path = DataPath(BatchedModel(module, layout), rules.get("signum"), plan,
                    aggregators.get("majority-vote"), "classification", 0.0,
                    torch.Generator().manual_seed(0))

    plain = models.build("logregnet", data.input_shape, data.n_classes)
    opt = torch.optim.SGD(plain.parameters(), lr=1e-4)
    flat_x, flat_y = inputs.reshape(n * b, -1), targets.reshape(-1)

    def sim_block() -> float:
        state, xx = path.initial_state(), x
        t0 = time.perf_counter()
        for s in range(steps):
            xx, state, _ = path.step(xx, state, inputs, targets, 1e-4, s)
        return (time.perf_counter() - t0) / steps

    def plain_block() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(plain(flat_x), flat_y).backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    sim_block(), plain_block()  # warm-up
    sims, plains = [], []
    for _ in range(repeats):
        sims.append(sim_block())
        plains.append(plain_block())
    return sims, plains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="1 repeat, 1 epoch, 5 steps a block: a quick check, not a result")
    args = parser.parse_args()
    keep_freed_memory()  # as the signvote command does
    epochs, steps = (1, 5) if args.smoke else (80, 500)
    if args.smoke:
        args.repeats = 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python "
          f"{sys.version.split()[0]}")
    e2e = end_to_end(args.repeats, epochs)
    cmd = command(max(1, args.repeats // 2), epochs)
    sims, plains = per_step(args.repeats, steps)
    ratios = [s / p for s, p in zip(sims, plains, strict=True)]
    print("| measurement | median | all runs |")
    print("|---|---|---|")
    print(f"| train(): Signum, 4/10 Byzantine, {epochs} epochs | {statistics.median(e2e):.2f} s | "
          + ", ".join(f"{t:.2f}" for t in e2e) + " |")
    what = "" if epochs == 80 else f" --epochs {epochs}"
    print(f"| `signvote train --byzantine 4{what}` (whole command) | "
          f"{statistics.median(cmd):.2f} s | "
          + ", ".join(f"{t:.2f}" for t in cmd) + " |")
    print(f"| simulator step (10 workers x 12 samples) | {1e6 * statistics.median(sims):.0f} us "
          f"| " + ", ".join(f"{1e6 * t:.0f}" for t in sims) + " |")
    print(f"| plain SGD step (120 samples, one process) | {1e6 * statistics.median(plains):.0f}"
          f" us | " + ", ".join(f"{1e6 * t:.0f}" for t in plains) + " |")
    print(f"| ratio simulator / plain (per repeat) | {statistics.median(ratios):.2f} | "
          + ", ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
