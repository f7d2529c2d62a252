"""benchmarks/zoo_logreg_grid.py: the rows and columns it is asked for, the count of the
runs it ran, and one line with exit 2 for an aggregator or attack it cannot run."""

import importlib
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def zoo():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("zoo_logreg_grid")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_rows_are_the_named_aggregators_under_their_rule(zoo):
    assert zoo.grid_rows(["majority-vote", "krum", "median"]) == [
        ("sgd", "median"), ("sgd", "krum"), ("signum", "majority-vote")]
    everything = zoo.grid_rows()
    assert len(everything) == len(zoo.SGD_AGGREGATORS) + len(zoo.SIGN_AGGREGATORS)
    with pytest.raises(ValueError, match=r"--aggregators bulyan: not a row of the grid; "
                                         r"valid: mean, median"):
        zoo.grid_rows(["krum", "bulyan"])


def test_the_count_printed_is_of_the_runs_that_ran(zoo, capsys):
    zoo.main(["--smoke", "--aggregators", "krum", "majority-vote",
              "--attacks", "none", "sign-flip"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| (sgd|signum) / ", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["sgd / krum", "signum / majority-vote"]
    assert re.search(r"^4 runs in [\d.]+ s$", out, re.M)  # 2 rows x 2 attacks, not 180


@pytest.mark.parametrize("argv, named", [
    (["--aggregators", "KRUM"], "--aggregators KRUM: not a row of the grid; valid: mean"),
    (["--attacks", "none", "alie(z=x)"], "--attack alie(z=x)"),
    (["--attacks", "nope"], "'nope'"),
])
def test_a_bad_row_or_column_is_one_line_and_exit_2_before_any_run(zoo, capsys, argv,
                                                                    named):
    with pytest.raises(SystemExit) as exc:
        zoo.main(["--smoke", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no table started, no run
    message = captured.err.strip().splitlines()[-1]
    assert "Traceback" not in captured.err  # argparse's usage, then the one line
    assert named in message and message.startswith(f"{Path(sys.argv[0]).name}: error: ")
