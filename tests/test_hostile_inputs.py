"""Generated hostile input (issue 15): every input either runs or is refused in one line.

The contract under test, for every entry point a user can feed:

- ``signvote train`` options, ``--config FILE``, ``signvote sweep FILE [--set KEY=VALUE]
  --dry-run``, ``signvote results DIR`` and ``signvote plot DIR``: exit 0, or exit 2 with
  exactly one line on stderr; never a traceback; a refused command writes nothing (its
  ``--out`` does not exist afterwards, a sweep folder is unchanged);
- the library below them: :func:`signvote.experiment.config.resolve` returns a config or
  raises ``ConfigError``, the spec builders return an object or raise ``ValueError``, the
  IDX readers return an array/dataset or raise ``DatasetError``, always with one line;
- nothing silently wrong: an accepted aggregator spec aggregates finite messages to a
  finite vector, an accepted attack runs, a damaged run folder is never read as finished.

Training is stubbed in the bulk of the command-line examples (:func:`one_step`): the
stub builds the run exactly as ``train`` does (``engine.run.prepare``: data, model,
partition, rule, aggregator, adversaries) and takes one real step, so every check of the
input runs, then stops with :class:`Accepted` before any epoch or file. A handful of real
runs are kept (``slow``).

Every failure found is pinned below as an explicit example marked
``xfail(strict=True, reason="issue 15: ...")``: when a fix lands the example passes, the
strict marker turns that into a failure, and the marker must be removed.

All generation is derandomized and database-free (:data:`HOSTILE`), so CI reruns the
same examples.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gzip
import io
import json
import math
import shutil
import tempfile
import tomllib
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signvote import aggregators, attacks, contracts
from signvote.cli import main
from signvote.data import DatasetError
from signvote.data.idx import IDX_TYPES, SPLIT_FILES, IDXError, encode_idx, parse_idx
from signvote.experiment.config import (
    FIELDS,
    ConfigError,
    TrainConfig,
    base_type,
    choices_of,
    resolve,
)

HOSTILE = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])
"""Reproducible generation: the same examples on every run, no example database."""


def hostile(max_examples: int) -> settings:
    return settings(HOSTILE, max_examples=max_examples)


def issue15(what: str):
    """A known failure of issue 15, pinned until its fix lands (then make it
    :func:`fixed15`)."""
    return pytest.mark.xfail(strict=True, reason=f"issue 15: {what}")


def fixed15(what: str):
    """A failure of issue 15 that this suite pinned and whose fix has landed: now a plain
    regression test; ``what`` says what used to happen."""
    return pytest.mark.skipif(False, reason=f"issue 15, fixed: {what}")  # never skips


# --- running the command in-process --------------------------------------------------------


class Accepted(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the stubbed training after its one step: the input was accepted."""


TRACEBACK = "traceback"


def cli(argv: Sequence[str]) -> tuple[int | str, str, str]:
    """``signvote ARGV`` in this process: (exit code, stdout, stderr). An exception that
    escapes ``main`` (what a user sees as a traceback) gives the code ``"traceback"`` and
    its formatted traceback as stderr; :class:`Accepted` (the stub) gives 0."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Accepted:
            code = 0
        except Exception:  # exactly what the contract forbids
            code = TRACEBACK
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


def check_outcome(code: int | str, stderr: str, what: Any) -> None:
    """Exit 0, or exit 2 with one line on stderr; never a traceback."""
    what = repr(what)[:300]
    assert code != TRACEBACK and "Traceback" not in stderr, f"{what}: traceback\n{stderr}"
    assert code in (0, 2), f"{what}: exit {code}\n{stderr}"
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"{what}: {len(lines)} lines on stderr\n{stderr}"


def one_line(exc: BaseException, what: Any) -> None:
    text = str(exc)
    assert text.strip() and "\n" not in text.strip(), f"{what}: message {text!r}"


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes (None when ``folder`` does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def one_step(config: TrainConfig, progress: bool = True, write: bool = True):
    """The stub of ``engine.sim.train``: build the run as ``train`` does and take one step
    (every check of the input, the attack and the aggregator on real rows), then stop."""
    from signvote.engine.run import learning_rate, prepare, run_rng
    from signvote.engine.sim import data_path

    setup = prepare(config)
    path = data_path(setup)
    inputs, targets = setup.walk(0)
    b = setup.config.batch_size
    with run_rng(setup.rng_state):
        path.step(setup.x, path.initial_state(), inputs[:, :b], targets[:, :b],
                  learning_rate(setup.config, 0), 0)
    raise Accepted


def prepare_only(config: TrainConfig, argv: Sequence[str] = ()):
    """The stub of ``engine.dist.launch``: the run built, no process started."""
    from signvote.engine.run import prepare

    prepare(config, engine="dist")
    raise Accepted


@pytest.fixture
def stub_training(monkeypatch):
    """``signvote train`` builds its run and takes one step, and never trains or writes."""
    import signvote.engine.dist
    import signvote.engine.sim

    monkeypatch.setattr(signvote.engine.sim, "train", one_step)
    monkeypatch.setattr(signvote.engine.dist, "launch", prepare_only)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per generated example (pytest's tmp_path is one per test)."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        yield Path(folder)


# --- generated values -------------------------------------------------------------------

HUGE_INTS = (2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**63 - 1,
             10**23, -10**23, 10**400)
INT_TEXTS = ("", " ", "1.5", "1e3", "0x10", "3_0", "+4", "-0", "٣", " 7 ", "nan", "inf",
             "1,000", "½", "one")
FLOAT_TEXTS = ("nan", "-nan", "NaN", "inf", "-inf", "Infinity", "-0.0", "0", "1e309",
               "-1e309", "1e-320", "5e-324", "1_0.5", "0x1p-3", "", "∞", " 1e-4 ", "1,5", "--1",
               "1e", ".", "0.1f")
WEIRD_TEXTS = ("", " ", "\t", "KRUM", "Signum", "SIGNUM ", "signum\n", "sígnum", "😀",
               "a" * 300, "..", "/", "-b", "--", "none", "null", "0", "\u200b", "logreg ",
               "m\u0301")


def ints() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 12), st.sampled_from(HUGE_INTS))


def floats() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from((0.0, -0.0, 1e-300, 5e-324, 1e308, 0.5, 0.999999, 1.0)))


def int_text() -> st.SearchStrategy[str]:
    return st.one_of(ints().map(str), st.sampled_from(INT_TEXTS))


def float_text() -> st.SearchStrategy[str]:
    return st.one_of(floats().map(repr), st.sampled_from(FLOAT_TEXTS))


DATASET_VALUES = ("logreg", "linreg", "digits", "mnist", "idx")
"""The datasets generated for a run: fashion-mnist is left out, Debian's copy of it
loads 60,000 images (seconds an example)."""


def name_variants(names: Sequence[str]) -> st.SearchStrategy[str]:
    """A registered name as is, in other cases, mistyped or cut."""
    return st.sampled_from(list(names)) | st.sampled_from(sorted({
        v for n in names for v in (n.upper(), n.title(), n + "x", n[:-1],
                                   n.replace("-", "_"), f" {n} ")}))


def choice_text(name: str) -> st.SearchStrategy[str]:
    choices = [c for c in choices_of(name) if name != "dataset" or c in DATASET_VALUES]
    return st.one_of(name_variants(choices), st.sampled_from(WEIRD_TEXTS))


def _param_names(registry) -> list[str]:
    import inspect

    return sorted({p for n in registry.names()
                   for p in inspect.signature(registry.factory(n)).parameters})


SPEC_VALUES = ("0", "1", "2", "3", "-1", "-0.5", "0.5", "1.5", "nan", "-nan", "inf", "-inf",
               "1e309", "1e-300", "true", "false", "none", "None", "abc", "std", "mean",
               str(2**63), str(10**30), "1e3", "(", ")", "=", "'x'", '"1"', " 2 ", "0x2")
SPEC_JUNK = ("", " ", "+", "++", "krum+", "+krum", "krum(", "krum)", "krum((f=1))",
             "krum(f=1)(f=2)", "krum(f)", "krum(=1)", "krum(f=)", "krum(,)", "krum(f=1,)",
             "krum()", "krum ( f = 1 )", "krum(f=1;neighbours=2)", "nnm+", "nnm", "nnm+nnm",
             "krum+median", "bucketing(s=2)+bucketing(s=2)+mean", "(krum)", "KRUM",
             "Krum(F=1)", "krum(f=2,f=3)", "gaussian(std=-1)", "alie(z=nan)", "mean()",
             "a" * 200, "krum(f=1e309)", "😀", "krum(f=😀)", "median(f=1)\n")


def spec_text(registries: Sequence, max_stages: int) -> st.SearchStrategy[str]:
    """Spec strings: well-formed stages of registered (or near-registered) names with
    parameters from every factory's signature (and unknown ones), hostile values; and
    malformed text."""
    names = [n for r in registries for n in r.names()]
    keys = [k for r in registries for k in _param_names(r)] + ["zz", "F", "_x", "1x", ""]
    params = st.lists(st.tuples(st.sampled_from(keys), st.sampled_from(SPEC_VALUES)),
                      max_size=3)
    stage = st.tuples(name_variants(names), params, st.booleans()).map(
        lambda t: t[0] + (f"({','.join(f'{k}={v}' for k, v in t[1])})"
                          if t[1] or t[2] else ""))
    return st.one_of(
        st.lists(stage, min_size=1, max_size=max_stages).map("+".join),
        st.sampled_from(SPEC_JUNK),
        st.text(alphabet="kmrueadinf(),=+ .-_12KRM", max_size=24),
    )


AGGREGATOR_SPECS = spec_text([aggregators.REGISTRY, aggregators.PRE_REGISTRY], 3)
ATTACK_SPECS = spec_text([attacks.REGISTRY], 1)


def option_text(name: str) -> st.SearchStrategy[str]:
    """Command-line text for field ``name``."""
    if name == "aggregator":
        return AGGREGATOR_SPECS
    if name == "attack":
        return ATTACK_SPECS
    kind = base_type(name)
    if choices_of(name):
        return choice_text(name)
    if kind is int:
        return int_text()
    if kind is float:
        return float_text()
    return st.sampled_from(WEIRD_TEXTS)


NOT_GENERATED = ("out", "data_dir", "tensorboard", "epochs")
"""Options the train examples hold fixed: ``--out`` is the example's folder (so that
"nothing written" can be checked), ``--data-dir`` a folder of its own, ``--tensorboard``
a package, ``--epochs`` 1 (the stub takes one step whatever it is)."""

TRAIN_OPTIONS = [n for n in FIELDS if n not in NOT_GENERATED and base_type(n) is not bool]
OPTION_TEXT = {name: option_text(name) for name in TRAIN_OPTIONS}


def plausible_spec(registries: Sequence, max_stages: int) -> st.SearchStrategy[str]:
    """Well-formed specs of registered names with parameters of their own signature and
    ordinary values (most of them run)."""
    import inspect

    def stage(registry) -> st.SearchStrategy[str]:
        def of(name: str) -> st.SearchStrategy[str]:
            keys = [k for k in inspect.signature(registry.factory(name)).parameters
                    if k != "f"]
            values = st.sampled_from(["0", "1", "2", "0.5", "1.5", "3", "10"])
            return st.lists(st.tuples(st.sampled_from(keys), values), max_size=1,
                            unique_by=lambda t: t[0]).map(
                lambda ps: name + (f"({','.join(f'{k}={v}' for k, v in ps)})" if ps
                                   else "")) if keys else st.just(name)
        return st.one_of([of(n) for n in registry.names()])

    last = stage(registries[0])
    if len(registries) == 1:
        return last
    pres = st.lists(stage(registries[1]), max_size=max_stages - 1)
    return st.tuples(pres, last).map(lambda t: "+".join([*t[0], t[1]]))


def plausible_text(name: str) -> st.SearchStrategy[str]:
    """Command-line text for field ``name`` that is usually valid."""
    if name == "aggregator":
        return plausible_spec([aggregators.REGISTRY, aggregators.PRE_REGISTRY], 2)
    if name == "attack":
        return plausible_spec([attacks.REGISTRY], 1)
    if choices_of(name):
        return st.sampled_from([c for c in choices_of(name)
                                if name != "dataset" or c in DATASET_VALUES])
    kind = base_type(name)
    if kind is int:
        return (st.integers(0, 2**32 - 1) if name == "seed" else
                st.integers(0, 4) if name in ("byzantine", "blind", "aggregator_f") else
                st.integers(1, 12)).map(str)
    return st.floats(0.01, 0.99).map(lambda v: f"{v:.3g}")


PLAUSIBLE_TEXT = {name: plausible_text(name) for name in TRAIN_OPTIONS}


@st.composite
def train_argv(draw) -> list[str]:
    """``train`` options: up to four fields with usually valid text and at most one with
    hostile text (so that both the refusals and the runs are reached, and a refusal has
    one cause)."""
    names = draw(st.lists(st.sampled_from(TRAIN_OPTIONS), max_size=4, unique=True))
    argv = []
    for name in names:
        argv += [f"--{name.replace('_', '-')}", draw(PLAUSIBLE_TEXT[name])]
    if draw(st.integers(0, 2)):
        name = draw(st.sampled_from(TRAIN_OPTIONS))
        argv += [f"--{name.replace('_', '-')}", draw(OPTION_TEXT[name])]
    if draw(st.integers(0, 3)) == 0:
        argv.append("--measure-theory")
    return argv


# --- resolve() --------------------------------------------------------------------------


def typed_value(name: str) -> st.SearchStrategy[Any]:
    """A Python value for field ``name``: of its type (hostile ones too), or of another."""
    kind = base_type(name)
    own = {int: ints(), float: floats(), bool: st.booleans(),
           str: (AGGREGATOR_SPECS if name == "aggregator" else ATTACK_SPECS
                 if name == "attack" else choice_text(name) if choices_of(name)
                 else st.sampled_from(WEIRD_TEXTS))}[kind]
    other = st.one_of(
        st.none(), st.booleans(), st.integers(-2, 3),
        st.floats(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.dictionaries(
        st.text(max_size=2), st.integers(), max_size=1), st.just(b"\xff"),
        st.just(datetime.date(2020, 1, 1)))
    return st.one_of(own, own, own, other)


TYPED_VALUE = {name: typed_value(name) for name in FIELDS}


@st.composite
def config_values(draw) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from([n for n in FIELDS if n != "tensorboard"]),
                          max_size=6, unique=True))
    return {name: draw(TYPED_VALUE[name]) for name in names}


@hostile(200)
@given(values=config_values())
def test_resolve_returns_a_config_or_one_configerror_line(values):
    try:
        c = resolve(TrainConfig(**values))
    except ConfigError as exc:
        one_line(exc, values)
        return
    for name in FIELDS:  # what resolve accepts has its field's type ...
        value = getattr(c, name)
        assert value is None or type(value) is base_type(name), (name, value)
    assert resolve(c) == c  # ... and is a fixed point


@pytest.mark.parametrize("seed", [
    pytest.param(-1, marks=fixed15("a negative seed is accepted and aliases another "
                                   "(-1 runs as 2^63 - 1)")),
    pytest.param(2**64 - 1, marks=fixed15("seed 2^64 - 1 is accepted by resolve, then "
                                          "refused with a message about the partition")),
    pytest.param(10**23, marks=fixed15("seed 10^23 is accepted by resolve, then torch's "
                                       "manual_seed overflows")),
])
def test_resolve_refuses_seeds_outside_the_valid_range(seed):
    with pytest.raises(ConfigError, match="--seed"):
        resolve(TrainConfig(seed=seed))


@pytest.mark.parametrize("name", [
    pytest.param("byzantine", marks=fixed15("resolve: byzantine=None, TypeError")),
    pytest.param("attack", marks=fixed15("resolve: attack=None, AttributeError")),
    pytest.param("dataset", marks=fixed15("resolve: dataset=None, KeyError")),
])
def test_resolve_refuses_none_where_a_field_needs_a_value(name):
    with pytest.raises(ConfigError, match=name.replace("_", "-")):
        resolve(TrainConfig(**{name: None}))


@fixed15("--aggregator '' is read as unset: silently the default")
def test_resolve_refuses_an_empty_aggregator():
    with pytest.raises(ConfigError, match="--aggregator"):
        resolve(TrainConfig(aggregator=""))


# --- the spec builders -----------------------------------------------------------------


@hostile(200)
@given(spec=AGGREGATOR_SPECS, f=st.integers(0, 4), n=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_an_aggregator_spec_builds_and_aggregates_finitely_or_is_refused(spec, f, n, seed):
    try:
        agg = aggregators.build(spec, f)
        aggregators.check(agg, n)
    except ValueError as exc:
        one_line(exc, spec)
        return
    messages = torch.randn(n, 7, generator=torch.Generator().manual_seed(seed))
    v = agg(messages)
    assert v.shape == (7,), (spec, v.shape)
    assert torch.isfinite(v).all(), f"{spec} (f={f}, n={n}) aggregates finite rows to {v}"


def attack_context(sign_messages: bool, seed: int) -> Any:
    mean = aggregators.get("mean")
    return attacks.AttackContext(0, torch.Generator().manual_seed(seed), sign_messages,
                                 contracts.Preview(mean, mean.init_state()))


@hostile(150)
@given(spec=ATTACK_SPECS, workers=st.integers(1, 10), byzantine=st.integers(1, 9),
       signs=st.booleans(), seed=st.integers(0, 2**16))
def test_an_attack_spec_builds_and_runs_or_is_refused(spec, workers, byzantine, signs, seed):
    byzantine = min(byzantine, workers - 1) or 1
    if byzantine >= workers:
        workers = byzantine + 1
    try:
        attack = attacks.build(spec)
        attack.check(workers, byzantine)
    except ValueError as exc:
        one_line(exc, spec)
        return
    if attack.capabilities.data_level:
        return
    g = torch.Generator().manual_seed(seed)
    messages = torch.randn(workers, 5, generator=g)
    if signs:
        messages = messages.sign()
    mask = torch.zeros(workers, dtype=torch.bool)
    mask[:byzantine] = True
    crafted = attack(messages, mask, attack_context(signs, seed))
    assert crafted.shape == messages.shape, spec
    assert torch.equal(crafted[~mask], messages[~mask]), f"{spec} changed honest rows"


@pytest.mark.parametrize("spec", [
    pytest.param("gaussian(std=-1)", marks=fixed15("gaussian(std=-1) is built; torch.normal "
                                                   "then raises in the first step")),
    "krum(f=2,f=3)",
    pytest.param("gaussian(std=nan)", marks=fixed15("gaussian(std=nan) is built")),
    pytest.param("gaussian(mean=inf)", marks=fixed15("gaussian(mean=inf) is built")),
])
def test_attack_specs_that_must_be_refused(spec):
    with pytest.raises(ValueError):
        (aggregators.build if spec.startswith("krum") else attacks.build)(spec)


# --- signvote train: options ------------------------------------------------------------


def check_train(argv: list[str], out: Path) -> tuple[int | str, str, str]:
    code, stdout, stderr = cli(["train", "--quiet", "--epochs", "1", "--out", str(out),
                                *argv])
    check_outcome(code, stderr, argv)
    if code == 2:
        assert not out.exists(), f"{argv}: refused, but {out} was written"
    return code, stdout, stderr


def train_options_body(argv: list[str]) -> None:
    with scratch() as tmp:
        check_train([*argv, "--data-dir", str(tmp / "data")], tmp / "run")


@hostile(40)
@given(argv=train_argv())
def test_train_options_run_or_are_refused_in_one_line(argv, stub_training):
    train_options_body(argv)


@pytest.mark.slow
@hostile(120)
@given(argv=train_argv())
def test_train_options_run_or_are_refused_in_one_line_more_examples(argv, stub_training):
    train_options_body(argv)


@pytest.mark.parametrize("argv", [
    pytest.param(["--seed", "99999999999999999999999"],
                 marks=fixed15("--seed 10^23: OverflowError/RuntimeError traceback")),
    pytest.param(["--seed", str(2**64 - 1)],
                 marks=fixed15("--seed 2^64 - 1: refused, in words about the partition")),
    pytest.param(["--seed", "-1"], marks=fixed15("--seed -1 is accepted (aliases 2^63 - 1)")),
    ["--aggregator", "krum(f=2,f=3)"],
    pytest.param(["--aggregator", ""], marks=fixed15("--aggregator '' runs the default")),
    pytest.param(["--attack", "gaussian(std=-1)", "-b", "1"],
                 marks=fixed15("gaussian(std=-1): RuntimeError traceback in the first step")),
    ["--aggregator", "KRUM"],
    pytest.param(["--partition", "shards", "--partition-shards", "100000"],
                 marks=fixed15("--partition-shards 100000 blames the workers")),
])
def test_train_refuses_in_one_line(argv, tmp_path, stub_training):
    code, _, stderr = check_train(argv, tmp_path / "run")
    assert code == 2, f"{argv} accepted"
    if "KRUM" in argv:
        assert "did you mean krum" in stderr
    if "--partition-shards" in argv:
        assert "--partition-shards" in stderr and "workers cannot share" not in stderr


@fixed15("--out that is an existing file: a traceback")
def test_train_out_that_is_a_file_is_refused(tmp_path, stub_training):
    out = tmp_path / "file"
    out.write_text("x")
    code, _, stderr = cli(["train", "--quiet", "-e", "1", "--out", str(out)])
    check_outcome(code, stderr, "--out FILE")
    assert code == 2 and out.read_text() == "x"


@pytest.mark.parametrize("command", [
    pytest.param(["train", "--quiet", "-e", "1"], marks=fixed15("train --out /proc/...")),
    pytest.param(["sweep", "SWEEP", "--quiet"], marks=fixed15("sweep --out /proc/...")),
    pytest.param(["theory"], marks=fixed15("theory --out /proc/...")),
])
@pytest.mark.parametrize("out", ["/proc/signvote-hostile", "FILE", "FILE/below"])
def test_an_out_folder_that_cannot_be_made_is_refused(command, out, tmp_path, stub_training):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "s.toml").write_text("seed = [1]\nepochs = 1\n")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    argv = [str(tmp_path / "s.toml") if a == "SWEEP" else a for a in command]
    code, _, stderr = cli([*argv, "--out", out])
    check_outcome(code, stderr, (command, out))
    assert code == 2 and (tmp_path / "FILE").read_text() == "x"
    assert not Path("/proc/signvote-hostile").exists()


@pytest.mark.slow
@fixed15("theory --rate-repeats 10^20: TypeError traceback from torch's expand (after "
         "about 3 s of figures; --out is created first)")
def test_theory_refuses_a_rate_repeats_it_cannot_run(tmp_path):
    code, _, stderr = cli(["theory", "--rate-repeats", str(10**20), "--out",
                           str(tmp_path / "th")])
    check_outcome(code, stderr, "--rate-repeats 10^20")
    assert code == 2 and not (tmp_path / "th").exists()


@pytest.mark.parametrize(("values", "option"), [
    pytest.param({"threads": 10**6}, "--threads", marks=fixed15(
        "--threads 1000000 is accepted; torch.set_num_threads then segfaults (exit 139)")),
    pytest.param({"threads": 10**20}, "--threads", marks=fixed15(
        "--threads 10^20 is accepted; torch.set_num_threads raises ValueError (traceback)")),
    pytest.param({"engine": "dist", "dist_timeout": 1e300}, "--dist-timeout", marks=fixed15(
        "--dist-timeout 1e300 is accepted; every rank dies of OverflowError (timedelta)")),
])
def test_resolve_refuses_values_the_engine_cannot_take(values, option):
    with pytest.raises(ConfigError, match=option):
        resolve(TrainConfig(**values))


@fixed15("--threads 10^20: ValueError 'Overflow when unpacking long' traceback from "
         "torch.set_num_threads (engine/threads.py:torch_threads)")
def test_train_refuses_a_thread_count_torch_cannot_take(tmp_path):
    code, _, stderr = cli(["train", "--quiet", "-e", "1", "--workers", "1", "--batch-size",
                           "400", "--threads", str(10**20), "--out", str(tmp_path / "run")])
    check_outcome(code, stderr, "--threads 10^20")
    assert code == 2 and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.dist
@fixed15("--threads 40000 (and 10^5, 10^6): the process segfaults (exit 139, nothing on "
         "stderr) in torch.set_num_threads on a 2-core machine; 5000 runs")
def test_train_with_40000_threads_is_refused_not_a_crash(tmp_path, run_bounded):
    import sys

    proc = run_bounded([sys.executable, "-m", "signvote", "train", "--quiet", "-e", "1",
                        "--workers", "1", "--batch-size", "400", "--threads", "40000",
                        "--out", str(tmp_path / "run")], limit_s=120)
    check_outcome(proc.returncode, proc.stderr, "--threads 40000")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.dist
@fixed15("a sweep whose runs fail to build (--partition-shards 100000) is refused in one "
         "line, but only from inside the pool: OUT/.lock and OUT/sweep.json are left")
def test_a_sweep_refused_at_run_time_writes_nothing(tmp_path):
    (tmp_path / "s.toml").write_text('workers = 2\nepochs = 1\nbatch_size = 400\n'
                                     'partition = "shards"\npartition_shards = 100000\n')
    code, _, stderr = cli(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "sw"),
                           "--quiet", "--jobs", "1"])
    check_outcome(code, stderr, "partition_shards = 100000")
    assert code == 2 and not (tmp_path / "sw").exists()


@pytest.mark.slow
@hostile(7)
@given(argv=st.sampled_from([
    ["--workers", "3", "--aggregator", "median"],
    ["--workers", "5", "-b", "1", "--attack", "alie(z=1.5)", "--aggregator", "nnm+krum"],
    ["--workers", "3", "--rule", "sgd", "--lr", "1e300"],
    ["--workers", "2", "--rule", "stochastic-sign", "--batch-size", "400"],
    ["--workers", "3", "-b", "1", "--attack", "inf", "--rule", "sgd", "--aggregator", "sum"],
    ["--workers", "5", "--blind", "2", "--aggregator", "weighted-majority-vote(memory=0.5)"],
    ["--workers", "3", "--dataset", "linreg", "--momentum", "0", "--seed", "0"],
]))
def test_real_tiny_runs_exit_0_and_write_a_run(argv):
    with scratch() as tmp:
        code, _, _ = check_train([*argv, "--batch-size", "400"] if "--batch-size" not in argv
                                 else argv, tmp / "run")
        assert code == 0 and (tmp / "run" / "summary.json").is_file()


# --- TOML: --config FILE, sweep files, --set -------------------------------------------


def toml_key(key: str) -> str:
    return toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped in TOML)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """``value`` as TOML inline text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(table: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())


TOML_SCALARS = st.one_of(
    st.booleans(), st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 1, 2, 3, 4, 10]),
    st.floats(), st.text(max_size=8),
    st.sampled_from(["logreg", "signum", "sgd", "krum", "alie(z=1)", "nnm+krum", "KRUM", "",
                     "gaussian(std=-1)", "\u0000", "runs/x", "sim", "dist"]),
    st.datetimes(), st.dates(), st.times())
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=2)),
    max_leaves=6)


def field_value(name: str) -> st.SearchStrategy[Any]:
    """A TOML value for key ``name``: of the field's type (hostile ones too) or any."""
    kind = base_type(name)
    own = {int: st.integers(-2, 12), float: floats(), bool: st.booleans(),
           str: (AGGREGATOR_SPECS if name == "aggregator" else ATTACK_SPECS
                 if name == "attack" else choice_text(name) if choices_of(name)
                 else st.sampled_from(WEIRD_TEXTS))}[kind]
    return st.one_of(own, own, TOML_VALUES)


FIELD_VALUE = {name: field_value(name) for name in FIELDS}
CONFIG_KEYS = [n for n in FIELDS if n not in ("out", "tensorboard", "epochs", "data_dir")]


@st.composite
def toml_tables(draw, keys: Sequence[str], lists: bool) -> dict[str, Any]:
    """A table of known keys with generated values (short lists when ``lists``), sometimes
    an unknown or odd key."""
    table: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(list(keys)), max_size=4, unique=True)):
        value = FIELD_VALUE[name]
        table[name] = draw(st.lists(value, min_size=0, max_size=3) if lists and draw(
            st.booleans()) else value)
    if draw(st.integers(0, 5)) == 0:
        table[draw(st.sampled_from(["epochz", "", "Rule", "rule ", "ruLe", "a.b", "😀",
                                    "out", "seed\u0000"]))] = draw(TOML_VALUES)
    return table


def toml_bytes(tables: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A file's bytes: a generated document, random bytes, or a document damaged."""
    docs = tables.map(lambda t: toml_document(t).encode())
    return st.one_of(
        docs, docs, docs,
        st.binary(max_size=64),
        st.tuples(docs, st.binary(min_size=1, max_size=4)).map(lambda t: t[0] + t[1]),
        st.sampled_from([b'rule = "\xff"\n', b"\xff\xfe", b"\x00", b"rule = 'sgd'\r\n",
                         b"[rule]\nx = 1\n", b"rule.x = 1\n", b"seed = 1979-05-27\n",
                         b"epochs = 1\nepochs = 2\n", b"[[seed]]\n", b"seed = 0o17\n",
                         b"seed = 1_000\n", b"seed = +inf\n"]),
    )


@hostile(80)
@given(content=toml_bytes(toml_tables(CONFIG_KEYS, lists=False)))
def test_a_config_file_runs_or_is_refused_in_one_line(content, stub_training):
    with scratch() as tmp:
        (tmp / "c.toml").write_bytes(content)
        code, _, stderr = cli(["train", "--quiet", "--epochs", "1", "--config",
                               str(tmp / "c.toml"), "--out", str(tmp / "run")])
        check_outcome(code, stderr, content)
        if code == 2:
            assert not (tmp / "run").exists()


DEEP = "x = " + "[" * 2000 + "]" * 2000 + "\n"


@pytest.mark.parametrize("content", [
    pytest.param(b'rule = "sgd\xff"\n', marks=fixed15("a config that is not UTF-8: "
                                                       "UnicodeDecodeError traceback")),
    pytest.param(DEEP.encode(), marks=fixed15("a config nested 2000 deep: RecursionError "
                                              "traceback from tomllib")),
    pytest.param(b'dataset = "idx"\ndata_dir = "d\\u0000"\n', marks=fixed15(
        "data_dir with a NUL (dataset idx): ValueError 'embedded null byte' traceback")),
    pytest.param(b'dataset = "mnist"\ndata_dir = "d\\u0000"\n', marks=fixed15(
        "data_dir with a NUL (dataset mnist): ValueError 'embedded null byte' traceback")),
    pytest.param(b'out = "run\\u0000"\n', marks=fixed15(
        "out with a NUL: ValueError 'embedded null byte' traceback from mkdir")),
])
def test_config_files_refused_in_one_line(content, tmp_path, monkeypatch, stub_training):
    (tmp_path / "c.toml").write_bytes(content)
    monkeypatch.chdir(tmp_path)  # the config may name no --out: the default is relative
    argv = ["train", "--quiet", "-e", "1", "--config", "c.toml"]
    if b"out =" not in content:
        argv += ["--out", "run"]
    code, _, stderr = cli(argv)
    check_outcome(code, stderr, content)
    assert code == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


SWEEP_KEYS = [n for n in FIELDS if n not in ("tensorboard", "data_dir")]


def check_dry_run(sweep_file: Path, out: Path, overrides: Sequence[str] = ()
                  ) -> tuple[int | str, str, str]:
    argv = ["sweep", str(sweep_file), "--out", str(out), "--dry-run", "--quiet"]
    for text in overrides:
        argv += ["--set", text]
    before = snapshot(out)
    code, stdout, stderr = cli(argv)
    check_outcome(code, stderr, (sweep_file.read_bytes()[:200], overrides))
    assert snapshot(out) == before, "a dry run wrote into the sweep folder"
    return code, stdout, stderr


@hostile(80)
@given(content=toml_bytes(toml_tables(SWEEP_KEYS, lists=True)))
def test_a_sweep_file_dry_run_lists_or_is_refused_in_one_line(content):
    with scratch() as tmp:
        (tmp / "s.toml").write_bytes(content)
        check_dry_run(tmp / "s.toml", tmp / "sweep")


SET_KEYS = [*SWEEP_KEYS, "out", "tensorboard", "", " ", "epochz", "lr-decay-rate", "a=b",
            "seed.x", "😀"]
SET_VALUES = st.one_of(st.text(max_size=10), TOML_VALUES.map(toml_value),
                       st.sampled_from(["[", "[1, 2", "]", "{a = 1}", "[[1]]", "'", '"', "",
                                        "=", "1979-05-27", "nan", "[1, 2, 3]", "[]",
                                        '["sgd", "adam"]', "krum(f=2,f=3)", "sgd",
                                        "signum  # comment"]))


@hostile(80)
@given(overrides=st.lists(st.tuples(st.sampled_from(SET_KEYS), SET_VALUES).map(
    lambda t: f"{t[0]}={t[1]}"), min_size=1, max_size=3))
def test_set_overrides_list_or_are_refused_in_one_line(overrides):
    with scratch() as tmp:
        (tmp / "s.toml").write_text('rule = ["signsgd", "signum"]\nseed = [1, 2]\n')
        check_dry_run(tmp / "s.toml", tmp / "sweep", overrides)


@pytest.mark.parametrize(("content", "overrides"), [
    pytest.param(b'rule = ["sgd", "\xff"]\n', [],
                 marks=fixed15("a sweep file that is not UTF-8: UnicodeDecodeError")),
    pytest.param(DEEP.encode(), [], marks=fixed15("a sweep file nested 2000 deep: "
                                                  "RecursionError")),
    pytest.param(b"seed = [1]\n", ["seed=" + "[" * 2000 + "]" * 2000],
                 marks=fixed15("--set seed=[[[...]]] 2000 deep: RecursionError")),
])
def test_sweep_inputs_refused_in_one_line(content, overrides, tmp_path):
    (tmp_path / "s.toml").write_bytes(content)
    code, _, _ = check_dry_run(tmp_path / "s.toml", tmp_path / "sweep", overrides)
    assert code == 2


@fixed15("a bad --set value is blamed on the file")
def test_a_bad_set_value_names_set_not_the_file(tmp_path):
    (tmp_path / "s.toml").write_text("seed = [1, 2]\n")
    code, _, stderr = check_dry_run(tmp_path / "s.toml", tmp_path / "sweep", ["workers=x"])
    assert code == 2 and "--set" in stderr and "s.toml" not in stderr


# --- IDX files --------------------------------------------------------------------------


@st.composite
def idx_bytes(draw) -> bytes:
    """IDX bytes with a generated header (magic, type code, dimensions) and a body of the
    right length, a few bytes off, or random; sometimes gzipped, maybe truncated."""
    zero = draw(st.sampled_from([b"\x00\x00", b"\x00\x00", b"\x00\x01", b"\x1f\x8b"]))
    code = draw(st.one_of(st.sampled_from(sorted(IDX_TYPES)), st.integers(0, 255)))
    ndim = draw(st.one_of(st.integers(0, 4), st.integers(0, 255)))
    dims = draw(st.lists(st.one_of(st.integers(0, 6), st.sampled_from([2**31, 2**32 - 1])),
                         min_size=min(ndim, 6), max_size=min(ndim, 6)))
    header = zero + bytes([code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    header = header[:draw(st.integers(0, len(header)))] if draw(st.integers(0, 7)) == 0 \
        else header
    size = IDX_TYPES[code].itemsize if code in IDX_TYPES else 1
    expected = math.prod(dims) * size if len(dims) == ndim else 0
    length = draw(st.one_of(st.just(expected), st.integers(max(0, expected - 3), expected + 3),
                            st.integers(0, 64))) if expected < 4096 else draw(
        st.integers(0, 64))
    data = header + draw(st.binary(min_size=min(length, 4096), max_size=min(length, 4096)))
    if draw(st.integers(0, 3)) == 0:
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = data[:draw(st.integers(2, len(data)))]
    return data


def header_shape(data: bytes) -> tuple[int, ...]:
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(raw[3]))


@hostile(200)
@given(data=idx_bytes())
def test_parse_idx_returns_the_header_shape_or_one_idxerror_line(data):
    try:
        array = parse_idx(data, "f")
    except IDXError as exc:
        one_line(exc, data[:40])
        return
    assert array.shape == header_shape(data)


OVERSIZED_EMPTY = b"\x00\x00\x08\x03" + bytes(4) + b"\xff" * 8
"""An IDX header of shape (0, 2^32 - 1, 2^32 - 1) and no data: numpy's reshape raises a
plain ValueError ("array is too big"), which no command catches."""


@fixed15("IDX shape (0, 2^32-1, 2^32-1): numpy ValueError 'array is too big' escapes "
         "parse_idx (and signvote train --dataset idx prints a traceback)")
def test_an_empty_idx_array_of_oversized_dimensions_is_one_line(tmp_path, stub_training):
    with pytest.raises(IDXError):
        parse_idx(OVERSIZED_EMPTY, "f")
    write_idx_folder(tmp_path / "d", idx_arrays())
    (tmp_path / "d" / SPLIT_FILES["train_images"]).write_bytes(OVERSIZED_EMPTY)
    code, _, stderr = cli(["train", "--quiet", "-e", "1", "--dataset", "idx", "--data-dir",
                           str(tmp_path / "d"), "--out", str(tmp_path / "run")])
    check_outcome(code, stderr, "oversized empty IDX")


LABEL_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.float32)


@st.composite
def idx_folders(draw) -> dict[str, np.ndarray]:
    """The four arrays of an IDX dataset: small images (of any IDX dtype, sometimes not
    3-D), labels of any dtype and value (out of range too), counts that may disagree."""
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    arrays = {}
    for split in ("train", "test"):
        n = draw(st.integers(0, 6))
        dtype = draw(st.sampled_from([np.uint8, np.uint8, np.float32, np.int16, np.float64]))
        shape = draw(st.sampled_from([(n, h, w), (n, h, w), (n, h, w), (n, h * w),
                                      (n, 1, h, w)]))
        if dtype in (np.float32, np.float64):
            values = draw(st.lists(st.floats(width=32), min_size=math.prod(shape),
                                   max_size=math.prod(shape)))
        else:
            values = draw(st.lists(st.integers(0, 127), min_size=math.prod(shape),
                                   max_size=math.prod(shape)))
        arrays[f"{split}_images"] = np.array(values, dtype=dtype).reshape(shape)
        m = draw(st.sampled_from([n, n, n, max(0, n - 1), n + 1]))
        labels = draw(st.lists(st.one_of(st.integers(0, 9), st.integers(-3, 127)),
                               min_size=m, max_size=m))
        ldtype = draw(st.sampled_from(LABEL_DTYPES))
        arrays[f"{split}_labels"] = np.array(labels).astype(ldtype)
    return arrays


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in SPLIT_FILES.items():
        (folder / stem).write_bytes(encode_idx(arrays[key]))


@hostile(60)
@given(arrays=idx_folders(), name=st.sampled_from(["idx", "mnist"]))
def test_an_idx_dataset_loads_consistently_or_is_refused_in_one_line(arrays, name):
    from signvote.data.images import load_idx

    with scratch() as tmp:
        write_idx_folder(tmp / "d", arrays)
        try:
            data = load_idx(name, tmp / "d")
        except DatasetError as exc:
            one_line(exc, {k: (a.shape, a.dtype) for k, a in arrays.items()})
            return
    assert data.train_x.shape[0] == data.train_y.shape[0] > 0
    assert data.test_x.shape[0] == data.test_y.shape[0] > 0
    for labels in (data.train_y, data.test_y):
        assert 0 <= int(labels.min()) and int(labels.max()) < data.n_classes
    assert torch.isfinite(data.train_x).all() and torch.isfinite(data.test_x).all()
    if name == "mnist":
        assert data.n_classes == 10


def idx_arrays(n_train: int = 6, n_test: int = 3, train_labels: Sequence[int] | None = None,
               test_labels: Sequence[int] | None = None, dtype=np.uint8) -> dict[str, Any]:
    g = np.random.default_rng(0)
    return {
        "train_images": g.integers(0, 255, (n_train, 4, 4)).astype(dtype),
        "train_labels": np.array(train_labels if train_labels is not None
                                 else [i % 3 for i in range(n_train)], dtype=np.uint8),
        "test_images": g.integers(0, 255, (n_test, 4, 4)).astype(dtype),
        "test_labels": np.array(test_labels if test_labels is not None
                                else [i % 3 for i in range(n_test)], dtype=np.uint8),
    }


@pytest.mark.parametrize(("name", "arrays"), [
    pytest.param("mnist", idx_arrays(train_labels=[0, 1, 2, 3, 200, 5]),
                 marks=fixed15("an MNIST training label 200 builds a 201-class model")),
    pytest.param("idx", idx_arrays(test_labels=[0, 1, 7]),
                 marks=fixed15("a test label outside the training labels grows the class "
                               "count")),
    pytest.param("idx", idx_arrays(n_train=0, train_labels=[]),
                 marks=fixed15("zero training samples: ValueError traceback from "
                               "labels.min()")),
    pytest.param("idx", idx_arrays(n_test=0, test_labels=[]),
                 marks=fixed15("zero test samples: ValueError traceback")),
    pytest.param("idx", {**idx_arrays(), "train_images": np.full((6, 4, 4), np.nan,
                                                                 np.float32)},
                 marks=fixed15("NaN pixels are accepted (standardised to NaN features)")),
])
def test_idx_datasets_refused_in_one_line(name, arrays, tmp_path, stub_training):
    write_idx_folder(tmp_path / "d", arrays)
    code, _, stderr = cli(["train", "--quiet", "-e", "1", "--workers", "1", "--dataset", name,
                           "--data-dir", str(tmp_path / "d"), "--model", "logreg"
                           if name == "idx" else "torchnet", "--out", str(tmp_path / "run")])
    check_outcome(code, stderr, name)
    assert code == 2 and not (tmp_path / "run").exists()


@hostile(30)
@given(arrays=idx_folders(), workers=st.integers(1, 3))
def test_train_on_a_generated_idx_folder_runs_or_is_refused(arrays, workers, stub_training):
    with scratch() as tmp:
        write_idx_folder(tmp / "d", arrays)
        check_train(["--dataset", "idx", "--data-dir", str(tmp / "d"), "--workers",
                     str(workers)], tmp / "run")


# --- run folders: signvote results, plot, sweep --dry-run -------------------------------


SWEEP_FILE = 'workers = 3\nepochs = 2\nbatch_size = 200\nseed = [1, 2]\n'


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A sweep of two finished runs, trained here in-process (as ``run_sweep`` does,
    without its process pool): ``sweep.toml``, ``sweep.json``, ``runs/ID/...`` and the
    tables."""
    from signvote.engine.sim import train
    from signvote.experiment import grid, results, runs, sweep

    folder = tmp_path_factory.mktemp("sweep")
    (folder / "sweep.toml").write_text(SWEEP_FILE)
    placed = sweep.place(grid.load_grid(folder / "sweep.toml"), folder)
    runs.write_json(folder / "sweep.json", {
        "runs": [{"id": Path(c.out).name, "config": c.to_dict()} for c in placed]})
    for c in placed:
        train(c, progress=False)
    results.write_tables(folder)
    return folder


def metric_rows(folder: Path) -> dict[str, list[tuple[str, ...]]]:
    """Each run's (epoch, test_loss, test_acc) rows of ``results.csv``."""
    rows: dict[str, list[tuple[str, ...]]] = {}
    with open(folder / "results.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["run"], []).append(
                (str(int(float(row["epoch"]))), row["test_loss"], row["test_acc"]))
    return rows


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 100), st.floats(allow_nan=False),
              st.text(max_size=6), st.sampled_from(["completed", "diverged", "running"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@st.composite
def damage(draw, files: Sequence[str]) -> tuple[str, str, Any]:
    """(file, how, argument): what to do to one file of a run folder (or the sweep's)."""
    name = draw(st.sampled_from(list(files)))
    how = draw(st.sampled_from(["delete", "bytes", "cut", "json", "key", "drop-key"] +
                               (["rows", "cell"] if name == "metrics.csv" else [])))
    if how == "bytes":
        return name, how, draw(st.binary(max_size=40))
    if how == "cut":
        return name, how, draw(st.floats(0, 1))
    if how == "json":
        return name, how, draw(JSON_VALUES)
    if how == "key":
        return name, how, (draw(st.sampled_from(["status", "epochs_completed", "steps",
                                                 "final_test_loss", "final_test_acc", "runs",
                                                 "epochs", "rule", "seed", "workers", "id",
                                                 "aggregator", "byzantine"])),
                           draw(JSON_VALUES))
    if how == "drop-key":
        return name, how, draw(st.sampled_from(["status", "epochs_completed", "runs",
                                                "epochs", "rule", "seed", "final_test_loss"]))
    if how == "rows":
        return name, how, draw(st.integers(0, 1))
    return name, how, (draw(st.integers(0, 2)), draw(st.sampled_from(
        ["epoch", "test_loss", "test_acc", "step"])), draw(st.sampled_from(
        ["", "x", "nan", "inf", "1e999", "-1", "2.5", '"', "1,2"])))


def apply_damage(path: Path, how: str, arg: Any) -> bool:
    """Damage ``path``; True when the result is certainly not a finished run's file."""
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
        return True
    if how == "bytes":
        path.write_bytes(arg)
        return arg != data
    if how == "cut":
        keep = int(arg * (len(data) - 2))
        path.write_bytes(data[:keep])
        return True
    if how == "json":
        path.write_text(json.dumps(arg))
        return path.name.endswith(".json") and not isinstance(arg, dict)
    if path.name == "metrics.csv":
        if how == "rows":  # keep arg of the epochs' rows: whole rows, a file that parses
            lines = data.decode().splitlines(keepends=True)
            path.write_text("".join(lines[:1 + arg]))
            return True
        if how == "cell":
            row, column, text = arg
            table = list(csv.reader(io.StringIO(data.decode())))
            if row + 1 < len(table):
                table[row + 1][table[0].index(column)] = text
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(table)
            path.write_text(buf.getvalue())
            return False
        return False
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    if not isinstance(obj, dict):  # an earlier damage made it another JSON value
        return False
    if how == "key":
        key, value = arg
        obj[key] = value
    else:
        obj.pop(arg, None)
    path.write_text(json.dumps(obj))
    return False


RUN_FILES = ("summary.json", "metrics.csv", "config.json")


@st.composite
def damaged_sweeps(draw) -> list[tuple[str, str, str, Any]]:
    """One to three damages: (run index or 'sweep', file, how, argument)."""
    items = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["0", "1", "0", "1", "sweep"]))
        files = ("sweep.json",) if where == "sweep" else RUN_FILES
        items.append((where, *draw(damage(files))))
    return items


@contextlib.contextmanager
def damaged_copy(original: Path, damages) -> Iterator[tuple[Path, set[str], dict]]:
    """A copy of the sweep with ``damages`` applied: (folder, ids of runs certainly not
    finished, the original metric rows by run)."""
    ids = [r["id"] for r in json.loads((original / "sweep.json").read_text())["runs"]]
    with scratch() as tmp:
        folder = tmp / "sweep"
        shutil.copytree(original, folder)
        broken = set()
        for where, name, how, arg in damages:
            path = (folder / name if where == "sweep"
                    else folder / "runs" / ids[int(where)] / name)
            if path.exists() and apply_damage(path, how, arg) and where != "sweep":
                broken.add(ids[int(where)])
        yield folder, broken, metric_rows(original)


@hostile(40)
@given(damages=damaged_sweeps())
def test_results_of_a_damaged_sweep_are_the_true_rows_or_refused(damages, finished_sweep):
    with damaged_copy(finished_sweep, damages) as (folder, broken, truth):
        before = snapshot(folder)
        code, _, stderr = cli(["results", str(folder)])
        check_outcome(code, stderr, damages)
        if code == 2:
            assert snapshot(folder) == before, f"{damages}: refused, but files were written"
            return
        for run, rows in metric_rows(folder).items():
            assert run not in broken, f"{damages}: a damaged run {run} is read as finished"
            assert rows == truth[run], f"{damages}: run {run} has rows {rows}"


@hostile(40)
@given(damages=damaged_sweeps())
def test_dry_run_on_a_damaged_sweep_never_says_done_of_a_damaged_run(damages,
                                                                       finished_sweep):
    with damaged_copy(finished_sweep, damages) as (folder, broken, _):
        code, stdout, _ = check_dry_run(folder / "sweep.toml", folder)
        if code == 0:
            for line in stdout.splitlines():
                path, state = line.split("\t")[:2]
                assert not (Path(path).name in broken and state == "done"), (damages, line)


@pytest.mark.slow
@hostile(4)
@given(damages=damaged_sweeps(), kind=st.sampled_from(["paper", "heatmap"]))
def test_plot_of_a_damaged_sweep_draws_or_is_refused(damages, kind, finished_sweep):
    with damaged_copy(finished_sweep, damages) as (folder, _, _):
        before = snapshot(folder)
        code, _, stderr = cli(["plot", str(folder), "--kind", kind])
        check_outcome(code, stderr, damages)
        if code == 2:
            assert snapshot(folder) == before


def damaged(original: Path, where: str, name: str, how: str, arg: Any = None):
    return damaged_copy(original, [(where, name, how, arg)])


@pytest.mark.parametrize(("command", "damage_"), [
    pytest.param("results", ("0", "summary.json", "bytes", b"{not json"),
                 marks=fixed15("summary.json not valid JSON: results traceback")),
    pytest.param("plot", ("0", "summary.json", "bytes", b"{not json"),
                 marks=fixed15("summary.json not valid JSON: plot traceback")),
    pytest.param("results", ("0", "metrics.csv", "cut", 0.7),
                 marks=fixed15("metrics.csv cut in mid-line: TypeError traceback")),
    pytest.param("results", ("sweep", "sweep.json", "bytes", b"[1, 2"),
                 marks=fixed15("sweep.json not valid JSON: results traceback")),
    pytest.param("results", ("0", "config.json", "json", [1, 2]),
                 marks=fixed15("config.json a list: results traceback")),
])
def test_damaged_sweep_files_are_refused_or_skipped_in_results_and_plot(command, damage_,
                                                                         finished_sweep):
    with damaged(finished_sweep, *damage_) as (folder, broken, _):
        code, _, stderr = cli([command, str(folder)])
        check_outcome(code, stderr, damage_)
        if command == "results" and code == 0:
            assert not broken & set(metric_rows(folder))


@pytest.mark.parametrize("value", [
    pytest.param([], marks=fixed15("config.json epochs [] beside ints: pyarrow ArrowInvalid "
                                   "traceback in results.write_tables")),
    pytest.param("2", marks=fixed15("config.json epochs '2' beside ints: pyarrow "
                                    "traceback")),
    pytest.param({"a": 1}, marks=fixed15("config.json epochs {...}: pyarrow traceback")),
])
def test_results_of_a_config_json_with_a_retyped_field(value, finished_sweep):
    with damaged(finished_sweep, "0", "config.json", "key", ("epochs", value)) as (
            folder, _, _):
        code, _, stderr = cli(["results", str(folder)])
        check_outcome(code, stderr, value)


@fixed15("plot of a sweep whose every run is damaged: a warning line per run, then the "
         "error (three lines, exit 2)")
def test_plot_of_a_sweep_of_damaged_runs_is_one_line(finished_sweep):
    with damaged_copy(finished_sweep, [("0", "summary.json", "bytes", b""),
                                       ("1", "summary.json", "bytes", b"")]) as (folder, _, _):
        code, _, stderr = cli(["plot", str(folder)])
        check_outcome(code, stderr, "every summary.json empty")


@pytest.mark.parametrize("title", [
    pytest.param("$x^$", marks=fixed15("plot --title '$x^$': matplotlib's mathtext "
                                        "ParseSyntaxException traceback (exit 1)")),
    pytest.param("$\\frac{$", marks=fixed15("plot --title '$\\frac{$': mathtext traceback")),
    "50% of $5",
])
def test_plot_takes_any_title(title, finished_sweep, tmp_path):
    code, _, stderr = cli(["plot", str(finished_sweep), "--title", title, "--output",
                           str(tmp_path / "fig")])
    check_outcome(code, stderr, title)


@fixed15("metrics.csv cut to whole rows beside an intact summary.json is read as finished")
def test_results_never_reads_a_run_whose_metrics_were_cut_to_whole_rows(finished_sweep):
    with damaged(finished_sweep, "0", "metrics.csv", "rows", 1) as (folder, broken, _):
        code, _, stderr = cli(["results", str(folder)])
        check_outcome(code, stderr, "rows")
        if code == 0:
            assert not broken & set(metric_rows(folder))


@fixed15("summary.json not valid JSON: the dry run says done")
def test_dry_run_does_not_call_a_run_with_a_broken_summary_done(finished_sweep):
    with damaged(finished_sweep, "0", "summary.json", "bytes", b"{not json") as (folder,
                                                                                  broken, _):
        code, stdout, _ = check_dry_run(folder / "sweep.toml", folder)
        done = {Path(line.split("\t")[0]).name for line in stdout.splitlines()
                if line.split("\t")[1] == "done"}
        assert code == 0 and not broken & done


def test_the_toml_writer_of_this_file_round_trips():
    """The generated documents are the TOML they mean to be (else the suite would test
    only the parser's refusals)."""
    table = {"a": 1, "b": [1.5, "x\x7f\n\"", True], "c": {"d": datetime.date(2020, 1, 2)},
             "é": -0.0, "": [[], {}], "t": datetime.time(1, 2, 3, 4)}
    assert tomllib.loads(toml_document(table)) == table
