"""Threads under contention: ``signvote train -b 4`` (the paper's logistic setting, 922
parameters, 80 epochs) with one intra-op thread per core (PyTorch's default, what every run
used before ``--threads``) against signvote's default (one thread for a model under 1M
parameters), each while ``--contenders`` other CPU-bound processes run (a pure-Python spin
loop each), alternating, median over ``--repeats``; the metrics of both must be identical.

Run: ``.venv/bin/python benchmarks/bench_threads.py [--repeats 3] [--contenders 1]``
(writes benchmarks/results/threads.json); ``--smoke`` runs 1 epoch once, writing only
where ``--out`` says.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from signvote.experiment.runs import write_json

SPIN = "while True:\n    pass\n"


def train_once(threads: int | None, epochs: int, out: Path) -> tuple[float, str]:
    """Wall seconds of one ``signvote train`` command and its metrics.csv's test columns."""
    extra = [] if threads is None else ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "signvote", "train", "--byzantine", "4", "--epochs",
                    str(epochs), "--quiet", "--out", str(out), "--overwrite", *extra],
                   check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [header.index(c) for c in ("train_loss", "test_loss", "test_acc")]
    return wall, "\n".join(",".join(line.split(",")[k] for k in keep) for line in lines[1:])


def measure(repeats: int, contenders: int, epochs: int) -> dict:
    cores = os.cpu_count() or 1
    settings = {f"{cores} threads (one per core, before)": cores,
                "signvote's default (1 thread below 1M parameters)": None}
    times: dict[str, list[float]] = {name: [] for name in settings}
    metrics: dict[str, set[str]] = {name: set() for name in settings}
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(contenders)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                for name, threads in settings.items():
                    wall, seen = train_once(threads, epochs, Path(tmp) / "run")
                    times[name].append(wall)
                    metrics[name].add(seen)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    medians = {name: statistics.median(t) for name, t in times.items()}
    before, after = medians.values()
    return {"cores": cores, "contenders": contenders, "epochs": epochs, "repeats": repeats,
            "times_s": times, "median_s": medians, "ratio_before_to_default": before / after,
            "metrics_identical": len(set().union(*metrics.values())) == 1}


def table(result: dict) -> str:
    lines = [f"`signvote train --byzantine 4 --epochs {result['epochs']}`, "
             f"{result['contenders']} other CPU-bound process(es) on {result['cores']} cores, "
             f"median of {result['repeats']}:", "",
             "| threads | median s | runs (s) |", "|---|---|---|"]
    for name, median in result["median_s"].items():
        runs = ", ".join(f"{t:.1f}" for t in result["times_s"][name])
        lines.append(f"| {name} | {median:.2f} | {runs} |")
    lines += ["", f"ratio (before / default): {result['ratio_before_to_default']:.1f}x; "
                  f"metrics identical: {'yes' if result['metrics_identical'] else 'NO'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument("--contenders", type=int, default=1,
                        help="other CPU-bound processes while timing (default: 1)")
    parser.add_argument("--epochs", type=int, default=80, help="epochs (default: 80)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch, once, no contender")
    parser.add_argument("--out", default=None,
                        help="JSON results file (default: benchmarks/results/threads.json; "
                             "with --smoke, none unless given)")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.contenders, args.epochs = 1, 0, 1
    result = measure(args.repeats, args.contenders, args.epochs)
    print(table(result))
    out = args.out or (None if args.smoke else
                       Path(__file__).resolve().parent / "results" / "threads.json")
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
