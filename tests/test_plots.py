"""Figures never pool runs that differ in more than their seed; regression and diverged
runs are drawn as what they are (issue 15)."""

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signvote.experiment import config, plots, reproduce
from signvote.experiment.config import ConfigError, TrainConfig

MISSING = object()


def config_row(**fields):
    """The config columns of a tidy row, as tidy_rows writes them (a resolved config)."""
    values = config.resolve(TrainConfig(**fields)).to_dict()
    values.pop("out")
    return values


def with_metrics(base, run, epochs=3, acc=lambda e: 0.5 + 0.1 * e, loss=lambda e: 1 / e,
                 status="completed"):
    return [{"run": run, "status": status, **base, "epoch": e, "test_loss": loss(e),
             "test_acc": acc(e)} for e in range(1, epochs + 1)]


def sweep_rows(grid, n_epochs=3, **fixed):
    """Rows of every point of ``grid`` (field -> values), one run each."""
    rows = []
    names = list(grid)
    for values in itertools.product(*grid.values()):
        base = config_row(**fixed, **dict(zip(names, values, strict=True)))
        # the run's id as a sweep names it: two calls never give two runs one id
        rows += with_metrics(base, config.trajectory_id(config.from_dict(base)), n_epochs)
    return rows


def close(fig):
    plots.pyplot().close(fig)


# --- varying_fields against a brute-force reference ---------------------------------------


def brute_force_varying(configs, ignore):
    """Every pair of runs: a field varies when two runs hold different values of it and
    differ in it as run identities do (trajectory_key: a value that is the default the
    other fields give, like aggregator_f = byzantine + blind, is no difference)."""
    keys = [config.trajectory_key(c) for c in configs]
    out = {}
    for name, spec in config.FIELDS.items():
        if name in ignore or spec.metadata["section"] not in config.KEY_SECTIONS:
            continue
        for i, j in itertools.combinations(range(len(configs)), 2):
            a, b = getattr(configs[i], name), getattr(configs[j], name)
            if a != b and keys[i].get(name, MISSING) != keys[j].get(name, MISSING):
                out[name] = sorted({getattr(c, name) for c in configs},
                                   key=lambda v: (v is None, v if v is not None else 0))
                break
    return out


point = st.fixed_dictionaries({
    "rule": st.sampled_from(["sgd", "signum"]),
    "byzantine": st.integers(0, 2),
    "blind": st.integers(0, 1),
    "aggregator_f": st.sampled_from([None, 2, 3]),
    "lr": st.sampled_from([None, 1e-3, 1e-4]),
    "attack": st.sampled_from(["vote-cancel", "inf"]),
    "seed": st.sampled_from([1, 2]),
    "epochs": st.sampled_from([3, 80]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(point, min_size=1, max_size=5),
       st.sets(st.sampled_from(["seed", "byzantine", "rule", "attack", "blind"])))
def test_varying_fields_matches_a_pairwise_brute_force(points, ignore):
    configs = [config.resolve(TrainConfig(**p)) for p in points]
    rows = []
    for i, c in enumerate(configs):  # three epochs each, as a tidy table has
        base = c.to_dict()
        base.pop("out")
        rows += with_metrics(base, f"run{i}")
    assert plots.varying_fields(rows, ignore) == brute_force_varying(configs, ignore)


def test_varying_fields_by_hand():
    # aggregator_f follows byzantine (its default): no difference of its own
    rows = sweep_rows({"byzantine": [0, 1, 2], "seed": [1, 2]})
    assert {r["aggregator_f"] for r in rows} == {0, 1, 2}
    assert plots.varying_fields(rows, ("byzantine", "seed")) == {}
    assert plots.varying_fields(rows, ("seed",)) == {"byzantine": [0, 1, 2]}
    # each rule at its own default lr (1e-3, 1e-4): the same lr rule; an explicit 1e-5 is not
    rules = sweep_rows({"rule": ["sgd", "signum"]})
    assert plots.varying_fields(rules, ("rule",)) == {}
    explicit = sweep_rows({"rule": ["signum"]}, lr=1e-5) + sweep_rows({"rule": ["sgd"]})
    assert plots.varying_fields(explicit, ("rule",)) == {"lr": [1e-5, 1e-3]}
    # rows of an old sweep lack a field added later: it is at its default, not "None"
    old = [dict(r) for r in rows]
    for r in old[:3]:
        r.pop("partition_gamma")
    assert plots.varying_fields(old, ("byzantine", "seed")) == {}
    # output fields and metrics are never a difference
    mixed = [dict(r, data_dir=f"d{i}", tensorboard=bool(i % 2), test_acc=i)
             for i, r in enumerate(rows)]
    assert plots.varying_fields(mixed, ("byzantine", "seed")) == {}
    assert plots.varying_fields([], ()) == {}


# --- the paper's layout --------------------------------------------------------------------


def test_the_paper_layout_refuses_an_aggregator_x_attack_sweep_naming_what_differs():
    rows = sweep_rows({"aggregator": ["krum", "median", "mean"],
                       "attack": ["alie", "ipm", "vote-cancel"], "seed": [1, 2]},
                      rule="sgd", byzantine=2)
    with pytest.raises(plots.PlotError) as info:
        plots.paper_figure(rows, "byzantine")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ConfigError)
    assert "aggregator (krum, mean, median)" in message
    assert "attack (alie, ipm, vote-cancel)" in message
    assert "--kind heatmap" in message and "seed" in message
    assert "byzantine (" not in message  # the curves' own field is no complaint


def test_the_paper_layout_refuses_when_the_other_adversary_count_varies():
    rows = sweep_rows({"rule": ["sgd", "signum"], "byzantine": [0, 1, 2, 3, 4]})
    with pytest.raises(plots.PlotError, match=r"byzantine \(0, 1, 2, 3, 4\)") as info:
        plots.paper_figure(rows, "blind")
    assert "--adversary byzantine" in str(info.value)
    both = sweep_rows({"byzantine": [0, 1], "blind": [0, 1]})
    with pytest.raises(plots.PlotError, match=r"blind \(0, 1\)") as info:
        plots.paper_figure(both, "byzantine")
    assert "--adversary blind" not in str(info.value)  # it varies too: no way out there


def test_the_paper_layout_refuses_columns_in_different_settings():
    rows = (sweep_rows({"byzantine": [0, 1]}, rule="sgd", epochs=3)
            + sweep_rows({"byzantine": [0, 1]}, rule="signum", epochs=5))
    with pytest.raises(plots.PlotError, match=r"epochs \(3, 5\)"):
        plots.paper_figure(rows, "byzantine")


def test_the_paper_layout_draws_the_papers_own_sweep():
    # the reproduce grid: each rule with its own aggregator and lr, 0-4 Byzantine, 2 seeds
    rows = []
    for i, c in enumerate(reproduce.configs("mnist-byzantine", "reduced", [1, 2])):
        base = c.to_dict()
        base.pop("out")
        rows += with_metrics(base, f"run{i}")
    fig = plots.paper_figure(rows, "byzantine", "title")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["DistSGD", "SignSGD", "Signum"]
    assert [len(ax.lines) for ax in fig.axes] == [5] * 6
    close(fig)


def test_panels_without_runs_are_left_out_and_other_rules_get_their_column():
    rows = sweep_rows({"byzantine": [0, 1]}, rule="sgd")
    fig = plots.paper_figure(rows, "byzantine")
    assert [ax.get_title() for ax in fig.axes] == ["DistSGD", ""]
    assert all(len(ax.lines) == 2 for ax in fig.axes)
    close(fig)
    rows += sweep_rows({"byzantine": [0, 1]}, rule="stochastic-sign")
    fig = plots.paper_figure(rows, "byzantine")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["DistSGD", "stochastic-sign"]
    close(fig)


def test_the_paper_layout_of_a_regression_sweep_has_no_accuracy_row():
    rows = []
    for i, count in enumerate(range(3)):
        base = config_row(dataset="linreg", rule="signum", byzantine=count)
        rows += with_metrics(base, f"run{i}", acc=lambda e: None)
    fig = plots.paper_figure(rows, "byzantine")
    assert [ax.get_ylabel() for ax in fig.axes] == ["test loss"]
    assert len(fig.axes[0].lines) == 3
    assert fig.axes[0].get_xlabel() == "epoch"
    close(fig)


def test_a_diverged_run_ends_its_curve_with_a_marker():
    base = config_row(rule="signum", byzantine=1)
    rows = (with_metrics(base | {"seed": 1}, "a", epochs=4)
            + with_metrics(base | {"seed": 2}, "b", epochs=3, status="diverged",
                           loss=lambda e: 1 / e if e < 3 else float("nan"),
                           acc=lambda e: 0.5 + 0.1 * e if e < 3 else None))
    rows += with_metrics(config_row(rule="signum", byzantine=0), "c", epochs=4)
    # the marker reads a run's status; epochs 4 and 3 would differ as "epochs" otherwise
    for r in rows:
        r["epochs"] = 4
    fig = plots.paper_figure(rows, "byzantine")
    loss_ax = fig.axes[0]
    curves = [ln for ln in loss_ax.lines if ln.get_marker() != "x"]
    markers = [ln for ln in loss_ax.lines if ln.get_marker() == "x"]
    one = next(ln for ln in curves if ln.get_label() == "10% byzantine")
    # the mean over both seeds, up to the last epoch both have: 1, 2
    assert list(one.get_xdata()) == [1, 2]
    assert list(one.get_ydata()) == pytest.approx([1.0, 0.5])
    assert len(markers) == 1
    assert (list(markers[0].get_xdata()), list(markers[0].get_ydata())) == ([2], [0.5])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["0% byzantine", "10% byzantine", "diverged"]
    close(fig)


def test_an_unknown_adversary_is_refused():
    with pytest.raises(plots.PlotError, match="valid: byzantine, blind"):
        plots.paper_figure(sweep_rows({"byzantine": [0]}), "sybil")


# --- the heatmap ---------------------------------------------------------------------------


def texts(ax):
    return [[t.get_text() for t in ax.texts if round(t.get_position()[1]) == i]
            for i in range(len(ax.get_yticklabels()))]


def test_the_heatmap_labels_rows_by_every_other_field_that_differs():
    rows = sweep_rows({"aggregator": ["krum", "median"], "byzantine": [1, 2],
                       "attack": ["alie", "inf"], "seed": [1, 2]}, rule="sgd", workers=10)
    for r in rows:  # accuracy by aggregator, Byzantine count, attack and seed
        r["test_acc"] = (0.9 - 0.1 * r["byzantine"] - (r["attack"] == "inf") * 0.2
                         + (r["aggregator"] == "krum") * 0.05 + 0.01 * r["seed"])
    grid = plots.final_grid(rows)
    assert grid.names == ["sgd / krum, byzantine=1", "sgd / krum, byzantine=2",
                          "sgd / median, byzantine=1", "sgd / median, byzantine=2"]
    assert grid.attacks == ["alie", "inf"]
    # every cell is the mean over seeds only (an independent sum)
    for i, (agg, byz) in enumerate(itertools.product(["krum", "median"], [1, 2])):
        for j, attack in enumerate(["alie", "inf"]):
            want = sum(0.9 - 0.1 * byz - (attack == "inf") * 0.2 + (agg == "krum") * 0.05
                       + 0.01 * s for s in (1, 2)) / 2
            assert grid.values[i][j] == pytest.approx(want)
    fig = plots.heatmap(rows)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == grid.names
    close(fig)


def test_the_heatmap_marks_diverged_and_missing_cells_and_never_boxes_a_missing_one():
    rows = []
    cells = {("krum", "alie"): [0.8, 0.6], ("krum", "inf"): [0.7, None],
             ("median", "alie"): [None, None]}  # median x inf: no run; None: diverged
    for (agg, attack), accs in cells.items():
        for seed, acc in enumerate(accs):
            rows.append({"run": f"{agg}-{attack}-{seed}", "rule": "sgd", "aggregator": agg,
                         "attack": attack, "seed": seed, "epoch": 2, "test_loss": 0.1,
                         "test_acc": acc,
                         "status": "diverged" if acc is None else "completed"})
    grid = plots.final_grid(rows)
    assert grid.values[0][0] == pytest.approx(0.7)
    assert math.isnan(grid.values[0][1]) and math.isnan(grid.values[1][0])
    assert grid.values[1][1] is None
    assert plots.worst_attacks(grid.values) == [1, 0]
    fig = plots.heatmap(rows)
    ax = fig.axes[0]
    assert texts(ax) == [["70", "div. 1/2", "div. 1/2"], ["div.", "no run", "div."]]
    boxes = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches]
    assert boxes == [(1, 0), (0, 1)]
    close(fig)


def test_worst_attacks_skips_missing_cells_and_reads_loss_as_lower_is_better():
    assert plots.worst_attacks([[None, 0.5, 0.7], [None, None]]) == [1, None]
    assert plots.worst_attacks([[0.2, 0.9, None]], higher_is_better=False) == [1]
    assert plots.worst_attacks([[0.2, float("nan")]], higher_is_better=False) == [1]


def test_the_heatmap_of_a_regression_sweep_shows_the_final_test_loss():
    rows = []
    for i, attack in enumerate(["inf", "vote-cancel"]):
        base = config_row(dataset="linreg", rule="signum", byzantine=1, attack=attack)
        rows += with_metrics(base, f"run{i}", acc=lambda e: None,
                             loss=lambda e, i=i: (1 + i) / e)
    grid = plots.final_grid(rows)
    assert grid.metric == "test_loss"
    assert grid.values == [[pytest.approx(1 / 3), pytest.approx(2 / 3)]]
    fig = plots.heatmap(rows)
    ax = fig.axes[0]
    assert texts(ax) == [["0.333", "0.667", "0.667"]]  # the worst is the highest loss
    assert [(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches] == [(1, 0)]
    assert "test loss" in fig.axes[1].get_ylabel()
    assert "accuracy" not in ax.get_title()
    close(fig)


def test_the_heatmap_refuses_a_sweep_mixing_regression_and_classification():
    rows = (with_metrics(config_row(dataset="linreg"), "a", acc=lambda e: None)
            + with_metrics(config_row(dataset="logreg"), "b"))
    with pytest.raises(plots.PlotError, match=r"dataset \(linreg, logreg\)"):
        plots.heatmap(rows)


def test_a_count_has_one_colour_in_every_panel_as_in_the_one_legend():
    rows = (sweep_rows({"byzantine": [1]}, rule="sgd")
            + sweep_rows({"byzantine": [0, 1]}, rule="signum"))
    fig = plots.paper_figure(rows, "byzantine")
    colour = {}
    for ax in fig.axes:
        for line in ax.lines:
            assert colour.setdefault(line.get_label(), line.get_color()) == line.get_color()
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0% byzantine", "10% byzantine"]
    assert [h.get_color() for h in legend.legend_handles] == [colour["0% byzantine"],
                                                              colour["10% byzantine"]]
    close(fig)


def test_varying_fields_takes_values_no_config_holds():
    rows = [{"rule": "nope", "lr": [1, 2]}, {"rule": "nope", "lr": [1, 3]}]
    assert plots.varying_fields(rows) == {"lr": ["[1, 2]", "[1, 3]"]}
