"""The prepared GPU script (issue 17): one run on one GPU, at most 8 minutes, one table.

Run from the source tree on the GPU machine (its own Python: torch 2.11, numpy, pytest;
no network, no install)::

    PYTHONPATH=src python3 benchmarks/gpu.py            # or: sh benchmarks/gpu.sh
    PYTHONPATH=src python3 benchmarks/gpu.py --smoke --device cpu   # seconds, on a CPU

Parts, each guarded (a failure prints its error in its row; the others still run), each
skipped with a line when the remaining time budget (``--budget-s``, 480 s) is below its
estimate:

- (a) ``tests``: ``pytest -m gpu tests/`` in a subprocess (the ``gpu`` tests; on a machine
  without CUDA they are all skipped: the row says so);
- (b) ``step``: one simulator step (``DataPath.step``: per-worker gradients, Signum,
  majority vote, update) against one plain step on the same ``n b`` samples (``nn.Module``
  forward/backward + ``torch.optim.SGD``) for mnistnet (1x28x28), resnet20 and resnet18
  (3x32x32), 10 workers x 12 and x 64 samples; medians of interleaved repeats, timed with
  CUDA events after a warm-up;
- (c) ``mnist``: one epoch of the paper's MNIST setting (60,000 images of 28x28, synthetic:
  the machine has no MNIST; mnistnet, 10 workers, batch 12, Signum, majority vote, lr
  1e-5) and the projected time of the paper's two MNIST figures (``reproduce.FIGURES``:
  2 figures x 15 runs x 25 epochs, one run at a time) and of the Byzantine grid (15 runs);
- (d) ``vote``: the packed vote from bits (``packing.packed_vote``, eager and
  ``torch.compile``'d, and the engine's ``protocol.vote_from_frames`` on whole frames on
  the device) for d = 10M and 100M, n = 10 and 64: the bytes it must read and
  write (``n d / 8`` in, ``d`` out) per second, against the device's bandwidth measured by
  a large device-to-device copy (bytes read + written); and ``--compile``'s fused vote and
  update (``engine/fused.py``) against the eager stages at resnet18's size;
- (e) ``dist``: the distributed engine (``signvote train --engine dist``, logreg, 1 epoch,
  peer layout) with 2 and 4 ranks on gloo and on NCCL (NCCL refuses ranks that share one
  GPU: the row says so), and 1 rank on each.

The goals of issue 17 item 7 close the table: resnet18's simulator step at most 1.2 plain
steps (b = 64), the MNIST Byzantine grid in at most 15 minutes, the packed vote at half
the bandwidth or better. The table is the last thing printed; with ``$OUT`` set, every
number also goes to ``$OUT/gpu.json``. ``--smoke``: tiny sizes, a few calls, on
``--device cpu`` in seconds (tests/test_benchmarks.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
Row = dict[str, Any]


class Clock:
    """Seconds of a call on ``device``: CUDA events around it there, else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], calls: int) -> float:
        """Mean seconds of one ``fn()`` over ``calls`` calls (after the queue drained)."""
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / calls
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls


def interleaved(clock: Clock, calls: dict[str, Callable[[], Any]], repeats: int,
                per_block: int) -> dict[str, list[float]]:
    """Each call timed in turn, ``repeats`` times, after one warm-up block each."""
    for fn in calls.values():
        clock.time(fn, 1)
    out: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            out[name].append(clock.time(fn, per_block))
    return out


# --- (a) the gpu tests ------------------------------------------------------------------


def part_tests(args: argparse.Namespace, device: torch.device, left_s: float) -> list[Row]:
    """``pytest -m gpu`` over tests/ (``--smoke``: tests/test_compile.py alone)."""
    target = ["tests/test_compile.py"] if args.smoke else ["tests"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", *target]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(10.0, left_s))
    except subprocess.TimeoutExpired:
        return [{"part": "a", "item": "pytest -m gpu", "value": "-",
                 "note": f"timed out after {left_s:.0f} s"}]
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-200:]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    rows = [{"part": "a", "item": "pytest -m gpu", "value": summary.strip("= "),
             "note": f"exit {done.returncode}", "stdout": done.stdout[-20000:]}]
    rows += [{"part": "a", "item": "failed", "value": name, "note": ""} for name in failed[:12]]
    return rows


# --- (b) simulator step against a plain step -----------------------------------------------


def step_pair(name: str, shape: tuple[int, ...], n: int, b: int, device: torch.device
              ) -> dict[str, Callable[[], Any]]:
    """The simulator step and the plain step of model ``name`` on ``n x b`` samples."""
    from signvote import aggregators, attacks, models, rules
    from signvote.engine.gradients import BatchedModel, ParamLayout
    from signvote.engine.step import AdversaryPlan, DataPath

    torch.manual_seed(0)
    inputs = torch.randn(n, b, *shape, device=device)
    targets = torch.randint(0, 10, (n, b), device=device)
    module = models.build(name, shape, 10).to(device)
    layout = ParamLayout.of(module)
    nobody = torch.zeros(n, dtype=torch.bool, device=device)
    plan = AdversaryPlan(nobody, nobody.clone(), attacks.get("blind-inversion"))
    batched = BatchedModel(module, layout,
                           independent_samples=models.info(name).independent_samples)
    path = DataPath(batched, rules.get("signum"), plan, aggregators.get("majority-vote"),
                    "classification", 0.0, torch.Generator(device=device))
    sim = {"x": layout.flatten(module), "state": path.initial_state()}

    def sim_step() -> None:
        sim["x"], sim["state"], _ = path.step(sim["x"], sim["state"], inputs, targets, 1e-4, 0)

    from bench_cnn import plain_step  # benchmarks/, this script's folder

    return {"plain": plain_step(name, shape, inputs, targets), "sim": sim_step}


def part_steps(args: argparse.Namespace, device: torch.device, left_s: float) -> list[Row]:
    clock = Clock(device)
    cases = ([("mnistnet", (1, 28, 28)), ("resnet20", (3, 32, 32))] if args.smoke else
             [("mnistnet", (1, 28, 28)), ("resnet20", (3, 32, 32)),
              ("resnet18", (3, 32, 32))])
    batches = (2,) if args.smoke else (12, 64)
    repeats, per_block = (1, 1) if args.smoke else (7, 5)
    rows = []
    deadline = time.perf_counter() + left_s
    for name, shape in cases:
        for b in batches:
            if time.perf_counter() > deadline:
                rows.append({"part": "b", "item": f"{name} b={b}", "value": "-",
                             "note": "skipped: time budget"})
                continue
            try:
                t = interleaved(clock, step_pair(name, shape, 10, b, device), repeats,
                                per_block)
                ratios = [s / p for s, p in zip(t["sim"], t["plain"], strict=True)]
                rows.append({"part": "b", "item": f"{name} 10x{b}",
                             "value": f"{statistics.median(ratios):.2f}",
                             "note": f"sim {1e3 * statistics.median(t['sim']):.2f} ms, plain "
                                     f"{1e3 * statistics.median(t['plain']):.2f} ms",
                             "model": name, "b": b, "ratio": statistics.median(ratios),
                             "sim_s": t["sim"], "plain_s": t["plain"]})
            except Exception as error:
                rows.append(error_row("b", f"{name} 10x{b}", error))
    return rows


# --- (c) one epoch of the paper's MNIST --------------------------------------------------


def part_mnist(args: argparse.Namespace, device: torch.device, left_s: float) -> list[Row]:
    from signvote.api import train
    from signvote.experiment.reproduce import FIGURES

    train_n, test_n = (240, 40) if args.smoke else (60_000, 10_000)
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(train_n, 1, 28, 28, generator=gen),
            torch.randint(0, 10, (train_n,), generator=gen),
            torch.rand(test_n, 1, 28, 28, generator=gen),
            torch.randint(0, 10, (test_n,), generator=gen))
    figures = [f for f in FIGURES.values() if f.dataset == "mnist"]
    t0 = time.perf_counter()
    result = train("mnistnet", data, rule="signum", classes=10, workers=10, batch_size=12,
                   epochs=1, lr=figures[0].sign_lr, device=str(device), progress=False,
                   write=False)
    epoch_s = time.perf_counter() - t0
    steps = result.summary["steps"]
    runs_per_figure = 3 * 5  # reproduce.configs: 3 rules x 0-4 adversaries, one seed
    epochs = figures[0].epochs
    scale = 1.0 if not args.smoke else 60_000 / train_n
    both = len(figures) * runs_per_figure * epochs * epoch_s * scale
    grid = runs_per_figure * epochs * epoch_s * scale
    return [
        {"part": "c", "item": f"MNIST epoch ({train_n:,} synthetic, {steps} steps)",
         "value": f"{epoch_s:.1f} s", "note": f"{1e3 * epoch_s / steps:.2f} ms/step",
         "epoch_s": epoch_s, "steps": steps},
        {"part": "c", "item": f"projected: {len(figures)} MNIST figures "
                              f"({len(figures) * runs_per_figure} runs x {epochs} epochs)",
         "value": f"{both / 60:.1f} min", "note": "one run at a time" + (
             f", x{scale:.0f} from the smoke size" if args.smoke else ""), "seconds": both},
        {"part": "c", "item": f"projected: Byzantine grid ({runs_per_figure} runs)",
         "value": f"{grid / 60:.1f} min", "note": "goal <= 15 min", "seconds": grid},
    ]


# --- (d) the packed vote against the memory bandwidth ------------------------------------


def bandwidth(clock: Clock, device: torch.device, nbytes: int, repeats: int) -> float:
    """Bytes per second of a device-to-device copy of ``nbytes`` (read + written)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = interleaved(clock, {"copy": lambda: dst.copy_(src)}, repeats, 3)["copy"]
    return 2 * nbytes / statistics.median(seconds)


def part_vote(args: argparse.Namespace, device: torch.device, left_s: float) -> list[Row]:
    from signvote.engine import protocol
    from signvote.packing import PackedSigns, packed_vote, packed_vote_torch

    clock = Clock(device)
    repeats = 1 if args.smoke else 5
    copy_bytes = 1 << (20 if args.smoke else 32)
    bw = bandwidth(clock, device, copy_bytes, repeats)
    rows: list[Row] = [{"part": "d", "item": f"copy {copy_bytes / 1e9:.2f} GB d2d",
                        "value": f"{bw / 1e9:.3g} GB/s", "note": "read + written",
                        "bandwidth": bw}]
    compiled = torch.compile(packed_vote_torch, dynamic=False)
    deadline = time.perf_counter() + left_s
    cases = ([(10_000, 10)] if args.smoke else
             [(d, n) for d in (10_000_000, 100_000_000) for n in (10, 64)])
    for d, n in cases:
        if time.perf_counter() > deadline:
            rows.append({"part": "d", "item": f"vote n={n} d={d:,}", "value": "-",
                         "note": "skipped: time budget"})
            continue
        try:
            bits = torch.randint(0, 256, (n, -(-d // 8)), dtype=torch.uint8,
                                 device=device)
            packed = PackedSigns(bits, None, d)
            if not torch.equal(compiled(packed), packed_vote(packed)):
                raise AssertionError("compiled packed vote differs from eager")
            # the engine's path: whole frames (a zero-count header, then the bits)
            frames = torch.cat([torch.zeros(n, protocol.HEADER, dtype=torch.uint8,
                                            device=device), bits], dim=1)
            if not torch.equal(protocol.vote_from_frames(frames, [None] * n, d),
                               packed_vote(packed)):
                raise AssertionError("the vote from frames differs from packed_vote")
            t = interleaved(clock, {"eager": lambda p=packed: packed_vote(p),
                                    "compiled": lambda p=packed: compiled(p),
                                    "frames": lambda f=frames, n=n, d=d:
                                        protocol.vote_from_frames(f, [None] * n, d)},
                            repeats, 3)
            moved = n * bits.shape[1] + d
            for kind in ("eager", "compiled", "frames"):
                rate = moved / statistics.median(t[kind])
                rows.append({"part": "d", "item": f"vote {kind} n={n} d={d:,}",
                             "value": f"{rate / 1e9:.3g} GB/s",
                             "note": f"{rate / bw:.2f} of copy, "
                                     f"{1e3 * statistics.median(t[kind]):.2f} ms",
                             "n": n, "d": d, "kind": kind, "fraction": rate / bw})
        except Exception as error:
            rows.append(error_row("d", f"vote n={n} d={d:,}", error))
    if time.perf_counter() < deadline:
        try:
            rows += fused_rows(clock, device, 10, 20_000 if args.smoke else 11_173_962,
                               repeats)
        except Exception as error:
            rows.append(error_row("d", "fused vote+update", error))
    return rows


def fused_rows(clock: Clock, device: torch.device, n: int, d: int, repeats: int
               ) -> list[Row]:
    """``--compile``'s fused call (engine/fused.py) against the eager stages, n x d
    (d = resnet18's parameters): Signum, majority vote, update with weight decay."""
    from signvote import aggregators, rules
    from signvote.engine import fused
    from signvote.engine.step import apply_update

    gen = torch.Generator(device=device).manual_seed(0)
    grads = torch.randn(n, d, generator=gen, device=device)
    state = torch.randn(n, d, generator=gen, device=device)
    x = torch.randn(d, generator=gen, device=device)
    rule, vote = rules.get("signum"), aggregators.get("majority-vote")
    lr = fused.lr_tensor(1e-4, x)

    def eager() -> torch.Tensor:
        direction, _ = vote.apply(rule.step(grads, state)[0], None)
        return apply_update(x, direction, 1e-4, 1e-4)

    def compiled() -> torch.Tensor:
        return fused.vote_update(1e-4)(fused.rule_direction(rule, grads, state)[0], x, lr)

    same = torch.equal(compiled(), eager())
    t = interleaved(clock, {"eager": eager, "compiled": compiled}, repeats, 3)
    ratio = statistics.median(t["compiled"]) / statistics.median(t["eager"])
    return [{"part": "d", "item": f"fused vote+update n={n} d={d:,}", "value": f"{ratio:.2f}",
             "note": f"compiled/eager: {1e3 * statistics.median(t['compiled']):.2f} / "
                     f"{1e3 * statistics.median(t['eager']):.2f} ms, identical "
                     f"{'yes' if same else 'no'}", "ratio": ratio, "identical": same}]


# --- (e) the distributed engine: NCCL against gloo -----------------------------------------


def part_dist(args: argparse.Namespace, device: torch.device, left_s: float) -> list[Row]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    backends = ("gloo",) if device.type == "cpu" else ("gloo", "nccl")
    rows = []
    deadline = time.perf_counter() + left_s
    for ranks in ((2,) if args.smoke else (1, 2, 4)):
        for backend in backends:
            item = f"{ranks} rank(s) {backend}"
            left = deadline - time.perf_counter()
            if left < 20:
                rows.append({"part": "e", "item": item, "value": "-",
                             "note": "skipped: time budget"})
                continue
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "-m", "signvote", "train", "--engine", "dist",
                           "--layout", "peer", "--workers", str(ranks), "--byzantine", "0",
                           "--blind", "0", "--epochs", "1", "--device", device.type,
                           "--backend", backend, "--quiet", "--out", out]
                try:
                    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                                          text=True, timeout=left)
                except subprocess.TimeoutExpired:
                    rows.append({"part": "e", "item": item, "value": "-",
                                 "note": f"timed out after {left:.0f} s"})
                    continue
                summary = Path(out) / "summary.json"
                if done.returncode != 0 or not summary.exists():
                    last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                    rows.append({"part": "e", "item": item, "value": "refused" if
                                 done.returncode == 2 else "failed",
                                 "note": last[:150], "stderr": done.stderr[-4000:]})
                    continue
                s = json.loads(summary.read_text())
                rows.append({"part": "e", "item": item,
                             "value": f"{1e3 * s['wall_s'] / max(1, s['steps']):.2f} ms/step",
                             "note": f"{s['steps']} steps, {s['wall_s']:.1f} s",
                             "summary": s})
    return rows


# --- the table --------------------------------------------------------------------------


def error_row(part: str, item: str, error: BaseException) -> Row:
    """A row saying what failed, in one line (the traceback goes to the JSON)."""
    line = " ".join(f"{type(error).__name__}: {error}".split())[:160]
    return {"part": part, "item": item, "value": "error", "note": line,
            "traceback": traceback.format_exc()[-4000:]}


PARTS = {"a": ("gpu tests", part_tests, 120.0), "b": ("sim/plain step", part_steps, 90.0),
         "c": ("MNIST epoch", part_mnist, 60.0), "d": ("packed vote", part_vote, 90.0),
         "e": ("dist engine", part_dist, 90.0)}
"""part -> (title, function, seconds it needs at least; its share of the budget)."""


def goals(rows: list[Row]) -> list[Row]:
    """Issue 17 item 7: each goal's measured value and whether it is met."""
    out = []
    r18 = [r for r in rows if r.get("model") == "resnet18" and r.get("b") == 64]
    out.append(goal("resnet18 sim/plain step (10x64)", r18[0]["ratio"] if r18 else None,
                    lambda v: v <= 1.2, "<= 1.2", "{:.2f}"))
    grid = [r for r in rows if r["part"] == "c" and "grid" in r["item"]]
    out.append(goal("MNIST Byzantine grid, minutes", grid[0]["seconds"] / 60 if grid else None,
                    lambda v: v <= 15, "<= 15", "{:.1f}"))
    votes = [r["fraction"] for r in rows if r["part"] == "d" and "fraction" in r]
    out.append(goal("packed vote / copy bandwidth (best)", max(votes) if votes else None,
                    lambda v: v >= 0.5, ">= 0.5", "{:.2f}"))
    return out


def goal(item: str, value: float | None, met: Callable[[float], bool], target: str,
         fmt: str) -> Row:
    if value is None:
        return {"part": "goal", "item": item, "value": "-", "note": f"{target}: not measured"}
    return {"part": "goal", "item": item, "value": fmt.format(value),
            "note": f"{target}: {'met' if met(value) else 'NOT met'}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU, seconds)")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--parts", default="abcde", help="which parts, e.g. bcd")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device is visible; valid: --device cpu "
              f"(with --smoke)")
        sys.exit(2)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sys.path.insert(0, str(ROOT / "src"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (f"gpu.py {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {name}, torch "
              f"{torch.__version__}, python {sys.version.split()[0]}"
              f"{', smoke' if args.smoke else ''}")
    rows: list[Row] = []
    chosen = [p for p in PARTS if p in args.parts]
    for i, key in enumerate(chosen):
        title, fn, need = PARTS[key]
        used = time.perf_counter() - start
        later = sum(PARTS[k][2] for k in chosen[i + 1:])
        left = args.budget_s - used - later  # what this part may use, the later ones kept
        if args.budget_s - used < need and not args.smoke:
            rows.append({"part": key, "item": title, "value": "-",
                         "note": f"skipped: {args.budget_s - used:.0f} s left of the budget"})
            continue
        t0 = time.perf_counter()
        try:
            rows += fn(args, device, max(need, left))
        except Exception as error:
            rows.append(error_row(key, title, error))
        print(f"part {key} ({title}) done in {time.perf_counter() - t0:.1f} s", flush=True)
    rows += goals(rows)
    total = time.perf_counter() - start
    out = os.environ.get("OUT")
    if out:
        from signvote.experiment.runs import atomic_write_text

        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "gpu.json", json.dumps(
            {"header": header, "total_s": total, "rows": rows}, indent=1, default=str))
    print(header)
    print("| part | item | value | note |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['item']} | {r['value']} | {r['note']} |")
    print(f"total {total:.0f} s of a {args.budget_s:.0f} s budget")


if __name__ == "__main__":
    main()
