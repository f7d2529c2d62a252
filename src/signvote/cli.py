"""The ``signvote`` command.

    signvote train [--dataset logreg] [--rule signum] [--byzantine 4] [--config FILE] ...

Every option has a default (the paper's logistic-regression setting); ``--config FILE``
reads a TOML file with the same names (underscores instead of dashes), and options given
on the command line override it. Bad input gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import signvote
from signvote.data import DatasetError
from signvote.entry import EXIT_INTERRUPTED
from signvote.experiment.config import (
    FIELDS,
    SPEC_FIELDS,
    ConfigError,
    TrainConfig,
    base_type,
    choices_of,
    flag,
    load_toml,
    resolve,
)
from signvote.plugins import import_notices

EXIT_USAGE = 2
MAX_RATE_REPEATS = 1000
"""The most ``theory --rate-repeats`` (its time grows in proportion: the default 10 takes
seconds)."""
SHORT = {"blind": "-i", "byzantine": "-b", "epochs": "-e", "seed": "-s"}
"""Short flags kept from the paper's seed command line (``main.py nprocs dataset -i -b -e -s``)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help (descriptions and epilogs as written), with option help wrapped
    between words only: a name such as ``cancel-to-zero`` is never broken at a hyphen,
    so a script can search the help for it."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit code 2, and whose help is
    :class:`HelpFormatter`'s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see {self.prog} --help)")


def fail(message: str) -> NoReturn:
    """Print ``message`` as one line on stderr (a line break in it, from a file or class
    name, written ``\\n``) and exit with the usage status."""
    print(message.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def out_problem(path: str | Path) -> str | None:
    """Why no run folder can be made at ``path`` (without making anything), or None: it is
    a file, lies under a file, on a virtual or read-only filesystem (``/proc``), or in a
    folder this user cannot write."""
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        return f"{str(path)!r} is a file, not a folder"
    ancestor = target
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(path)!r} lies under {str(ancestor)!r}, which is a file"
    try:
        fs = os.statvfs(ancestor)
    except OSError as exc:
        return f"{str(ancestor)!r} cannot be read: {exc.strerror}"
    if fs.f_blocks == 0:
        return f"{str(path)!r} is on a virtual filesystem (like /proc), which holds no files"
    if fs.f_flag & os.ST_RDONLY or not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{str(ancestor)!r} is not writable"
    return None


def check_out(command: str, path: str | Path, option: str = "--out") -> None:
    """Refuse, in one line, an output folder that cannot be made (:func:`out_problem`)."""
    problem = out_problem(path)
    if problem is not None:
        fail(f"signvote {command}: error: {option} {problem}; valid: a folder that can be "
             f"made and written")


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse seeds outside ``[0, SEED_MAX]`` (``reproduce --seeds``)."""
    from signvote.experiment.config import SEED_MAX

    for seed in seeds:
        if not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"--seeds: {seed} is out of range; valid: whole numbers in "
                              f"[0, {SEED_MAX}]")


def find_sweep(command: str, folder: str) -> Path:
    """The sweep folder ``folder`` (one with a ``runs/`` folder), or the one sweep folder
    directly inside it (``reproduce`` writes its sweeps one level down: the command says
    so when it is done, :func:`say_sweep`); anything else is refused with where the
    sweeps are."""
    top = Path(folder)
    if (top / "runs").is_dir():
        return top
    inside = sorted(p for p in top.glob("*") if (p / "runs").is_dir()) if top.is_dir() else []
    if len(inside) == 1:
        return inside[0]
    if inside:
        fail(f"signvote {command}: error: {folder!r} holds {len(inside)} sweeps; valid: one "
             f"of " + ", ".join(str(p) for p in inside))
    what = "does not exist" if not top.exists() else "is not a sweep folder (it has no runs/)"
    fail(f"signvote {command}: error: {folder!r} {what}; valid: the --out of signvote sweep "
         f"or of signvote reproduce")


def say_sweep(command: str, found: Path, given: str) -> None:
    """Say on stderr which sweep was read when it is not the folder given."""
    if found != Path(given):
        print(f"signvote {command}: read the sweep in {found}", file=sys.stderr)


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _add_pool_options(parser: argparse.ArgumentParser) -> None:
    """``--jobs`` and ``--quiet`` of the commands that run a grid of runs."""
    parser.add_argument("--jobs", type=_parse_int, default=None, metavar="N",
                        help="runs at a time (default: one per core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_jobs(jobs: int | None) -> None:
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file of options (names with underscores); the command line "
                             "overrides it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, spec in FIELDS.items():
        flags = [flag(name)] + ([SHORT[name]] if name in SHORT else [])
        kind = base_type(name)
        if kind is bool:
            parser.add_argument(*flags, dest=name, action="store_true",
                                default=argparse.SUPPRESS, help=spec.metadata["help"])
            continue
        parse = {int: _parse_int, float: _parse_float, str: str}[kind]
        help_text = spec.metadata["help"]
        if spec.default is not None:
            help_text += f" (default: {spec.default})"
        choices = choices_of(name)
        if choices:
            help_text += f"; one of: {', '.join(choices)}"
        metavar = {int: "N", float: "X", str: "NAME" if choices else "TEXT"}[kind]
        if name in ("out", "data_dir"):
            metavar = "DIR"
        if name in SPEC_FIELDS:
            metavar = "SPEC"
        parser.add_argument(*flags, dest=name, type=parse, default=argparse.SUPPRESS,
                            metavar=metavar, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="signvote",
        description="Byzantine-fault-tolerant distributed training with SignSGD/Signum and "
                    "majority vote.",
    )
    parser.add_argument("--version", action="version", version=f"signvote {signvote.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train = commands.add_parser(
        "train", help="train one model under adversaries and write a run folder",
        description="Train one model with n workers, some of them adversaries, simulated in "
                    "one process (--engine sim) or one process each under torch.distributed "
                    "(--engine dist), and write OUT/config.json, OUT/metrics.csv (one row per "
                    "epoch), OUT/params.pt and OUT/summary.json.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  signvote train --rule signum --byzantine 4 --epochs 80 --out runs/signum-byz4\n"
               "  signvote train --engine dist --workers 4 --byzantine 1 --out runs/dist\n"
               "  torchrun --nnodes 2 --nproc-per-node 3 --rdzv-backend c10d --rdzv-endpoint "
               "HOST:29500 -m signvote train --engine dist --workers 5 --out runs/multi",
    )
    _add_train_options(train)

    sweep = commands.add_parser(
        "sweep", help="run a grid of training runs in parallel, resumably",
        description="Run every run of a sweep file (TOML: training options with underscores, "
                    "any of them a list; the grid is the product of the lists) with the "
                    "simulator, --jobs at a time, each in OUT/runs/ID. Started again, it runs "
                    "only the runs that have not finished. Writes OUT/results.csv and "
                    "OUT/results.parquet (one row per run and epoch).",
        formatter_class=HelpFormatter,
        epilog="example sweep file:\n  rule = [\"signsgd\", \"signum\"]\n"
               "  byzantine = [0, 2, 4]\n  seed = [1, 2, 3]\n  epochs = 20")
    sweep.add_argument("file", metavar="FILE", help="the sweep file (TOML)")
    sweep.add_argument("--out", metavar="DIR", required=True, help="the sweep's folder")
    sweep.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       dest="overrides",
                       help="override a key with a TOML value (repeatable): --set lr=1e-3, "
                            "--set 'byzantine=[0, 4]'")
    _add_pool_options(sweep)
    sweep.add_argument("--dry-run", action="store_true",
                       help="list the runs and whether each is done; run nothing")
    where = sweep.add_argument_group(
        "where the runs execute",
        textwrap.fill(
            "pool: processes of this machine. ray: one Ray task per run, on a local Ray "
            "instance started and stopped by the sweep, or on a running cluster "
            "(--address); every node must have signvote installed and see --out at the "
            "same path. Needs the extra: pip install 'signvote[ray]'.", 78,
            break_on_hyphens=False))
    where.add_argument("--backend", dest="executor", choices=sweep_backends(),
                       default="pool",
                       help="pool (default) or ray; not the distributed engine's "
                            "communication backend, which is a sweep-file key (backend)")
    where.add_argument("--address", default=None, metavar="ADDR",
                       help="with --backend ray: the cluster to join, auto (the cluster "
                            "started on this machine by ray start) or HOST:PORT (default: a "
                            "local instance with this machine's CPUs, or --jobs x "
                            "--cpus-per-run)")
    where.add_argument("--cpus-per-run", type=_parse_float, default=1.0, metavar="X",
                       help="with --backend ray: the CPUs each run's task declares, also its "
                            "torch threads (default: 1)")
    where.add_argument("--gpus-per-run", type=_parse_float, default=0.0, metavar="X",
                       help="with --backend ray: the GPUs each run's task declares, so that "
                            "Ray places it on a GPU node; a fraction shares one (default: 0)")
    where.add_argument("--retries", type=_parse_int, default=3, metavar="N",
                       help="with --backend ray: how many times a run whose worker process "
                            "died is run again before it is recorded as failed (default: 3)")

    results = commands.add_parser(
        "results", help="summarize a sweep: final and best test metric over seeds",
        description="Print one row per group of runs that differ only in their seed: the "
                    "mean over seeds and the 95% confidence half-width of the final and of "
                    "the best value of --metric (best over a run's evaluations), and with "
                    "--last-k K of the mean of its last K evaluations. Rewrites "
                    "OUT/results.csv and OUT/results.parquet from the finished runs.")
    results.add_argument("sweep_dir", metavar="DIR", help="the sweep's folder")
    results.add_argument("--metric", default=None,
                         choices=("test_acc", "test_loss", "train_acc", "train_loss"),
                         help="the metric (default: test_acc, or test_loss for a sweep "
                              "without accuracy, such as a regression)")
    results.add_argument("--last-k", type=_parse_int, default=None, metavar="K",
                         help="also the mean over seeds of each run's mean of its last K "
                              "evaluations (column lastK_METRIC; Karimireddy et al.'s "
                              "figure)")
    results.add_argument("--best-of-mean", action="store_true",
                         help="also the best evaluation of the mean over seeds (column "
                              "bestmean_METRIC; ByzFL's figure), beside best: the mean over "
                              "seeds of each run's best")

    from signvote.experiment.benchmarks import TARGETS
    from signvote.experiment.reproduce import FIGURES, SCALES

    reproduce = commands.add_parser(
        "reproduce", help="one of the paper's figures, or a benchmark of the field: runs, "
                          "figure and report",
        description="Run the paper's grid for FIGURE with its settings (DistSGD, SignSGD, "
                    "Signum x 0-4 adversaries of 10 workers), draw it in the paper's layout "
                    "(OUT/FIGURE.png and .svg) and write OUT/REPORT.md, our numbers beside "
                    "the paper's. The runs are a resumable sweep in OUT/FIGURE. A benchmark "
                    "target (" + ", ".join(TARGETS) + ": Karimireddy, He & Jaggi, ICLR 2022, "
                    "experiments 1-3; ByzFL's benchmark) runs that benchmark's grid, with "
                    "Signum and the votes beside its SGD aggregators, draws its tables as "
                    "heatmaps (OUT/TARGET.png) and writes OUT/BENCHMARKS.md.")
    reproduce.add_argument("figure", metavar="FIGURE", choices=(*FIGURES, "all", *TARGETS),
                           help="one of: " + ", ".join(FIGURES) + ", all (the paper's "
                                "figures); or a benchmark: " + ", ".join(TARGETS))
    reproduce.add_argument("--out", metavar="DIR", default="runs/reproduce",
                           help="folder of the sweeps, figures and REPORT.md (default: "
                                "runs/reproduce)")
    reproduce.add_argument("--scale", choices=SCALES, default=None,
                           help="full: the paper's settings; reduced: fewer epochs (logreg "
                                "20) or smallcnn for 3 epochs (MNIST), said on the figure "
                                "(default: full for logreg, reduced for MNIST); a benchmark: "
                                "full as published (a GPU job, see --device), reduced fewer "
                                "steps, seeds or cells for a CPU (default: reduced)")
    reproduce.add_argument("--seeds", type=_parse_int, nargs="+", default=None,
                           metavar="S", help="seeds; the curves show their mean and range "
                                             "(default: 8005, the paper's; a benchmark: its "
                                             "own, 0 1 2 at full scale, 0 reduced)")
    reproduce.add_argument("--device", default="auto", metavar="DEVICE",
                           help="a benchmark target: where its runs compute (auto, cpu, cuda, "
                                "cuda:N; as train --device; default: auto)")
    reproduce.add_argument("--dataset", default=None, metavar="NAME",
                           help="train on another dataset (e.g. fashion-mnist where MNIST "
                                "is not on disk); said on the figure")
    reproduce.add_argument("--data-dir", metavar="DIR", default=None,
                           help="folder with the dataset's IDX files")
    _add_pool_options(reproduce)

    plot = commands.add_parser(
        "plot", help="draw a sweep: the paper's layout, or an aggregator x attack heatmap",
        description="Draw a sweep's results/tidy table as PNG and SVG: --kind paper (columns "
                    "DistSGD, SignSGD, Signum; rows test loss and accuracy; one curve per "
                    "number of adversaries, a band over seeds) or --kind heatmap (final "
                    "accuracy of every rule/aggregator x attack, each row's worst attack "
                    "boxed).")
    plot.add_argument("sweep_dir", metavar="DIR", help="the sweep's folder")
    plot.add_argument("--kind", choices=("paper", "heatmap"), default="paper",
                      help="the figure (default: paper)")
    plot.add_argument("--adversary", choices=("byzantine", "blind"), default="byzantine",
                      help="--kind paper: the curves are per number of these (default: "
                           "byzantine)")
    plot.add_argument("--title", default="", help="the figure's title")
    plot.add_argument("--output", metavar="STEM", default=None,
                      help="write STEM.png and STEM.svg (default: DIR/KIND)")

    theory = commands.add_parser(
        "theory", help="the paper's bounds beside exact values: figures and THEORY.md",
        description="Check every bound of the paper (Lemmas 1 and 1bis on six noises, "
                    "Theorems 2 and 2bis on the majority vote) against exact values, and "
                    "the convergence-rate bounds against simulated votes; draw "
                    "OUT/sign_error, OUT/vote_failure, OUT/tolerance and OUT/rates (PNG "
                    "and SVG; with --sweep also OUT/vote_wrong) and write OUT/THEORY.md "
                    "and OUT/checks.json.")
    theory.add_argument("--out", metavar="DIR", default="runs/theory",
                        help="output folder (default: runs/theory)")
    theory.add_argument("--sweep", metavar="DIR", default=None,
                        help="a sweep run with measure_theory = true over Byzantine counts: "
                             "mark its observed breakdown at its measured p")
    theory.add_argument("--quick", action="store_true",
                        help="the report's proof on a reduced grid (M up to 31) and no "
                             "coalition or Election Coding checks: seconds instead of a "
                             "minute")
    theory.add_argument("--rate-repeats", metavar="N", type=_parse_int, default=10,
                        help="independent simulated runs per rate-bound case, at least 2 "
                             "(default: 10)")

    from signvote.data.images import DOWNLOADABLE, default_data_dir

    download = commands.add_parser(
        "download", help="download MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 (needs "
                         "torchvision and the network)",
        description="Download a dataset's files with torchvision (pip install "
                    "'signvote[download]'): the MNIST family's IDX files, CIFAR's python "
                    "pickles (cifar-10-batches-py/, cifar-100-python/). `signvote train "
                    "--dataset NAME` finds them in the same --data-dir, or in the default "
                    "folder without one. Offline, Fashion-MNIST also comes from Debian's "
                    "package dataset-fashion-mnist (found in "
                    "/usr/share/datasets/fashion-mnist), and the files can be put in a "
                    "folder passed as --data-dir.",
    )
    download.add_argument("dataset", choices=DOWNLOADABLE, metavar="DATASET",
                          help="one of: " + ", ".join(DOWNLOADABLE))
    download.add_argument("--data-dir", metavar="DIR", default=None,
                          help=f"where to put it (default: {default_data_dir()}, or "
                               f"$SIGNVOTE_DATA)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of a ``train`` command line: defaults < --config file < options."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_toml(args.config))
    values.update({name: getattr(args, name) for name in FIELDS if hasattr(args, name)})
    return resolve(TrainConfig(**values))


def run_train(args: argparse.Namespace) -> int:
    from signvote.engine import dist

    try:
        config = config_from_args(args)
        check_out("train", config.out)
        if config.engine == "dist":
            if dist.launched_by_torchrun():  # this process is one rank
                dist.train(config, progress=not args.quiet)
                return 0
            s = dist.launch(config, list(args.argv))  # the ranks run this command line
        else:
            from signvote.engine.sim import train

            s = train(config, progress=not args.quiet).summary
    except (ConfigError, DatasetError) as exc:
        fail(f"signvote train: error: {exc}")
    except dist.DistError as exc:
        where = "stopped" if dist.launched_by_torchrun() else "error"
        print(f"signvote train: {where}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsignvote train: interrupted; the run folder has no summary.json",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if s["status"] == "diverged":
        at = ("" if "diverged_at_step" not in s else f", step {s['diverged_at_step']}")
        print(f"training diverged at epoch {s['diverged_at_epoch']}{at} (non-finite loss or "
              f"parameters); stopped. Run folder: {config.out}", file=sys.stderr)
        return 0
    metric = (f"test accuracy {100 * s['final_test_acc']:.2f}% (best "
              f"{100 * s['best_test_acc']:.2f}%)" if s["final_test_acc"] is not None
              else f"test loss {s['final_test_loss']:.4f}")
    length = (f"{s['epochs_completed']} epochs" if "evaluations" not in s else
              f"{s['steps']} steps ({s['evaluations']} evaluations)")
    print(f"{config.rule} | {config.aggregator} | {config.byzantine} byzantine "
          f"({config.attack}), {config.blind} blind of {config.workers} workers | "
          f"{length} in {s['wall_s']:.2f}s | final {metric} | "
          f"{config.out}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from signvote.experiment import grid, sweep

    try:
        configs = grid.load_grid(args.file, args.overrides)
        _check_jobs(args.jobs)
        ray = _ray_options(args)
        check_out("sweep", args.out)
        if args.dry_run:
            placed = sweep.place(configs, args.out, args.executor)
            renamed = sweep.find_renamed(placed, args.out)
            shown = varying_keys(placed)
            print("\t".join(["folder", "state", *shown]))
            for c in placed:
                error = sweep.failure(c.out)
                state = ("done" if sweep.is_done(c) else
                         f"done in {renamed[c.out]}, renamed by the next sweep"
                         if c.out in renamed else
                         "to run" if error is None else f"to run again (failed: {error})")
                print("\t".join([c.out, state, *(f"{k}={getattr(c, k)}" for k in shown)]))
            return 0
        outcome = sweep.run_sweep(configs, args.out, args.jobs, progress=not args.quiet,
                                  backend=args.executor, ray=ray)
    except (ConfigError, DatasetError) as exc:
        fail(f"signvote sweep: error: {exc}")
    except KeyboardInterrupt:
        print("\nsignvote sweep: interrupted; run the same command again to finish",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = outcome["failed"]
    print(f"{outcome['runs']} runs: {outcome['ran'] - len(failed)} run now, "
          f"{outcome['skipped']} already done" + (f", {len(failed)} failed" if failed else "")
          + f"; {outcome['rows']} rows in {args.out}/results.csv and results.parquet")
    for folder, error in failed:
        print(f"signvote sweep: failed: {folder}: {error or 'no error recorded'} "
              f"(details in its failed.json; run the same command again to retry)",
              file=sys.stderr)
    return 1 if failed else 0


def sweep_backends() -> tuple[str, ...]:
    from signvote.experiment.sweep import BACKENDS

    return BACKENDS


def _ray_options(args: argparse.Namespace) -> Any:
    """The sweep's :class:`~signvote.experiment.sweep.RayOptions`; the Ray options given
    without ``--backend ray`` are refused (they would do nothing)."""
    from signvote.experiment.sweep import RayOptions

    given = [f.name for f in dataclasses.fields(RayOptions)
             if getattr(args, f.name) != f.default]
    if args.executor != "ray" and given:
        raise ConfigError(f"{', '.join(flag(n) for n in given)}: only with --backend ray "
                          f"(this sweep runs on --backend {args.executor})")
    return RayOptions(args.address, args.cpus_per_run, args.gpus_per_run, args.retries)


def varying_keys(configs: Sequence[TrainConfig]) -> list[str]:
    """The fields that differ between ``configs`` (out excluded), in field order; the rule,
    aggregator, byzantine, blind and seed always, for a grid of one run."""
    always = ("rule", "aggregator", "byzantine", "blind", "seed")
    return [k for k in FIELDS if k != "out" and (
        k in always or len({repr(getattr(c, k)) for c in configs}) > 1)]


def run_results(args: argparse.Namespace) -> int:
    from signvote.experiment import results

    if args.last_k is not None and args.last_k < 1:
        fail(f"signvote results: error: --last-k {args.last_k}: valid: a whole number of at "
             f"least 1 (the evaluations averaged)")
    folder = find_sweep("results", args.sweep_dir)
    try:
        rows = results.tidy_rows(folder, require=True)
    except ConfigError as exc:
        fail(f"signvote results: error: {exc}")
    results.write_tables(folder, rows)
    metric = args.metric or results.default_metric(rows)
    print(results.format_summary(results.summarize(rows, metric, args.last_k,
                                                   args.best_of_mean)))
    say_sweep("results", folder, args.sweep_dir)
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from signvote.experiment import benchmarks, reproduce

    if args.figure in benchmarks.TARGETS:
        return run_benchmark(args)
    names = list(reproduce.FIGURES) if args.figure == "all" else [args.figure]

    def work() -> None:
        reproduce.check_inputs(names, args.scale, args.dataset, args.data_dir)
        for name in names:
            section = reproduce.reproduce(name, args.out, args.scale, args.seeds,
                                          args.dataset, args.data_dir, args.jobs,
                                          progress=not args.quiet)
            print(f"{name}: {args.out}/{name}.png, .svg ({section['scale']} scale, "
                  f"{section['wall_s']} s)")

    return _reproducing(args, work, "REPORT.md", "reproduce on another dataset")


def run_benchmark(args: argparse.Namespace) -> int:
    """``signvote reproduce TARGET`` for a benchmark target
    (:mod:`signvote.experiment.benchmarks`)."""
    from signvote.experiment import benchmarks

    scale = args.scale or "reduced"

    def work() -> None:
        section = benchmarks.reproduce(args.figure, args.out, scale, args.seeds,
                                       args.dataset, args.data_dir, args.jobs,
                                       progress=not args.quiet, device=args.device)
        print(f"{args.figure}: {args.out}/{args.figure}.png, .svg "
              f"({section['scale']} scale, {section['runs']} runs, {section['wall_s']} s)")

    return _reproducing(args, work, "BENCHMARKS.md", "run it on another dataset")


def _reproducing(args: argparse.Namespace, work: Callable[[], None], report: str,
                 elsewhere: str) -> int:
    """The checks every ``signvote reproduce`` makes (jobs, seeds, OUT), then ``work``;
    a bad input is one line and exit 2 (a missing dataset with the hint "or ELSEWHERE:
    --dataset fashion-mnist"), an interrupt says how to finish; else names OUT/REPORT."""
    try:
        _check_jobs(args.jobs)
        check_seeds(args.seeds or [])
        check_out("reproduce", args.out)
        work()
    except (ConfigError, DatasetError) as exc:
        hint = (f" (or {elsewhere}: --dataset fashion-mnist)"
                if isinstance(exc, DatasetError) else "")
        fail(f"signvote reproduce: error: {exc}{hint}")
    except KeyboardInterrupt:
        print("\nsignvote reproduce: interrupted; run the same command again to finish",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report: {args.out}/{report}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from signvote.experiment import plots, results

    folder = find_sweep("plot", args.sweep_dir)
    stem = Path(args.output) if args.output else folder / args.kind
    check_out("plot", stem.parent, "--output")
    try:
        rows = results.tidy_rows(folder, require=True)
        fig = (plots.paper_figure(rows, args.adversary, args.title) if args.kind == "paper"
               else plots.heatmap(rows, args.title))
    except ConfigError as exc:
        fail(f"signvote plot: error: {exc}")
    paths = plots.save(fig, stem)
    print(" ".join(str(p) for p in paths))
    say_sweep("plot", folder, args.sweep_dir)
    return 0


def run_theory(args: argparse.Namespace) -> int:
    from signvote.experiment import theory_report

    check_out("theory", args.out)
    if args.sweep is not None:
        args.sweep = str(find_sweep("theory", args.sweep))
    if not 2 <= args.rate_repeats <= MAX_RATE_REPEATS:
        fail(f"signvote theory: error: --rate-repeats {args.rate_repeats}: valid: 2 (a "
             f"standard error needs two runs) to {MAX_RATE_REPEATS}")
    result = theory_report.write(args.out, args.sweep, args.rate_repeats, quick=args.quick)
    failing = result["statements_failed"]
    print(f"{result['statements']} statements checked, {len(failing)} fail within their "
          f"assumptions{': ' + '; '.join(failing) if failing else ''}")
    print(f"{result['checks']} bounds checked, {result['failed']} fail somewhere; "
          f"{result['rate_checks']} rate checks, {result['rates_failed']} fail "
          f"({result['rates_failed_within_assumptions']} within their assumptions) "
          f"(see {args.out}/THEORY.md)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from signvote.data.images import default_data_dir, download

    target = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        folder = download(args.dataset, target)
    except DatasetError as exc:
        fail(f"signvote download: error: {exc}")
    print(f"{args.dataset}: files in {folder}")
    return 0


COMMANDS = {"train": run_train, "download": run_download, "sweep": run_sweep,
            "results": run_results, "reproduce": run_reproduce, "plot": run_plot,
            "theory": run_theory}
"""Each command's function of its parsed arguments (``args.argv``: the command line)."""

EXIT_BROKEN_PIPE = 128 + 13
"""What a shell reports for a command whose reader went away (SIGPIPE), as ``ls | head``."""


def plugin_notice(module: str, why: str) -> None:
    """Say on stderr, once per module, that a plugin module is imported (its code runs):
    ``signvote: importing plugin module mypkg.aggs (named by --aggregator)``."""
    print(f"signvote: importing plugin module {module} ({why})", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command not in COMMANDS:
        parser.print_help()
        return EXIT_USAGE
    from signvote.engine.memory import keep_freed_memory

    keep_freed_memory()  # this process is the command's own: its allocator policy is ours
    try:
        with import_notices(plugin_notice):
            return COMMANDS[args.command](args)
    except BrokenPipeError:
        # the reader of stdout is gone (``signvote sweep --dry-run | head``): say nothing
        # more, and keep Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"\nsignvote {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a folder or file the command needs cannot be written or read
        where = f": {exc.filename!r}" if exc.filename else ""
        fail(f"signvote {args.command}: error: {exc.strerror or exc}{where}")


if __name__ == "__main__":
    raise SystemExit(main())
