"""References and comparable axes in the report's figures (issue 10 items 1 and 2)."""

import math

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")

from clusterprobe.report.figures import chance_level, layer_comparison_figure, training_dynamics_figure


def tidy():
    rows = []
    for run, scale in (("resa", 1.0), ("byol", 0.2)):
        for epoch in (0, 5):
            for layer in ("H", "Z"):
                for metric in ("nmi", "linear_top1"):
                    value = scale * (0.1 + 0.1 * epoch / 5 + (0.05 if layer == "H" else 0) + (0.3 if metric == "linear_top1" else 0))
                    rows.append(dict(run=run, method=run, epoch=epoch, layer=layer, split="test", metric=metric,
                                     value=value, std=math.nan, k=10 if metric == "nmi" else None))
    return pd.DataFrame(rows)


def test_chance_levels():
    table = tidy()
    assert chance_level(table, "linear_top1") == 0.1 and chance_level(table, "nmi") == 0.0
    assert chance_level(table, "silhouette_true") is None


def test_layer_comparison_draws_the_random_initialisation_and_chance():
    table = tidy()
    fig = layer_comparison_figure(table, [("nmi", "NMI"), ("linear_top1", "Linear")])
    linear = fig.axes[1]
    chance = [line for line in linear.get_lines() if line.get_label() == "chance"]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 0.1)
    hollow = [line for line in linear.get_lines() if line.get_markerfacecolor() == "none"]
    assert len(hollow) == 2  # epoch 0 of H and of Z, for both runs
    runs = sorted(table["run"].unique())
    expected_h = [table.query(f"run == '{r}' and epoch == 0 and layer == 'H' and metric == 'linear_top1'")["value"].item()
                  for r in runs]
    assert any(np.allclose(line.get_ydata(), expected_h) for line in hollow)
    assert {"H", "Z", "epoch 0", "chance"} <= {t.get_text() for t in fig.axes[0].get_legend().get_texts()}


def test_training_dynamics_share_one_y_range_per_metric_unless_zoomed():
    table = tidy()
    shared = training_dynamics_figure(table, [("nmi", "NMI"), ("linear_top1", "Linear")])
    axes = np.array(shared.axes[:4]).reshape(2, 2)
    assert axes[0][0].get_ylim() == axes[1][0].get_ylim() and axes[0][1].get_ylim() == axes[1][1].get_ylim()
    zoomed = training_dynamics_figure(table, [("nmi", "NMI"), ("linear_top1", "Linear")], same_axes=False)
    axes = np.array(zoomed.axes[:4]).reshape(2, 2)
    assert axes[0][0].get_ylim() != axes[1][0].get_ylim()


def test_report_command_passes_the_figure_options(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import clusterprobe.report as report_package
    from cli.main import app

    seen = {}

    def fake_build_report(runs_dir, out, settings, progress=True):
        seen["settings"] = settings
        from clusterprobe.errors import ReportError

        raise ReportError("stop here")

    monkeypatch.setattr(report_package, "build_report", fake_build_report)
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--no-per-class", "--zoom-per-run", "--branch", "online"])
    assert result.exit_code == 1 and "stop here" in result.output
    settings = seen["settings"]
    assert (settings.per_class, settings.same_axes, settings.branch) == (False, False, "online")


def test_chance_lines_of_runs_on_data_sets_with_other_class_counts():
    """The chance of accuracies came from the first k-means row of the whole table: with a
    CIFAR-10 and a CIFAR-100 run in one report, the CIFAR-100 run's panels showed 1/10."""
    table = tidy()
    table.loc[(table["run"] == "byol") & (table["metric"] == "nmi"), "k"] = 100
    assert chance_level(table, "linear_top1") is None  # no single chance for both runs
    assert chance_level(table[table["run"] == "byol"], "linear_top1") == 0.01
    comparison = layer_comparison_figure(table, [("nmi", "NMI"), ("linear_top1", "Linear")])
    assert not [line for line in comparison.axes[1].get_lines() if line.get_label() == "chance"]
    dynamics = training_dynamics_figure(table, [("nmi", "NMI"), ("linear_top1", "Linear")])
    axes = np.array(dynamics.axes[:4]).reshape(2, 2)  # rows: runs sorted by name (byol, resa)
    for row, expected in ((0, 0.01), (1, 0.1)):
        chance = [line for line in axes[row][1].get_lines() if line.get_label() == "chance"]
        assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), expected)


def test_run_labels_name_the_method_once():
    from clusterprobe.report.figures import _run_label

    table = pd.DataFrame({"run": ["raw pixels (digits)", "resa-cifar10", "baseline", "byol"],
                          "method": ["pixels", "resa", "byol", "byol"]})
    assert _run_label(table, "raw pixels (digits)") == "raw pixels (digits)"
    assert _run_label(table, "resa-cifar10") == "resa-cifar10"
    assert _run_label(table, "baseline") == "byol\n(baseline)"
    assert _run_label(table, "byol") == "byol"
