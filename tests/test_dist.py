"""The distributed engine: real gloo processes on loopback against the simulator.

Each run starts ``signvote train --engine dist`` in its own process group (the elastic
launcher and its ranks), killed whole if it overruns its time limit (``run_bounded``).
"""

import sys
from pathlib import Path

import pytest
import torch

from signvote.engine import dist as dist_engine
from signvote.engine.sim import train
from signvote.experiment.config import ConfigError, TrainConfig

LIMIT_S = 120


@pytest.fixture
def run_dist(run_bounded):
    """``signvote train --engine dist ARGS --out OUT``, bounded in time."""

    def run(args: list[str], out: Path, env: dict | None = None):
        return run_bounded([sys.executable, "-m", "signvote", "train", "--engine", "dist",
                            "--quiet", "--out", str(out), *args], env, LIMIT_S)

    return run


def sim_params(args: dict, out: Path) -> dict[str, torch.Tensor]:
    train(TrainConfig(out=str(out), **args), progress=False)
    return torch.load(out / "params.pt")


def to_argv(args: dict) -> list[str]:
    argv = []
    for key, value in args.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def assert_same_params(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


CASES = {
    # 3 workers and the server: 4 processes; the vote straight from the packed bits, an
    # omniscient coalition fed by every worker, and each worker's own coins, the same in
    # both engines (one run for both; Signum on the server: the ResNet-20 case below)
    "server-stochastic-sign-vote-cancel": dict(workers=3, byzantine=1, attack="vote-cancel",
                                               rule="stochastic-sign", layout="server"),
    # 4 peers: blind inversion on its own rank, a random attack drawn by the coalition.
    "peer-signsgd-blind-random-sign": dict(workers=4, blind=1, byzantine=1, rule="signsgd",
                                           attack="random-sign", layout="peer"),
    # fp32 rows gathered at the server, a robust aggregator, an omniscient attack.
    "server-sgd-median-ipm": dict(workers=3, byzantine=1, rule="sgd", aggregator="median",
                                  aggregator_f=1, attack="ipm", layout="server"),
    # a stateful ternary aggregator and a data-level attack.
    "peer-signum-weighted-vote-label-flip": dict(workers=4, byzantine=1,
                                                 aggregator="weighted-majority-vote",
                                                 attack="label-flip", layout="peer"),
    # BatchNorm: each rank its own running statistics, rank 0 evaluating with the honest
    # workers' mean (a blind worker's left out), as the simulator does; and images cropped
    # and flipped: every rank draws from its own worker's stream (one run for both: each
    # starts 4 processes, and either one's fault breaks the bit-for-bit equality)
    "server-batchnorm-resnet20-blind-augment": dict(workers=3, blind=1, dataset="digits",
                                                    model="resnet20", augment="on",
                                                    batch_size=32, layout="server"),
}


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("case", CASES)
def test_four_processes_equal_the_simulator_bit_for_bit(case, tmp_path, run_dist):
    args = dict(CASES[case], epochs=2)
    result = run_dist(to_argv(args), tmp_path / "dist")
    assert result.returncode == 0, result.stderr
    assert_same_params(torch.load(tmp_path / "dist" / "params.pt"),
                       sim_params(args, tmp_path / "sim"), exact=True)
    sim_rows = (tmp_path / "sim" / "metrics.csv").read_text().splitlines()
    dist_rows = (tmp_path / "dist" / "metrics.csv").read_text().splitlines()
    # the simulator's columns but the wall time: same losses and accuracies, epoch by epoch
    width = len(sim_rows[0].split(",")) - 1
    assert ([r.split(",")[:width] for r in dist_rows]
            == [r.split(",")[:width] for r in sim_rows])
    assert dist_rows[0].endswith("bytes_sent_per_worker,bytes_received_per_worker")


@pytest.mark.slow
@pytest.mark.dist
def test_mean_by_all_reduce_equals_the_simulator_to_rounding(tmp_path, run_dist):
    args = dict(workers=4, rule="sgd", layout="peer", epochs=2)
    result = run_dist(to_argv(args), tmp_path / "dist")
    assert result.returncode == 0, result.stderr
    assert_same_params(torch.load(tmp_path / "dist" / "params.pt"),
                       sim_params(args, tmp_path / "sim"), exact=False)


@pytest.mark.slow
@pytest.mark.dist
def test_bytes_per_step_are_the_protocol_sizes(tmp_path, run_dist):
    import json

    args = dict(workers=3, layout="server", epochs=1)
    result = run_dist(to_argv(args), tmp_path)
    assert result.returncode == 0, result.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    d = s["params"]
    frame = 4 + -(-d // 8)  # the zero count and d bits; signum's rows have no zeros here
    assert s["bytes_sent_per_worker_per_step"] == frame
    assert s["server_bytes_received_per_step"] == 3 * frame
    assert s["bytes_received_per_worker_per_step"] >= frame
    assert s["fp32_allreduce_bytes_per_worker_per_step"] == 4 * d * 2 * 2 // 3
    assert s["coalition_bytes_per_step"] == 0
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    steps = int(rows[1].split(",")[1])
    assert float(rows[1].split(",")[-2]) == steps * frame  # bytes sent in the epoch


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("case", [
    # (a generator's state and the last aggregate, bucketing+centered-clipping's: the
    # killed run of tests/test_steps.py, the same kill at step 25 and resume from step 20)
    # every worker's BatchNorm running statistics come back from the checkpoint, and so do
    # a stateful aggregator's counts and every worker's augmentation generator, where it
    # was at step 20 (a generator started afresh would crop and flip steps 20 to 24
    # otherwise), on the peer layout (the server's: test_steps.py). One run for all: each
    # restart costs two launches, and losing any breaks the bit-for-bit equality with the
    # uninterrupted run.
    dict(aggregator="weighted-majority-vote", dataset="digits", model="resnet20",
         batch_size=16, augment="on", layout="peer"),
], ids=["weighted-majority-vote+batchnorm-resnet20+augment-peer"])
def test_a_killed_worker_is_restarted_and_the_run_resumes_from_its_checkpoint(
        tmp_path, run_dist, case):
    import json

    # one epoch (30 steps on digits with 3 x 16, more on the default task) holds the kill
    args = dict(workers=3, byzantine=1, attack="vote-cancel", epochs=1, **case)
    argv = [*to_argv(args), "--checkpoint-every", "10", "--max-restarts", "1"]
    result = run_dist(argv, tmp_path / "dist", env={dist_engine.FAULT_ENV: "kill:2:25"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert summary["restarts"] == 1
    assert summary["resumed_from_step"] == 20  # the last checkpoint before step 25
    assert not (tmp_path / "dist" / "checkpoint.pt").exists()
    # resuming loses nothing: the same parameters as a run that was never interrupted
    assert_same_params(torch.load(tmp_path / "dist" / "params.pt"),
                       sim_params(args, tmp_path / "sim"), exact=True)


@pytest.mark.slow
@pytest.mark.dist
def test_a_hung_rank_ends_the_run_with_a_timeout_message(tmp_path, run_dist):
    result = run_dist(["--workers", "2", "--epochs", "2", "--dist-timeout", "3"], tmp_path,
                      env={dist_engine.FAULT_ENV: "hang:1:5"})
    assert result.returncode == 1
    assert "no answer from another rank within --dist-timeout 3 s" in result.stderr
    assert "the distributed run failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "summary.json").exists()


def test_a_world_of_the_wrong_size_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="needs 4 processes"):
        dist_engine.train(TrainConfig(workers=3, layout="server", engine="dist",
                                      out=str(tmp_path)), progress=False)
