"""The weighted majority vote under a coalition that sends one constant sign (issue 15).

The paper's logistic task, 10 workers of which 3 Byzantine sending ``inf`` on every
coordinate (on the wire: +1 everywhere, as ``gaussian(mean=5, std=0)``), seeds 8005, 1 and
2, under Signum (momentum 0.9) and SignSGD (none). Two tables:

- final test accuracy % of the plain vote, the weighted vote (the paper's rule) and the
  weighted vote with a warm-up of one and five epochs (``warmup=67``, ``warmup=335``);
  the last column repeats seed 8005 with ``gaussian(mean=5,std=0)``, which must equal the
  ``inf`` column (the same signs);
- for the weighted vote, the coalition's share of the summed |weight| that the vote used
  (sum of |w_i| over the coalition / sum over all workers), after steps 1, 2, 3, 10, 67 and 400
  and at the end, and the first step at which it passed 1/2 (from then on the vote is the
  coalition's sign on every coordinate, whatever the others send).

Run: ``.venv/bin/python benchmarks/weighted_vote_coalition.py [--epochs 20]``; ``--smoke``
runs every cell for one epoch (a check that the script still works, not a result).
"""

from __future__ import annotations

import argparse
import time

import torch

from signvote.aggregators import REGISTRY
from signvote.aggregators.votes import WeightedMajorityVote, llr_weights
from signvote.engine.run import choose_adversaries
from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig

SEEDS = [8005, 1, 2]
RULES = ["signum", "signsgd"]
SPECS = ["majority-vote", "weighted-majority-vote", "weighted-majority-vote(warmup=67)",
         "weighted-majority-vote(warmup=335)"]
ATTACK, SAME_SIGNS = "inf", "gaussian(mean=5,std=0)"
SHARE_STEPS = [1, 2, 3, 10, 67, 400]
RECORDED = "weighted-majority-vote-recorded"

shares: list[float] = []  # the running weighted vote's coalition share, one per step
coalition: list[int] = []  # its workers (the run's Byzantine workers)


@REGISTRY.register(RECORDED)
class Recorded(WeightedMajorityVote):
    """The weighted vote, recording after every call the coalition's share of the weights
    that call's vote used (during the warm-up: equal weights)."""

    def apply(self, messages, state):
        vote, state = super().apply(messages, state)
        if len(shares) < self.warmup:
            w = torch.ones(messages.shape[0], dtype=torch.float64)
        else:
            w = llr_weights(state[0], state[1]).abs()
        shares.append(float(w[coalition].sum() / w.sum()) if float(w.sum()) > 0 else 0.0)
        return vote, state


def run(rule: str, spec: str, attack: str, seed: int, epochs: int) -> tuple[float, list[float]]:
    """Final test accuracy % of one run, and its coalition shares (weighted specs)."""
    shares.clear()
    config = TrainConfig(rule=rule, aggregator=spec.replace("weighted-majority-vote",
                                                            RECORDED),
                         byzantine=3, attack=attack, epochs=epochs, seed=seed)
    coalition[:] = torch.nonzero(choose_adversaries(10, 0, 3, seed)[1]).flatten().tolist()
    summary = train(config, progress=False, write=False).summary
    assert summary["byzantine_workers"] == coalition
    return 100 * summary["final_test_acc"], list(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="1 epoch: a check, not a result")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs
    t0, runs, traces = time.perf_counter(), 0, []
    columns = [f"{ATTACK}, seed {s}" for s in SEEDS] + [f"{SAME_SIGNS}, seed {SEEDS[0]}"]
    print(f"Final test accuracy %, {epochs} epochs, 3 of 10 workers in the coalition\n")
    print("| rule / aggregator | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for rule in RULES:
        for spec in SPECS:
            cells = []
            for attack, seed in [(ATTACK, s) for s in SEEDS] + [(SAME_SIGNS, SEEDS[0])]:
                acc, trace = run(rule, spec, attack, seed, epochs)
                runs += 1
                cells.append(f"{acc:.2f}")
                if spec != "majority-vote" and attack == ATTACK:
                    traces.append((rule, spec, seed, trace))
            print(f"| {rule} / {spec} | " + " | ".join(cells) + " |", flush=True)
    print("\nThe coalition's share of the summed |weight| after step k\n")
    steps = [k for k in SHARE_STEPS if k <= epochs * 67]
    print("| rule / aggregator, seed | " + " | ".join(f"step {k}" for k in steps)
          + " | end | first step past 1/2 |")
    print("|---|" + "---|" * (len(steps) + 2))
    for rule, spec, seed, trace in traces:
        past = next((k + 1 for k, s in enumerate(trace) if s > 0.5), None)
        cells = [f"{trace[k - 1]:.3f}" for k in steps] + [f"{trace[-1]:.3f}",
                                                          "never" if past is None else str(past)]
        print(f"| {rule} / {spec}, {seed} | " + " | ".join(cells) + " |")
    print(f"\n{runs} runs in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
