"""The weighted majority vote (signSGD-FD): its update rule against a plain loop, and its
measured behaviour under a coalition that sends one constant sign (issue 15)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from signvote import aggregators
from signvote.aggregators.votes import llr_weights

N, BYZ = 10, 3  # workers; the first BYZ of them are the coalition


def reference(history: list[torch.Tensor], memory: float, warmup: int):
    """The rule as its docstring states it, one worker and one coordinate at a time in
    Python floats: decode (plain vote while warming up or while every weight is 0), count
    agreement on coordinates where both signs are nonzero, discount the old counts by
    ``memory``, add, decode again with the new weights (not while warming up)."""
    n = history[0].shape[0]
    agree, total = [0.0] * n, [0.0] * n

    def sign(x: float) -> float:
        return (x > 0) - (x < 0)

    def vote(m: list[list[float]], w: list[float]) -> list[float]:
        return [sign(sum(w[i] * m[i][j] for i in range(n))) for j in range(len(m[0]))]

    def weights() -> list[float]:
        out = []
        for a, t in zip(agree, total, strict=True):
            p = (t - a + 1) / (t + 2)
            out.append(math.log((1 - p) / p))
        return out

    outputs = []
    for call, msg in enumerate(history):
        m = [[0.0 if math.isnan(x) else float(sign(x)) for x in row] for row in msg.tolist()]
        warming = call < warmup
        w = [1.0] * n if warming or all(x == 0 for x in weights()) else weights()
        decoded = vote(m, w)
        for i in range(n):
            both = [(m[i][j], decoded[j]) for j in range(len(decoded))
                    if m[i][j] != 0 and decoded[j] != 0]
            agree[i] = memory * agree[i] + sum(1.0 for a, b in both if a == b)
            total[i] = memory * total[i] + len(both)
        outputs.append(decoded if warming else vote(m, weights()))
    return outputs, agree, total


def hostile_history(gen: torch.Generator, steps: int, n: int, d: int) -> list[torch.Tensor]:
    """Real-valued messages, correct 70% of the time against a fixed truth, with zeros,
    NaN and infinities mixed in, and two workers that invert."""
    truth = torch.randint(0, 2, (d,), generator=gen).double() * 2 - 1
    out = []
    for _ in range(steps):
        wrong = torch.rand(n, d, generator=gen) < 0.3
        m = torch.where(wrong, -truth, truth) * torch.rand(n, d, generator=gen, dtype=torch.float64)
        m[-2:] = -m[-2:]
        m[torch.rand(n, d, generator=gen) < 0.1] = 0.0
        m[torch.rand(n, d, generator=gen) < 0.05] = float("nan")
        m[torch.rand(n, d, generator=gen) < 0.05] *= float("inf")
        out.append(m)
    return out


@pytest.mark.parametrize(("memory", "warmup"), [(1.0, 0), (0.7, 0), (1.0, 3), (0.5, 2)])
def test_update_rule_equals_a_plain_loop(memory, warmup):
    history = hostile_history(torch.Generator().manual_seed(15), steps=8, n=6, d=40)
    spec = f"memory={memory}" + (f",warmup={warmup}" if warmup else "")
    agg = aggregators.build(f"weighted-majority-vote({spec})")
    want, agree, total = reference(history, memory, warmup)
    state = agg.init_state()
    for m, expected in zip(history, want, strict=True):
        got, state = agg.apply(m, state)
        assert got.tolist() == expected
    assert torch.allclose(state[0], torch.tensor(agree, dtype=torch.float64))
    assert torch.allclose(state[1], torch.tensor(total, dtype=torch.float64))
    assert len(state) == (3 if warmup else 2)  # the paper's rule keeps (agree, total)


def test_warmup_is_the_plain_vote():
    history = hostile_history(torch.Generator().manual_seed(3), steps=4, n=7, d=60)
    agg, plain = aggregators.build("weighted-majority-vote(warmup=4)"), aggregators.get(
        "majority-vote")
    state = agg.init_state()
    for m in history:
        got, state = agg.apply(m, state)
        assert torch.equal(got, plain(m))
    assert int(state[2]) == 4


@pytest.mark.parametrize("spec", ["warmup=-1", "warmup=1.5", "warmup=true", "memory=0"])
def test_bad_parameters_are_refused(spec):
    with pytest.raises(ValueError, match="weighted-majority-vote"):
        aggregators.build(f"weighted-majority-vote({spec})")


def coalition_steps(gen: torch.Generator, truth: torch.Tensor, honest_right: list[float]):
    """One message matrix per step: the coalition (rows 0..BYZ-1) sends +1 on every
    coordinate (what ``inf`` and ``gaussian(mean=5, std=0)`` put on the wire); each honest
    worker's sign is right with probability ``honest_right[step]``, independently."""
    for q in honest_right:
        wrong = torch.rand(N - BYZ, truth.shape[0], generator=gen) >= q
        honest = torch.where(wrong, -truth, truth)
        yield torch.cat([torch.ones(BYZ, truth.shape[0]), honest])


def coalition_share(state) -> float:
    """The coalition's share of the summed |weight|: past 1/2, it outvotes everyone else
    together, whatever they send."""
    w = llr_weights(state[0], state[1]).abs()
    return float(w[:BYZ].sum() / w.sum())


def run_vote(spec: str, honest_right: list[float], d: int = 1000):
    gen = torch.Generator().manual_seed(8005)
    truth = torch.randint(0, 2, (d,), generator=gen).float() * 2 - 1
    agg, state, trace = aggregators.build(spec), None, []
    for m in coalition_steps(gen, truth, honest_right):
        v, state = agg.apply(m, state)
        trace.append((m, v, coalition_share(state)))
    return truth, trace


def test_a_constant_coalition_takes_the_weighted_vote_for_good():
    # honest signs near chance for 2 steps (as at the start of training), then perfect:
    # all 7 honest workers right and unanimous for 30 steps
    truth, trace = run_vote("weighted-majority-vote", [0.55] * 2 + [1.0] * 30)
    shares = [share for _, _, share in trace]
    # one call: the coalition agreed with most of the plain vote's decoding, and already
    # outweighs the seven honest workers together
    assert shares[0] > 0.5
    against = truth < 0  # where every honest worker votes -1 from step 3 on
    plain = aggregators.get("majority-vote")
    for m, v, share in trace[2:]:
        assert share > 0.9
        assert bool((v == 1).all())  # the coalition's sign on every coordinate
        assert torch.equal(plain(m), truth)  # the plain vote is right on every coordinate
    assert int(against.sum()) > 400  # ~half the coordinates: 3 votes beat 7 there


def test_informative_honest_workers_silence_the_coalition():
    # the paper's fixed point: honest right 80% of the time from the first step
    truth, trace = run_vote("weighted-majority-vote", [0.8] * 20)
    assert trace[-1][2] < 0.05  # the coalition's weight has fallen to about 0
    assert float((trace[-1][1] == truth).float().mean()) > 0.9


def test_warmup_keeps_the_coalition_out_when_honest_signs_become_informative():
    # same steps as the takeover above, with 5 calls of plain vote first
    truth, trace = run_vote("weighted-majority-vote(warmup=5)", [0.55] * 2 + [1.0] * 30)
    shares = [share for _, _, share in trace]
    assert shares[0] > 0.5  # the same first counts as the takeover's ...
    assert max(shares[4:]) < 0.2  # ... diluted by the warm-up's 3 calls with right honest
    for _, v, _ in trace[5:]:
        assert torch.equal(v, truth)


def test_warmup_is_no_defence_while_honest_signs_stay_near_chance():
    _, trace = run_vote("weighted-majority-vote(warmup=20)", [0.55] * 30)
    assert trace[19][2] > 0.5  # counted against the plain vote, the coalition still wins
    assert all(bool((v == 1).all()) for _, v, _ in trace[20:])


@pytest.mark.slow
@pytest.mark.dist
def test_weighted_vote_coalition_benchmark_smoke(run_bounded, tmp_path):
    """benchmarks/weighted_vote_coalition.py --smoke runs, and its tables say what
    benchmarks/RESULTS.md quotes: the weighted vote follows the coalition with seed 8005,
    the warm-up does not, and gaussian(mean=5,std=0) is inf on the wire."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "weighted_vote_coalition.py"
    result = run_bounded([sys.executable, str(script), "--smoke"],
                         env={"OMP_NUM_THREADS": "1"}, limit_s=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]}
    for rule in ("signum", "signsgd"):
        plain = rows[f"{rule} / majority-vote"]
        weighted = rows[f"{rule} / weighted-majority-vote"]
        warm = rows[f"{rule} / weighted-majority-vote(warmup=67)"]
        assert float(weighted[0]) < float(plain[0]) - 5  # seed 8005: taken
        assert warm == plain  # one epoch of warm-up is one epoch of the plain vote
        for row in (plain, weighted, warm):
            assert row[0] == row[3]  # inf and gaussian(mean=5,std=0): the same signs
        assert rows[f"{rule} / weighted-majority-vote, 8005"][-1] == "2"  # past 1/2 at step 2
    assert rows["signum / weighted-majority-vote, 1"][-1] == "never"
    assert not list(tmp_path.iterdir())  # nothing written
