"""Simulator speed on CNNs (issue 3).

1. Per step, 10 workers x 12 samples of 28x28 images (the paper's batch 128 // 10): one
   simulator step (``DataPath.step``: per-worker gradients, Signum, majority vote, update)
   divided by one plain single-process training step on the same 120 samples
   (``nn.Module`` forward/backward + ``torch.optim.SGD``), for ``smallcnn`` and the paper's
   ``torchnet``; also our per-worker gradients alone. Blocks of steps, interleaved, median
   over repeats; the same
   allocator setting for both (``keep_freed_memory``, as ``train()`` uses). Also the naive
   formulation, ``vmap(grad(loss))`` over the workers (``torch.func``), for reference.
2. A full epoch of Fashion-MNIST (60,000 images) with ``smallcnn``, Signum, 10 workers,
   through ``train()`` (test-set evaluation included): samples per second.

Run: ``.venv/bin/python benchmarks/bench_cnn.py [--repeats N]`` (Fashion-MNIST from
Debian's ``dataset-fashion-mnist``; part 2 is skipped without it). ``--smoke`` times one block
of one step and trains part 2 on scikit-learn's digits instead (a check that it still works).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from signvote import aggregators, attacks, models, rules
from signvote.data import DatasetError
from signvote.engine.gradients import BatchedModel, ParamLayout, worker_gradients
from signvote.engine.memory import keep_freed_memory
from signvote.engine.sim import train
from signvote.engine.step import AdversaryPlan, DataPath
from signvote.experiment.config import TrainConfig


def block(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def per_step(name: str, repeats: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    n, b = 10, 12
    inputs = torch.randn(n, b, 1, 28, 28)
    targets = torch.randint(0, 10, (n, b))
    module = models.build(name, (1, 28, 28), 10)
    layout = ParamLayout.of(module)
    no_adversary = torch.zeros(n, dtype=torch.bool)
    plan = AdversaryPlan(no_adversary, no_adversary, attacks.get("blind-inversion"))
    path = DataPath(BatchedModel(module, layout), rules.get("signum"), plan,
                    aggregators.get("majority-vote"), "classification", 0.0, torch.Generator())
    sim_state = {"x": layout.flatten(module), "rule": path.initial_state()}

    def sim_step() -> None:
        sim_state["x"], sim_state["rule"], _ = path.step(
            sim_state["x"], sim_state["rule"], inputs, targets, 1e-4, 0)

    def grads_step() -> None:
        worker_gradients(path.model, sim_state["x"], inputs, targets, "classification")

    plain = models.build(name, (1, 28, 28), 10)
    optimizer = torch.optim.SGD(plain.parameters(), lr=1e-4)
    flat_x, flat_y = inputs.reshape(n * b, 1, 28, 28), targets.reshape(-1)

    def plain_step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(plain(flat_x), flat_y).backward()
        optimizer.step()

    params = dict(module.named_parameters())
    names = list(params)

    def loss(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(module, p, (xb,)), yb)

    per_worker = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")

    def vmap_step() -> None:
        g = per_worker({k: v.detach() for k, v in params.items()}, inputs, targets)
        torch.cat([g[k].reshape(n, -1) for k in names], dim=1)

    steps_by_name = {"sim": sim_step, "plain": plain_step, "grads": grads_step,
                     "vmap": vmap_step}
    times: dict[str, list[float]] = {key: [] for key in steps_by_name}
    for fn in steps_by_name.values():  # warm-up
        block(fn, 2)
    for _ in range(repeats):
        for key, fn in steps_by_name.items():
            times[key].append(block(fn, steps))
    return times


def fashion_epoch(dataset: str = "fashion-mnist") -> tuple[float, float] | None:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(dataset=dataset, model="smallcnn", rule="signum",
                             epochs=1, lr=1e-3, out=out)
        try:
            t0 = time.perf_counter()
            result = train(config, progress=False)
        except DatasetError as exc:
            print(f"({dataset} epoch skipped: {exc})", file=sys.stderr)
            return None
        total = time.perf_counter() - t0
    return total, result.summary["final_test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--smoke", action="store_true",
                        help="1 repeat of 1 step, and digits for part 2: a quick check")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.steps = 1, 1
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python "
          f"{sys.version.split()[0]}")
    print("| model | params | simulator step | plain step | ratio sim/plain (per repeat) "
          "| our gradients only | ratio grads/plain | vmap(grad) gradients only "
          "| ratio vmap/plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("smallcnn", "torchnet"):
        t = per_step(name, args.repeats, args.steps)
        ratios = [s / p for s, p in zip(t["sim"], t["plain"], strict=True)]
        vratios = [v / p for v, p in zip(t["vmap"], t["plain"], strict=True)]
        gratios = [g / p for g, p in zip(t["grads"], t["plain"], strict=True)]
        d = sum(p.numel() for p in models.build(name, (1, 28, 28), 10).parameters())
        print(f"| {name} | {d:,} | {1e3 * statistics.median(t['sim']):.1f} ms | "
              f"{1e3 * statistics.median(t['plain']):.1f} ms | "
              f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) | "
              f"{1e3 * statistics.median(t['grads']):.1f} ms | {statistics.median(gratios):.2f} | "
              f"{1e3 * statistics.median(t['vmap']):.1f} ms | {statistics.median(vratios):.2f} |")
    if args.smoke:
        epoch = fashion_epoch("digits")
        if epoch is None:
            raise SystemExit("bench_cnn.py --smoke: scikit-learn's digits did not load")
        print(f"\ndigits, smallcnn, Signum, 10 workers, 1 epoch (train()): {epoch[0]:.2f} s; "
              f"test accuracy {100 * epoch[1]:.2f}%")
        return
    epoch = fashion_epoch()
    if epoch is not None:
        total, acc = epoch
        print(f"\nFashion-MNIST, smallcnn, Signum, 10 workers, 1 epoch (train(): load, 500 "
              f"steps, test evaluation): {total:.2f} s = {60000 / total:,.0f} training "
              f"samples/s; test accuracy {100 * acc:.2f}%")


if __name__ == "__main__":
    main()
