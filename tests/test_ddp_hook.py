"""The DDP communication hook: the example script under torchrun against the engine."""

import json
import sys
from pathlib import Path

import pytest

from signvote.engine.ddp_hook import SignumVoteState
from signvote.engine.sim import train
from signvote.experiment.config import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_signum.py"


def run_example(run_bounded, out: Path, *args: str):
    result = run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "4", str(EXAMPLE), "--out", str(out), *args],
                         {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.dist
def test_ddp_with_the_hook_trains_to_the_engines_signum_accuracy(run_bounded, tmp_path):
    hook = run_example(run_bounded, tmp_path / "hook.json", "--epochs", "3")
    engine = train(TrainConfig(workers=4, rule="signum", epochs=3, out=str(tmp_path / "sim")),
                   progress=False)
    assert engine.summary["final_test_acc"] > 0.7  # it learned: chance is 0.5
    assert abs(hook["final_test_acc"] - engine.summary["final_test_acc"]) <= 0.01
    frame = 4 + -(-engine.summary["params"] // 8)
    assert hook["bytes_sent_per_step"] == 3 * frame  # one packed frame to each of 3 peers


@pytest.mark.slow
@pytest.mark.dist
def test_a_blind_byzantine_rank_in_the_hook_is_outvoted(run_bounded, tmp_path):
    hook = run_example(run_bounded, tmp_path / "hook.json", "--epochs", "3",
                       "--byzantine-ranks", "3")
    engine = train(TrainConfig(workers=4, blind=1, rule="signum", epochs=3,
                               out=str(tmp_path / "sim")), progress=False)
    assert hook["final_test_acc"] > 0.6
    assert abs(hook["final_test_acc"] - engine.summary["final_test_acc"]) <= 0.03


def test_the_hook_refuses_an_attack_that_needs_other_messages():
    with pytest.raises(ValueError, match="reads only its own message"):
        SignumVoteState(attack="vote-cancel")
    with pytest.raises(ValueError, match="unknown attack"):
        SignumVoteState(attack="no-such-attack")
