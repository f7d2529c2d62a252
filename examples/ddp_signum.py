"""An ordinary DistributedDataParallel training script, made Signum with majority vote by
the two lines marked below.

    torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --epochs 5
    torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --byzantine-ranks 3

Each rank reads its own share of the training set the way ``signvote train`` does (same
data, partition, model initialisation and batches for the same seed and worker count), so
the result can be set beside ``signvote train --rule signum --workers 4``. Rank 0 prints
the test accuracy after every epoch and, with ``--out FILE``, writes the final one as JSON.
"""

from __future__ import annotations

import argparse
import gc
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from signvote.data import partition
from signvote.engine.ddp_hook import SignumVoteState, signum_vote_hook
from signvote.engine.gradients import evaluate, per_sample_loss
from signvote.engine.run import learning_rate, prepare
from signvote.experiment import runs
from signvote.experiment.config import TrainConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="logreg")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=8005)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--byzantine-ranks", type=int, nargs="*", default=[],
                        help="ranks that send inverted signs (blind-inversion)")
    parser.add_argument("--out", help="write the final test accuracy here (JSON)")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    setup = prepare(TrainConfig(dataset=args.dataset, workers=world, seed=args.seed,
                                rule="signum", momentum=args.momentum, epochs=args.epochs))
    c, data, model = setup.config, setup.data, setup.module

    ddp_model = DistributedDataParallel(model)
    # The two lines: Signum's momentum and majority vote replace the gradient all-reduce.
    state = SignumVoteState(momentum=c.momentum, byzantine_ranks=args.byzantine_ranks)
    ddp_model.register_comm_hook(state, signum_vote_hook)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    accuracy = None
    for epoch in range(c.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(c, epoch)
        mine = partition.epoch_indices(setup.part, setup.per_epoch, epoch)[rank]
        inputs, targets = data.train_x[mine], data.train_y[mine]
        for start in setup.starts:
            xb, yb = inputs[start:start + c.batch_size], targets[start:start + c.batch_size]
            loss = per_sample_loss(ddp_model(xb), yb, data.task).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if rank == 0:
            x = setup.layout.flatten(model)
            _, accuracy = evaluate(model, setup.layout, x, data.test_x, data.test_y, data.task)
            print(f"epoch {epoch + 1}: test accuracy {accuracy}", file=sys.stderr)
    if rank == 0 and args.out:
        runs.write_json(args.out, {"final_test_acc": accuracy, "epochs": c.epochs,
                                   "workers": world, "bytes_sent_per_step":
                                   state.traffic.sent / max(state.step, 1)})
    # Free DDP's reducer (it holds the process group; DDP has reference cycles, hence the
    # collection) before the group: a group torn down at interpreter exit can abort.
    del ddp_model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
