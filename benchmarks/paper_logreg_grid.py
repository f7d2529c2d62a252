"""The paper's logistic-regression grid (its Figures 2 and 3): final test accuracy and loss
of DistSGD, SignSGD and Signum with 0-4 of 10 workers adversarial, blind or Byzantine, with
the paper's settings (80 epochs, seed 8005, batch 12, lr 1e-3 / 1e-4, beta 0.9, lr x0.1
every 30 epochs). DistSGD uses the seed's summed all-reduce (``--aggregator sum``).

The runs are ``signvote reproduce``'s own (:func:`signvote.experiment.reproduce.configs`
of the figures ``logreg-blind`` and ``logreg-byzantine`` at the full scale), run here one
after another in one process, without writing run folders.

Run: ``.venv/bin/python benchmarks/paper_logreg_grid.py`` (30 runs of 2 s each);
``--smoke`` trains every run for one epoch (a check that the script still works, seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from signvote.engine.sim import train
from signvote.experiment.reproduce import FIGURES, RULES, configs

GRID = ("logreg-blind", "logreg-byzantine")
SEEDS = [8005]  # reproduce()'s default: the paper's seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="one epoch per run instead of the paper's 80 (a quick check)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    total = 0
    for name in GRID:
        adversary = FIGURES[name].adversary
        cells: dict[str, dict[int, str]] = {label: {} for label, _ in RULES}
        print(f"\n{adversary}: final test accuracy % (final test loss)")
        print("| optimizer | " + " | ".join(f"{10 * k}%" for k in range(5)) + " |")
        print("|---|" + "---|" * 5)
        label_of = {options["rule"]: label for label, options in RULES}
        for config in configs(name, "full", SEEDS):
            if args.smoke:
                config = dataclasses.replace(config, epochs=1)
            s = train(config, progress=False, write=False).summary
            label, count = label_of[config.rule], getattr(config, adversary)
            cells[label][count] = (f"{100 * s['final_test_acc']:.1f} "
                                   f"({s['final_test_loss']:.3f})")
            total += 1
            if len(cells[label]) == 5:
                print(f"| {label} | " + " | ".join(cells[label][k] for k in range(5)) + " |",
                      flush=True)
    print(f"\n{total} runs in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
