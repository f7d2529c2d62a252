"""Aggregators x attacks on the paper's logistic regression (issue 4): final test accuracy.

Distributed SGD (fp32 messages, lr 1e-3) with 11 workers of which 3 Byzantine, and Signum
(sign messages, lr 1e-4) under the sign aggregators, on the paper's logistic-regression
data, 20 epochs, seed 8005; every robust aggregator is built with f = 3. One run per cell;
``final`` is the last epoch's test accuracy (the worst over attacks is in the last column).

Run: ``.venv/bin/python benchmarks/zoo_logreg_grid.py [--epochs 20]``; ``--smoke`` runs every
cell for one epoch of per-worker batches of 256 (a check that the script still works).
``--aggregators`` and ``--attacks`` keep only those rows and columns; every cell is checked
before the first runs (an aggregator that is no row of the grid, or an attack that is not
known, is one line and exit 2), and the count printed at the end is of the runs that ran.
"""

from __future__ import annotations

import argparse
import time

from signvote.engine.sim import train
from signvote.experiment.config import ConfigError, TrainConfig, resolve

SGD_AGGREGATORS = ["mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum",
                   "geometric-median", "centered-clipping", "caf", "mda", "nnm+trimmed-mean",
                   "nnm+krum", "arc+mean"]
SIGN_AGGREGATORS = ["majority-vote", "weighted-majority-vote"]
ATTACKS = ["none", "vote-cancel", "sign-flip", "alie", "ipm", "mimic", "min-max", "min-sum",
           "optimal-alie", "label-flip", "gaussian", "optimal-vote"]


def grid_rows(aggregators: list[str] | None = None) -> list[tuple[str, str]]:
    """The table's rows, (rule, aggregator) in the table's order: every aggregator of
    :data:`SGD_AGGREGATORS` (under ``sgd``) and :data:`SIGN_AGGREGATORS` (under ``signum``),
    or only those named in ``aggregators``. Raises ValueError naming an aggregator that is
    in neither list, with the valid ones."""
    known = [("sgd", a) for a in SGD_AGGREGATORS] + [("signum", a) for a in SIGN_AGGREGATORS]
    if aggregators is None:
        return known
    unknown = [a for a in aggregators if a not in SGD_AGGREGATORS + SIGN_AGGREGATORS]
    if unknown:
        raise ValueError(f"--aggregators {' '.join(unknown)}: not a row of the grid; valid: "
                         f"{', '.join(SGD_AGGREGATORS + SIGN_AGGREGATORS)}")
    return [(rule, a) for rule, a in known if a in aggregators]


def cell_config(rule: str, aggregator: str, attack: str, epochs: int,
                batch_size: int | None) -> TrainConfig:
    """The run of one cell: 11 workers of which 3 Byzantine running ``attack``."""
    return TrainConfig(rule=rule, workers=11, byzantine=3, attack=attack,
                       aggregator=aggregator, epochs=epochs, batch_size=batch_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--aggregators", nargs="+", metavar="SPEC",
                        help="only these rows (default: all)")
    parser.add_argument("--attacks", nargs="+", metavar="SPEC", default=ATTACKS,
                        help="only these columns (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch, per-worker batch 256: a quick check, not a result")
    args = parser.parse_args(argv)
    epochs, batch_size = (1, 256) if args.smoke else (args.epochs, None)
    try:
        rows = grid_rows(args.aggregators)
        for rule, aggregator in rows:  # every cell checked before the first one runs
            for attack in args.attacks:
                resolve(cell_config(rule, aggregator, attack, epochs, batch_size))
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    runs = 0
    print("| rule / aggregator | " + " | ".join(args.attacks) + " | worst |")
    print("|---|" + "---|" * (len(args.attacks) + 1))
    for rule, aggregator in rows:
        cells = []
        for attack in args.attacks:
            config = cell_config(rule, aggregator, attack, epochs, batch_size)
            summary = train(config, progress=False, write=False).summary
            runs += 1
            acc = summary["final_test_acc"]
            cells.append(float("nan") if acc is None else 100 * acc)
        finite = [c for c in cells if c == c]
        worst = "diverged" if len(finite) < len(cells) else f"{min(finite):.1f}"
        text = " | ".join("diverged" if c != c else f"{c:.1f}" for c in cells)
        print(f"| {rule} / {aggregator} | {text} | {worst} |", flush=True)
    print(f"\n{runs} runs in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
