"""Paper tables (LaTeX, Markdown) and the summary at the top of the report page (issue 10)."""

import math

import pandas as pd
import pytest

from clusterprobe.report import tables


def tidy(rows):
    return pd.DataFrame([dict(run=r, method=r, epoch=e, layer=l, split="test", metric=m, value=v,
                              std=s) for r, e, l, m, v, s in rows])


ROWS = [
    # run, epoch, layer, metric, value, std
    ("resa", 0, "H", "nmi", 0.30, 0.01), ("resa", 0, "Z", "nmi", 0.20, 0.02),
    ("resa", 0, "H", "linear_top1", 0.50, math.nan), ("resa", 0, "Z", "linear_top1", 0.40, math.nan),
    ("resa", 0, "H", "silhouette_true", 0.10, math.nan), ("resa", 0, "Z", "silhouette_true", 0.05, math.nan),
    ("resa", 5, "H", "nmi", 0.60, 0.004), ("resa", 5, "Z", "nmi", 0.55, 0.02),
    ("resa", 5, "H", "linear_top1", 0.80, math.nan), ("resa", 5, "Z", "linear_top1", 0.85, math.nan),
    ("resa", 5, "H", "silhouette_true", 0.20, math.nan), ("resa", 5, "Z", "silhouette_true", 0.10, math.nan),
    ("resa", 5, "H", "silhouette_true_spread", 0.9, math.nan), ("resa", 5, "Z", "silhouette_true_spread", 0.1, math.nan),
    ("byol", 0, "H", "nmi", 0.40, 0.01), ("byol", 0, "Z", "nmi", 0.35, 0.01),
    ("byol", 3, "H", "nmi", 0.20, 0.01), ("byol", 3, "Z", "nmi", 0.15, 0.01),
]


def test_paper_table_markdown_and_latex_mark_the_best_value_per_column():
    values, stds = tables.paper_table(tidy(ROWS))
    assert list(values.index) == [("byol", "H"), ("byol", "Z"), ("resa", "H"), ("resa", "Z")]
    assert list(values.columns) == ["nmi", "silhouette_true", "linear_top1"]  # the paper's order, spreads left out
    assert values.loc[("resa", "H"), "nmi"] == 0.60 and values.loc[("byol", "Z"), "nmi"] == 0.15  # last epochs
    markdown = tables.to_markdown(values, stds).splitlines()
    assert markdown[0] == "| run | layer | NMI | Sil. (classes) | Linear top-1 |"
    assert markdown[4] == "| resa | H | **0.600 ± 0.004** | **0.200** | 0.800 |"
    assert markdown[5] == "| resa | Z | 0.550 ± 0.020 | 0.100 | **0.850** |"
    assert markdown[2] == "| byol | H | 0.200 ± 0.010 | – | – |"
    latex = tables.to_latex(values, stds, caption="x_y")
    assert "\\textbf{0.600 $\\pm$ 0.004}" in latex and "\\textbf{0.850}" in latex
    assert latex.count("\\midrule") == 2 and "\\caption{x\\_y}" in latex and "--" in latex
    assert latex.count(" \\\\") == 5  # header + 4 rows


def test_summary_counts_h_against_z_and_changes_since_initialisation():
    summary, warnings = tables.summary(tidy(ROWS))
    assert summary.loc["resa", "H beats Z"] == "2 of 3 metrics"  # nmi and silhouette, not linear
    assert summary.loc["resa", "H improved"] == "3 of 3" and summary.loc["resa", "epochs"] == "0 → 5"
    assert summary.loc["byol", "H improved"] == "0 of 1" and summary.loc["byol", "Z improved"] == "0 of 1"
    assert len(warnings) == 1 and warnings[0].startswith("run byol: at its last epoch (3) most layers are worse "
                                                         "than at epoch 0 (its random initialisation)")


def test_lower_is_better_for_davies_bouldin():
    assert tables.better("davies_bouldin", 0.5, 0.9) and not tables.better("nmi", 0.5, 0.9)


def test_the_report_page_shows_summary_and_paper_tables(tmp_path):
    from conftest import tiny_model

    from clusterprobe import save_checkpoint
    from clusterprobe.report import ReportSettings, build_report

    runs = tmp_path / "runs"
    for epoch in (0, 1):
        save_checkpoint(runs / "resa" / "checkpoints" / f"epoch_{epoch:04d}.pt", tiny_model(seed=epoch),
                        epoch=epoch, method="resa", dataset="digits", run="resa")
    (runs / "resa" / "config.yaml").write_text("method: resa\ndataset: digits\n")
    result = build_report(runs, settings=ReportSettings(metric_overrides={"seeds": 2, "metrics": "nmi,ari,knn"},
                                                        umap=False, layers=("H", "Z")), progress=False)
    page = result.index_html.read_text()
    assert page.index("<h2>Summary</h2>") < page.index("<figure>")  # the summary comes first
    assert "H beats Z" in page and "Paper table: last epoch (test split)" in page
    assert "<div class='scroll'>" in page and "href='tables/last_epoch_test.tex'" in page
    tex = (runs / "report" / "tables" / "last_epoch_test.tex").read_text()
    md = (runs / "report" / "tables" / "last_epoch_test.md").read_text()
    assert "\\begin{tabular}" in tex and md.startswith("| run | layer | NMI | ARI | kNN top-1 |")
    assert md.count("**") >= 6  # one bold best value per column


def test_last_epoch_table_has_the_random_initialisation_as_reference_rows():
    from clusterprobe.report.build import _last_epoch_tables

    shown = _last_epoch_tables(tidy(ROWS))["Last-epoch metrics (test split)"]
    assert ("resa @ epoch 0", "H") in shown.index and ("byol @ epoch 0", "Z") in shown.index
    assert shown.loc[("resa", "H"), "nmi"] == 0.60 and shown.loc[("resa @ epoch 0", "H"), "nmi"] == 0.30
