"""The overlapping DDP hook against the blocking one, the backend and device choice of the
distributed engine, and the two-phase peer exchange the hook uses (``Exchange.start_vote``)
against the one-shot exchange and the packed vote computed directly."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_cli import run_cli  # the in-process command with its exit code and output

from signvote import aggregators, packing
from signvote.engine import protocol
from signvote.engine.dist import choose_backend, on_cpu, on_device, rank_device
from signvote.engine.run import prepare
from signvote.experiment.config import ConfigError, TrainConfig, resolve

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_signum.py"


def run_example(run_bounded, tmp_path: Path, hook: str, *args: str) -> dict:
    out, params = tmp_path / f"{hook}.json", tmp_path / f"{hook}.pt"
    result = run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "3", str(EXAMPLE), "--hook", hook,
                          "--out", str(out), "--params-out", str(params), *args],
                         {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return {"summary": json.loads(out.read_text()), "params": torch.load(params)}


@pytest.mark.slow
@pytest.mark.dist
def test_the_overlapping_hook_equals_the_blocking_one_bit_for_bit(run_bounded, tmp_path):
    # signSGD on a CNN: ReLU units that die give exact zeros, so zero payloads travel too;
    # a tiny bucket cap makes DDP launch several buckets' exchanges while others run.
    args = ("--dataset", "digits", "--model", "smallcnn", "--momentum", "0", "--epochs", "2",
            "--max-steps", "4", "--bucket-cap-mb", "0.01")
    overlap = run_example(run_bounded, tmp_path, "overlap", *args)
    blocking = run_example(run_bounded, tmp_path, "sync", *args)
    initial = prepare(TrainConfig(dataset="digits", model="smallcnn", workers=3,
                                  rule="signsgd", momentum=0.0)).module.state_dict()
    assert overlap["params"].keys() == blocking["params"].keys() == initial.keys()
    for name in initial:
        assert torch.equal(overlap["params"][name], blocking["params"][name]), name
    assert any(not torch.equal(overlap["params"][n], initial[n]) for n in initial)  # trained
    sent = overlap["summary"]["bytes_sent_per_step"]
    assert sent == blocking["summary"]["bytes_sent_per_step"]
    # more than the frames alone (at most a header and ceil(n / 8) bytes per parameter
    # tensor, to each of 2 peers): zero payloads travelled too
    frames_only = 2 * sum(protocol.frame_bytes(p.numel()) for p in initial.values())
    assert sent > frames_only
    assert overlap["summary"]["backend"] == "gloo"


# -- the two-phase exchange in one process (a gloo group of one) -------------------------


@pytest.fixture
def one_rank_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("zeros", [0, 3, 400])  # none, as indices, as a bit mask
def test_start_and_finish_vote_equal_the_one_shot_exchange(one_rank_group, zeros, gen):
    d = 1001
    row = torch.randn(d, generator=gen).sign()
    row[torch.randperm(d, generator=gen)[:zeros]] = 0
    vote = aggregators.get("majority-vote")
    one_shot = protocol.Exchange("peer", 0, 1, d, True, vote, protocol.Traffic())
    overlap = protocol.Exchange("peer", 0, 1, d, True, vote, protocol.Traffic())
    expected, _ = one_shot(row)
    pending = overlap.start_vote(row)
    pending.work.wait()
    got, _ = overlap.finish_vote(pending)
    assert torch.equal(got, expected)
    assert torch.equal(got, packing.packed_vote(packing.pack_signs(row[None])).float())
    assert torch.equal(got, row)  # one voter: the vote is its row
    assert got.device == row.device and got.dtype == torch.float32
    assert (overlap.traffic.sent, overlap.traffic.received) == (
        one_shot.traffic.sent, one_shot.traffic.received)


def test_start_vote_is_the_peer_sign_exchange_only():
    vote = aggregators.get("majority-vote")
    with pytest.raises(ValueError, match="peer layout's sign exchange"):
        protocol.Exchange("server", 0, 2, 8, True, vote, protocol.Traffic()).start_vote(
            torch.ones(8))


# -- backend and device per rank -----------------------------------------------------------


def test_the_device_of_each_rank():
    assert rank_device("cpu", 3, 8) == "cpu"
    assert rank_device("auto", 3, 0) == "cpu"
    assert [rank_device("cuda", r, 2) for r in range(4)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert rank_device("auto", 5, 8) == "cuda:5"
    assert rank_device("cuda:1", 0, 2) == rank_device("cuda:1", 3, 2) == "cuda:1"
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        rank_device("cuda", 0, 0)


def test_auto_is_nccl_only_when_every_rank_has_a_gpu_of_its_own():
    assert choose_backend("auto", "auto", 4, 0) == "gloo"  # no GPU: the CPU path
    assert choose_backend("auto", "cpu", 1, 8) == "gloo"
    assert choose_backend("auto", "cuda", 4, 4) == "nccl"
    assert choose_backend("auto", "auto", 2, 8) == "nccl"
    assert choose_backend("auto", "cuda", 4, 1) == "gloo"  # NCCL: one rank per GPU
    assert choose_backend("auto", "cuda:0", 2, 8) == "gloo"  # both ranks on cuda:0
    assert choose_backend("auto", "cuda:0", 1, 1) == "nccl"
    assert choose_backend("gloo", "cuda", 4, 4) == "gloo"
    with pytest.raises(ConfigError, match=r"--backend nccl needs a GPU of its own .* valid:"):
        choose_backend("nccl", "cuda", 4, 1)
    with pytest.raises(ConfigError, match="--backend nccl"):
        choose_backend("nccl", "cpu", 1, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_nccl_without_cuda_is_one_line_at_resolve():
    with pytest.raises(ConfigError) as info:
        resolve(TrainConfig(engine="dist", backend="nccl"))
    assert str(info.value) == ("--backend nccl needs a CUDA GPU and none is visible; valid: "
                               "--backend auto or gloo")


def test_the_backend_is_the_distributed_engines_and_not_the_runs_identity():
    with pytest.raises(ConfigError, match="valid: --engine dist"):
        resolve(TrainConfig(backend="gloo"))
    from signvote.experiment.config import trajectory_key

    assert trajectory_key(TrainConfig(engine="dist", backend="gloo")) == trajectory_key(
        TrainConfig(engine="dist"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_nccl_at_the_cli_is_one_line_and_exit_2(capsys, tmp_path):
    code, _, err = run_cli(["train", "--engine", "dist", "--backend", "nccl", "--out",
                            str(tmp_path / "run")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "signvote train: error: --backend nccl needs a CUDA GPU and none is visible; valid: "
        "--backend auto "
        "or gloo"]


def test_checkpoint_state_moves_to_the_cpu_and_back_without_touching_the_input():
    state = {"rule_state": torch.ones(2, 3), "buffers": (torch.zeros(1), torch.ones(1)),
             "epoch": {"losses": [torch.ones(2)], "seen": 4}, "step": 3}
    moved = on_device(state, torch.device("meta"))
    assert moved["rule_state"].device.type == "meta" and state["rule_state"].device.type == "cpu"
    assert isinstance(moved["buffers"], tuple) and moved["buffers"][1].device.type == "meta"
    assert moved["epoch"]["losses"][0].device.type == "meta" and moved["step"] == 3
    back = on_cpu(state)
    assert back["rule_state"] is state["rule_state"]  # a CPU tensor is not copied
    assert back is not state and back["step"] == 3
