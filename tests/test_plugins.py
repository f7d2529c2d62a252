"""Plugins: import specs and entry points wherever a name is accepted (issue 16, item 2).

The example package ``examples/plugin`` is put on ``sys.path`` (import specs), or declared
installed by a ``*.dist-info/entry_points.txt`` written from its own ``pyproject.toml``
(the layout ``importlib.metadata`` reads for an installed package), or installed by pip
into a scratch folder (slow). Its rules are checked against loops; the command line's
refusals are one line and exit 2 for every option.
"""

import contextlib
import importlib
import json
import math
import shutil
import statistics
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path

import pytest
import torch
from test_cli import run_cli  # the in-process command with its exit code and output
from torch import nn

from signvote import aggregators, attacks, contracts, models, plugins, rules
from signvote.attacks import AttackContext
from signvote.data import Dataset, DatasetError
from signvote.data import load as load_dataset
from signvote.experiment.config import ConfigError, TrainConfig, resolve
from signvote.registry import Registry, parse_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"
PKG = "signvote_example_plugin"

SCRATCH = '''
"""Scratch plugins of every kind, good and bad (tests/test_plugins.py)."""
import torch
from signvote import rules
from signvote.contracts import PreAggregatorBase
from signvote.data import Dataset

TEXT = "not a plugin"


def scaled_mean(messages, c=1.0):
    return c * messages.mean(dim=0)


def shifted_by_f(messages, f=0):
    return messages.mean(dim=0) + f


def make_text():
    return "no"


def flip(messages, byzantine_mask, ctx, s=1.0):
    out = messages.clone()
    out[byzantine_mask] = -s * messages[byzantine_mask]
    return out


class DropFirst(PreAggregatorBase):
    """Drops the first k rows."""

    def __init__(self, k=1):
        self.k = k

    def __call__(self, messages, f=0):
        return messages[self.k:]

    def output_rows(self, n):
        return n - self.k


@rules.declare(default_lr=0.5, default_momentum=0.25)
def declared_sign(momentum=0.0, scale=1.0):
    return rules.WorkerRule("declared-sign", momentum, sends_signs=True)


def plain_sgd(momentum=0.0):
    return rules.WorkerRule("plain-sgd", momentum, sends_signs=False)


def plain_sign(momentum=0.0):
    return rules.WorkerRule("plain-sign", momentum, sends_signs=True)


def no_momentum():
    return rules.WorkerRule("no-momentum", 0.0, sends_signs=True)


def rule_of_text(momentum=0.0):
    return "no"


def model_of_text(input_shape, n_classes):
    return "no"


def classes(seed, data_dir, n=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = torch.arange(n) % 4
    return x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:]


def targets(seed, data_dir):
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(seed))
    return x[:20], x[:20, 0], x[20:], x[20:, 0]


def integer_features(seed, data_dir):
    return torch.zeros(4, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), \\
        torch.zeros(2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)


def nan_features(seed, data_dir):
    return torch.tensor([[0.0, float("nan")]] * 4), torch.zeros(4, dtype=torch.long), \\
        torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)


def float64_dataset(seed, data_dir):
    x, y = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    return Dataset("mine", x, y, x, y, "classification", 1)


def negative_label(seed, data_dir):
    return torch.zeros(4, 2), torch.tensor([0, 1, -1, 0]), torch.zeros(2, 2), \\
        torch.zeros(2, dtype=torch.long)


def short_targets(seed, data_dir):
    return torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), torch.zeros(2, 2), \\
        torch.zeros(2, dtype=torch.long)


def a_list(seed, data_dir):
    return [1, 2]
'''


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every command runs in the test's folder (a default run folder is made there)."""
    monkeypatch.chdir(tmp_path)


@contextlib.contextmanager
def on_path(*folders: Path):
    """``folders`` on sys.path, every registry reading the entry points there; both undone
    afterwards."""
    sys.path[:0] = [str(f) for f in folders]
    importlib.invalidate_caches()
    plugins.rescan()
    try:
        yield
    finally:
        for folder in folders:
            sys.path.remove(str(folder))
        plugins.rescan()


@pytest.fixture(scope="session")
def scratch_dir(tmp_path_factory) -> tuple[Path, str]:
    """A folder holding the scratch plugin module, and the module's (unique) name."""
    folder = tmp_path_factory.mktemp("plugins")
    name = f"scratch_plugins_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(SCRATCH)
    return folder, name


@pytest.fixture
def scratch(scratch_dir, monkeypatch) -> str:
    """The scratch module's name, importable (its folder on sys.path)."""
    monkeypatch.syspath_prepend(str(scratch_dir[0]))
    return scratch_dir[1]


@pytest.fixture
def example(monkeypatch) -> str:
    """examples/plugin on sys.path (what PYTHONPATH=examples/plugin does); its package name."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return PKG


def entry_points_text() -> str:
    """The entry_points.txt that installing examples/plugin writes, from its pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
                   for group, points in project["entry-points"].items())


def dist_info(folder: Path, name: str, entry_points: str) -> Path:
    """An installed distribution's metadata folder, as pip writes it."""
    info = folder / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return folder


@pytest.fixture
def installed(tmp_path, example):
    """examples/plugin as an installed package: its dist-info on sys.path, every registry
    reading the entry points again (and again after the test)."""
    site = dist_info(tmp_path / "site", "signvote-example-plugin", entry_points_text())
    with on_path(site):
        yield site


def messages_with_ties(gen: torch.Generator, n: int = 7, d: int = 40) -> torch.Tensor:
    """Real messages and ternary ones side by side (ties and zeros)."""
    return torch.cat([torch.randn(n, d, generator=gen),
                      torch.randint(-1, 2, (n, d), generator=gen).float()], dim=1)


def sign(x: float) -> float:
    return float((x > 0) - (x < 0))


# --- the example package's rules, against loops -------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3])
def test_trimmed_vote_is_the_sign_of_the_trimmed_sum(example, gen, k):
    m = messages_with_ties(gen)
    v = aggregators.build(f"{PKG}.aggregators:TrimmedVote(k={k})")(m)
    n = m.shape[0]
    for j in range(m.shape[1]):
        column = sorted(m[:, j].tolist())
        assert v[j].item() == sign(math.fsum(column[k:n - k]))


def test_sign_of_median_is_the_sign_of_the_lower_median(example, gen):
    for n in (5, 6):
        m = messages_with_ties(gen, n=n)
        v = aggregators.build(f"{PKG}.aggregators:sign_of_median")(m)
        assert v.tolist() == [sign(statistics.median_low(m[:, j].tolist()))
                              for j in range(m.shape[1])]


def test_mean_inversion_replaces_only_the_byzantine_rows(example, gen):
    m = torch.randn(6, 5, generator=gen)
    mask = torch.tensor([False, True, False, False, True, False])
    attack = attacks.build(f"{PKG}.attacks:MeanInversion(s=2.5)")
    ctx = AttackContext(step=0, generator=gen, sign_messages=False)
    before = m.clone()
    out = attack(m, mask, ctx)
    honest = [i for i in range(6) if not mask[i]]
    for i in range(6):
        for j in range(5):
            expected = (-2.5 * sum(m[h, j].item() for h in honest) / len(honest)
                        if mask[i] else m[i, j].item())
            assert out[i, j].item() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(m, before)
    assert attack.capabilities.knowledge == "omniscient"


def test_tiny_mlp_has_the_parameters_of_its_formula(example):
    net = models.build(f"{PKG}.models:tiny_mlp(hidden=7)", (2, 3, 4), 5)
    assert sum(p.numel() for p in net.parameters()) == (24 + 1) * 7 + (7 + 1) * 5
    assert models.info(f"{PKG}.models:tiny_mlp").independent_samples  # declared
    assert net(torch.zeros(3, 2, 3, 4)).shape == (3, 5)


def test_blobs_is_a_classification_of_its_classes(example):
    data = load_dataset(f"{PKG}.datasets:blobs(n=200, classes=4, features=3)", seed=5)
    assert (data.task, data.n_classes, data.input_shape) == ("classification", 4, (3,))
    assert data.train_x.shape[0] + data.test_x.shape[0] == 200
    assert data.name == f"{PKG}.datasets:blobs(n=200, classes=4, features=3)"


# --- kinds: what an attribute is, and what it becomes ---------------------------------


def test_a_plain_function_is_an_aggregator_with_the_conservative_capabilities(scratch, gen):
    m = torch.randn(5, 4, generator=gen)
    agg = aggregators.build(f"{scratch}:scaled_mean(c=3)")
    assert isinstance(agg, contracts.FunctionAggregator)
    assert agg.capabilities == contracts.AggregatorCapabilities()
    assert torch.allclose(agg(m), 3 * m.mean(dim=0))


def test_a_function_that_takes_f_gets_the_runs_f(scratch, gen):
    m = torch.randn(5, 4, generator=gen)
    assert torch.allclose(aggregators.build(f"{scratch}:shifted_by_f", f=2)(m),
                          m.mean(dim=0) + 2)
    assert torch.allclose(aggregators.build(f"{scratch}:shifted_by_f(f=1)", f=2)(m),
                          m.mean(dim=0) + 1)


def test_a_chain_with_plugin_stages_is_the_stages_in_turn(scratch, example, gen):
    m = torch.randn(7, 6, generator=gen)
    chain = aggregators.build(f"{scratch}:DropFirst(k=2)+{PKG}.aggregators:TrimmedVote(k=1)")
    assert torch.equal(chain(m), aggregators.build(f"{PKG}.aggregators:TrimmedVote(k=1)")(m[2:]))
    nnm = aggregators.build(f"nnm+{scratch}:scaled_mean(c=2)", f=1)
    assert torch.allclose(nnm(m), 2 * aggregators.get_pre("nnm")(m, 1).mean(dim=0))


def test_a_plain_function_is_an_attack_that_reads_every_row(scratch, gen):
    m = torch.randn(4, 3, generator=gen)
    mask = torch.tensor([True, False, False, True])
    attack = attacks.build(f"{scratch}:flip(s=2)")
    assert attack.capabilities == contracts.AttackCapabilities(knowledge="omniscient")
    out = attack(m, mask, AttackContext(step=0, generator=gen, sign_messages=False))
    assert torch.equal(out[mask], -2 * m[mask]) and torch.equal(out[~mask], m[~mask])


def test_plugin_rules_take_their_declared_defaults_or_the_conservative_ones(scratch):
    c = resolve(TrainConfig(rule=f"{scratch}:declared_sign(scale=2)", epochs=1))
    assert (c.lr, c.momentum, c.aggregator) == (0.5, 0.25, "majority-vote")
    assert rules.get(c.rule, c.momentum).name == "declared-sign"
    c = resolve(TrainConfig(rule=f"{scratch}:plain_sgd", epochs=1))
    assert (c.lr, c.momentum, c.aggregator) == (1e-3, 0.0, "mean")
    assert resolve(TrainConfig(rule=f"{scratch}:plain_sign")).lr == 1e-4


def test_a_plugin_dataset_is_classification_or_regression_by_its_targets(scratch):
    data = load_dataset(f"{scratch}:classes(n=16)", seed=1)
    assert (data.task, data.n_classes, data.train_x.dtype) == ("classification", 4,
                                                               torch.float32)
    data = load_dataset(f"{scratch}:targets", seed=1)
    assert (data.task, data.n_classes) == ("regression", 1)


@pytest.mark.parametrize(("attribute", "message"), [
    ("nan_features", "train_x: 4 values are NaN or infinite (the first at [0, 1])"),
    ("float64_dataset", "train_x is torch.float64; valid: float32"),
    ("negative_label", "train_y: label -1 is negative; valid: class labels 0, 1, ..."),
    ("short_targets", "train_x has 4 samples, train_y 3 targets; valid: one target per"),
    ("a_list", "its function returned a list; valid: a signvote.data.Dataset or four"),
    ("TEXT", "is not a dataset (a str; valid: a function (seed, data_dir, ...)"),
])
def test_a_plugin_dataset_that_is_no_dataset_is_refused(scratch, attribute, message):
    with pytest.raises(DatasetError, match=None) as info:
        load_dataset(f"{scratch}:{attribute}", seed=1)
    assert f"dataset {scratch}:{attribute}: " in str(info.value)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_plugin_datasets_tensors_follow_the_apis_rule(scratch):
    # one rule for tensors given to signvote.train and returned by a plugin dataset
    from signvote.api import dataset

    loaded = load_dataset(f"{scratch}:integer_features", seed=1)
    module = __import__(scratch)
    expected = dataset(*module.integer_features(1, None), name=f"{scratch}:integer_features")
    assert (loaded.name, loaded.task, loaded.n_classes) == (expected.name, "classification", 1)
    for got, want in ((loaded.train_x, expected.train_x), (loaded.train_y, expected.train_y),
                      (loaded.test_x, expected.test_x), (loaded.test_y, expected.test_y)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert loaded.train_x.dtype == torch.float32


def test_an_aggregator_object_is_used_as_it_is(scratch, monkeypatch, gen):
    module = __import__(scratch)
    vote = aggregators.get("majority-vote")
    monkeypatch.setattr(module, "VOTE", vote, raising=False)
    assert aggregators.build(f"{scratch}:VOTE") is vote
    with pytest.raises(ValueError, match="takes no parameter k; valid: none"):
        aggregators.build(f"{scratch}:VOTE(k=1)")


# --- grammar -----------------------------------------------------------------------------


def test_parse_spec_reads_import_specs_as_stages():
    assert parse_spec("nnm+pkg.mod:Agg(k=2)+a.b.c:D.e", "aggregator") == [
        ("nnm", {}), ("pkg.mod:Agg", {"k": 2}), ("a.b.c:D.e", {})]


@pytest.mark.parametrize("spec", ["./x.py:f", "/tmp/x.py:f", "x.py:f(k=1)", ".rel:f",
                                  "..up.mod:f", "a\\b:f"])
def test_a_path_is_never_an_import_spec(spec):
    with pytest.raises(ValueError, match="names a file or a relative module, not a module"):
        parse_spec(spec, "aggregator")


@pytest.mark.parametrize("spec", ["a:b:c", "a:", ":b", "a-b.c:d", "a.b:c-d", "1a:b"])
def test_malformed_import_specs_are_refused(spec):
    with pytest.raises(ValueError, match=r"is not an import spec; valid: package\.module:"):
        parse_spec(spec, "aggregator")


# --- entry points --------------------------------------------------------------------------


def test_entry_points_are_names_of_their_registries(installed):
    assert {"trimmed-vote", "sign-of-median"} <= set(aggregators.names())
    assert "mean-inversion" in attacks.names()
    assert "tiny-mlp" in models.names()
    assert plugins.dataset_names() == ["blobs"]
    assert resolve(TrainConfig(dataset="blobs(n=100)", model="tiny-mlp")).dataset == \
        "blobs(n=100)"


def test_help_lists_the_entry_points_beside_the_built_in_names(installed, capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for name in ("trimmed-vote", "sign-of-median", "mean-inversion", "tiny-mlp", "blobs"):
        assert name in flat
    assert "import spec package.module:attribute, which imports that module" in flat


def test_help_loads_no_entry_point(tmp_path, capsys):
    """Listing names reads metadata only: a broken entry point is listed, not imported;
    used, it is one line naming the entry point, its distribution and why."""
    site = dist_info(tmp_path / "site", "broken-plugin", "[signvote.aggregators]\n"
                     "broken = no_such_module_h5:Agg\n")
    with on_path(site):
        code, out, _ = run_cli(["train", "--help"], capsys)
        assert code == 0 and "broken" in out
        assert refusal(capsys, ["train", "--aggregator", "broken"]) == (
            "signvote train: error: --aggregator broken: entry point broken = "
            "no_such_module_h5:Agg of distribution broken-plugin (group "
            "signvote.aggregators) cannot be loaded (No module named 'no_such_module_h5')")


def test_a_name_two_distributions_declare_is_refused_when_used(tmp_path):
    for dist in ("first-plugin", "second-plugin"):
        dist_info(tmp_path / dist, dist, "[signvote.attacks]\ntwice = x.y:Z\n")
    with on_path(tmp_path / "first-plugin", tmp_path / "second-plugin"):
        assert "twice" in attacks.names()
        with pytest.raises(ValueError, match=r"attack 'twice' is an entry point of 2 "
                                             r"distributions \(first-plugin, second-plugin\)"):
            attacks.build("twice")


def test_a_built_in_name_shadows_an_entry_point(tmp_path):
    site = dist_info(tmp_path / "site", "shadow-plugin", "[signvote.aggregators]\n"
                     "krum = x.y:Z\nother = x.y:Z\n")
    with on_path(site):
        registry = Registry("aggregator")
        registry.register("krum")(lambda: "built-in")
        assert registry.names() == ["krum", "other"] and registry.get("krum") == "built-in"


def test_train_with_entry_point_names(installed, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--dataset", "blobs(n=300)", "--model", "tiny-mlp(hidden=8)",
         "--aggregator", "trimmed-vote(k=1)", "--attack", "mean-inversion(s=2)",
         "--workers", "5", "--byzantine", "1", "--epochs", "1", "--lr", "0.01",
         "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (config["aggregator"], config["attack"], config["model"]) == (
        "trimmed-vote(k=1)", "mean-inversion(s=2)", "tiny-mlp(hidden=8)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["params"] == (8 + 1) * 8 + 9 * 3


# --- the command line with import specs ----------------------------------------------------


def train_args(out: Path, **options: str) -> list[str]:
    args = ["train", "--dataset", "digits", "--workers", "5", "--epochs", "1",
            "--out", str(out), "--quiet"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_train_with_import_specs_writes_the_run_folder(example, tmp_path, capsys):
    out = tmp_path / "run"
    specs = {"aggregator": f"{PKG}.aggregators:TrimmedVote(k=1)",
             "attack": f"{PKG}.attacks:MeanInversion(s=2)",
             "model": f"{PKG}.models:tiny_mlp(hidden=16)"}
    code, stdout, err = run_cli(train_args(out, byzantine="1", **specs), capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in specs} == specs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] == (64 + 1) * 16 + 17 * 10
    assert summary["byzantine_workers"] and (out / "metrics.csv").is_file()
    assert f"| {specs['aggregator']} |" in stdout


def test_the_first_import_of_a_plugin_module_is_said_once(tmp_path, monkeypatch, capsys):
    name = f"noticed_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def mean(messages):\n    return messages.mean(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli(train_args(tmp_path / "run", rule="sgd",
                                      aggregator=f"{name}:mean"), capsys)
    assert code == 0, err
    assert err.splitlines() == [f"signvote: importing plugin module {name} (named by "
                                f"--aggregator)"]
    code, _, err = run_cli(train_args(tmp_path / "run2", rule="sgd",
                                      aggregator=f"{name}:mean"), capsys)
    assert code == 0 and err == ""  # imported already: nothing runs, nothing said


def test_the_library_says_nothing(tmp_path, monkeypatch, capsys):
    name = f"silent_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def mean(messages):\n    return messages.mean(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    aggregators.build(f"{name}:mean")
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow
@pytest.mark.dist
def test_sweep_over_import_specs(example, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(f"""
        dataset = "digits"
        model = "{PKG}.models:tiny_mlp(hidden=8)"
        workers = 5
        byzantine = 1
        epochs = 1
        attack = "{PKG}.attacks:MeanInversion(s=2)"
        aggregator = ["{PKG}.aggregators:TrimmedVote(k=1)",
                      "nnm+{PKG}.aggregators:sign_of_median"]
    """))
    code, stdout, err = run_cli(["sweep", str(grid), "--out", str(tmp_path / "sweep"),
                                 "--jobs", "2", "--quiet"], capsys)
    assert code == 0, err
    assert stdout.startswith("2 runs: 2 run now")
    done = sorted((tmp_path / "sweep" / "runs").glob("*/summary.json"))
    assert len(done) == 2
    seen = {json.loads((p.parent / "config.json").read_text())["aggregator"] for p in done}
    assert seen == {f"{PKG}.aggregators:TrimmedVote(k=1)",
                    f"nnm+{PKG}.aggregators:sign_of_median"}
    table = (tmp_path / "sweep" / "results.csv").read_text()
    assert f"{PKG}.aggregators:TrimmedVote(k=1)" in table


@pytest.mark.slow
@pytest.mark.dist
def test_pip_installs_the_example_and_its_names_work(tmp_path, run_bounded):
    """pip (offline, no build isolation: the environment's setuptools) installs a copy of
    examples/plugin into a folder; a signvote process with it on PYTHONPATH lists its entry
    points in --help and trains with them."""
    source = tmp_path / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                    "__pycache__"))
    target = tmp_path / "site"
    pip = run_bounded([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                       "--no-build-isolation", "--no-index", "--target", str(target),
                       str(source)], limit_s=300)
    assert pip.returncode == 0, pip.stderr
    assert "trimmed-vote" in next(target.glob("*.dist-info")).joinpath(
        "entry_points.txt").read_text()
    env = {"PYTHONPATH": str(target)}
    shown = run_bounded([sys.executable, "-m", "signvote", "train", "--help"], env=env)
    assert shown.returncode == 0 and "trimmed-vote" in shown.stdout
    run = run_bounded([sys.executable, "-m", "signvote", "train", "--dataset", "blobs",
                       "--model", "tiny-mlp", "--aggregator", "trimmed-vote(k=1)",
                       "--attack", "mean-inversion", "--workers", "5", "--byzantine", "1",
                       "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"],
                      env=env, limit_s=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
    assert "importing plugin module signvote_example_plugin.aggregators (entry point " \
           "trimmed-vote of signvote-example-plugin)" in run.stderr


# --- bad specs: one line, exit 2, for every option ---------------------------------------


OPTIONS = ("aggregator", "attack", "rule", "model", "dataset")
ARTICLE = {"aggregator": "an", "attack": "an"}


def refusal(capsys, args: list[str]) -> str:
    """The one error line of a refused command line (notices of imports aside)."""
    code, stdout, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("signvote: importing")]
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("signvote train: error: ")
    return lines[0]


def bad_args(option: str, spec: str) -> list[str]:
    args = ["train", f"--{option}", spec, "--epochs", "1"]
    return args + (["--model", "logregnet"] if option == "dataset" else [])


@pytest.mark.parametrize("option", OPTIONS)
def test_a_missing_module_is_one_line(option, capsys):
    line = refusal(capsys, bad_args(option, "no_such_pkg_h5.mod:Thing"))
    assert line == (f"signvote train: error: --{option} no_such_pkg_h5.mod:Thing: module "
                    f"no_such_pkg_h5.mod is not importable (No module named 'no_such_pkg_h5')")


@pytest.mark.parametrize("option", OPTIONS)
def test_a_missing_attribute_is_one_line(option, scratch, capsys):
    line = refusal(capsys, bad_args(option, f"{scratch}:Nope"))
    assert line.endswith(f"--{option} {scratch}:Nope: module {scratch} has no attribute Nope")


@pytest.mark.parametrize("option", OPTIONS)
def test_an_attribute_of_the_wrong_kind_is_one_line(option, scratch, capsys):
    line = refusal(capsys, bad_args(option, f"{scratch}:TEXT"))
    assert f"{scratch}:TEXT is not {ARTICLE.get(option, 'a')} {option} (a str; valid: " in line


@pytest.mark.parametrize(("option", "spec", "message"), [
    ("aggregator", "make_text", "is not an aggregator (a function that takes no messages "
                                "first, never called as a factory"),
    ("attack", "make_text", "is not an attack (a function that takes no messages first, "
                            "never called as a factory"),
    ("aggregator", "DropFirst", "is not an aggregator (it returned a pre-aggregator"),
    ("rule", "rule_of_text", "is not a rule (it returned a str; valid:"),
    ("rule", "no_momentum", "is not a rule (it takes no momentum parameter; valid:"),
    ("model", "model_of_text", "its factory returned a str, expected a torch.nn.Module"),
    ("dataset", "a_list", "its function returned a list; valid: a signvote.data.Dataset"),
])
def test_what_a_call_returns_decides_its_kind(option, spec, message, scratch, capsys):
    assert message in refusal(capsys, bad_args(option, f"{scratch}:{spec}"))


@pytest.mark.parametrize(("option", "spec", "message"), [
    ("aggregator", f"{PKG}.aggregators:TrimmedVote(z=1)", "takes no parameter z; valid: k"),
    ("attack", f"{PKG}.attacks:MeanInversion(q=1)", "takes no parameter q; valid: s"),
    ("model", f"{PKG}.models:tiny_mlp(q=1)", "takes no parameter q; valid: hidden"),
    ("dataset", f"{PKG}.datasets:blobs(q=1)", "takes no parameter q; valid: n, classes, "
                                             "features"),
    ("rule", "SCRATCH:declared_sign(q=1)", "takes no parameter q; valid: momentum, scale"),
    ("rule", "SCRATCH:declared_sign(momentum=0.5)", "momentum is set by --momentum"),
])
def test_an_unknown_parameter_names_the_valid_ones(option, spec, message, example, scratch,
                                                   capsys):
    assert message in refusal(capsys, bad_args(option, spec.replace("SCRATCH", scratch)))


@pytest.mark.parametrize("option", OPTIONS)
def test_a_path_instead_of_a_module_is_one_line(option, capsys):
    line = refusal(capsys, bad_args(option, "./x.py:f"))
    assert "'./x.py:f' names a file or a relative module, not a module; valid: " \
           "package.module:attribute" in line


@pytest.mark.parametrize(("spec", "message"), [
    ("nnm+no_such_pkg_h5.mod:Agg", "--aggregator nnm+no_such_pkg_h5.mod:Agg: module "
                                   "no_such_pkg_h5.mod is not importable"),
    ("nnm+SCRATCH:TEXT", "SCRATCH:TEXT is not an aggregator (a str"),
    ("SCRATCH:scaled_mean+krum", "SCRATCH:scaled_mean is not a pre-aggregator"),
    ("nnm+./x.py:f", "'./x.py:f' names a file or a relative module"),
])
def test_a_chain_with_a_bad_import_spec_stage_is_one_line(spec, message, scratch, capsys):
    line = refusal(capsys, bad_args("aggregator", spec.replace("SCRATCH", scratch)))
    assert message.replace("SCRATCH", scratch) in line


def test_a_module_whose_code_raises_is_not_importable(tmp_path, monkeypatch, capsys):
    name = f"raises_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('boom\\non two lines')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = refusal(capsys, bad_args("attack", f"{name}:x"))
    assert line.endswith(f"module {name} is not importable (RuntimeError: boom on two lines)")


def test_a_plugin_dataset_needs_a_model(scratch, capsys):
    line = refusal(capsys, ["train", "--dataset", f"{scratch}:classes"])
    assert line.startswith(f"signvote train: error: --dataset {scratch}:classes needs "
                           f"--model (a plugin dataset has no default model); valid: ")


def test_a_regression_plugin_refuses_a_label_partition(scratch, tmp_path, capsys):
    line = refusal(capsys, ["train", "--dataset", f"{scratch}:targets", "--model",
                            "linregnet", "--partition", "dirichlet", "--workers", "2",
                            "--out", str(tmp_path / "run")])
    assert line.endswith(f"--partition dirichlet needs class labels; --dataset "
                         f"{scratch}:targets is a regression; valid: --partition iid")


def test_an_unknown_dataset_with_parameters_lists_the_known(capsys):
    line = refusal(capsys, ["train", "--dataset", "imagenet(x=1)"])
    assert "unknown dataset 'imagenet'; valid: linreg, logreg" in line


def test_config_errors_are_config_errors(scratch):
    with pytest.raises(ConfigError, match=f"--rule {scratch}:Nope: module"):
        resolve(TrainConfig(rule=f"{scratch}:Nope"))


def test_a_model_module_is_not_a_model_instance(scratch, monkeypatch):
    """A ready nn.Module named by a spec is not a factory: refused in one line."""
    module = __import__(scratch)
    monkeypatch.setattr(module, "NET", nn.Linear(2, 2), raising=False)
    with pytest.raises(ValueError, match=r"is not a model \(a torch\.nn\.Module object, not "
                                         r"a factory of one; valid: a class or function"):
        models.build(f"{scratch}:NET", (2,), 2)


def test_an_object_declaring_aggregator_capabilities_must_follow_the_protocol(scratch,
                                                                            monkeypatch):
    class Half:  # returns signs, it says, but is no Aggregator (no init_state, apply, ...)
        capabilities = contracts.AggregatorCapabilities(returns_signs=True)
        f = 0

        def __call__(self, messages):
            return messages.sign().sum(dim=0).sign()

    module = __import__(scratch)
    monkeypatch.setattr(module, "HALF", Half(), raising=False)
    with pytest.raises(ValueError, match=rf"{scratch}:HALF is not an aggregator \(it is a "
                                         rf"Half that declares aggregator capabilities but "
                                         rf"lacks init_state, apply, run, min_workers, check"):
        aggregators.build(f"{scratch}:HALF")


def test_a_function_with_defaults_alone_is_never_called_with_a_specs_parameters(
        scratch, monkeypatch, tmp_path):
    """Any installed package's function whose parameters all have defaults would run with
    the parameters a sweep file someone sent names: such a function is never called."""
    marker = tmp_path / "ran"
    module = __import__(scratch)
    monkeypatch.setattr(module, "touch", lambda path=str(marker): marker.write_text("x"),
                        raising=False)
    for build in (aggregators.build, attacks.build):
        with pytest.raises(ValueError, match="never called as a factory"):
            build(f"{scratch}:touch(path={marker})")
    assert not marker.exists()


def test_as_dataset_keeps_a_dataset(scratch):
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 1])
    given = Dataset("mine", x, y, x, y, "classification", 2)
    assert plugins.as_dataset(given, "spec") == Dataset("spec", x, y, x, y,
                                                         "classification", 2)

