"""Figures and the paper's reproduction."""

import json
import math

import pytest

from signvote.experiment import plots, reproduce, results


def fake_rows(rules=("sgd", "signsgd", "signum"), counts=range(5), seeds=(1, 2), epochs=3):
    rows = []
    for rule in rules:
        for count in counts:
            for seed in seeds:
                for epoch in range(1, epochs + 1):
                    rows.append({"run": f"{rule}-{count}-{seed}", "rule": rule, "workers": 10,
                                 "byzantine": count, "blind": 0, "seed": seed, "epoch": epoch,
                                 "test_loss": 1.0 / (epoch + count + seed),
                                 "test_acc": 0.5 + 0.1 * epoch - 0.05 * count + 0.01 * seed,
                                 "aggregator": "mean", "attack": "none"})
    return rows


def test_the_paper_layout_has_the_papers_columns_rows_and_curves():
    rows = fake_rows()
    fig = plots.paper_figure(rows, "byzantine", "title")
    axes = fig.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["DistSGD", "SignSGD", "Signum"]
    assert [ax.get_ylabel() for ax in axes] == ["test loss"] * 3 + ["test accuracy"] * 3
    for ax in axes:
        assert len(ax.lines) == 5  # one curve per adversary count
    # a curve is the mean over seeds, epoch by epoch
    signum_acc = axes[5].lines[2]  # 2 Byzantine
    want = [sum(0.5 + 0.1 * e - 0.1 + 0.01 * s for s in (1, 2)) / 2 for e in (1, 2, 3)]
    assert list(signum_acc.get_ydata()) == pytest.approx(want)
    assert signum_acc.get_label() == "20% byzantine"
    plots.pyplot().close(fig)


def test_the_heatmap_boxes_each_rows_worst_attack(tmp_path):
    rows = []
    accs = {("krum", "alie"): 0.8, ("krum", "ipm"): 0.6, ("krum", "none"): 0.9,
            ("median", "alie"): 0.5, ("median", "ipm"): 0.7, ("median", "none"): float("nan")}
    for (agg, attack), acc in accs.items():
        rows.append({"run": f"{agg}-{attack}", "rule": "sgd", "aggregator": agg,
                     "attack": attack, "epoch": 1, "test_acc": acc})
    names, attacks, grid = plots.final_accuracy_grid(rows)
    assert names == ["sgd / krum", "sgd / median"] and attacks == ["alie", "ipm", "none"]
    worst = plots.worst_attacks(grid)
    # brute force: the lowest value of each row, a diverged (NaN) run lowest of all
    for i, row in enumerate(grid):
        ranked = sorted(range(len(row)), key=lambda j: -1 if math.isnan(row[j]) else row[j])
        assert worst[i] == ranked[0]
    assert worst == [1, 2]
    fig = plots.heatmap(rows)
    boxes = [p for p in fig.axes[0].patches]
    assert [(b.get_x() + 0.5, b.get_y() + 0.5) for b in boxes] == [(1, 0), (2, 1)]
    paths = plots.save(fig, tmp_path / "heat")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:400]


def test_reproduce_builds_the_papers_grid():
    runs = reproduce.configs("mnist-byzantine", "full", [1, 2])
    assert len(runs) == 3 * 5 * 2
    assert {(r.rule, r.aggregator) for r in runs} == {
        ("sgd", "sum"), ("signsgd", "majority-vote"), ("signum", "majority-vote")}
    assert {r.byzantine for r in runs} == set(range(5)) and {r.blind for r in runs} == {0}
    assert {r.lr for r in runs if r.rule != "sgd"} == {1e-5}
    assert {r.epochs for r in runs} == {25} and {r.model for r in runs} == {"mnistnet"}
    reduced = reproduce.configs("mnist-blind", "reduced", [1])
    assert {r.epochs for r in reduced} == {3} and {r.model for r in reduced} == {"smallcnn"}
    assert {r.blind for r in reduced} == set(range(5))


@pytest.mark.slow
def test_the_logistic_byzantine_figure_reproduces_the_papers_ordering(tmp_path):
    section = reproduce.reproduce("logreg-byzantine", tmp_path, progress=False)
    acc = {label: [c["acc"] for c in cells] for label, cells in section["ours"].items()}
    assert acc["Signum"][4] >= acc["SignSGD"][4]  # at 40% Byzantine
    assert abs(acc["DistSGD"][1] - 50.0) <= 5  # one Byzantine worker: chance
    loss = section["ours"]["DistSGD"][1]["loss"]
    assert loss == pytest.approx(math.log(2), abs=0.01)  # the initial model's loss
    assert (tmp_path / "logreg-byzantine.png").exists()
    assert (tmp_path / "logreg-byzantine.svg").exists()
    report = (tmp_path / "REPORT.md").read_text()
    assert "DOES NOT HOLD" not in report and "| Signum | ours |" in report
    assert "every rate bound holds: 54 of 54" in report and "WITHIN" not in report
    rows = results.tidy_rows(tmp_path / "logreg-byzantine")
    assert len(rows) == 15 * 80
    assert json.loads((tmp_path / "logreg-byzantine" / "report.json").read_text())[
        "scale"] == "full"
