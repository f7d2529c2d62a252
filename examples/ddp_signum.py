"""An ordinary DistributedDataParallel training script, made Signum with majority vote by
the two lines marked below.

    torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --epochs 5
    torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --byzantine-ranks 3
    torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --device cuda  # 4 GPUs

With ``--device cuda`` each rank trains on ``cuda:LOCAL_RANK`` (modulo the GPUs there
are) and ``--backend auto`` picks NCCL when every rank has a GPU of its own, else gloo
(:func:`signvote.engine.dist.choose_backend`). The hook overlaps its exchange with the
backward pass; ``--hook sync`` uses the blocking one (the same parameters, bit for bit).

Each rank reads its own share of the training set the way ``signvote train`` does (same
data, partition, model initialisation and batches for the same seed and worker count), so
the result can be set beside ``signvote train --rule signum --workers 4``. Rank 0 prints
the test accuracy after every epoch and, with ``--out FILE``, writes the final one as JSON.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from signvote.data import partition
from signvote.engine.ddp_hook import (
    SignumVoteState,
    signum_vote_hook,
    synchronous_signum_vote_hook,
)
from signvote.engine.dist import choose_backend, rank_device
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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: rank r trains on cuda:(LOCAL_RANK % GPUs)")
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                        help="auto: nccl when every rank has a GPU of its own, else gloo")
    parser.add_argument("--hook", choices=("overlap", "sync"), default="overlap",
                        help="sync: the blocking hook (the reference of the tests)")
    parser.add_argument("--model", help="the model (default: the dataset's)")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0,
                        help="DDP's bucket size (smaller: more buckets, more overlap)")
    parser.add_argument("--max-steps", type=int, help="stop each epoch after this many steps")
    parser.add_argument("--out", help="write the final test accuracy here (JSON)")
    parser.add_argument("--params-out", help="rank 0 saves the final parameters here")
    args = parser.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.device == "cuda" and gpus == 0:
        print("ddp_signum.py: --device cuda: no CUDA device is visible; valid: --device cpu",
              file=sys.stderr)
        return 2
    device = rank_device(args.device, local_rank, gpus)
    try:
        backend = choose_backend(args.backend, args.device, local_world, gpus)
    except ValueError as exc:
        print(f"ddp_signum.py: {exc}", file=sys.stderr)
        return 2
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    setup = prepare(TrainConfig(dataset=args.dataset, workers=world, seed=args.seed,
                                rule="signum" if args.momentum > 0 else "signsgd",
                                momentum=args.momentum, epochs=args.epochs, model=args.model,
                                device=device))
    c, data, model = setup.config, setup.data, setup.module.to(device)

    ddp_model = DistributedDataParallel(model, device_ids=None if device == "cpu" else [device],
                                        bucket_cap_mb=args.bucket_cap_mb)
    # The two lines: Signum's momentum and majority vote replace the gradient all-reduce.
    state = SignumVoteState(momentum=c.momentum, byzantine_ranks=args.byzantine_ranks)
    ddp_model.register_comm_hook(state, signum_vote_hook if args.hook == "overlap"
                                 else synchronous_signum_vote_hook)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    accuracy = None
    for epoch in range(c.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(c, epoch)
        mine = partition.epoch_indices(setup.part, setup.per_epoch, epoch)[rank]
        inputs, targets = data.train_x[mine].to(device), data.train_y[mine].to(device)
        for start in setup.starts[:args.max_steps]:
            xb, yb = inputs[start:start + c.batch_size], targets[start:start + c.batch_size]
            loss = per_sample_loss(ddp_model(xb), yb, data.task).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if rank == 0:
            x = setup.layout.flatten(model)
            _, accuracy = evaluate(model, setup.layout, x, data.test_x.to(device),
                                   data.test_y.to(device), data.task)
            print(f"epoch {epoch + 1}: test accuracy {accuracy}", file=sys.stderr)
    if rank == 0 and args.out:
        runs.write_json(args.out, {"final_test_acc": accuracy, "epochs": c.epochs,
                                   "workers": world, "bytes_sent_per_step":
                                   state.traffic.sent / max(state.step, 1),
                                   "backend": backend, "device": device})
    if rank == 0 and args.params_out:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        runs.atomic_write_bytes(args.params_out, buffer.getvalue())
    # Free DDP's reducer (it holds the process group; DDP has reference cycles, hence the
    # collection) before the group: a group torn down at interpreter exit can abort.
    del ddp_model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
