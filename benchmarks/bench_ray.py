"""The same sweep on the process pool and on a local Ray instance with the same CPUs: the
overhead per run of ``signvote sweep --backend ray``.

Each repeat runs ``signvote sweep`` as a whole command, twice, alternating: ``--jobs
CORES`` (the pool), then ``--backend ray --jobs CORES`` (a local Ray instance of CORES
CPUs, started and stopped by the sweep, one CPU per run), each into a fresh folder. The
grid is 24 runs of the paper's logistic task (SignSGD and Signum x 0-2 Byzantine workers x
4 seeds, ``--epochs``). Both sweeps' results.csv must be the same rows (wall time aside).
Reported: the median wall time of each, their ratio, and (ray - pool) / runs, the overhead
per run, which includes starting and stopping the Ray instance once.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--repeats 3] [--epochs 20]`` (writes
benchmarks/results/ray.json); ``--smoke`` runs 1 epoch of 4 runs once, writing only where
``--out`` says.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from signvote.experiment.runs import write_json

GRID = 'rule = ["signsgd", "signum"]\nbyzantine = [0, 1, 2]\nseed = [1, 2, 3, 4]\n'
"""24 runs of the logistic task (the default dataset)."""

SMOKE_GRID = 'rule = ["signsgd", "signum"]\nbyzantine = [0, 1]\nseed = 1\n'


def rows(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(fh)]


def sweep_once(grid: Path, out: Path, epochs: int, jobs: int, ray: bool) -> float:
    """Wall seconds of one ``signvote sweep`` command."""
    extra = ["--backend", "ray"] if ray else []
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "signvote", "sweep", str(grid), "--out", str(out),
                    "--set", f"epochs={epochs}", "--jobs", str(jobs), "--quiet", *extra],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def measure(repeats: int, epochs: int, grid_text: str) -> dict:
    cores = os.cpu_count() or 1
    times: dict[str, list[float]] = {"pool": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "grid.toml"
        grid.write_text(grid_text)
        reference = None
        for repeat in range(repeats):
            for name in ("pool", "ray"):
                out = Path(tmp) / f"{name}{repeat}"
                times[name].append(sweep_once(grid, out, epochs, cores, name == "ray"))
                seen = rows(out)
                if reference is None:
                    reference = seen
                if seen != reference:
                    raise SystemExit(f"bench_ray: {name} sweep {repeat} differs from the first")
        n_runs = len({r["run"] for r in reference})
    pool, ray = statistics.median(times["pool"]), statistics.median(times["ray"])
    return {"cores": cores, "runs": n_runs, "epochs": epochs, "repeats": repeats,
            "times_s": times, "median_pool_s": pool, "median_ray_s": ray,
            "ratio": ray / pool, "overhead_per_run_s": (ray - pool) / n_runs,
            "rows_identical": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="4 runs of 1 epoch, once")
    parser.add_argument("--out", default=None,
                        help="the JSON file (default: benchmarks/results/ray.json; with "
                             "--smoke none)")
    args = parser.parse_args()
    if args.smoke:
        result = measure(1, 1, SMOKE_GRID)
    else:
        result = measure(args.repeats, args.epochs, GRID)
    out = args.out or (None if args.smoke else
                       str(Path(__file__).parent / "results" / "ray.json"))
    if out:
        write_json(out, result)
    print(f"{result['runs']} runs, {result['epochs']} epochs, {result['cores']} CPUs: pool "
          f"{result['median_pool_s']:.1f} s, ray {result['median_ray_s']:.1f} s (median of "
          f"{result['repeats']}); ratio {result['ratio']:.2f}, overhead "
          f"{result['overhead_per_run_s']:.2f} s per run; rows identical")


if __name__ == "__main__":
    main()
