"""The paper's logistic-regression grid (its Figures 2 and 3): final test accuracy and loss
of DistSGD, SignSGD and Signum with 0-4 of 10 workers adversarial, blind or Byzantine, with
the paper's settings (80 epochs, seed 8005, batch 12, lr 1e-3 / 1e-4, beta 0.9, lr x0.1
every 30 epochs). DistSGD uses the seed's summed all-reduce (``--aggregator sum``).

Run: ``.venv/bin/python benchmarks/paper_logreg_grid.py`` (about 30 runs of 2 s each).
"""

from __future__ import annotations

import time

from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig

RULES = {"DistSGD": {"rule": "sgd", "aggregator": "sum"}, "SignSGD": {"rule": "signsgd"},
         "Signum": {"rule": "signum"}}


def main() -> None:
    t0 = time.perf_counter()
    for kind in ("blind", "byzantine"):
        print(f"\n{kind}: final test accuracy % (final test loss)")
        print("| optimizer | " + " | ".join(f"{10 * k}%" for k in range(5)) + " |")
        print("|---|" + "---|" * 5)
        for label, options in RULES.items():
            cells = []
            for k in range(5):
                s = train(TrainConfig(**options, **{kind: k}), progress=False,
                          write=False).summary
                cells.append(f"{100 * s['final_test_acc']:.1f} ({s['final_test_loss']:.3f})")
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n30 runs in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
