"""Aggregator speed against ByzFL (issue 4).

For n = 10, 25, 50 workers and d = 100,000 and 1,000,000 coordinates (float32, standard
normal messages), every aggregator and pre-aggregator of ours and the same one in ByzFL
(``byzfl==0.0.11``) run on identical inputs, interleaved (who goes first alternates),
``--repeats`` times each; the
table gives the median wall time of each and the ratio ByzFL / ours. f = (n - 3) // 4
(1, 5, 11: the largest f Bulyan accepts) for every rule that takes f. Where the two
definitions agree, the largest absolute difference of the outputs is recorded too (Krum
and multi-Krum with ``neighbours = n - f - 1``, ByzFL's choice; the geometric median and
centered clipping with the same iterations and radius on both sides: ByzFL's defaults,
one step at tau = 100, and ours, three at tau = 10, each from v0 = 0 and from v0 = the
rows' mean, the v0 inside timing on both sides). A difference there is not always ours:
ByzFL's distances come from ``torch.cdist`` in float32, which for n <= 25 computes them
directly and at d = 1M was off by up to ~1e3 on squared distances of ~2e6 (ours, from the
Gram matrix: < 1 against float64), enough to reorder near neighbours in NNM.

ByzFL is installed with ``--no-deps`` into ``benchmarks/.byzfl`` (``make bench-byzfl``);
what it imports and this benchmark does not need (its package ``__init__``, which pulls in
torchvision and matplotlib, and ``scipy.spatial``, used only for numpy inputs) is stubbed.
ByzFL calls that cannot run are recorded with the reason: its MDA enumerates all C(n, f)
subsets (skipped beyond ``--max-subsets``), its NNM gathers an ``[n, n - f, d]`` tensor
(skipped beyond ``--max-gib``), and ``torch.quantile`` (its median and MeaMed) refuses
inputs of more than 2^24 elements.

Run: ``make bench-byzfl`` or ``.venv/bin/python benchmarks/bench_aggregators.py
[--repeats 3] [--workers 10 25 50] [--dims 100000 1000000] [--only NAME ...]
[--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from signvote import aggregators
from signvote.experiment.runs import write_json

BYZFL_DIR = Path(__file__).parent / ".byzfl"


def load_byzfl(folder: Path) -> types.ModuleType:
    """``byzfl.aggregators`` from ``folder``, without its package ``__init__`` and scipy."""
    if not (folder / "byzfl" / "aggregators").is_dir():
        sys.exit(f"ByzFL not found in {folder}; install it with: .venv/bin/pip install "
                 f"--no-deps --target {folder} byzfl==0.0.11 (or: make bench-byzfl)")
    package = types.ModuleType("byzfl")
    package.__path__ = [str(folder / "byzfl")]
    sys.modules["byzfl"] = package
    scipy = types.ModuleType("scipy")
    spatial = types.ModuleType("scipy.spatial")
    spatial.distance = types.SimpleNamespace()  # only used for numpy inputs
    scipy.spatial = spatial
    sys.modules.setdefault("scipy", scipy)
    sys.modules.setdefault("scipy.spatial", spatial)
    import byzfl.aggregators as byzfl_aggregators

    return byzfl_aggregators


def cases(b: types.ModuleType, n: int, f: int) -> list[tuple[str, Callable, Callable | None,
                                                              bool, str]]:
    """``(name, ours, byzfl or None, same definition, note)`` for ``n`` workers."""
    pre = aggregators.get_pre
    return [
        ("mean", aggregators.get("mean"), b.Average(), True, ""),
        ("median", aggregators.get("median"), b.Median(), True, ""),
        ("trimmed-mean", aggregators.get("trimmed-mean", f=f), b.TrMean(f=f), True, ""),
        ("meamed", aggregators.get("meamed", f=f), b.Meamed(f=f), True, ""),
        ("krum", aggregators.get("krum", f=f, neighbours=n - f - 1), b.Krum(f=f), True, ""),
        ("multi-krum", aggregators.get("multi-krum", f=f, neighbours=n - f - 1),
         b.MultiKrum(f=f), True, ""),
        ("geometric-median (3 steps)",
         aggregators.get("geometric-median", nu=0.1, iterations=3, tol=1e-30),
         b.GeometricMedian(nu=0.1, T=3), False, "ByzFL starts at 0, ours at the mean"),
        ("geometric-median (to tol)", aggregators.get("geometric-median"), None, False,
         "ours: to tol 1e-7 (ByzFL has no stopping rule)"),
        # the same parameters on both sides: ByzFL's defaults (L = 1, tau = 100), ours
        # (L = 3, tau = 10); "from 0": a fresh instance per call, both start at v0 = 0;
        # "from v0": both start at the previous aggregate, here v0 = the rows' mean
        *[(f"centered-clipping (L={steps}, tau={tau:g}, from {start})",
           our_centered_clipping(tau, steps, start),
           f"centered-clipping {steps} {tau} {start}", True, "")
          for steps, tau in ((1, 100.0), (3, 10.0)) for start in ("0", "v0")],
        ("caf", aggregators.get("caf", f=f), b.CAF(f=f), False,
         "ByzFL: one power iteration from a random start; ours: exact eigenpair"),
        ("mda", aggregators.get("mda", f=f), b.MDA(f=f), True,
         "several subsets can share the minimum diameter: ByzFL takes the first in "
         "lexicographic order, ours another"),
        ("bulyan", aggregators.get("bulyan", f=f), lambda x: byzfl_bulyan(b, x, f), False,
         "ByzFL 0.0.11 has no Bulyan: timed against its Krum n - 2f times on the rows left, "
         "then the steps of its Meamed keeping n - 4f (Krum there with n - f - 1 neighbours)"),
        ("nnm (pre)", lambda x: pre("nnm")(x, f), b.NNM(f=f), True, ""),
        ("bucketing s=2 (pre)", lambda x: pre("bucketing", s=2)(x, f), b.Bucketing(s=2), False,
         "random permutations differ"),
        ("clipping c=2 (pre)", lambda x: pre("clipping", c=2.0)(x, f), b.Clipping(c=2.0), True,
         ""),
        ("arc (pre)", lambda x: pre("arc")(x, f), b.ARC(f=f), True, ""),
        ("majority-vote", aggregators.get("majority-vote"), None, False, "not in ByzFL"),
        ("weighted-majority-vote", aggregators.get("weighted-majority-vote"), None, False,
         "not in ByzFL"),
    ]


def start_vector(x: torch.Tensor, start: str) -> torch.Tensor | None:
    """Centered clipping's v0 for ``start``: None (zero) for "0", else the rows' mean."""
    return None if start == "0" else x.mean(dim=0)


def our_centered_clipping(tau: float, steps: int, start: str) -> Callable:
    """Our centered clipping from the state ``start`` (:func:`start_vector`), fresh per call."""
    def call(x: torch.Tensor) -> torch.Tensor:
        agg = aggregators.get("centered-clipping", tau=tau, iterations=steps)
        return agg.apply(x, start_vector(x, start))[0]  # explicit state: v0
    return call


def byzfl_centered_clipping(b: types.ModuleType, spec: str) -> Callable:
    """ByzFL's centered clipping for ``"centered-clipping STEPS TAU START"``."""
    steps, tau, start = spec.split()[1:]

    def call(x: torch.Tensor) -> torch.Tensor:
        agg = b.CenteredClipping(L=int(steps), tau=float(tau))
        agg.m = start_vector(x, start)  # its constructor refuses any m (``or`` for ``and``)
        return agg(x)
    return call


def byzfl_bulyan(b: types.ModuleType, x: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan as a ByzFL user would assemble it from ByzFL 0.0.11's parts."""
    remaining, chosen = x, []
    for _ in range(x.shape[0] - 2 * f):
        row = b.Krum(f=f)(remaining) if remaining.shape[0] > 2 * f else remaining[0]
        index = int(torch.nonzero((remaining == row).all(dim=1))[0])
        chosen.append(remaining[index])
        remaining = torch.cat([remaining[:index], remaining[index + 1:]])
    selected = torch.stack(chosen)  # ByzFL's Meamed refuses 2f >= n: its steps, unchecked
    keep = selected.shape[0] - 2 * f
    median = torch.quantile(selected, 0.5, dim=0)
    nearest = (selected - median).abs().topk(keep, dim=0, largest=False).indices
    return selected.gather(0, nearest).mean(dim=0)


class _Absent:
    """Stands for ByzFL under ``--without-byzfl``: every class of it builds nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


ABSENT = _Absent()

MUTATES = {"clipping c=2 (pre)", "arc (pre)"}
"""ByzFL writes into its input: it gets a copy, made outside its timing (``byzfl_ms``) and,
for the same contract as ours (the caller's messages intact), inside (``byzfl_copy_ms``)."""


def skip_reason(name: str, n: int, f: int, d: int, args: argparse.Namespace) -> str | None:
    if name == "mda" and math.comb(n, f) > args.max_subsets:
        return f"not run: C({n}, {f}) = {math.comb(n, f):.2e} subsets"
    if name == "nnm (pre)" and n * (n - f) * d * 4 / 2**30 > args.max_gib:
        return f"not run: would gather {n * (n - f) * d * 4 / 2**30:.1f} GiB"
    return None


def timed(fn: Callable, x: torch.Tensor, copy: bool) -> tuple[float, torch.Tensor]:
    arg = x.clone() if copy else x
    t0 = time.perf_counter()
    out = fn(arg)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--max-subsets", type=float, default=1e5)
    parser.add_argument("--max-gib", type=float, default=4.0)
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only the aggregators whose name contains one of these")
    parser.add_argument("--byzfl-dir", type=Path, default=BYZFL_DIR)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "aggregators.json")
    parser.add_argument("--without-byzfl", action="store_true",
                        help="time ours alone (no ByzFL needed): a quick check of the script")
    args = parser.parse_args()
    b = None if args.without_byzfl else load_byzfl(args.byzfl_dir)
    rows = []
    for d in args.dims:
        for n in args.workers:
            f = (n - 3) // 4
            x = torch.randn(n, d, generator=torch.Generator().manual_seed(n * d))
            for name, ours, theirs, same, note in cases(b or ABSENT, n, f):
                if args.only and not any(part in name for part in args.only):
                    continue
                if b is None:
                    theirs = None
                elif isinstance(theirs, str):
                    theirs = byzfl_centered_clipping(b, theirs)
                reason = skip_reason(name, n, f, d, args) if theirs is not None else None
                our_times, their_times, copy_times, diff, error = [], [], [], None, None
                ours(x)  # warm-up (first-call allocations), not timed
                for repeat in range(args.repeats):
                    run_theirs = theirs is not None and not reason and not error
                    # alternate who goes first: the first call may find x out of cache
                    if repeat % 2 == 0:
                        t, out = timed(ours, x, False)
                        our_times.append(t)
                    if run_theirs:
                        try:
                            t, ref = timed(theirs, x, name in MUTATES)
                        except Exception as exc:  # record why ByzFL could not run
                            error = f"error: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                            run_theirs = False
                        else:
                            their_times.append(t)
                            if name in MUTATES:
                                t0 = time.perf_counter()
                                theirs(x.clone())
                                copy_times.append(time.perf_counter() - t0)
                    if repeat % 2 == 1:
                        t, out = timed(ours, x, False)
                        our_times.append(t)
                    if run_theirs and same:
                        diff = float((out.double() - torch.as_tensor(ref).double()).abs().max())
                row = {"d": d, "n": n, "f": f, "aggregator": name,
                       "ours_ms": 1e3 * statistics.median(our_times),
                       "byzfl_ms": 1e3 * statistics.median(their_times) if their_times else None,
                       "byzfl_copy_ms": 1e3 * statistics.median(copy_times) if copy_times
                       else None,
                       "max_abs_diff": diff, "note": reason or error or note}
                row["speedup"] = (row["byzfl_ms"] / row["ours_ms"]) if row["byzfl_ms"] else None
                rows.append(row)
                speed = f"{row['speedup']:8.1f}x" if row["speedup"] else " " * 9
                theirs_text = f"{row['byzfl_ms']:10.1f}" if row["byzfl_ms"] else " " * 10
                extra = (f" (with its copy {row['byzfl_copy_ms']:.1f} ms)"
                         if row["byzfl_copy_ms"] else "")
                diff_text = f" diff {diff:.1e}" if diff is not None else ""
                print(f"d={d:>8} n={n:>2} f={f:>2} {name:28} ours {row['ours_ms']:9.1f} ms "
                      f"byzfl {theirs_text} ms {speed}{extra}{diff_text} {row['note']}",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "repeats": args.repeats, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
