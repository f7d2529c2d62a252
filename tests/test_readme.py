"""Every command of the README runs here, so a README command that fails fails a test.

The commands are read from README.md: every line of its ``sh`` blocks, its ``python``
blocks, its ``toml`` block (the sweep file the commands use), and every inline code span
in its prose that starts like a command (:data:`COMMAND_START`). :data:`COMMANDS` says, for
each of them, how it is run: as written, or at a reduced cost with the exact edits listed
(``--epochs 1`` for ``--epochs 80``, say), in a folder of its group under the test's
temporary folder (with a ``.venv`` link to this checkout's, so ``.venv/bin/signvote`` works
as written). A command of the README that this table does not know fails
:func:`test_every_readme_command_is_known`: nobody adds an untested command. A command
that needs the network, root or a second machine is listed with the reason it is not run;
one that another test runs already names that test, which must exist.

``signvote`` commands run in this process (``signvote.cli.main``, the entry point the
script calls), which saves a torch import per command; the distributed ones, torchrun
and the scripts run as processes. Each test has a private home and data folder
(``tests/conftest.py``): the image commands find a small fake Fashion-MNIST and MNIST
written there (the README's commands name no other data). The reproduction commands run
the paper's figures with 1 epoch instead of 80 (``reduced_figures``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV = Path(sys.executable).parent.parent

COMMAND_START = re.compile(
    r"^(signvote |\.venv/bin/|python3? |make |sudo |torchrun |pip |apt-get |tensorboard |"
    r"pandas\.|model\.|torch\.load)")
"""How an inline code span in the README's prose starts when it is a command."""


# -- reading the README ---------------------------------------------------------------------

def fenced_blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """The fenced code blocks of ``text`` as (language, body) (an indented fence's body
    dedented by its indent), and the prose with every block removed."""
    blocks, prose, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^( *)```(\w*)\s*$", lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        indent, language, body = len(opening.group(1)), opening.group(2), []
        i += 1
        while not re.match(r"^ *```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1
        blocks.append((language, "\n".join(body) + "\n"))
        prose.append("")
    return blocks, "\n".join(prose)


def shell_lines(body: str) -> list[str]:
    """The commands of an ``sh`` block: continuation lines joined, comments removed."""
    out, pending = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        line, pending = re.sub(r"\s+#\s.*$", "", pending + line.strip()).strip(), ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def readme_commands(text: str) -> list[str]:
    """Every command of the README, in order and once each: the lines of its ``sh``
    blocks, its ``python`` blocks and its ``toml`` block (as ``toml:`` + their text), and
    the inline code spans of its prose that start like a command (whitespace folded)."""
    blocks, prose = fenced_blocks(text)
    found = []
    for language, body in blocks:
        if language == "sh":
            found += shell_lines(body)
        elif language in ("python", "toml"):
            found.append(f"{language}:{body}")
        else:
            assert not language, f"a README code block in an unknown language {language!r}"
            commands = [line for line in body.splitlines() if COMMAND_START.match(line)]
            assert not commands, f"a command in an untagged README block: {commands}"
    spans = (" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose))
    found += [s for s in spans if COMMAND_START.match(s)]
    return list(dict.fromkeys(found))


# -- how each command runs --------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Run the command in folder ``group`` (in the order of :data:`COMMANDS`), with each
    ``(old, new)`` of ``edits`` applied (``old`` must be in it) and ``append`` added.
    ``process``: as a process (``bash -c``), not in this one."""

    group: str
    edits: tuple[tuple[str, str], ...] = ()
    append: str = ""
    process: bool = False

    def text(self, command: str) -> str:
        for old, new in self.edits:
            assert old in command, f"the edit {old!r} no longer applies to {command!r}"
            command = command.replace(old, new)
        return command + self.append


@dataclass(frozen=True)
class Make:
    """``make TARGET``: its recipe, as ``make -n`` prints it, is checked (every script it
    names exists); ``run_in`` runs the recipe's ``signvote`` lines in that group, and
    ``tested_by`` names the test that runs the recipe's script."""

    target: str
    run_in: str | None = None
    tested_by: str | None = None
    why_not_run: str = ""


@dataclass(frozen=True)
class Elsewhere:
    """Run by another test (``tests/FILE.py::NAME``, which must exist)."""

    test: str
    how: str


@dataclass(frozen=True)
class Skip:
    """Not run here, for ``reason``."""

    reason: str


EPOCHS_1 = "--epochs 1"
SMOKE = "the smoke test runs it with --smoke"
NETWORK = "needs the network (a package index)"
FRAGMENT = "a command's name in a sentence; its whole commands are in code blocks"

COMMANDS: dict[str, Run | Make | Elsewhere | Skip] = {
    # Set-up
    "make demo": Make("demo", run_in="figures"),
    "make test": Make("test", why_not_run="it is `ruff check .` and this test suite"),
    '.venv/bin/pytest -m "not slow"': Skip("this test suite"),
    # Training
    ".venv/bin/signvote train --rule signum --byzantine 4 --epochs 80 --out runs/signum":
        Run("training", (("--epochs 80", EPOCHS_1),)),
    ".venv/bin/signvote train --help": Run("training"),
    'pandas.read_csv("runs/signum/metrics.csv")': Run("training"),
    # the snippet rebuilding the model of params.pt; the key is the block's first line
    "python:import json": Run("training"),
    # Aggregators and attacks
    'signvote train --rule sgd --byzantine 2 --workers 11 --aggregator "nnm+krum"':
        Run("aggregators", append=" --epochs 1"),
    'signvote train --rule sgd --byzantine 3 --workers 15 --lr 1e-2 --aggregator '
    '"bucketing(s=2)+centered-clipping(tau=1)"': Run("aggregators", append=" --epochs 1"),
    'signvote train --rule sgd --byzantine 3 --attack "alie(z=1.0)" --aggregator '
    'trimmed-mean': Run("aggregators", append=" --epochs 1"),
    # Real images: the fake sets in the private home (fake_images)
    "signvote train --dataset digits --byzantine 3 --epochs 20 --lr 1e-3":
        Run("images", (("--epochs 20", EPOCHS_1),)),
    "signvote train --dataset fashion-mnist --model smallcnn --epochs 1 --lr 1e-3":
        Run("images"),
    "signvote train --dataset fashion-mnist --partition dirichlet --partition-alpha 0.1":
        Run("images", append=" --epochs 1"),
    "signvote train --dataset mnist --data-dir ~/data/mnist --epochs 25 --lr 1e-5":
        Run("images", (("--epochs 25", EPOCHS_1),)),
    'signvote train --dataset digits --model "resnet20(norm=group)" --workers 5 '
    '--batch-size 16 --epochs 4 --lr 1e-3': Run("images", (("--epochs 4", EPOCHS_1),)),
    "signvote train --config examples/cifar10_resnet20.toml --out runs/cifar10_resnet20":
        Elsewhere("tests/test_resnet_runs.py::test_the_cifar10_example_trains_shortened",
                  "on CIFAR-10 files written in the official format, 1 epoch, 2 workers"),
    "apt-get install dataset-fashion-mnist": Skip("needs root and Debian's package index"),
    "pip install 'signvote[download]'": Skip(NETWORK),
    "signvote download mnist": Skip("downloads MNIST from the network (torchvision)"),
    "signvote download cifar10": Skip("downloads CIFAR-10 from the network (torchvision)"),
    "pip install 'signvote[images]'": Skip(NETWORK),
    # The seed's command line and ours
    "python3 src/main.py NPROCS DATASET -i BLIND -b BYZ -o OPTIMIZER -e EPOCHS --lr LR "
    "--momentum M": Skip("the paper's seed code, quoted; not part of this repository"),
    "signvote train --workers 10 --dataset logreg --model logregnet --rule signum "
    "--byzantine 4 --epochs 80 --lr 1e-4 --momentum 0.9 --seed 8005":
        Run("seed", (("--epochs 80", EPOCHS_1),), append=" --out runs/long"),
    "signvote train -b 4": Run("seed", append=" --epochs 1 --out runs/short"),
    "signvote train --rule signsgd --blind 3": Run("seed", append=" --epochs 1"),
    "signvote train --rule sgd --aggregator sum --byzantine 1": Run("seed", append=" --epochs 1"),
    "signvote train --dataset linreg --rule signum": Run("seed", append=" --epochs 1"),
    "signvote train": Skip(FRAGMENT),
    # Python
    "python:import torch": Run("python", (("byzantine=4)", "byzantine=4, epochs=1)"),)),
    # Your own model and data: signvote.train on a network and tensors of its own
    "python:import signvote": Run("own"),
    # Sweeps, results, figures: the README's zoo.toml, 1 epoch
    "toml:# zoo.toml": Run("sweep"),
    ".venv/bin/signvote sweep zoo.toml --out runs/zoo":
        Run("sweep", append=" --set epochs=1 --set seed=1"),
    ".venv/bin/signvote sweep zoo.toml --out runs/zoo --set epochs=40 --set 'seed=[1, 2]'":
        Run("sweep", (("epochs=40", "epochs=1"), ("'seed=[1, 2]'", "'seed=[1]'"))),
    ".venv/bin/signvote sweep zoo.toml --out runs/zoo --dry-run": Run("sweep"),
    ".venv/bin/signvote results runs/zoo": Run("sweep"),
    ".venv/bin/signvote plot runs/zoo --kind heatmap": Run("sweep"),
    # Sweeps on Ray: the tests start their own local instance and a one-node cluster
    "pip install 'signvote[ray]'": Skip(NETWORK),
    ".venv/bin/signvote sweep zoo.toml --out runs/zoo --backend ray": Elsewhere(
        "tests/test_benchmarks.py::"
        "test_bench_ray_smoke_runs_the_pool_and_a_local_ray_instance_to_the_same_rows",
        "a sweep on a local Ray instance it starts and stops, row for row the pool's"),
    "ray start --head --port 6379 --num-cpus 16": Skip(
        "starts a cluster that runs until ray stop; the Ray tests start one of 2 CPUs"),
    "ray start --address HEAD:6379": Skip("joins another machine's cluster"),
    ".venv/bin/signvote sweep zoo.toml --out /shared/zoo --backend ray --address auto "
    "--cpus-per-run 4 --gpus-per-run 1": Elsewhere(
        "tests/test_sweep_ray.py::"
        "test_a_killed_worker_is_retried_and_a_killed_driver_resumes_to_the_pools_rows",
        "a sweep joining a running one-node cluster by its address (no GPU here)"),
    "ray stop": Skip("stops every Ray process of the machine"),
    'pandas.read_parquet("runs/zoo/results.parquet")': Run("sweep"),
    "signvote results": Skip(FRAGMENT),
    "signvote reproduce FIGURE": Skip(FRAGMENT),
    "signvote reproduce TARGET": Skip(FRAGMENT),
    "signvote reproduce karimireddy-exp2 --out runs/bench": Elsewhere(
        "tests/test_benchmarks_targets.py::"
        "test_a_tiny_target_runs_end_to_end_and_writes_its_report",
        "the same target cut to 4 runs of 2 steps on digits"),
    "signvote reproduce byzfl --scale full --device cuda --out runs/bench": Skip(
        "a GPU job: 576 runs of 800 steps"),
    "tensorboard = true": Skip("a sweep file's key, not a command"),
    "tensorboard --logdir runs": Skip("starts a server that runs until it is stopped"),
    "pip install 'signvote[tensorboard]'": Skip(NETWORK),
    # The theory
    ".venv/bin/signvote theory --out runs/theory": Run("theory",
                                                       append=" --rate-repeats 2 --quick"),
    ".venv/bin/signvote sweep examples/theory_breakdown.toml --out runs/breakdown":
        Run("theory", append=" --set epochs=1 --set 'byzantine=[0, 5]'"),
    ".venv/bin/signvote theory --out runs/theory --sweep runs/breakdown":
        Run("theory", append=" --rate-repeats 2 --quick"),
    "signvote theory --sweep": Skip(FRAGMENT),
    "signvote theory": Skip(FRAGMENT),
    "signvote reproduce": Skip(FRAGMENT),
    # Distributed training
    ".venv/bin/signvote train --engine dist --workers 4 --byzantine 1 --epochs 10 --out "
    "runs/dist": Run("dist", (("--epochs 10", EPOCHS_1),), process=True),
    ".venv/bin/signvote train --engine dist --layout peer --workers 4 --out runs/peer":
        Run("dist", append=" --epochs 1", process=True),
    "signvote train --engine dist": Skip(FRAGMENT),
    # two machines as two launchers on this one (multi_node)
    "torchrun --nnodes 2 --nproc-per-node 3 --rdzv-backend c10d --rdzv-endpoint HOST:29500 "
    "-m signvote train --engine dist --workers 5 --layout server --out runs/multi":
        Run("multi-node", append=" --epochs 1", process=True),
    # several GPUs: the gpu tests run the engine and the hook on NCCL where CUDA is
    ".venv/bin/signvote train --engine dist --device cuda --workers 3 --out runs/gpu":
        Elsewhere("tests/test_nccl.py::test_ranks_sharing_a_gpu_use_gloo_and_both_layouts_agree",
                  "the same command (a gpu test: skipped without CUDA) with --epochs 2"),
    "torchrun --standalone --nproc-per-node 4 -m signvote train --engine dist --backend nccl "
    "--device cuda --layout peer --workers 4 --out runs/gpu-peer":
        Elsewhere("tests/test_nccl.py::test_nccl_equals_gloo_on_several_gpus",
                  "the peer layout on NCCL with one rank per GPU (a gpu test: skipped "
                  "without CUDA, and with fewer than 2 GPUs)"),
    "torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --device cuda":
        Elsewhere("tests/test_nccl.py::test_the_hook_on_nccl_equals_the_hook_on_gloo",
                  "the same launch with one rank per GPU (a gpu test: skipped without CUDA)"),
    "python:from signvote.engine.ddp_hook import SignumVoteState, signum_vote_hook":
        Run("ddp-hook"),
    "torchrun --standalone --nproc-per-node 4 examples/ddp_signum.py --epochs 5": Elsewhere(
        "tests/test_ddp_hook.py::test_ddp_with_the_hook_trains_to_the_engines_signum_accuracy",
        "the same launch (python -m torch.distributed.run) with --epochs 3"),
    "signvote train --rule signum --workers 4": Run("ddp-hook", append=" --epochs 1"),
    # Benchmarks
    "make bench": Make("bench", tested_by="tests/test_benchmarks.py::test_bench_sim_smoke"),
    "make bench-cnn": Make("bench-cnn",
                           tested_by="tests/test_benchmarks.py::test_bench_cnn_smoke"),
    "make bench-byzfl": Make("bench-byzfl",
                             tested_by="tests/test_benchmarks.py::test_bench_aggregators_smoke"),
    ".venv/bin/python benchmarks/paper_logreg_grid.py": Elsewhere(
        "tests/test_benchmarks.py::test_paper_logreg_grid_smoke", SMOKE),
    # the same grid into the demo's folder (/tmp is outside the test's): the Byzantine
    # figure is the demo's, done; the blind one runs
    ".venv/bin/signvote reproduce logreg-blind --out /tmp/g && .venv/bin/signvote reproduce "
    "logreg-byzantine --out /tmp/g": Run("figures", (("/tmp/g", "runs/demo"),)),
    # (from the sweeps section) runs/x: the blind figure the command above writes
    ".venv/bin/signvote plot runs/x --kind paper --adversary blind":
        Run("figures", (("runs/x", "runs/demo/logreg-blind"),)),
    ".venv/bin/python benchmarks/zoo_logreg_grid.py": Elsewhere(
        "tests/test_benchmarks.py::test_zoo_logreg_grid_smoke", SMOKE),
    "make bench-dist": Make("bench-dist",
                            tested_by="tests/test_benchmarks.py::test_bench_dist_bytes_smoke"),
    "sudo make bench-dist-netns": Make(
        "bench-dist-netns", why_not_run="needs root: it creates network namespaces"),
}

GROUPS = {"training", "aggregators", "images", "seed", "python", "own", "sweep", "theory",
          "figures", "dist", "multi-node", "ddp-hook"}
"""The groups of commands that share a folder, each run by one test."""


def command_key(command: str) -> str:
    """The key of :data:`COMMANDS` for a README command: a Python or TOML block is known
    by its first line."""
    if command.startswith(("python:", "toml:")):
        return command.split("\n", 1)[0]
    return command


def test_every_readme_command_is_known():
    found = [command_key(c) for c in readme_commands(README.read_text())]
    unknown = [c for c in found if c not in COMMANDS]
    stale = [c for c in COMMANDS if c not in found]
    assert not unknown, ("README commands this test does not know how to run (add each to "
                         f"COMMANDS): {unknown}")
    assert not stale, f"COMMANDS lists what the README no longer has: {stale}"
    assert {r.group for r in COMMANDS.values() if isinstance(r, Run)} == set(GROUPS)


def test_the_readme_reader_finds_every_kind_of_command():
    text = ("Run `signvote train -b 4` or `make\n  demo`, not `signvote.theory`.\n\n"
            "```sh\nsignvote sweep a.toml \\\n    --out b   # a comment\n# only a comment\n"
            "```\n\n  ```python\n  import torch\n  ```\n\n```\n| a table |\n```\n")
    assert readme_commands(text) == ["signvote sweep a.toml --out b", "python:import torch\n",
                                     "signvote train -b 4", "make demo"]
    with pytest.raises(AssertionError, match="a command in an untagged README block"):
        readme_commands("```\nsignvote train\n```\n")


def test_every_test_named_as_running_a_command_exists():
    named = [r.test for r in COMMANDS.values() if isinstance(r, Elsewhere)]
    named += [r.tested_by for r in COMMANDS.values() if isinstance(r, Make) and r.tested_by]
    for test in named:
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), test


def make_recipe(target: str) -> list[str]:
    """The recipe of ``make TARGET`` in this checkout, as ``make -n`` prints it (the
    virtual environment taken as installed)."""
    result = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", target], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    return [line for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0,
                    reason="make is not installed")
@pytest.mark.parametrize("command", [c for c, r in COMMANDS.items() if isinstance(r, Make)])
def test_every_make_target_of_the_readme_exists_with_its_scripts(command):
    how = COMMANDS[command]
    recipe = make_recipe(how.target)
    assert recipe, f"make {how.target} does nothing"
    for line in recipe:
        for word in shlex.split(line):
            if word.endswith(".py") or word.startswith(".venv/bin/"):
                assert (ROOT / word).exists(), f"make {how.target} runs {word}, which is missing"
    assert how.run_in or how.tested_by or how.why_not_run, command


# -- the runs ---------------------------------------------------------------------------------

def write_fake_idx(folder: Path, n_train: int = 600, n_test: int = 100, side: int = 28
                   ) -> None:
    """A small IDX dataset in ``folder``: random images, every one of 10 labels as often."""
    from signvote.data.idx import write_idx

    gen = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte",
                  gen.integers(0, 256, (n, side, side), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


@pytest.fixture
def fake_images(_private_home):
    """The images the README's commands find: Fashion-MNIST in the download folder (ahead
    of Debian's), MNIST in ``~/data/mnist``; both small and fake."""
    write_fake_idx(Path(os.environ["SIGNVOTE_DATA"]) / "fashion-mnist")
    write_fake_idx(Path(os.environ["HOME"]) / "data" / "mnist")


@pytest.fixture
def reduced_figures(monkeypatch):
    """The paper's figures at 1 epoch: what ``signvote reproduce`` and ``make demo`` run."""
    import dataclasses

    from signvote.experiment import reproduce

    for name, figure in list(reproduce.FIGURES.items()):
        monkeypatch.setitem(reproduce.FIGURES, name, dataclasses.replace(figure, epochs=1))


def signvote(command: str) -> str:
    """Run a ``signvote`` command line in this process; its stdout, after checking that
    it exited 0."""
    from signvote import cli

    words = [os.path.expanduser(w) for w in shlex.split(command)]
    assert words[0] in ("signvote", ".venv/bin/signvote"), command
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = cli.main(words[1:])
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None), f"{command}: exit {code}\n{out.getvalue()}"
    return out.getvalue()


def python(code: str, namespace: dict) -> None:
    """Run a Python snippet of the README in ``namespace``; a one-line expression's
    value is kept as ``namespace["_"]``."""
    try:
        namespace["_"] = eval(compile(code, "README.md", "eval"), namespace)
    except SyntaxError:
        exec(compile(code, "README.md", "exec"), namespace)


def process(command: str, run_bounded, limit_s: int = 300) -> str:
    result = run_bounded(["bash", "-c", command], limit_s=limit_s,
                         env={"PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


def group_commands(group: str) -> list[tuple[str, str]]:
    """(README command, what runs) of ``group``, in the order of :data:`COMMANDS`."""
    found = {command_key(c): c for c in readme_commands(README.read_text())}
    out = []
    for key, how in COMMANDS.items():
        assert key in found, f"{key!r} is not in the README (test_every_readme_command_is_known)"
        command = found[key]
        if isinstance(how, Run) and how.group == group:
            out.append((command, how.text(command)))
        elif isinstance(how, Make) and how.run_in == group:
            out += [(command, line) for line in make_recipe(how.target)]
    return out


def run_group(group: str, folder: Path, run_bounded) -> dict:
    """Run every command of ``group`` in ``folder``; returns the Python namespace."""
    (folder / ".venv").symlink_to(VENV)
    namespace: dict = {}
    for command, text in group_commands(group):
        how = COMMANDS.get(command_key(command))
        if text.startswith("toml:"):
            first, body = text[len("toml:"):].split("\n", 1)
            (folder / first.removeprefix("#").strip()).write_text(first + "\n" + body)
        elif text.startswith("python:"):
            python(text[len("python:"):], namespace)
        elif COMMAND_START.match(text) and text.startswith(("pandas.", "model.", "torch.")):
            import pandas

            namespace["pandas"] = pandas
            python(text, namespace)
        elif isinstance(how, Run) and how.process:
            process(text, run_bounded)
        else:
            for part in text.split(" && "):
                signvote(part)
    return namespace


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def metrics_without_time(path: Path) -> list[dict]:
    import pandas

    return pandas.read_csv(path).drop(columns="wall_s").to_dict("records")


def test_the_readme_training_commands_run(in_folder, run_bounded):
    namespace = run_group("training", in_folder, run_bounded)
    summary = json.loads((in_folder / "runs/signum/summary.json").read_text())
    assert namespace["accuracy"] == pytest.approx(summary["final_test_acc"], abs=1e-6)
    frame = namespace["_"]  # pandas.read_csv of the run's metrics.csv
    assert list(frame["epoch"]) == [1] and "test_acc" in frame.columns


def test_the_readme_aggregator_examples_run(in_folder, run_bounded):
    run_group("aggregators", in_folder, run_bounded)
    summaries = [json.loads(p.read_text()) for p in in_folder.glob("runs/*/summary.json")]
    assert len(summaries) == 3 and {s["status"] for s in summaries} == {"completed"}


@pytest.mark.slow
def test_the_readme_image_commands_run(in_folder, run_bounded, fake_images):
    run_group("images", in_folder, run_bounded)
    configs = [json.loads(p.read_text()) for p in in_folder.glob("runs/*/config.json")]
    assert sorted(c["dataset"] for c in configs) == ["digits", "digits", "fashion-mnist",
                                                     "fashion-mnist", "mnist"]
    assert len(list(in_folder.glob("runs/*/summary.json"))) == 5


def test_the_readme_seed_table_runs_and_its_two_forms_are_one_run(in_folder, run_bounded):
    run_group("seed", in_folder, run_bounded)
    # "all of it the default: signvote train -b 4"
    assert metrics_without_time(in_folder / "runs/long/metrics.csv") == metrics_without_time(
        in_folder / "runs/short/metrics.csv")
    assert len(list(in_folder.glob("runs/*/summary.json"))) == 5


def test_the_readme_python_block_runs(in_folder, run_bounded):
    namespace = run_group("python", in_folder, run_bounded)
    assert 0.5 < namespace["result"].summary["final_test_acc"] <= 1
    assert "krum" in namespace["aggregators"].names()
    assert "alie" in namespace["attacks"].names()


def test_the_readme_own_model_example_runs(in_folder, run_bounded):
    namespace = run_group("own", in_folder, run_bounded)
    config = json.loads((in_folder / "runs/mine/config.json").read_text())
    summary = json.loads((in_folder / "runs/mine/summary.json").read_text())
    assert config["model"].startswith("<object ") and config["model"].endswith(".Net>")
    assert config["dataset"].startswith("<data tensors: train [1500, 1, 8, 8]")
    assert (config["rule"], config["aggregator"], config["byzantine"]) == (
        "signum", "majority-vote", 2)
    assert set(summary["objects"]) == {"model", "dataset"}
    assert summary["final_test_acc"] == namespace["result"].summary["final_test_acc"] > 0.3


@pytest.mark.slow
@pytest.mark.dist
def test_the_readme_sweep_commands_run(in_folder, run_bounded):
    run_group("sweep", in_folder, run_bounded)
    table = __import__("pandas").read_parquet(in_folder / "runs/zoo/results.parquet")
    assert table["run"].nunique() == 4 * 3  # aggregators x attacks, seed 1 (done once)
    assert (in_folder / "runs/zoo/heatmap.png").exists()


@pytest.mark.slow
def test_the_readme_theory_commands_run(in_folder, run_bounded):
    (in_folder / "examples").mkdir()
    (in_folder / "examples/theory_breakdown.toml").write_text(
        (ROOT / "examples/theory_breakdown.toml").read_text())
    run_group("theory", in_folder, run_bounded)
    assert (in_folder / "runs/theory/THEORY.md").exists()
    assert (in_folder / "runs/theory/vote_wrong.png").exists()


@pytest.mark.slow
@pytest.mark.dist
def test_make_demo_and_the_reproduce_commands_run(in_folder, run_bounded, reduced_figures):
    run_group("figures", in_folder, run_bounded)
    report = (in_folder / "runs/demo/REPORT.md").read_text()
    assert "(`logreg-blind`)" in report and "(`logreg-byzantine`)" in report
    assert (in_folder / "runs/demo/logreg-byzantine.png").exists()  # the demo's figure
    assert (in_folder / "runs/demo/logreg-blind/paper.png").exists()  # the plot command's


@pytest.mark.slow
@pytest.mark.dist
def test_the_readme_distributed_commands_run(in_folder, run_bounded):
    run_group("dist", in_folder, run_bounded)
    for out in ("runs/dist", "runs/peer"):
        assert json.loads((in_folder / out / "summary.json").read_text())["engine"] == "dist"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.dist
def test_the_readme_two_machine_command_runs_as_two_launchers_here(in_folder, run_bounded):
    """The README's command, run twice at once (each launcher is one "machine"), with
    HOST:29500 the address of the first."""
    [(_, text)] = group_commands("multi-node")
    text = text.replace("HOST:29500", f"127.0.0.1:{free_port()}")
    (in_folder / ".venv").symlink_to(VENV)
    process(f"({text}) & first=$!; ({text}) & second=$!; wait $first && wait $second",
            run_bounded)
    assert json.loads((in_folder / "runs/multi/summary.json").read_text())["workers"] == 5


@pytest.mark.slow
def test_the_readme_ddp_hook_lines_run(in_folder, run_bounded):
    """The two lines of the hook, on a one-process DDP model, then one step."""
    import torch
    import torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo", init_method=f"file://{in_folder / 'store'}", rank=0,
                            world_size=1)
    try:
        model = nn.Linear(3, 1)
        namespace = {"torch": torch,
                     "ddp_model": nn.parallel.DistributedDataParallel(model)}
        [(_, code)] = [(c, t) for c, t in group_commands("ddp-hook") if t.startswith("python:")]
        python(code[len("python:"):], namespace)
        before = model.weight.detach().clone()
        namespace["ddp_model"](torch.ones(4, 3)).sum().backward()
        namespace["optimizer"].step()
        change = (model.weight.detach() - before).abs()
        assert torch.allclose(change, torch.full_like(change, 1e-4), rtol=1e-3)  # lr x sign
    finally:
        dist.destroy_process_group()
    # and the engine's command the hook is compared with
    [(_, text)] = [(c, t) for c, t in group_commands("ddp-hook") if t.startswith("signvote")]
    signvote(text)


def test_the_readmes_sign_frame_is_the_protocols():
    from signvote.engine.protocol import HEADER, frame_bytes, mask_bytes

    text = " ".join(README.read_text().split())
    assert f"a frame of `{HEADER} + ceil(d / 8)` bytes: a {HEADER}-byte header" in text
    assert f"d = 922: {HEADER} + {mask_bytes(922)} = {frame_bytes(922)} bytes" in text
    assert "flag byte" not in text
