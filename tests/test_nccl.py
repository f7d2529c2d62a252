"""The distributed engine and the DDP hook on CUDA: NCCL against gloo (skipped without CUDA).

NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), so with G GPUs an NCCL run
has at most G ranks: on one GPU, the peer layout with one worker. Ranks sharing a GPU
compute on it and exchange over gloo (``--backend auto`` chooses it). Both runs compute
the same per-rank gradients on the same device and exchange the same bytes, so the
parameters are compared exactly, bit for bit.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.dist]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_signum.py"
LIMIT_S = 240
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def dist_run(run_bounded, out: Path, *args: str) -> dict:
    """``signvote train --engine dist --device cuda ARGS``; its summary and parameters."""
    result = run_bounded([sys.executable, "-m", "signvote", "train", "--engine", "dist",
                          "--device", "cuda", "--quiet", "--out", str(out), *args],
                         None, LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"summary": json.loads((out / "summary.json").read_text()),
            "params": torch.load(out / "params.pt")}


def assert_equal_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_nccl_one_rank_equals_gloo_on_the_same_gpu(run_bounded, tmp_path):
    args = ("--layout", "peer", "--workers", "1", "--epochs", "2")
    nccl = dist_run(run_bounded, tmp_path / "nccl", *args, "--backend", "nccl")
    gloo = dist_run(run_bounded, tmp_path / "gloo", *args, "--backend", "gloo")
    assert nccl["summary"]["backend"] == "nccl" and gloo["summary"]["backend"] == "gloo"
    assert_equal_params(nccl["params"], gloo["params"])
    assert nccl["summary"]["final_test_acc"] > 0.55  # learned: chance is 0.5


@pytest.mark.parametrize("layout", ["server", "peer"])
def test_nccl_equals_gloo_on_several_gpus(run_bounded, tmp_path, layout):
    workers = min(GPUS, 4) - (1 if layout == "server" else 0)
    if workers < 2:
        pytest.skip(f"needs {3 if layout == 'server' else 2} GPUs (one per rank); {GPUS} here")
    args = ("--layout", layout, "--workers", str(workers), "--byzantine", "1", "--attack",
            "vote-cancel", "--epochs", "2")
    nccl = dist_run(run_bounded, tmp_path / "nccl", *args, "--backend", "nccl")
    gloo = dist_run(run_bounded, tmp_path / "gloo", *args, "--backend", "gloo")
    assert nccl["summary"]["backend"] == "nccl"
    assert_equal_params(nccl["params"], gloo["params"])


def test_ranks_sharing_a_gpu_use_gloo_and_both_layouts_agree(run_bounded, tmp_path):
    # 4 ranks (3 workers and the server) on however many GPUs: auto is gloo unless each
    # has its own; the server and peer layouts vote on the same rows, so they agree.
    args = ("--workers", "3", "--byzantine", "1", "--attack", "vote-cancel", "--epochs", "2")
    server = dist_run(run_bounded, tmp_path / "server", *args, "--layout", "server")
    peer = dist_run(run_bounded, tmp_path / "peer", *args, "--layout", "peer")
    assert server["summary"]["backend"] == ("nccl" if GPUS >= 4 else "gloo")
    assert_equal_params(server["params"], peer["params"])


def test_a_killed_rank_resumes_from_its_checkpoint_on_the_gpu(run_bounded, tmp_path):
    args = ("--layout", "peer", "--workers", "1", "--epochs", "3",
            "--aggregator", "weighted-majority-vote")
    whole = dist_run(run_bounded, tmp_path / "whole", *args)
    result = run_bounded([sys.executable, "-m", "signvote", "train", "--engine", "dist",
                          "--device", "cuda", "--quiet", "--out", str(tmp_path / "killed"),
                          *args, "--checkpoint-every", "20", "--max-restarts", "1"],
                         {"SIGNVOTE_FAULT": "kill:0:50"}, LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["restarts"] == 1 and summary["resumed_from_step"] == 40
    assert_equal_params(torch.load(tmp_path / "killed" / "params.pt"), whole["params"])


def hook_run(run_bounded, tmp_path: Path, name: str, ranks: int, *args: str) -> dict:
    out, params = tmp_path / f"{name}.json", tmp_path / f"{name}.pt"
    result = run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", str(ranks), str(EXAMPLE), "--device", "cuda",
                          "--epochs", "2", "--max-steps", "5", "--out", str(out),
                          "--params-out", str(params), *args], None, LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"summary": json.loads(out.read_text()), "params": torch.load(params)}


def test_the_hook_on_nccl_equals_the_hook_on_gloo(run_bounded, tmp_path):
    ranks = max(1, min(GPUS, 3))  # one GPU each, as NCCL needs
    args = ("--dataset", "digits", "--model", "smallcnn", "--bucket-cap-mb", "0.01")
    nccl = hook_run(run_bounded, tmp_path, "nccl", ranks, *args, "--backend", "nccl")
    gloo = hook_run(run_bounded, tmp_path, "gloo", ranks, *args, "--backend", "gloo")
    blocking = hook_run(run_bounded, tmp_path, "sync", ranks, *args, "--backend", "nccl",
                        "--hook", "sync")
    assert nccl["summary"]["backend"] == "nccl" and gloo["summary"]["backend"] == "gloo"
    assert nccl["summary"]["device"].startswith("cuda")
    assert_equal_params(nccl["params"], gloo["params"])
    assert_equal_params(nccl["params"], blocking["params"])
    assert nccl["summary"]["bytes_sent_per_step"] == gloo["summary"]["bytes_sent_per_step"]
