"""Aggregators x attacks on the paper's logistic regression (issue 4): final test accuracy.

Distributed SGD (fp32 messages, lr 1e-3) with 11 workers of which 3 Byzantine, and Signum
(sign messages, lr 1e-4) under the sign aggregators, on the paper's logistic-regression
data, 20 epochs, seed 8005; every robust aggregator is built with f = 3. One run per cell;
``final`` is the last epoch's test accuracy (the worst over attacks is in the last column).

Run: ``.venv/bin/python benchmarks/zoo_logreg_grid.py [--epochs 20]``; ``--smoke`` runs every
cell for one epoch of per-worker batches of 256 (a check that the script still works).
"""

from __future__ import annotations

import argparse
import time

from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig

SGD_AGGREGATORS = ["mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum",
                   "geometric-median", "centered-clipping", "caf", "mda", "nnm+trimmed-mean",
                   "nnm+krum", "arc+mean"]
SIGN_AGGREGATORS = ["majority-vote", "weighted-majority-vote"]
ATTACKS = ["none", "vote-cancel", "sign-flip", "alie", "ipm", "mimic", "min-max", "min-sum",
           "optimal-alie", "label-flip", "gaussian", "optimal-vote"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--aggregators", nargs="+", metavar="SPEC",
                        help="only these rows (default: all)")
    parser.add_argument("--attacks", nargs="+", metavar="SPEC", default=ATTACKS,
                        help="only these columns (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch, per-worker batch 256: a quick check, not a result")
    args = parser.parse_args()
    epochs, batch_size = (1, 256) if args.smoke else (args.epochs, None)
    t0 = time.perf_counter()
    runs = 0
    print("| rule / aggregator | " + " | ".join(args.attacks) + " | worst |")
    print("|---|" + "---|" * (len(args.attacks) + 1))
    for rule, names in (("sgd", SGD_AGGREGATORS), ("signum", SIGN_AGGREGATORS)):
        for aggregator in names:
            if args.aggregators and aggregator not in args.aggregators:
                continue
            cells = []
            for attack in args.attacks:
                config = TrainConfig(rule=rule, workers=11, byzantine=3, attack=attack,
                                     aggregator=aggregator, epochs=epochs,
                                     batch_size=batch_size)
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
