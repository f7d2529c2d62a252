"""Every statement of the theory checked, as one table: the report's (Akoun & Meyer), the
papers' it is compared with, and the project's, each with holds / fails, where and by how
much (:class:`signvote.theory.as_printed.Verdict`).

:func:`collect` gathers the verdicts; :func:`summarise` groups them by statement (a
statement is checked on several families of cases: noises, settings); :func:`table` writes
the markdown table that ``signvote theory`` puts in THEORY.md and ``signvote reproduce`` in
REPORT.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from signvote import election
from signvote.theory import as_printed, coalition
from signvote.theory.as_printed import Verdict


def collect(*, rate_repeats: int = 0, quick: bool = False) -> list[Verdict]:
    """The verdicts of the report's Lemma 1bis and its fixes, of each step of its proof of
    Theorem 2bis, (``rate_repeats`` >= 2) of its rate at one p on simulated votes, and
    (unless ``quick``) of the coalition strategies (step 1's worst case,
    :mod:`signvote.theory.coalition`) and of Election Coding's tolerance
    (:func:`signvote.election.election_verdicts`). ``quick`` checks the proof on a smaller
    grid (M in {5, 11, 31}, every fifth S) and leaves the last two out (about 15 s)."""
    verdicts = as_printed.lemma_verdicts()
    if quick:
        verdicts += as_printed.proof_step_verdicts(workers=(5, 11, 31),
                                                   snrs=as_printed.LEMMA_GRID[::5])
    else:
        verdicts += as_printed.proof_step_verdicts()
    if rate_repeats >= 2:
        verdicts += as_printed.rate_verdicts(rate_repeats)[0]
    if not quick:
        verdicts += coalition.coalition_verdicts() + election.election_verdicts()
    return verdicts


def _where(point: dict[str, Any]) -> str:
    """A verdict's worst point in words: its coordinates, then lhs against rhs."""
    coords = ", ".join(f"{k} = {_number(v)}" for k, v in point.items()
                       if k not in ("lhs", "rhs"))
    return f"{coords}: {_number(point['lhs'])} against {_number(point['rhs'])}"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def summarise(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """One row per statement, in the order first seen: its source, the families of cases
    checked (``cases``, of which ``within`` satisfy its assumptions), those where it failed
    (within its assumptions or outside them), and its worst point (the largest lhs / rhs)
    over the cases within its assumptions."""
    rows: dict[str, dict[str, Any]] = {}
    for v in verdicts:
        row = rows.setdefault(v.statement, {
            "statement": v.statement, "source": v.source, "cases": 0, "within": 0,
            "points": 0, "failed_within": [], "failed_outside": [], "ratio": 0.0,
            "worst_case": None, "worst": None})
        row["cases"] += 1
        row["within"] += v.assumptions_hold
        row["points"] += v.points
        if not v.holds:
            row["failed_within" if v.assumptions_hold else "failed_outside"].append(v.case)
        if v.assumptions_hold and v.worst and v.ratio > row["ratio"]:
            row["ratio"], row["worst_case"], row["worst"] = v.ratio, v.case, v.worst
    return list(rows.values())


def table(verdicts: list[Verdict]) -> list[str]:
    """The markdown table of :func:`summarise` (lines)."""
    lines = ["| statement | source | holds | fails on (within its assumptions) | "
             "worst lhs / rhs | where |", "|---|---|---|---|---|---|"]
    for row in summarise(verdicts):
        within = row["within"]
        of = "" if within == row["cases"] else f" within its assumptions, of {row['cases']}"
        cases = "case" if within == 1 else "cases"
        held = (f"yes: {within} {cases}{of}" if not row["failed_within"] else
                f"NO: {within - len(row['failed_within'])} of {within} {cases}{of}")
        failed = "; ".join(row["failed_within"]) or "-"
        if row["failed_outside"]:
            failed += f" (and outside them: {'; '.join(row['failed_outside'])})"
        where = (f"{row['worst_case']}; {_where(row['worst'])}" if row["worst"] else "-")
        lines.append(f"| {row['statement']} | {row['source']} | {held} | {failed} | "
                     f"{row['ratio']:.3g} | {where} |")
    return lines


def records(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """The verdicts as JSON-ready dicts (``holds`` added; infinities as strings)."""
    out = []
    for v in verdicts:
        record = {**asdict(v), "holds": v.holds}
        record["excess"] = _json_number(record["excess"])
        record["worst"] = {k: _json_number(x) for k, x in record["worst"].items()}
        out.append(record)
    return out


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
