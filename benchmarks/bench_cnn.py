"""Simulator speed on CNNs (issues 3 and 16).

1. Per step, 10 workers x b samples (b = 12, the paper's batch 128 // 10, and b = 64) for
   ``smallcnn``, ``torchnet``, ``mnistnet`` (1x28x28) and ``resnet20`` (3x32x32): one
   simulator step (``DataPath.step``: per-worker gradients, Signum, majority vote, update)
   divided by one plain single-process training step on the same 10 b samples
   (``nn.Module`` forward/backward + ``torch.optim.SGD``); also our per-worker gradients
   alone. Each model runs with the threads a run of it uses (``engine/threads.py``: 1
   below 1M parameters, else the process's count). Blocks of steps (about a second each
   unless ``--steps``), plain/sim/gradients interleaved, the ratio taken per repeat,
   medians; the same allocator setting for all (``keep_freed_memory``, as the ``signvote``
   command has it). Wall-clock time, and the process's CPU time beside it (on a shared machine the
   CPU time of a one-thread model is not inflated by the time other processes hold the
   core).
2. Per convolution of those models (duplicates once), at b = 4, 12 and 64, the per-worker
   weight gradient's formulations (``engine/worker_conv.py``: ``loop``, ``grouped``)
   beside one ``convolution_backward`` weight gradient of the whole batch (what a plain
   step pays for it), interleaved, medians: the measurement behind
   ``worker_conv.choose_method``.
3. A full epoch of Fashion-MNIST (60,000 images) with ``smallcnn``, Signum, 10 workers,
   through ``train()`` (test-set evaluation included): samples per second.

Run: ``.venv/bin/python benchmarks/bench_cnn.py [--repeats N]`` (Fashion-MNIST from
Debian's ``dataset-fashion-mnist``; part 3 is skipped without it). Prints Markdown tables
and writes them to benchmarks/results/cnn.json (``--out``). ``--smoke`` times one block of
one step at per-worker batches 2 and 4, trains part 3 on scikit-learn's digits instead,
and writes only where ``--out`` says (a check that it still works, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from signvote import aggregators, attacks, models, rules
from signvote.data import DatasetError
from signvote.engine.gradients import BatchedModel, ParamLayout, worker_gradients
from signvote.engine.memory import keep_freed_memory
from signvote.engine.sim import train
from signvote.engine.step import AdversaryPlan, DataPath
from signvote.engine.threads import run_threads, torch_threads
from signvote.engine.worker_conv import METHODS, worker_weight_grads
from signvote.experiment.config import TrainConfig
from signvote.experiment.runs import write_json

MODELS = (("smallcnn", (1, 28, 28)), ("torchnet", (1, 28, 28)), ("mnistnet", (1, 28, 28)),
          ("resnet20", (3, 32, 32)))
WORKERS = 10
BATCHES = (12, 64)
LAYER_BATCHES = (4, 12, 64)  # 4: a small share per worker, where the formulations differ
SMOKE_BATCHES = (2, 4)
BLOCK_S = 1.0  # the length of a timed block of steps when --steps is not given
LAYER_BLOCK_S = 0.1  # the length of a timed block of one layer's gradient
RESULTS = Path(__file__).resolve().parent / "results" / "cnn.json"


def block(step: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Seconds per call of ``step`` over ``steps`` calls: (wall clock, process CPU)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, steps: int | None,
                warmup: int, block_s: float = BLOCK_S, max_steps: int = 10
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Each call timed in ``repeats`` rounds, the calls one after the other in every
    round; ``steps`` per block (None: enough for about ``block_s`` seconds of the slowest
    call, at most ``max_steps``). Returns (wall, cpu) seconds per call per round, and
    the steps."""
    for fn in calls.values():
        block(fn, warmup)
    if steps is None:
        slowest = max(block(fn, 1)[0] for fn in calls.values())
        steps = max(1, min(max_steps, round(block_s / slowest)))
    wall: dict[str, list[float]] = {key: [] for key in calls}
    cpu: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            w, c = block(fn, steps)
            wall[key].append(w)
            cpu[key].append(c)
    return wall, cpu, steps


def step_calls(name: str, shape: tuple[int, ...], b: int) -> dict[str, Callable[[], Any]]:
    """The plain step, the simulator step and the gradients alone of model ``name`` on
    ``WORKERS x b`` samples of ``shape``."""
    torch.manual_seed(0)
    n = WORKERS
    inputs = torch.randn(n, b, *shape)
    targets = torch.randint(0, 10, (n, b))
    module = models.build(name, shape, 10)
    layout = ParamLayout.of(module)
    no_adversary = torch.zeros(n, dtype=torch.bool)
    plan = AdversaryPlan(no_adversary, no_adversary, attacks.get("blind-inversion"))
    batched = BatchedModel(module, layout,
                           independent_samples=models.info(name).independent_samples)
    path = DataPath(batched, rules.get("signum"), plan, aggregators.get("majority-vote"),
                    "classification", 0.0, torch.Generator())
    sim_state = {"x": layout.flatten(module), "state": path.initial_state()}

    def sim_step() -> None:
        sim_state["x"], sim_state["state"], _ = path.step(
            sim_state["x"], sim_state["state"], inputs, targets, 1e-4, 0)

    def grads_step() -> None:
        worker_gradients(path.model, sim_state["x"], inputs, targets, "classification",
                         buffers=sim_state["state"].buffers)

    return {"plain": plain_step(name, shape, inputs, targets), "sim": sim_step,
            "grads": grads_step}


def plain_step(name: str, shape: tuple[int, ...], inputs: torch.Tensor,
               targets: torch.Tensor) -> Callable[[], None]:
    """One plain single-process training step of model ``name`` on all the workers'
    samples ``inputs[n, b, ...]`` as one batch (forward, backward, ``torch.optim.SGD``),
    on the inputs' device: what a simulator step is compared with (also by gpu.py)."""
    plain = models.build(name, shape, 10).to(inputs.device)
    plain.train()
    optimizer = torch.optim.SGD(plain.parameters(), lr=1e-4)
    flat_x, flat_y = inputs.reshape(-1, *shape), targets.reshape(-1)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(plain(flat_x), flat_y).backward()
        optimizer.step()

    return step


def conv_layers(name: str, shape: tuple[int, ...]) -> list[tuple[nn.Conv2d, torch.Size]]:
    """Every ``Conv2d`` of model ``name`` with the input shape it sees (one sample), in
    forward order."""
    module = models.build(name, shape, 10)
    found: list[tuple[nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(
        lambda m, args: found.append((m, args[0].shape[1:])))
        for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    return found


def layer_key(conv: nn.Conv2d, size: torch.Size) -> tuple:
    return (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            conv.padding, conv.dilation, conv.groups, tuple(size[1:]))


def layer_label(conv: nn.Conv2d, size: torch.Size) -> str:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    label = f"{conv.in_channels}->{conv.out_channels} {k[0]}x{k[1]}"
    if s != (1, 1):
        label += f" stride {s[0]}"
    if p != (0, 0):
        label += f" pad {p[0]}"
    if conv.groups != 1:
        label += f" groups {conv.groups}"
    return f"{label} on {size[1]}x{size[2]}"


def layer_calls(conv: nn.Conv2d, size: torch.Size, b: int) -> dict[str, Callable[[], Any]]:
    """The whole batch's weight gradient and each formulation of the per-worker ones."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(WORKERS * b, *size, generator=gen)
    weight = conv.weight.detach()
    dy = torch.randn_like(nn.functional.conv2d(h, weight, None, conv.stride, conv.padding,
                                               conv.dilation, conv.groups))
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0],
            conv.groups, [False, True, False])
    out = weight.new_empty((WORKERS, *weight.shape))
    calls: dict[str, Callable[[], Any]] = {
        "whole batch": lambda: torch.ops.aten.convolution_backward(dy, h, weight, None, *args)}
    for method in METHODS:
        calls[method] = (lambda method=method: worker_weight_grads(
            dy, h, weight, WORKERS, conv.stride, conv.padding, conv.dilation, conv.groups,
            out=out, method=method))
    return calls


def med_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def ratios(top: list[float], bottom: list[float]) -> list[float]:
    return [t / p for t, p in zip(top, bottom, strict=True)]


def part_steps(args: argparse.Namespace, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    print("| model | params | b | threads | plain step | simulator step | ratio sim/plain "
          "(per repeat) | ratio by CPU time | our gradients only | ratio grads/plain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, shape in MODELS:
        if name not in models.names():
            print(f"({name} skipped: not a registered model)", file=sys.stderr)
            continue
        d = sum(p.numel() for p in models.build(name, shape, 10).parameters())
        threads = run_threads(None, d)
        for b in batches:
            with torch_threads(threads):
                wall, cpu, steps = interleaved(step_calls(name, shape, b), args.repeats,
                                               args.steps, args.warmup)
            ratio, cpu_ratio = ratios(wall["sim"], wall["plain"]), ratios(cpu["sim"],
                                                                         cpu["plain"])
            grads_ratio = ratios(wall["grads"], wall["plain"])
            print(f"| {name} | {d:,} | {b} | {threads} | {med_ms(wall['plain']):.1f} ms | "
                  f"{med_ms(wall['sim']):.1f} ms | {statistics.median(ratio):.2f} "
                  f"({', '.join(f'{r:.2f}' for r in ratio)}) | "
                  f"{statistics.median(cpu_ratio):.2f} | {med_ms(wall['grads']):.1f} ms | "
                  f"{statistics.median(grads_ratio):.2f} |", flush=True)
            rows.append({"model": name, "input": list(shape), "params": d, "workers": WORKERS,
                         "b": b, "threads": threads, "steps_per_block": steps,
                         "wall_s": wall, "cpu_s": cpu, "ratio_sim_plain": ratio,
                         "ratio_sim_plain_cpu": cpu_ratio, "ratio_grads_plain": grads_ratio})
    return rows


def part_layers(args: argparse.Namespace, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    print(f"\n| model | convolution | threads | b | whole batch weight gradient | "
          f"{' | '.join(f'per worker: {m}' for m in METHODS)} | fastest |")
    print("|---|---|---|---|---|" + "---|" * len(METHODS) + "---|")
    seen: set[tuple] = set()
    for name, shape in MODELS:
        if name not in models.names():
            continue
        d = sum(p.numel() for p in models.build(name, shape, 10).parameters())
        threads = run_threads(None, d)
        for conv, size in conv_layers(name, shape):
            key = (*layer_key(conv, size), threads)
            if key in seen:
                continue
            seen.add(key)
            for b in batches:
                with torch_threads(threads):
                    wall, _, _ = interleaved(layer_calls(conv, size, b), args.repeats,
                                             args.steps, args.warmup, LAYER_BLOCK_S, 1000)
                fastest = min(METHODS, key=lambda m: statistics.median(wall[m]))
                print(f"| {name} | {layer_label(conv, size)} | {threads} | {b} | "
                      f"{med_ms(wall['whole batch']):.2f} ms | "
                      f"{' | '.join(f'{med_ms(wall[m]):.2f} ms' for m in METHODS)} | "
                      f"{fastest} |", flush=True)
                rows.append({"model": name, "convolution": layer_label(conv, size),
                             "threads": threads, "b": b, "wall_s": wall, "fastest": fastest})
    return rows


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
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed block (default: about a second's worth, 1-10)")
    parser.add_argument("--out", default=None,
                        help="JSON results file (default: benchmarks/results/cnn.json; "
                        "with --smoke: none)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 repeat of 1 step at batches 2 and 4, digits for part 3: a "
                        "quick check")
    args = parser.parse_args()
    args.warmup = 2
    batches, layer_batches = BATCHES, LAYER_BATCHES
    if args.smoke:
        args.repeats, args.steps, args.warmup = 1, 1, 1
        batches = layer_batches = SMOKE_BATCHES
    keep_freed_memory()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python "
          f"{sys.version.split()[0]}, load average {load[0]:.2f}")
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "repeats": args.repeats, "load_average_start": load[0],
                              "steps": part_steps(args, batches),
                              "layers": part_layers(args, layer_batches)}
    if args.smoke:
        epoch = fashion_epoch("digits")
        if epoch is None:
            raise SystemExit("bench_cnn.py --smoke: scikit-learn's digits did not load")
        print(f"\ndigits, smallcnn, Signum, 10 workers, 1 epoch (train()): {epoch[0]:.2f} s; "
              f"test accuracy {100 * epoch[1]:.2f}%")
    else:
        epoch = fashion_epoch()
        if epoch is not None:
            total, acc = epoch
            print(f"\nFashion-MNIST, smallcnn, Signum, 10 workers, 1 epoch (train(): load, "
                  f"500 steps, test evaluation): {total:.2f} s = {60000 / total:,.0f} "
                  f"training samples/s; test accuracy {100 * acc:.2f}%")
    if epoch is not None:
        result["epoch"] = {"dataset": "digits" if args.smoke else "fashion-mnist",
                           "seconds": epoch[0], "test_acc": epoch[1]}
    result["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end {result['load_average_end']:.2f}")
    out = args.out or (None if args.smoke else RESULTS)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
