"""``signvote theory --out DIR``: the paper's bounds beside the exact values, as figures and
``DIR/THEORY.md``.

- ``sign_error``: for each noise of :data:`signvote.theory.NOISES`, the exact
  probability that a worker's sign is wrong against S, beside Lemma 1 and Lemma 1bis.
- ``vote_failure``: the exact failure probability of the majority vote beside the bound
  of Theorem 2 (blind) or 2bis (Byzantine). It is drawn against M, against the fraction
  alpha of adversaries (with the failure frequency of simulated votes) and against p.
- ``tolerance``: the largest tolerable Byzantine fraction against p. The limit
  ``1 - 1/(2p)`` of Theorem 2bis is drawn beside the exact largest fraction that keeps
  the vote's failure below 1/2 for M = 10, 31 and 101, and (``--sweep``) the breakdown
  observed in a sweep run with ``measure_theory = true`` at its measured p.
- ``rates``: the left side of the convergence-rate bounds, measured on simulated votes
  (:func:`signvote.theory.simulate_vote_descent`) against K, beside Theorem 2 as printed
  and the derived bound (:func:`signvote.theory.vote_rate_bound`) with Lemma 1 or 1bis.
- ``vote_wrong`` (``--sweep``): the wrong-vote fraction measured in training against the
  Byzantine fraction, beside the exact binomial at each coordinate's own p and at the
  single mean p.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from signvote import theory
from signvote.experiment import plots, results, runs, statements, theory_training
from signvote.theory import as_printed, coalition


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _probability_axes(ax, title: str, xlabel: str, ylabel: str, legend_size: int) -> None:
    """Title, labels, a 0..1 y axis, a grid and the legend."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def sign_error_figure():
    plt = plots.pyplot()
    noises = theory.NOISES
    fig, axes = plt.subplots(2, (len(noises) + 1) // 2, figsize=(13, 7), squeeze=False)
    snr = theory.SNR_GRID
    for ax, noise in zip(axes.flat, noises, strict=False):
        ax.plot(snr, [noise.left_tail(s) for s in snr], label="exact", color="black")
        ax.plot(snr, [theory.lemma1_sign_error(s) for s in snr], "--",
                label="Lemma 1" + ("" if noise.symmetric_unimodal else " (assumptions fail)"))
        ax.plot(snr, [theory.cantelli_sign_error(s) for s in snr], ":",
                label="Cantelli 1/(1+S^2)")
        ax.plot(snr, [min(1.0, theory.report_lemma1bis_sign_error(s)) if s else 1.0
                      for s in snr], "-.", label="report's Lemma 1bis 1/(2S^2)")
        _probability_axes(ax, noise.name, "S = |g| / sigma", "P[sign wrong]", 7)
    fig.suptitle("A worker's sign error: exact against the lemmas' bounds")
    fig.tight_layout()
    return fig


LEMMA1BIS_PANELS = ("-bernoulli(0.2), standardised", "-bernoulli(0.1), standardised",
                    "-poisson(0.1), standardised", as_printed.WORST_CASE)
"""The cases of ``lemma1bis.png``: noises where the report's Lemma 1bis fails, and the worst
noise at each S."""


def lemma1bis_figure():
    """The report's Lemma 1bis, 1/(2S^2), against the exact sign error of noises where it
    fails (shaded: where the exact error is above it), beside Chebyshev's 1/S^2 and
    Cantelli's 1/(1+S^2), on a log scale."""
    plt = plots.pyplot()
    tails = {noise.name: noise.left_tail for noise in as_printed.CLAIM_NOISES}
    tails[as_printed.WORST_CASE] = as_printed.worst_sign_error
    fig, axes = plt.subplots(1, len(LEMMA1BIS_PANELS), figsize=(4.2 * len(LEMMA1BIS_PANELS),
                                                                  4.2), squeeze=False)
    snr = [0.5 + i / 100 for i in range(451)]
    for ax, case in zip(axes[0], LEMMA1BIS_PANELS, strict=True):
        exact = [tails[case](s) for s in snr]
        report = [as_printed.report_lemma1bis_sign_error(s) for s in snr]
        ax.plot(snr, exact, color="black", label="exact")
        ax.plot(snr, report, "--", color="red", label="report's Lemma 1bis 1/(2S^2)")
        ax.plot(snr, [as_printed.chebyshev_sign_error(s) for s in snr], ":",
                label="fix: 1/S^2")
        ax.plot(snr, [theory.cantelli_sign_error(s) for s in snr], "-.",
                label="Cantelli 1/(1+S^2)")
        ax.fill_between(snr, report, exact, where=[e > r for e, r in zip(exact, report,
                                                                          strict=True)],
                        color="red", alpha=0.25, label="Lemma 1bis fails")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1.5)
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("S = |g| / sigma")
        ax.set_ylabel("P[sign wrong]")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("The report's Lemma 1bis against the exact sign error where it fails")
    fig.tight_layout()
    return fig


def vote_failure_figure(p: float = 0.7, workers: int = 31, seed: int = 0):
    plt = plots.pyplot()
    gen = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), squeeze=False)
    for row, mode in enumerate(theory.MODES):
        ax = axes[row][0]  # against M
        ms = list(range(3, 152, 4))
        for alpha in (0.0, 0.1, 0.2, 0.3):
            (line,) = ax.semilogy(ms, [max(theory.vote_failure_exact(m, p, round(alpha * m),
                                                                       mode), 1e-16)
                                        for m in ms], label=f"alpha={alpha}")
            ax.semilogy(ms, [theory.vote_failure_bound(m, p, round(alpha * m) / m, mode)
                             for m in ms], "--", color=line.get_color())
        ax.set_xlabel("workers M")
        ax.set_title(f"{mode}, p={p}: exact (solid), bound (dashed)", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row][1]  # against alpha
        counts = list(range(workers))
        ax.plot([f / workers for f in counts],
                [theory.vote_failure_exact(workers, p, f, mode) for f in counts],
                color="black", label="exact")
        ax.plot([f / workers for f in counts],
                [theory.vote_failure_bound(workers, p, f / workers, mode) for f in counts],
                "--", label="Theorem 2" + ("bis" if mode == "byzantine" else ""))
        drawn = counts[::3]
        ax.plot([f / workers for f in drawn],
                [theory.vote_failure_monte_carlo(workers, p, f, mode, 20_000, gen)
                 for f in drawn], "x", color="red", label="simulated votes (20k each)")
        ax.set_xlabel("fraction of adversaries alpha")
        ax.set_title(f"{mode}, M={workers}, p={p}", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row][2]  # against p
        ps = _grid(0.5, 0.99, 50)
        f = workers // 5
        ax.plot(ps, [theory.vote_failure_exact(workers, q, f, mode) for q in ps],
                color="black", label="exact")
        ax.plot(ps, [theory.vote_failure_bound(workers, q, f / workers, mode) for q in ps],
                "--", label="bound")
        ax.set_xlabel("p (an honest sign is right)")
        ax.set_title(f"{mode}, M={workers}, {f} adversaries", fontsize=9)
        ax.legend(fontsize=7)
        for ax in axes[row]:
            ax.set_ylabel("P[vote wrong]")
            ax.grid(alpha=0.3)
    fig.suptitle("The majority vote's failure: exact against Theorems 2 / 2bis")
    fig.tight_layout()
    return fig


def observed_breakdowns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From a sweep run with ``measure_theory = true`` over Byzantine counts: per rule, the
    measured p (last epoch, no adversary; mean over seeds) and the smallest Byzantine
    fraction at which the vote was wrong on half the coordinates or more (the theory's
    failure event) in the last epoch, or None when no tested fraction got there."""
    last = results.last_rows([row for row in rows if row.get("theory_p") is not None])
    out = []
    for rule in sorted({r["rule"] for r in last.values()}):
        mine = [r for r in last.values() if r["rule"] == rule]
        clean = [float(r["theory_p"]) for r in mine if int(r["byzantine"]) == 0]
        if not clean:
            continue
        by_fraction: dict[float, list[float]] = {}
        predicted: dict[float, list[float]] = {}
        for r in mine:
            fraction = int(r["byzantine"]) / int(r["workers"])
            by_fraction.setdefault(fraction, []).append(float(r["theory_vote_wrong"]))
            if r.get("theory_vote_wrong_predicted") is not None:
                predicted.setdefault(fraction, []).append(
                    float(r["theory_vote_wrong_predicted"]))
        broken = [a for a, wrong in sorted(by_fraction.items())
                  if sum(wrong) / len(wrong) >= 0.5]
        out.append({"rule": rule, "p": sum(clean) / len(clean),
                    "breakdown": broken[0] if broken else None,
                    "largest_tested": max(by_fraction),
                    "vote_wrong": {a: sum(w) / len(w) for a, w in sorted(by_fraction.items())},
                    "vote_wrong_predicted": {a: sum(w) / len(w)
                                             for a, w in sorted(predicted.items())},
                    "workers": int(mine[0]["workers"]),
                    "predicted": theory.tolerable_fraction(sum(clean) / len(clean)),
                    "predicted_exact": theory.tolerable_byzantine(
                        int(mine[0]["workers"]), sum(clean) / len(clean)) / int(
                        mine[0]["workers"])})
    return out


def tolerance_figure(observed: list[dict[str, Any]] | None = None):
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ps = _grid(0.5, 0.99, 60)
    ax.plot(ps, [theory.tolerable_fraction(p) for p in ps], color="black",
            label="1 - 1/(2p) (M to infinity)")
    for m in (10, 31, 101):
        ax.step(ps, [max(theory.tolerable_byzantine(m, p), 0) / m for p in ps], where="post",
                label=f"exact, M={m} (failure < 1/2)")
    for point in observed or ():
        if point["breakdown"] is not None:
            ax.plot(point["p"], point["breakdown"], "o", color="red")
            ax.annotate(f"{point['rule']}: broke at {point['breakdown']:.2f}",
                        (point["p"], point["breakdown"]), fontsize=7)
        else:
            ax.plot(point["p"], point["largest_tested"], "^", color="red")
            ax.annotate(f"{point['rule']}: held to {point['largest_tested']:.2f}",
                        (point["p"], point["largest_tested"]), fontsize=7)
    ax.set_xlabel("p (an honest sign is right)")
    ax.set_ylabel("tolerable Byzantine fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def vote_wrong_figure(observed: list[dict[str, Any]]):
    """Per rule of a sweep: the wrong-vote fraction measured in the last epoch against the
    Byzantine fraction, the exact binomial at each coordinate's own empirical p (the
    prediction recorded in training), and the exact binomial at the single mean p."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, max(len(observed), 1), figsize=(5.5 * max(len(observed), 1),
                                                                 4.2), squeeze=False)
    for ax, o in zip(axes[0], observed, strict=False):
        fractions = list(o["vote_wrong"])
        ax.plot(fractions, list(o["vote_wrong"].values()), "o-", color="black",
                label="measured")
        if o["vote_wrong_predicted"]:
            pred = o["vote_wrong_predicted"]
            ax.plot(list(pred), list(pred.values()), "s--", label="exact, each coordinate's p")
        m = o["workers"]
        ax.plot(fractions, [theory.vote_failure_exact(m, o["p"], round(a * m), "byzantine")
                            for a in fractions], ":", label=f"exact, one p = {o['p']:.3f}")
        ax.axhline(0.5, color="grey", lw=0.8)
        _probability_axes(ax, f"{o['rule']}, M = {m}", "Byzantine fraction",
                          "fraction of coordinates with the vote wrong", 8)
    fig.suptitle("The vote in training: measured against the binomial predictions")
    fig.tight_layout()
    return fig


RATE_STEPS = (16, 64, 256, 1024)
RATE_PANELS = (
    theory.RateCase("quadratic", "gaussian", "blind", 10, 4, 0),
    theory.RateCase("quadratic", "gaussian", "byzantine", 10, 4, 0),
    theory.RateCase("quadratic", "gaussian", "blind", 1000, 400, 0, sigma=10.0, start=0.5),
    theory.RateCase("quadratic", "gaussian", "byzantine", 1000, 400, 0, sigma=10.0,
                    start=0.5),
)
"""The settings of the rates figure; the step count is set per point from RATE_STEPS."""


def rate_figure(repeats: int, steps: tuple[int, ...] = RATE_STEPS, seed: int = 0):
    """Measured ``[mean_k E||g_k||_1]^2`` against K for each of
    :data:`RATE_PANELS`, beside every bound of :data:`signvote.theory.RATE_BOUNDS`;
    returns the figure and the checks it ran."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    gen = torch.Generator().manual_seed(seed)
    ran = []
    for ax, panel in zip(axes.flat, RATE_PANELS, strict=True):
        per_k = [theory.rate_check(dataclasses.replace(panel, steps=k), repeats, gen)
                 for k in steps]
        ran += [c for checks in per_k for c in checks]
        measured = [checks[0].measured for checks in per_k]
        ax.errorbar(steps, measured, yerr=[3 * checks[0].measured_se for checks in per_k],
                    fmt="o-", color="black", label="measured (simulated votes)")
        for i, name in enumerate(theory.RATE_BOUNDS):
            hold = per_k[0][i].assumptions_hold
            ax.plot(steps, [checks[i].value for checks in per_k], "--",
                    label=name + ("" if hold else " (assumptions fail)"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("steps K (batch n = K, N = K^2)")
        ax.set_ylabel("[mean_k E||g_k||_1]^2")
        ax.set_title(f"M={panel.workers}, {panel.adversaries} {panel.mode}, "
                     f"sigma={panel.sigma:g}, x0={panel.start:g}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Convergence rate of the vote on a quadratic: measured against the bounds")
    fig.tight_layout()
    return fig, ran


def _rate_record(check: theory.RateCheck) -> dict[str, Any]:
    return {**dataclasses.asdict(check.case), "case": check.case.label, "bound": check.bound,
            "assumptions_hold": check.assumptions_hold, "holds": check.holds,
            "measured": check.measured, "measured_se": check.measured_se,
            "bound_value": check.value, "ratio": check.ratio}


def write(out: str | Path, sweep_dir: str | Path | None = None,
          rate_repeats: int = 10, quick: bool = False) -> dict[str, Any]:
    """Draw the figures into ``out`` and write ``THEORY.md`` and ``checks.json``; with
    ``sweep_dir`` (a sweep with ``measure_theory = true``), mark its observed breakdowns
    on the tolerance figure, draw its wrong-vote fractions and list them. The rate bounds
    are checked on :data:`signvote.theory.RATE_CASES` and :data:`RATE_PANELS`, each
    simulated ``rate_repeats`` times."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    observed: list[dict[str, Any]] = []
    single_p: list[dict[str, Any]] = []
    if sweep_dir is not None:
        rows = results.tidy_rows(sweep_dir)
        observed = observed_breakdowns(rows)
        if any(row.get("theory_p_coord_min") is not None for row in rows):
            single_p = theory_training.single_p_records(rows)
    rates_fig, panel_checks = rate_figure(rate_repeats)
    figures = [("sign_error", sign_error_figure()), ("lemma1bis", lemma1bis_figure()),
               ("vote_failure", vote_failure_figure()),
               ("tolerance", tolerance_figure(observed)), ("rates", rates_fig)]
    if observed:
        figures.append(("vote_wrong", vote_wrong_figure(observed)))
    for name, fig in figures:
        plots.save(fig, out / name)
    gen = torch.Generator().manual_seed(1)
    rate_checks = [c for case in theory.RATE_CASES
                   for c in theory.rate_check(case, rate_repeats, gen)]
    rate_records = [_rate_record(c) for c in rate_checks + panel_checks]
    checks = theory.check_all()
    records = [{"bound": c.bound, "case": c.case, "assumptions_hold": c.assumptions_hold,
                "points": c.points, "holds": c.holds, "violations": len(c.violations),
                "first_violation": list(c.violations[0]) if c.violations else None,
                "tightest_ratio": round(c.tightest_ratio, 4)} for c in checks]
    verdicts = statements.collect(quick=quick)
    if single_p:
        verdicts += theory_training.single_p_verdicts(single_p)
    one_p, one_p_records = as_printed.rate_verdicts(rate_repeats)
    verdicts += one_p
    runs.write_json(out / "checks.json", {"statements": statements.records(verdicts),
                                          "checks": records, "rates": rate_records,
                                          "theorem2bis_rate": one_p_records,
                                          "observed": observed})
    lines = [
        "# The paper's theory in numbers", "",
        *_statement_lines(verdicts, one_p_records, rate_repeats), "",
        "## The project's checks", "",
        "Written by `signvote theory`. Figures: "
        + ", ".join(f"`{name}.png`" for name, _ in figures)
        + ". Each bound is compared with the exact value over a grid: S from "
        "0 to 5 for the lemmas, every adversary count 0..M-1 for the theorems. "
        "\"Tightest\" is the largest exact/bound ratio (1: the bound is reached).", "",
        "| bound | case | assumptions hold | holds | violations | tightest |",
        "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['bound']} | {r['case']} | {'yes' if r['assumptions_hold'] else 'no'}"
                     f" | {'yes' if r['holds'] else 'NO'} | {r['violations']} of "
                     f"{r['points']} | {r['tightest_ratio']} |")
    failed = [r for r in records if not r["holds"]]
    lines += ["", "## Where a bound fails", ""]
    if not failed:
        lines.append("Nowhere.")
    for r in failed:
        s, exact, bound = r["first_violation"]
        lines.append(
            f"- {r['bound']} on {r['case']} (its assumptions "
            f"{'hold' if r['assumptions_hold'] else 'do not hold'}): at {s:g} the exact value "
            f"is {exact:.4f} against the bound {bound:.4f}, at {r['violations']} of "
            f"{r['points']} points.")
    if any(r["bound"] == "Lemma 1" and not r["holds"] for r in failed):
        lines += [
            "- Lemma 1 needs noise that is unimodal and *symmetric*; a zero-mean noise with "
            "a short left tail (exponential - 1) can be wrong more than half the time at "
            "S = 0, because its median is below its mean. The form that holds for every "
            "noise of variance sigma^2 is Cantelli's, 1 / (1 + S^2), which held on every "
            "noise here."]
    if not quick:
        lines += _coalition_lines()
    lines += _rate_lines(rate_checks, rate_repeats)
    if single_p:
        lines += ["", f"## The theorem's single p against training (`{sweep_dir}`)", "",
                  "Per-coordinate p measured by `--measure-theory` (last epoch), and "
                  "Theorem 2bis's step-4 bound, the exact binomial and 1 - 1/(2p) at its "
                  "minimum, median and mean (`signvote.experiment.theory_training`).", "",
                  theory_training.markdown_tables(single_p)]
    if sweep_dir is not None:
        lines += ["", f"## Observed in training (`{sweep_dir}`)", "",
                  "The measured p is the fraction of coordinates on which an honest worker's "
                  "message has the full-batch gradient's sign (last epoch, no adversary). "
                  "The breakdown is the smallest Byzantine fraction whose vote was wrong on "
                  "half the coordinates or more.", "",
                  "The exact column is the largest fraction whose binomial failure "
                  "probability, at the measured p and this M, stays below 1/2 (every "
                  "coordinate assumed to have the same p).", "",
                  "| rule | measured p | 1 - 1/(2p) | exact at this M | observed breakdown |",
                  "|---|---|---|---|---|"]
        for o in observed:
            seen = (f"{o['breakdown']:.2f}" if o["breakdown"] is not None
                    else f"none up to {o['largest_tested']:.2f}")
            lines.append(f"| {o['rule']} | {o['p']:.3f} | {o['predicted']:.3f} | "
                         f"{o['predicted_exact']:.2f} | {seen} |")
        if not observed:
            lines.append("(no run of the sweep has the measurements: set measure_theory = "
                         "true)")
        for o in observed:
            if not o["vote_wrong_predicted"]:
                continue
            lines += ["", f"{o['rule']}: the wrong-vote fraction measured in the last epoch, "
                      "and predicted by the exact binomial at each coordinate's own "
                      "empirical p.", "",
                      "| Byzantine fraction | measured | predicted |", "|---|---|---|"]
            for a, w in o["vote_wrong"].items():
                pred = o["vote_wrong_predicted"].get(a)
                lines.append(f"| {a:.2f} | {w:.3f} | "
                             f"{'-' if pred is None else f'{pred:.3f}'} |")
    runs.atomic_write_text(out / "THEORY.md", "\n".join(lines) + "\n")
    rates_failed = [r for r in rate_records if not r["holds"]]
    summary = statements.summarise(verdicts)
    return {"statements": len(summary),
            "statements_failed": [row["statement"] for row in summary if row["failed_within"]],
            "checks": len(records), "failed": len(failed), "observed": observed,
            "rate_checks": len(rate_records), "rates_failed": len(rates_failed),
            "rates_failed_within_assumptions": sum(r["assumptions_hold"]
                                                   for r in rates_failed)}


def _statement_lines(verdicts: list[as_printed.Verdict], one_p: list[dict[str, Any]],
                     repeats: int) -> list[str]:
    """THEORY.md's first section: every statement checked (:mod:`statements`), what the
    table means, and Theorem 2bis's rate at one p per simulated case."""
    lines = [
        "## The statements, checked", "",
        "Each statement is an inequality `lhs <= rhs` between computable quantities, "
        "checked at every point of a grid on each family of cases (a noise, a setting). "
        "The report's Lemma 1bis and Theorem 2bis are Akoun & Meyer's as printed "
        "(`shared/paper/THEORY.md`; `signvote.theory.as_printed`); \"fix\" rows are the "
        "smallest changes that make a failing statement true; \"ours\" are the project's. "
        "Lemmas: S from 0.05 to 5 on every noise of `theory.as_printed.CLAIM_NOISES` (the "
        "project's six and twelve discrete, asymmetric ones) and on the worst noise at each "
        "S (Cantelli's two-point noise, which reaches 1/(1+S^2)). Proof steps: M in "
        f"{{{', '.join(map(str, as_printed.STEP_GRID_WORKERS))}}}, every Byzantine count "
        "f < M, p in "
        f"{{{', '.join(f'{p:g}' for p in as_printed.STEP_GRID_P)}}} (steps 2 to 4), and the "
        "same M and f with p = 1 - the noise's exact sign error at S (step 5 and the bound "
        "it ends with, against the exact failure with every Byzantine against). \"Worst lhs "
        "/ rhs\" is over the cases within the statement's assumptions (above 1: fails by "
        "that factor).", "",
        *statements.table(verdicts), "",
        "### Theorem 2bis's rate with one p", "",
        "Theorem 2bis uses one p for every coordinate and step. On simulated votes (Gaussian "
        f"noise, {repeats} runs each; each coordinate's exact p = Phi(S) at every step is "
        "known) the printed rate is evaluated at the minimum, median and mean of those p; "
        "inf: the theorem's condition alpha < 1 - 1/(2p) fails there, so it says nothing.",
        "", "| case | p min / median / mean | measured | at min p | at median p | at mean p |",
        "|---|---|---|---|---|---|"]
    by_case: dict[str, list[dict[str, Any]]] = {}
    for record in one_p:
        by_case.setdefault(record["case"], []).append(record)
    for case, rows in by_case.items():
        first = rows[0]
        cells = [("inf" if math.isinf(r["bound"]) else f"{r['bound']:.4g}")
                 + ("" if r["holds"] else " NO") for r in rows]
        lines.append(f"| {case} | {first['p_min']:.3f} / {first['p_median']:.3f} / "
                     f"{first['p_mean']:.3f} | {first['measured']:.4g} +- "
                     f"{first['measured_se']:.2g} | " + " | ".join(cells) + " |")
    return lines


def _coalition_lines() -> list[str]:
    """THEORY.md's section on step 1 (is every Byzantine against the true sign the worst
    case?) and on which bound of the vote's failure is tightest
    (:mod:`signvote.theory.coalition`)."""
    lines = [
        "", "## Step 1: the coalition's worst case, and the tightest bound", "",
        "Exact per-coordinate outcomes of the vote under each coalition strategy (binomial "
        "sums over the honest vote sum s, `theory.coalition`). `all-against` is step 1's "
        "worst case (every Byzantine votes against the true sign); the others read only the "
        "honest votes, and sometimes put a wrong honest majority right. The largest "
        "amount by which each fails less often than all-against, over M in {5, 11, 31, 101, "
        "6, 10, 30, 100}, every f < M/2 and p from 0.55 to 0.99:", "",
        "| strategy | true sign | largest gap in P[fail] | at (M, f, p) | mean gap |",
        "|---|---|---|---|---|"]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in coalition.worst_case_gaps():
        key = (row["strategy"], row["true_sign"])
        if key not in best or row["max failure gap"] > best[key]["max failure gap"]:
            best[key] = row
    for (strategy, sign), row in best.items():
        lines.append(f"| {strategy} | {sign:+d} | {row['max failure gap']:.3f} | "
                     f"({row['M']}, {row['at f']}, {row['at p']:g}) | "
                     f"{row['mean failure gap']:.3f} |")
    lines += ["", "`mengoli-optimal` is our reading of Mengoli et al.'s optimal attack (a "
              "coalition that knows the true sign picks the most damaging total), not their "
              "printed definition, which we could not read; under it the attack is "
              "all-against. `cancel-to-zero` reaches all-against's failure while reading only "
              "the honest votes."]
    table = coalition.tightest_bounds()
    names = list(table[0].bounds)
    lines += ["", "Which bound of the vote's failure (every Byzantine against) is the smallest "
              "valid one, per M (counts of grid points; f < M/2, p from 0.55 to 0.99). "
              "Mengoli et al. 2025's bound is not among them: its statement was not "
              "available to us.", "",
              "| M | points | " + " | ".join(f"tightest: {n}" for n in names)
              + " | none below 1 |", "|---|---|" + "---|" * (len(names) + 1)]
    for m in sorted({pt.workers for pt in table}):
        pts = [pt for pt in table if pt.workers == m]
        lines.append(f"| {m} | {len(pts)} | "
                     + " | ".join(str(sum(pt.tightest == n for pt in pts)) for n in names)
                     + f" | {sum(not pt.tightest for pt in pts)} |")
    return lines


def _rate_lines(checks: list[theory.RateCheck], repeats: int) -> list[str]:
    """THEORY.md's section on the convergence rates: one row per case, one column per
    bound (the bound, measured / bound, and a mark where it fails or where its
    assumptions do not hold)."""
    lines = [
        "", "## Convergence rates", "",
        "The left side of the rate bounds, `[mean_k E||g_k||_1]^2` over K steps on Theorem "
        "2's schedule (lr = sqrt((f0 - f*) / (||L||_1 K)), batch n = K, N = K^2), measured "
        f"on simulated majority votes (mean of {repeats} independent runs; +- one standard "
        "error) in d = 10 coordinates with L_i = 1 (`signvote.theory.simulate_vote_descent`"
        "). Blind adversaries send their own sign negated; Byzantine ones send -sign(g) on "
        "every coordinate.", "",
        "- Theorem 2: Bernstein et al., ICLR 2019, Theorem 2 as printed in the version "
        "submitted for review, which Akoun & Meyer restate as their Theorem 2 in the same "
        "form. For blind adversaries and noise that is unimodal and symmetric.",
        "- derived: `signvote.theory.vote_rate_bound`, our derivation of a rate for Theorem "
        "2bis written before the report's text was at hand (its own rate is checked in "
        "\"Theorem 2bis's rate with one p\" above), for blind or Byzantine adversaries, "
        "with a worker's sign error bounded by Lemma 1 (symmetric unimodal noise) or the "
        "Cantelli form (any noise of that variance).", "",
        "Each cell: the bound, and measured / bound in brackets. NO: the measurement exceeds "
        "the bound by more than 3 standard errors. (a): the bound's assumptions do not hold "
        "in that case. The points of `rates.png` are checked the same way; they are in "
        "`checks.json` under \"rates\" with these rows.", "",
        "| case | measured | " + " | ".join(theory.RATE_BOUNDS) + " |",
        "|---|---|" + "---|" * len(theory.RATE_BOUNDS)]
    by_case: dict[str, list[theory.RateCheck]] = {}
    for check in checks:
        by_case.setdefault(check.case.label, []).append(check)
    for label, row in by_case.items():
        cells = [f"{c.value:.4g} ({c.ratio:.3f}){'' if c.holds else ' NO'}"
                 f"{'' if c.assumptions_hold else ' (a)'}" for c in row]
        lines.append(f"| {label} | {row[0].measured:.4g} +- {row[0].measured_se:.2g} | "
                     + " | ".join(cells) + " |")
    failed = [c for c in checks if not c.holds]
    lines += ["", "Where a rate bound fails:", ""]
    if not failed:
        lines.append("Nowhere.")
    for c in failed:
        lines.append(f"- {c.bound} on {c.case.label} (its assumptions "
                     f"{'hold' if c.assumptions_hold else 'do not hold'}): measured "
                     f"{c.measured:.4g} +- {c.measured_se:.2g} against the bound "
                     f"{c.value:.4g}.")
    if any(c.bound == "Theorem 2" and c.case.mode == "byzantine" for c in failed):
        lines.append(
            "- Theorem 2 is for blind adversaries. Byzantine ones vote against the true "
            "gradient on every coordinate, which holds the iterate where a worker's S is "
            "of order 1 whatever M is, so Theorem 2's sigma / sqrt(M) term cannot cover "
            "them when M is large. The derived bound, which pays 2 S* ||sigma||_1 for "
            "that, holds there.")
    return lines
