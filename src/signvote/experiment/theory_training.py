r"""Theorem 2bis's single p against what training measures.

Akoun & Meyer ("SignSGD: Fault-Tolerance to Blind and Byzantine Adversaries", arXiv
2202.02085, 2022), Theorem 2bis, state the vote's failure with one number
:math:`p = P[\mathrm{sign}\,\tilde g = \mathrm{sign}\,g]` for every coordinate. Step 4 of its
proof bounds the per-coordinate failure of the majority vote of :math:`M` workers, a fraction
:math:`\alpha` of them Byzantine, by

.. math:: P[Z \le M/2] \le \frac12 \frac{\sqrt{1 - p}}{p (1 - \alpha) - 1/2}
          \frac{1}{\sqrt M} \qquad (\alpha < 1 - \tfrac{1}{2p})

(:func:`signvote.theory.theorem2bis_failure_in_p`). In training p differs between
coordinates; ``--measure-theory`` records, per epoch, the fraction of coordinates on which
the vote had not the sign of the full-batch gradient (``theory_vote_wrong``) and the spread
of the per-coordinate empirical p (``theory_p_coord_min`` ... ``_q90``). This module puts
the two side by side, on a sweep's tidy rows (:func:`signvote.experiment.results.tidy_rows`)
over Byzantine counts:

- :func:`run_values`: each run's theory columns, the mean over its last ``k`` epochs.
- :func:`single_p_records`: per task, rule, attack and Byzantine count (the mean over seeds),
  the measured wrong-vote fraction beside step 4's bound, the exact binomial
  :func:`signvote.theory.vote_failure_exact` (Byzantine workers always wrong) and the
  report's tolerable fraction :math:`1 - 1/(2p)` at the minimum, median and mean of the
  per-coordinate p, each p taken from the rule's runs without adversary (``clean``) and
  from the run itself (``own``).
- :func:`breakdowns`: the smallest Byzantine fraction whose vote was wrong on half the
  coordinates or more, against the tolerable fraction at each single p.
- :func:`single_p_verdicts`: one :class:`signvote.theory.Verdict` per task, rule, p
  statistic and p source, "Theorem 2bis step 4 at the {min,median,mean} p".
- :func:`markdown_tables`: the tables for ``THEORY.md``.

Readings we chose where the report does not say: the measured fraction of wrong coordinates
is compared with a per-coordinate probability (the fraction is the mean over coordinates
of the per-coordinate failure events, so its expectation is the mean failure probability);
a verdict's points are only the Byzantine counts inside the theorem's condition
:math:`\alpha < 1 - 1/(2p)` (outside it the report claims nothing); and
``assumptions_hold`` is False, since the theorem's one p for every coordinate is exactly
what training does not have (the recorded spread shows by how much).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from signvote import theory
from signvote.experiment import results
from signvote.theory import as_printed

P_STATISTICS = ("min", "median", "mean")
"""The single p the theorem is evaluated at: statistics over coordinates of the
per-coordinate empirical p (the columns ``theory_p_coord_{min,median,mean}``)."""

P_SPREAD = ("min", "q10", "median", "mean", "q90")
"""The recorded spread of the per-coordinate p (``theory_p_coord_*``)."""

P_SOURCES = ("clean", "own")
"""Where the single p comes from: ``clean`` the same task and rule's runs without adversary
(the report's p, an honest worker's, before any attack), ``own`` the run itself (its honest
workers under the attack)."""

_AVERAGED = ("theory_p", "theory_vote_wrong", "theory_vote_wrong_predicted",
             *(f"theory_p_coord_{s}" for s in P_SPREAD))

STATEMENT = "Theorem 2bis step 4 at the {} p"
"""The verdicts' statement, formatted with the p statistic."""


def _number(value: Any) -> float | None:
    """A tidy cell as a float; None for a missing or empty cell."""
    if value is None or value == "":
        return None
    return float(value)


def task_of(row: Mapping[str, Any]) -> str:
    """A run's task: ``DATASET/MODEL`` (the model as the run's config stores it)."""
    return f"{row.get('dataset')}/{row.get('model')}"


def run_values(rows: Iterable[Mapping[str, Any]], last_epochs: int = 1
               ) -> dict[str, dict[str, Any]]:
    """Per run id (of the rows with the ``--measure-theory`` columns): its task, rule,
    attack, workers, byzantine, seed, and the mean over its last ``last_epochs`` epochs of
    ``theory_p``, ``theory_vote_wrong``, ``theory_vote_wrong_predicted`` and the
    ``theory_p_coord_*`` spread (a run with fewer epochs, one that diverged, averages those
    it has). Raises ValueError for ``last_epochs < 1``."""
    if last_epochs < 1:
        raise ValueError(f"last_epochs {last_epochs!r}; valid: an integer >= 1")
    by_run: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if _number(row.get("theory_vote_wrong")) is not None:
            by_run.setdefault(str(row["run"]), []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for run, mine in by_run.items():
        window = sorted(mine, key=lambda r: int(r["epoch"]))[-last_epochs:]
        first = window[-1]
        values: dict[str, Any] = {
            "task": task_of(first), "rule": first["rule"], "attack": first["attack"],
            "workers": int(first["workers"]), "byzantine": int(first["byzantine"]),
            "seed": first.get("seed"), "epoch": int(first["epoch"]),
            "epochs_averaged": len(window)}
        for key in _AVERAGED:
            seen = [v for v in (_number(r.get(key)) for r in window) if v is not None]
            values[key] = math.fsum(seen) / len(seen) if seen else None
        out[run] = values
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    seen = [v for v in values if v is not None and not math.isnan(v)]
    return math.fsum(seen) / len(seen) if seen else None


def _at_p(workers: int, byzantine: int, p: float | None) -> dict[str, float | None]:
    """Step 4's bound, the exact binomial and the tolerable fraction at one p."""
    if p is None:
        return {"bound": None, "exact": None, "tolerable": None}
    alpha = byzantine / workers
    return {"bound": as_printed.theorem2bis_failure_in_p(workers, p, alpha),
            "exact": theory.vote_failure_exact(workers, p, byzantine, "byzantine"),
            "tolerable": _tolerable(p)}


def _tolerable(p: float) -> float:
    """:func:`signvote.theory.report_tolerable_fraction`, with its documented 0 for
    ``p <= 1/2`` given at ``p = 0`` too (a coordinate on which no honest sign agreed; the
    printed formula divides by 2p there)."""
    return as_printed.report_tolerable_fraction(p) if p > 0.5 else 0.0


def single_p_records(rows: Iterable[Mapping[str, Any]], last_epochs: int = 1
                     ) -> list[dict[str, Any]]:
    r"""One record per (task, rule, attack, Byzantine count) of a sweep with
    ``measure_theory = true``, its values the mean over seeds of :func:`run_values`.

    Keys: ``task``, ``rule``, ``attack``, ``workers`` M, ``byzantine`` f, ``alpha`` = f / M,
    ``seeds``, ``vote_wrong`` (measured), ``vote_wrong_predicted`` (the exact binomial at
    each coordinate's own p, recorded in training), ``p_own_{stat}`` and ``p_clean_{stat}``
    for every stat of :data:`P_SPREAD` (``clean``: the mean over the same task and rule's
    runs with f = 0, of any attack; None when there is none), and for every source of
    :data:`P_SOURCES` and stat of :data:`P_STATISTICS`, at that single p:

    - ``bound_{source}_{stat}``: step 4,
      :math:`\frac12 \sqrt{1 - p} / (p (1 - \alpha) - 1/2) / \sqrt M` (``inf`` outside
      :math:`\alpha < 1 - 1/(2p)`);
    - ``exact_{source}_{stat}``: :math:`P[Z \le M/2]`, :math:`Z \sim \mathrm{Bin}(M - f, p)`;
    - ``tolerable_{source}_{stat}``: :math:`\max(0, 1 - 1/(2p))`.

    Sorted by task, rule, attack and f."""
    runs = run_values(rows, last_epochs)
    groups: dict[tuple[str, str, str, int, int], list[dict[str, Any]]] = {}
    for v in runs.values():
        groups.setdefault((v["task"], v["rule"], v["attack"], v["workers"], v["byzantine"]),
                          []).append(v)
    clean_runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for v in runs.values():
        if v["byzantine"] == 0:
            clean_runs.setdefault((v["task"], v["rule"], v["workers"]), []).append(v)
    clean = {key: {s: _mean([v[f"theory_p_coord_{s}"] for v in mine]) for s in P_SPREAD}
             for key, mine in clean_runs.items()}
    out = []
    for (task, rule, attack, workers, f), mine in sorted(groups.items()):
        record: dict[str, Any] = {
            "task": task, "rule": rule, "attack": attack, "workers": workers, "byzantine": f,
            "alpha": f / workers, "seeds": len(mine),
            "vote_wrong": _mean([v["theory_vote_wrong"] for v in mine]),
            "vote_wrong_predicted": _mean([v["theory_vote_wrong_predicted"] for v in mine])}
        base = clean.get((task, rule, workers), {})
        for s in P_SPREAD:
            record[f"p_own_{s}"] = _mean([v[f"theory_p_coord_{s}"] for v in mine])
            record[f"p_clean_{s}"] = base.get(s)
        for source in P_SOURCES:
            for s in P_STATISTICS:
                at = _at_p(workers, f, record[f"p_{source}_{s}"])
                for name, value in at.items():
                    record[f"{name}_{source}_{s}"] = value
        out.append(record)
    return out


def breakdowns(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, rule, attack) of :func:`single_p_records`: ``breakdown``, the smallest
    Byzantine fraction whose measured vote was wrong on half the coordinates or more (the
    theory's failure event; None when no tested fraction got there), ``largest_tested``,
    and for every stat of :data:`P_STATISTICS` the report's tolerable fraction
    ``tolerable_{stat}`` :math:`1 - 1/(2p)` and the exact one ``tolerable_exact_{stat}``
    (:func:`signvote.theory.tolerable_byzantine` / M: the largest fraction whose exact
    failure stays below 1/2; -1 / M when even f = 0 fails with probability 1/2 or more, the
    case p <= 1/2) at the clean single p."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["rule"], r["attack"]), []).append(r)
    out = []
    for (task, rule, attack), mine in sorted(groups.items()):
        mine = sorted(mine, key=lambda r: r["alpha"])
        broken = [r["alpha"] for r in mine
                  if r["vote_wrong"] is not None and r["vote_wrong"] >= 0.5]
        item: dict[str, Any] = {"task": task, "rule": rule, "attack": attack,
                                "workers": mine[0]["workers"],
                                "breakdown": broken[0] if broken else None,
                                "largest_tested": mine[-1]["alpha"]}
        for s in P_STATISTICS:
            p = mine[0][f"p_clean_{s}"]
            item[f"p_clean_{s}"] = p
            item[f"tolerable_{s}"] = None if p is None else _tolerable(p)
            item[f"tolerable_exact_{s}"] = None if p is None else (
                theory.tolerable_byzantine(item["workers"], p) / item["workers"])
        out.append(item)
    return out


def _verdict_points(records: Sequence[Mapping[str, Any]]
                    ) -> list[tuple[str, str, list[tuple[dict[str, Any], float, float]]]]:
    """(statement, case, points) of every verdict of :func:`single_p_verdicts`, in order."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["rule"]), []).append(r)
    out = []
    for (task, rule), mine in sorted(groups.items()):
        for source in P_SOURCES:
            where = "p of the runs without adversary" if source == "clean" else "the run's own p"
            for s in P_STATISTICS:
                points = [({"attack": r["attack"], "alpha": r["alpha"],
                            "p": r[f"p_{source}_{s}"]},
                           r["vote_wrong"], r[f"bound_{source}_{s}"]) for r in mine
                          if r[f"bound_{source}_{s}"] is not None
                          and math.isfinite(r[f"bound_{source}_{s}"])
                          and r["vote_wrong"] is not None]
                out.append((STATEMENT.format(s), f"{task}, {rule}, {where}", points))
    return out


def informative_points(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """For every verdict of :func:`single_p_verdicts`, in its order: how many of its points
    have a bound below 1 (a bound of 1 or more holds whatever is measured)."""
    return [sum(1 for _, _, rhs in points if rhs < 1)
            for _, _, points in _verdict_points(records)]


def single_p_verdicts(records: Sequence[Mapping[str, Any]]) -> list[as_printed.Verdict]:
    """One verdict per (task, rule, p statistic, p source): the claim ``measured wrong-vote
    fraction <= step 4's bound at that single p``, at every (attack, Byzantine count) of the
    records inside the theorem's condition (a finite bound). Statement
    ``"Theorem 2bis step 4 at the {stat} p"``, source :data:`signvote.theory.REPORT`, case
    ``"TASK, RULE, p of the runs without adversary"`` (or ``"..., the run's own p"``);
    ``assumptions_hold`` False (one p for every coordinate, which training does not have)."""
    return [as_printed.verdict(statement, as_printed.REPORT, case, points,
                               assumptions_hold=False)
            for statement, case, points in _verdict_points(records)]


def from_sweep(sweep_dir: str | Path, last_epochs: int = 1) -> list[dict[str, Any]]:
    """:func:`single_p_records` of a sweep folder's finished runs (ValueError for
    ``last_epochs < 1`` before the folder is read)."""
    if last_epochs < 1:
        raise ValueError(f"last_epochs {last_epochs!r}; valid: an integer >= 1")
    return single_p_records(results.tidy_rows(sweep_dir, require=True), last_epochs)


# --- tables --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "none"  # no bound: outside the theorem's condition
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def spread_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per task and rule, the spread of the per-coordinate p without adversary."""
    seen: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in records:
        seen.setdefault((r["task"], r["rule"]), r)
    return "\n".join(_table(["task", "rule", *(f"p {s}" for s in P_SPREAD)],
                            [[t, rule, *(r[f"p_clean_{s}"] for s in P_SPREAD)]
                             for (t, rule), r in sorted(seen.items())]))


def markdown_table(records: Sequence[Mapping[str, Any]], source: str = "clean") -> str:
    """Markdown: per record, the measured wrong-vote fraction, the exact binomial at each
    coordinate's own p, and step 4's bound and the exact binomial at the min, median and
    mean single p of ``source`` (:data:`P_SOURCES`); "none" where step 4 gives no bound."""
    if source not in P_SOURCES:
        raise ValueError(f"source {source!r}; valid: {', '.join(P_SOURCES)}")
    header = ["task", "rule", "attack", "alpha", "measured", "binomial, each p",
              *(f"step 4 at {s}" for s in P_STATISTICS),
              *(f"binomial at {s}" for s in P_STATISTICS)]
    return "\n".join(_table(header, [
        [r["task"], r["rule"], r["attack"], r["alpha"], r["vote_wrong"],
         r["vote_wrong_predicted"], *(r[f"bound_{source}_{s}"] for s in P_STATISTICS),
         *(r[f"exact_{source}_{s}"] for s in P_STATISTICS)] for r in records]))


def breakdown_table(items: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: :func:`breakdowns`, the observed breakdown beside 1 - 1/(2p) at each
    single p (and the exact binomial's tolerable fraction; "f = 0 fails" where even no
    adversary leaves the exact failure at 1/2 or more)."""
    def exact(value: float | None) -> Any:
        return "f = 0 fails" if value is not None and value < 0 else value
    header = ["task", "rule", "attack", "observed breakdown", "largest tested",
              *(f"1 - 1/(2p) at {s}" for s in P_STATISTICS),
              *(f"exact at {s}" for s in P_STATISTICS)]
    return "\n".join(_table(header, [
        [b["task"], b["rule"], b["attack"], b["breakdown"], b["largest_tested"],
         *(b[f"tolerable_{s}"] for s in P_STATISTICS),
         *(exact(b[f"tolerable_exact_{s}"]) for s in P_STATISTICS)] for b in items]))


def verdict_table(verdicts: Sequence[as_printed.Verdict],
                  informative: Sequence[int] | None = None) -> str:
    """Markdown: one line per verdict, whether it held ("no claim" where no point lies
    inside the theorem's condition, e.g. at a p <= 1/2), at how many points, at how many of
    those the bound is below 1 (``informative``, from :func:`informative_points`; "-" when
    not given), and the worst ratio measured / bound with where it was."""
    def worst(v: as_printed.Verdict) -> str:
        if not v.worst:
            return "-"
        return f"{v.worst['attack']}, alpha {v.worst['alpha']:.2f}"

    def holds(v: as_printed.Verdict) -> str:
        return "no claim" if v.points == 0 else "yes" if v.holds else "no"
    return "\n".join(_table(
        ["statement", "case", "holds", "points", "bound < 1", "failures",
         "worst measured / bound", "where"],
        [[v.statement, v.case, holds(v), v.points, None if informative is None else n,
          v.failures, v.ratio if v.points else None, worst(v)]
         for v, n in zip(verdicts, informative or [None] * len(verdicts), strict=True)]))


def markdown_tables(records: Sequence[Mapping[str, Any]]) -> str:
    """All of it for ``THEORY.md``: the p spread, the measured fraction against the
    predictions at the clean single p, the breakdowns and the verdicts."""
    return "\n\n".join([spread_table(records), markdown_table(records, "clean"),
                        breakdown_table(breakdowns(records)),
                        verdict_table(single_p_verdicts(records),
                                      informative_points(records))])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m signvote.experiment.theory_training SWEEP [--last K]``: print
    :func:`markdown_tables` of a sweep folder; a bad folder or K is one line on stderr and
    exit status 2."""
    import argparse
    import sys

    from signvote.experiment.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m signvote.experiment.theory_training",
                                     description="Theorem 2bis at one p against a sweep "
                                                 "run with measure_theory = true")
    parser.add_argument("sweep", help="the sweep's folder")
    parser.add_argument("--last", type=int, default=1, metavar="K",
                        help="average each run over its last K epochs (default 1)")
    args = parser.parse_args(argv)
    try:
        records = from_sweep(args.sweep, args.last)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"signvote: error: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"signvote: error: no run of {args.sweep} has the --measure-theory columns "
              f"(set measure_theory = true)", file=sys.stderr)
        return 2
    print(markdown_tables(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
