"""``signvote theory --out DIR``: the paper's bounds beside the exact values, as figures and
``DIR/THEORY.md``.

- ``sign_error``: for each noise of :data:`signvote.theory.NOISES`, the exact
  probability that a worker's sign is wrong against S, beside Lemma 1 and Lemma 1bis.
- ``vote_failure``: the exact failure probability of the majority vote beside the bound
  of Theorem 2 (blind) or 2bis (Byzantine). It is drawn against M, against the fraction
  alpha of adversaries and against p.
- ``tolerance``: the largest tolerable Byzantine fraction against p. The limit
  ``1 - 1/(2p)`` of Theorem 2bis is drawn beside the exact largest fraction that keeps
  the vote's failure below 1/2 for M = 10, 31 and 101, and (``--sweep``) the breakdown
  observed in a sweep run with ``measure_theory = true`` at its measured p.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from signvote import theory
from signvote.experiment import plots, results, runs


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def sign_error_figure():
    plt = plots.pyplot()
    noises = theory.NOISES
    fig, axes = plt.subplots(2, (len(noises) + 1) // 2, figsize=(13, 7), squeeze=False)
    snr = theory.SNR_GRID
    for ax, noise in zip(axes.flat, noises, strict=False):
        ax.plot(snr, [noise.left_tail(s) for s in snr], label="exact", color="black")
        ax.plot(snr, [theory.lemma1_sign_error(s) for s in snr], "--",
                label="Lemma 1" + ("" if noise.symmetric_unimodal else " (assumptions fail)"))
        ax.plot(snr, [theory.lemma1bis_sign_error(s) for s in snr], ":", label="Lemma 1bis")
        ax.set_title(noise.name, fontsize=10)
        ax.set_xlabel("S = |g| / sigma")
        ax.set_ylabel("P[sign wrong]")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("A worker's sign error: exact against the lemmas' bounds")
    fig.tight_layout()
    return fig


def vote_failure_figure(p: float = 0.7, workers: int = 31):
    plt = plots.pyplot()
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


def write(out: str | Path, sweep_dir: str | Path | None = None) -> dict[str, Any]:
    """Draw the three figures into ``out`` and write ``THEORY.md`` and ``checks.json``;
    with ``sweep_dir`` (a sweep with ``measure_theory = true``), mark its observed
    breakdowns on the tolerance figure and list them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    observed = []
    if sweep_dir is not None:
        observed = observed_breakdowns(results.tidy_rows(sweep_dir))
    for name, fig in (("sign_error", sign_error_figure()),
                      ("vote_failure", vote_failure_figure()),
                      ("tolerance", tolerance_figure(observed))):
        plots.save(fig, out / name)
    checks = theory.check_all()
    records = [{"bound": c.bound, "case": c.case, "assumptions_hold": c.assumptions_hold,
                "points": c.points, "holds": c.holds, "violations": len(c.violations),
                "first_violation": list(c.violations[0]) if c.violations else None,
                "tightest_ratio": round(c.tightest_ratio, 4)} for c in checks]
    runs.write_json(out / "checks.json", {"checks": records, "observed": observed})
    lines = [
        "# The paper's theory in numbers", "",
        "Written by `signvote theory`. Figures: `sign_error.png`, `vote_failure.png`, "
        "`tolerance.png`. Each bound is compared with the exact value over a grid: S from "
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
            "noise of variance sigma^2 is Lemma 1bis, 1 / (1 + S^2) (Cantelli), which held "
            "on every noise here."]
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
    return {"checks": len(records), "failed": len(failed), "observed": observed}
