"""The distributed engine's wire: bytes per step, and time per step on a 1 Gbit/s cluster.

    python benchmarks/bench_dist.py bytes                 # the size table (no processes)
    sudo python benchmarks/bench_dist.py netns            # 4 hosts as network namespaces

``bytes``: the payload bytes each worker sends and receives per step for a model of ``d``
parameters (:mod:`signvote.engine.protocol`'s accounting, the numbers ``summary.json``
records): packed signs in both layouts against fp32 all-reduce (DDP's default) and an fp32
parameter server.

``netns``: builds ``--hosts`` network namespaces joined through a bridge in a further
namespace by veth links, each link shaped by ``tc`` (token bucket) to ``--rate`` in both
directions, every address inside the namespaces (10.77.0.0/24), and runs one gloo process
per host. Every step, side by side and in turn, it times

- the exchange alone (``comm``): ``packed-peer`` (all-gather of packed frames, every rank
  votes), ``packed-server`` (rank 0 a server that gathers the frames and broadcasts the
  packed vote), ``fp32-allreduce`` (DDP's default) and ``fp32-server`` (gather and
  broadcast of fp32) for a message of ``--params`` coordinates;
- a whole training step (``step``) of an MLP of about ``--params`` parameters: Signum with
  the packed peer vote against SGD with the fp32 all-reduce (gradient, worker rule,
  exchange, update, the engine's own functions), split into ``compute`` (gradient, rule,
  update), ``comm`` (the exchange, timed from a barrier that every rank reaches with its
  message) and ``total`` (the step, barrier included).

Medians over ``--steps`` steps (after one warm-up) go to stdout and
``benchmarks/results/dist.json`` (``--results FILE`` elsewhere). The namespaces are deleted
at the end, also on error. ``bytes --smoke`` computes the table for one small model (a
check that the script still works).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "dist.json"
SUBNET = "10.77.0"
COMM_MODES = ("packed-peer", "packed-server", "fp32-allreduce", "fp32-server")


# --- bytes --------------------------------------------------------------------------------


def bytes_table(dims: list[int], worlds: list[int]) -> list[dict]:
    from signvote.engine import protocol

    rows = []
    for d in dims:
        frame = protocol.frame_bytes(d)
        with_zeros = frame + protocol.zeros_bytes(d // 100, d)  # 1% zeros, as indices
        for p in worlds:
            fp32 = protocol.fp32_allreduce_bytes(d, p)
            rows.append({
                "params": d, "processes": p,
                "fp32_allreduce_sent_per_worker": fp32,
                "fp32_server_sent_per_worker": 4 * d,
                "packed_server_sent_per_worker": frame,
                "packed_server_sent_per_worker_1pct_zeros": with_zeros,
                "packed_peer_sent_per_worker": (p - 1) * frame,
                "ratio_fp32_allreduce_to_packed_server": round(fp32 / frame, 2),
                "ratio_fp32_allreduce_to_packed_server_1pct_zeros": round(fp32 / with_zeros, 2),
                "ratio_fp32_server_to_packed_server": round(4 * d / frame, 2),
                "ratio_fp32_allreduce_to_packed_peer": round(fp32 / ((p - 1) * frame), 2),
            })
    return rows


# --- one process of the netns run -----------------------------------------------------------


def mlp(params: int) -> torch.nn.Module:
    """784 -> h -> h -> 10 with h chosen so the model has about ``params`` parameters."""
    # h^2 + (784 + 10 + 2) h ~ params
    h = int((-(796) + (796 ** 2 + 4 * params) ** 0.5) / 2)
    return torch.nn.Sequential(torch.nn.Linear(784, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
                               torch.nn.ReLU(), torch.nn.Linear(h, 10))


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from signvote import rules
    from signvote.aggregators.basic import MajorityVote, Mean
    from signvote.engine import protocol
    from signvote.engine.gradients import BatchedModel, ParamLayout, worker_gradients
    from signvote.engine.memory import keep_freed_memory
    from signvote.engine.step import apply_update

    keep_freed_memory()  # as the engine does (engine.sim.prepare)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{SUBNET}.1:{args.port}",
                            rank=args.rank, world_size=args.world)
    rank, world, d = args.rank, args.world, args.params
    gen = torch.Generator().manual_seed(rank)
    traffic = protocol.Traffic()
    signs = torch.where(torch.rand(d, generator=gen) < 0.5, -1.0, 1.0)
    reals = torch.randn(d, generator=gen)
    exchanges = {
        "packed-peer": (protocol.Exchange("peer", rank, world, d, True, MajorityVote(),
                                          traffic), signs),
        "packed-server": (protocol.Exchange("server", rank, world, d, True, MajorityVote(),
                                            traffic), signs),
        "fp32-allreduce": (protocol.Exchange("peer", rank, world, d, False, Mean(), traffic),
                           reals),
        "fp32-server": (protocol.Exchange("server", rank, world, d, False, Mean(), traffic),
                        reals),
    }
    times: dict[str, list[float]] = {m: [] for m in COMM_MODES}
    for step in range(args.steps + 1):
        for mode in COMM_MODES:
            exchange, row = exchanges[mode]
            dist.barrier()
            t0 = time.perf_counter()
            exchange(None if (mode.endswith("server") and rank == 0) else row, None)
            dist.barrier()
            if step:
                times[mode].append(time.perf_counter() - t0)

    # whole steps of an MLP: Signum + packed peer vote against SGD + fp32 all-reduce
    torch.manual_seed(0)
    module = mlp(d)
    layout = ParamLayout.of(module)
    batched = BatchedModel(module, layout)
    inputs = torch.randn(1, args.batch, 784, generator=gen)
    targets = torch.randint(0, 10, (1, args.batch), generator=gen)
    setups = {
        "signum+packed-peer": (rules.signum(0.9), protocol.Exchange(
            "peer", rank, world, layout.dim, True, MajorityVote(), traffic)),
        "sgd+fp32-allreduce": (rules.sgd(0.0), protocol.Exchange(
            "peer", rank, world, layout.dim, False, Mean(), traffic)),
    }
    phases = {f"{name}/{p}": [] for name in setups for p in ("compute", "comm", "total")}
    states = {name: None for name in setups}
    zeros = {name: 0 for name in setups}  # zero coordinates sent (a second frame each time)
    x0 = layout.flatten(module)
    xs = {name: x0 for name in setups}
    for step in range(args.steps + 1):
        for name, (rule, exchange) in setups.items():
            dist.barrier()
            t0 = time.perf_counter()
            honest = worker_gradients(batched, xs[name], inputs, targets, "classification")
            messages, states[name] = rule.step(honest.grads, states[name])
            t1 = time.perf_counter()
            dist.barrier()  # the communication part starts when every rank has its message
            t2 = time.perf_counter()
            v, _ = exchange(messages[0], None)
            t3 = time.perf_counter()
            xs[name] = apply_update(xs[name], v, 1e-4, 0.0)
            t4 = time.perf_counter()
            if step:
                zeros[name] += int((messages == 0).sum())
                phases[f"{name}/compute"].append(t1 - t0 + t4 - t3)
                phases[f"{name}/comm"].append(t3 - t2)
                phases[f"{name}/total"].append(t4 - t0)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object({"comm": times, "step": phases, "zeros": zeros["signum+packed-peer"]},
                       gathered, dst=0)
    if rank == 0:
        # a step ends when its slowest rank is done: per step, the maximum over ranks
        result = {"model_params": layout.dim,
                  "signum_zero_coordinates_sent": sum(g["zeros"] for g in gathered)}
        for part in ("comm", "step"):
            for key in gathered[0][part]:
                per_step = [max(g[part][key][s] for g in gathered)
                            for s in range(args.steps)]
                result[f"{part}/{key}"] = statistics.median(per_step)
        print(json.dumps(result))
    dist.destroy_process_group()


# --- the namespaces ------------------------------------------------------------------------


def sh(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def build_cluster(tag: str, hosts: int, rate: str) -> list[str]:
    """Create the namespaces; returns their names (the switch last)."""
    switch = f"sv{tag}-sw"
    names = [f"sv{tag}-h{k}" for k in range(hosts)]
    sh("ip", "netns", "add", switch)
    sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", switch, "link", "set", "br0", "up")
    for k, ns in enumerate(names):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"sv{tag}a{k}", "netns", ns, "type", "veth", "peer", "name",
           f"sv{tag}b{k}", "netns", switch)
        sh("ip", "-n", ns, "link", "set", f"sv{tag}a{k}", "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{k + 1}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", switch, "link", "set", f"sv{tag}b{k}", "master", "br0")
        sh("ip", "-n", switch, "link", "set", f"sv{tag}b{k}", "up")
        for where, dev in ((ns, "eth0"), (switch, f"sv{tag}b{k}")):  # both directions
            sh("ip", "netns", "exec", where, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
               "rate", rate, "burst", "1mb", "latency", "100ms")
    return [*names, switch]


def delete_cluster(names: list[str]) -> None:
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def netns(args: argparse.Namespace) -> dict:
    tag = str(os.getpid())
    names = build_cluster(tag, args.hosts, args.rate)
    procs = []
    try:
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "eth0", "OMP_NUM_THREADS": "1"}
        for k in range(args.hosts):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", names[k], sys.executable, __file__, "worker",
                 "--rank", str(k), "--world", str(args.hosts), "--port", "29500",
                 "--params", str(args.params), "--steps", str(args.steps),
                 "--batch", str(args.batch)],
                stdout=subprocess.PIPE, text=True, env=env))
        out, _ = procs[0].communicate(timeout=args.limit)
        for p in procs[1:]:
            p.wait(timeout=60)
        if procs[0].returncode:
            raise SystemExit(f"rank 0 failed with exit code {procs[0].returncode}")
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        delete_cluster(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the JSON file the results are merged into")
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("bytes", help="the size table")
    b.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    b.add_argument("--worlds", type=int, nargs="+", default=[4, 10])
    b.add_argument("--smoke", action="store_true",
                   help="one model of 1,000 parameters, 2 and 4 processes: a quick check")
    n = commands.add_parser("netns", help="time steps on namespaces shaped to --rate")
    n.add_argument("--hosts", type=int, default=4)
    n.add_argument("--rate", default="1gbit")
    n.add_argument("--params", type=int, default=5_000_000)
    n.add_argument("--steps", type=int, default=10)
    n.add_argument("--batch", type=int, default=32)
    n.add_argument("--limit", type=float, default=1200, help="seconds before giving up")
    w = commands.add_parser("worker", help=argparse.SUPPRESS)
    for flag in ("--rank", "--world", "--port", "--params", "--steps", "--batch"):
        w.add_argument(flag, type=int, required=True)
    args = parser.parse_args()
    if args.command == "worker":
        worker(args)
        return
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.command == "bytes":
        if args.smoke:
            args.dims, args.worlds = [1_000], [2, 4]
        rows = bytes_table(args.dims, args.worlds)
        for row in rows:
            print(json.dumps(row))
        results["bytes"] = rows
    else:
        if os.geteuid() != 0:
            raise SystemExit("bench_dist.py netns: needs root (ip netns, tc); run it with sudo")
        result = netns(args)
        result.update(hosts=args.hosts, rate=args.rate, steps=args.steps, batch=args.batch)
        for key, value in result.items():
            print(f"{key}: {value}")
        results[f"netns_{args.hosts}_hosts"] = result
    args.results.parent.mkdir(parents=True, exist_ok=True)
    from signvote.experiment.runs import write_json

    write_json(args.results, results)


if __name__ == "__main__":
    main()
