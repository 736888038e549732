"""The report's tables: paper-ready last-epoch tables (LaTeX, Markdown) and the page's summary.

All functions take the tidy metrics table (one row per run, epoch, layer, split and metric, with
``value`` and ``std``; see :class:`clusterprobe.metrics.MetricRow`) and return plain data.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..io import atomic_write

#: Metrics where lower is better; every other (non-spread) metric is better when higher.
LOWER_IS_BETTER = frozenset({"davies_bouldin"})
#: Columns of the paper table, in this order, where the table has them.
PAPER_METRICS = ("nmi", "ari", "cluster_acc", "silhouette_true", "silhouette_kmeans", "linear_top1", "knn_top1")
LAYER_ORDER = {"H": 0, "P0": 1, "P1": 2, "P2": 3, "Z": 9}


def comparable(metric: str) -> bool:
    """Metrics with a direction (better/worse): not the spreads or other side figures."""
    return not metric.endswith("_spread")


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is a better value of ``metric`` than ``b``."""
    return a < b if metric in LOWER_IS_BETTER else a > b


def last_epoch(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last epoch."""
    return table[table["epoch"] == table.groupby("run")["epoch"].transform("max")]


def _layer_key(layer: str) -> tuple[int, str]:
    return LAYER_ORDER.get(layer, 5), layer


def paper_table(table: pd.DataFrame, split: str = "test", metrics=PAPER_METRICS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, stds) of the last epoch: rows (run, layer) in H, P0, P1, Z order, columns metrics.

    ``stds`` holds the standard deviation over k-means seeds where there is one (NaN otherwise).
    """
    last = last_epoch(table)
    last = last[(last["split"] == split) & last["metric"].isin(metrics)]
    if last.empty:
        return pd.DataFrame(), pd.DataFrame()
    values = last.pivot_table(index=["run", "layer"], columns="metric", values="value", sort=False)
    stds = last.pivot_table(index=["run", "layer"], columns="metric", values="std", sort=False, dropna=False)
    columns = [m for m in metrics if m in values.columns]
    order = sorted(values.index, key=lambda key: (key[0], _layer_key(key[1])))
    return values.loc[order, columns], stds.reindex(index=order, columns=columns)


def _cells(values: pd.DataFrame, stds: pd.DataFrame, bold) -> list[list[str]]:
    best = {m: (values[m].min() if m in LOWER_IS_BETTER else values[m].max()) for m in values.columns}
    rows = []
    for key in values.index:
        cells = [str(key[0]), str(key[1])]
        for metric in values.columns:
            value = values.at[key, metric]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("–")
                continue
            std = stds.at[key, metric] if metric in stds.columns else math.nan
            text = f"{value:.3f}" + (f" ± {std:.3f}" if isinstance(std, float) and not math.isnan(std) else "")
            cells.append(bold(text) if value == best[metric] else text)
        rows.append(cells)
    return rows


_TITLES = {"nmi": "NMI", "ari": "ARI", "cluster_acc": "ACC", "silhouette_true": "Sil. (classes)",
           "silhouette_kmeans": "Sil. (k-means)", "linear_top1": "Linear top-1", "knn_top1": "kNN top-1"}


def to_markdown(values: pd.DataFrame, stds: pd.DataFrame) -> str:
    """A GitHub Markdown table: mean ± std over k-means seeds, best value per column in bold."""
    header = ["run", "layer"] + [_TITLES.get(m, m) for m in values.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(values, stds, lambda t: f"**{t}**")]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&").replace("#", "\\#")


def to_latex(values: pd.DataFrame, stds: pd.DataFrame, caption: str = "") -> str:
    """A booktabs LaTeX table (``\\usepackage{booktabs}``): mean $\\pm$ std, best per column bold."""
    header = ["Run", "Layer"] + [_TITLES.get(m, m) for m in values.columns]
    body = []
    previous_run = None
    for cells in _cells(values, stds, lambda t: f"\\textbf{{{t}}}"):
        cells = [_latex_escape(c) if i < 2 else c.replace("±", "$\\pm$").replace("–", "--") for i, c in enumerate(cells)]
        if previous_run is not None and cells[0] != previous_run:
            body.append("\\midrule")
        previous_run = cells[0]
        body.append(" & ".join(cells) + " \\\\")
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             "\\begin{tabular}{ll" + "c" * len(values.columns) + "}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule", *body, "\\bottomrule", "\\end{tabular}"]
    if caption:
        lines.append(f"\\caption{{{_latex_escape(caption)}}}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def write_paper_tables(table: pd.DataFrame, folder: Path) -> dict[str, dict[str, Path]]:
    """Write ``last_epoch_<split>.tex`` and ``.md`` per split into ``folder``; returns
    {split: {"tex": path, "md": path}}."""
    written = {}
    for split in sorted(table["split"].dropna().unique()):
        values, stds = paper_table(table, split)
        if values.empty:
            continue
        caption = (f"Last-epoch clustering and probe metrics per layer ({split} split); mean $\\pm$ std "
                   "over k-means seeds where seeded; best per column in bold.")
        tex = atomic_write(folder / f"last_epoch_{split}.tex", lambda f: f.write(to_latex(values, stds, caption)), mode="w")
        md = atomic_write(folder / f"last_epoch_{split}.md", lambda f: f.write(to_markdown(values, stds)), mode="w")
        written[split] = {"tex": tex, "md": md}
    return written


def summary(table: pd.DataFrame, split: str = "test") -> tuple[pd.DataFrame, list[str]]:
    """Per run, the paper's claim and the change since the first epoch, plus warnings.

    Columns: ``H beats Z`` ("k of m metrics" at the last epoch), and per layer how many metrics
    improved since the run's first analysed epoch (epoch 0 = the random initialisation when
    saved). A warning names each run whose last epoch is worse than its first on most metrics of
    most layers (e.g. training too short, or diverged).
    """
    rows, warnings = [], []
    data = table[(table["split"] == split) & table["metric"].map(comparable) & table["value"].notna()]
    for run, frame in data.groupby("run", sort=False):
        first, last = frame["epoch"].min(), frame["epoch"].max()
        at_last = frame[frame["epoch"] == last].set_index(["layer", "metric"])["value"]
        at_first = frame[frame["epoch"] == first].set_index(["layer", "metric"])["value"]
        row = {"run": run, "epochs": f"{first} → {last}"}
        layers = sorted({layer for layer, _ in at_last.index}, key=_layer_key)
        if "H" in layers and "Z" in layers:
            metrics = [m for (layer, m) in at_last.index if layer == "H" and ("Z", m) in at_last.index]
            wins = sum(better(m, at_last[("H", m)], at_last[("Z", m)]) for m in metrics)
            row["H beats Z"] = f"{wins} of {len(metrics)} metrics"
        worse_layers = 0
        for layer in layers:
            metrics = [m for (l, m) in at_last.index if l == layer and (l, m) in at_first.index]
            if first == last or not metrics:
                row[f"{layer} improved"] = "–"
                continue
            improved = sum(better(m, at_last[(layer, m)], at_first[(layer, m)]) for m in metrics)
            row[f"{layer} improved"] = f"{improved} of {len(metrics)}"
            worse_layers += improved < len(metrics) / 2
        rows.append(row)
        if first != last and layers and worse_layers > len(layers) / 2:
            warnings.append(
                f"run {run}: at its last epoch ({last}) most layers are worse than at epoch {first}"
                f"{' (its random initialisation)' if first == 0 else ''} on most metrics; the training "
                "has not (yet) helped these representations (too short a run, a too high learning rate, "
                "or a diverged one?).")
    return (pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()), warnings


def to_frame(values: pd.DataFrame, stds: pd.DataFrame) -> pd.DataFrame:
    """The paper table as strings for the page (best per column in ``<b>``; render with escape=False)."""
    import html

    rows = _cells(values, stds, lambda t: f"<b>{html.escape(t)}</b>")
    frame = pd.DataFrame([cells[2:] for cells in rows], columns=[_TITLES.get(m, m) for m in values.columns],
                         index=pd.MultiIndex.from_tuples([(c[0], c[1]) for c in rows], names=["run", "layer"]))
    return frame
