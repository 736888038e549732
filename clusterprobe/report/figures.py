"""The report's figures, drawn from the tidy metrics table (matplotlib + seaborn).

The table has one row per (run, method, epoch, layer, split, metric) with ``value`` (and ``std``
over seeds). Every function returns a matplotlib ``Figure``; :func:`save_figure` writes it as PNG
(for the HTML page) and PDF (for papers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..errors import ReportError

#: How each layer is drawn everywhere: H circles, Z crosses (as in the paper), P_i in between.
LAYER_STYLE = {
    "H": {"marker": "o", "color": "#1f77b4"},
    "P0": {"marker": "s", "color": "#2ca02c"},
    "P1": {"marker": "^", "color": "#ff7f0e"},
    "P2": {"marker": "v", "color": "#9467bd"},
    "Z": {"marker": "X", "color": "#d62728"},
}
_OTHER = {"marker": "D", "color": "#7f7f7f"}


def layer_style(layer: str) -> dict:
    return LAYER_STYLE.get(layer, _OTHER)


def _layer_order(layers: Sequence[str]) -> list[str]:
    known = [name for name in LAYER_STYLE if name in set(layers)]
    return known + sorted(set(layers) - set(known))


def _style_axes(ax, title: str, ylabel: str | None = None) -> None:
    ax.set_title(title, fontsize=11)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=9)


#: Metrics whose chance level is 1 / number of classes (accuracies), and those whose chance is 0.
CHANCE_ONE_OVER_K = frozenset({"linear_top1", "knn_top1", "cluster_acc"})
CHANCE_ZERO = frozenset({"ari", "nmi"})


def chance_level(table: pd.DataFrame, metric: str) -> float | None:
    """What a random representation scores: 1 / classes for accuracies (classes = the k-means k
    recorded in the table, which defaults to the number of classes), 0 for ARI and NMI. None
    where it is not known, or where the table's runs have different k (e.g. CIFAR-10 and
    CIFAR-100 runs): one line would be the chance of one data set only."""
    if metric in CHANCE_ZERO:
        return 0.0
    if metric in CHANCE_ONE_OVER_K and "k" in table:
        k = pd.to_numeric(table.loc[table["metric"].isin(["nmi", "ari"]), "k"], errors="coerce").dropna()
        if k.nunique() == 1:
            return 1.0 / float(k.iloc[0])
    return None


def _chance_line(ax, table: pd.DataFrame, metric: str) -> None:
    level = chance_level(table, metric)
    if level is not None:
        ax.axhline(level, color="#888", linestyle=":", linewidth=1, label="chance", zorder=0)


def _same_limits(axes_by_metric: Mapping[str, list]) -> None:
    """One y-range per metric across all its panels (runs), so panels compare at a glance."""
    for axes in axes_by_metric.values():
        lows, highs = zip(*(ax.get_ylim() for ax in axes))
        for ax in axes:
            ax.set_ylim(min(lows), max(highs))


def _select(table: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """Rows of one split: ``split`` if it has rows, else ``test``, else the first split present."""
    if "split" not in table or table["split"].nunique() <= 1:
        return table
    present = list(table["split"].dropna().unique())
    chosen = next(s for s in (split, "test", present[0]) if s in present)
    return table[table["split"] == chosen]


def layer_comparison_figure(
    table: pd.DataFrame,
    panels: Sequence[tuple[str, str]],
    split: str | None = "test",
    reference_epoch: int | None = 0,
) -> plt.Figure:
    """The paper's Fig. 3: per run (method), the last epoch's metrics for each layer.

    Args:
        table: tidy metrics (columns run, method, epoch, layer, split, metric, value[, std]).
        panels: (metric name in the table, panel title) pairs, e.g.
            ``[("silhouette_mean", "Silhouette (mean)"), ("ari", "ARI")]``.
        split: which bank's rows to plot (falls back to any when that split has none).
        reference_epoch: drawn as hollow markers beside each run's last epoch where the run has
            it (epoch 0 = the random initialisation); None draws none. A dotted line marks the
            chance level of accuracies (1 / classes) and of ARI/NMI (0).
    """
    table = _select(table, split)
    last = table[table["epoch"] == table.groupby("run")["epoch"].transform("max")]
    reference = (table[(table["epoch"] == reference_epoch) & (table["epoch"] != table.groupby("run")["epoch"].transform("max"))]
                 if reference_epoch is not None else table.iloc[0:0])
    runs = sorted(last["run"].unique())
    requested, panels = panels, [(m, t) for m, t in panels if m in set(last["metric"])]
    if not panels:
        raise ReportError(f"None of the metrics this figure plots ({', '.join(m for m, _ in requested)}) "
                          "are in the table; compute at least one of them (metrics=...).")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    layers = _layer_order(last["layer"].unique())
    offsets = np.linspace(-0.2, 0.2, len(layers)) if len(layers) > 1 else [0.0]
    for ax, (metric, title) in zip(axes[0], panels):
        rows = last[last["metric"] == metric]
        for offset, layer in zip(offsets, layers):
            chosen = rows[rows["layer"] == layer].set_index("run").reindex(runs)
            x = np.arange(len(runs)) + offset
            style = layer_style(layer)
            yerr = chosen["std"].fillna(0).to_numpy() if "std" in chosen else None
            ax.errorbar(x, chosen["value"].to_numpy(dtype=float), yerr=yerr, fmt=style["marker"],
                        color=style["color"], markersize=8 if layer in ("H", "Z") else 6,
                        capsize=2, linestyle="none", label=layer)
            initial = reference[(reference["metric"] == metric) & (reference["layer"] == layer)]
            initial = initial.set_index("run").reindex(runs)["value"].to_numpy(dtype=float)
            if np.isfinite(initial).any():
                ax.plot(x, initial, linestyle="none", marker=style["marker"], markerfacecolor="none",
                        markeredgecolor=style["color"], alpha=0.6, markersize=7,
                        label=f"epoch {reference_epoch}" if layer == layers[0] else None)
        _chance_line(ax, table, metric)
        ax.set_xticks(np.arange(len(runs)))
        ax.set_xticklabels([_run_label(last, r) for r in runs], rotation=30, ha="right", fontsize=9)
        _style_axes(ax, title)
    axes[0][0].legend(title="layer", fontsize=8, title_fontsize=8, loc="best")
    epochs = last.groupby("run")["epoch"].first()
    fig.suptitle("Layer comparison at the last epoch"
                 + (f" ({split} split)" if split else "")
                 + (f", epochs: {', '.join(f'{r}={e}' for r, e in epochs.items())}" if len(epochs) <= 4 else ""),
                 fontsize=11)
    fig.tight_layout()
    return fig


def _run_label(table: pd.DataFrame, run: str) -> str:
    methods = table.loc[table["run"] == run, "method"].dropna().unique()
    method = methods[0] if len(methods) else None
    # a run whose name already says its method ('resa-cifar10', 'raw pixels (digits)' of method
    # 'pixels') is labelled by its name alone
    return f"{method}\n({run})" if method and method.lower() not in run.lower() else run


def training_dynamics_figure(
    table: pd.DataFrame,
    panels: Sequence[tuple[str, str]],
    split: str | None = "test",
    same_axes: bool = True,
) -> plt.Figure:
    """The paper's Fig. 4: metric vs epoch, one line per layer, one column per metric, one row per run.

    ``same_axes``: one y-range per metric for all runs (compare runs at a glance); False zooms
    each panel on its own run. A dotted line marks the chance level where it is known."""
    table = _select(table, split)
    runs = sorted(table["run"].unique())
    requested, panels = panels, [(m, t) for m, t in panels if m in set(table["metric"])]
    if not panels:
        raise ReportError(f"None of the metrics this figure plots ({', '.join(m for m, _ in requested)}) "
                          "are in the table; compute at least one of them (metrics=...).")
    fig, axes = plt.subplots(len(runs), len(panels), figsize=(3.2 * len(panels), 2.7 * len(runs)),
                             squeeze=False, sharex="row")
    by_metric: dict[str, list] = {}
    for row, run in enumerate(runs):
        rows = table[table["run"] == run]
        for col, (metric, title) in enumerate(panels):
            ax = axes[row][col]
            chosen = rows[rows["metric"] == metric]
            for layer in _layer_order(chosen["layer"].unique()):
                series = chosen[chosen["layer"] == layer].sort_values("epoch")
                style = layer_style(layer)
                ax.plot(series["epoch"], series["value"], marker=style["marker"], color=style["color"],
                        markersize=5, linewidth=1.5, label=layer)
                if "std" in series and series["std"].fillna(0).gt(0).any():
                    low = series["value"] - series["std"].fillna(0)
                    high = series["value"] + series["std"].fillna(0)
                    ax.fill_between(series["epoch"], low, high, color=style["color"], alpha=0.15)
            _chance_line(ax, rows, metric)  # this run's chance (runs may be on other data sets)
            by_metric.setdefault(metric, []).append(ax)
            _style_axes(ax, title if row == 0 else "", _run_label(table, run).replace("\n", " ") if col == 0 else None)
            if row == len(runs) - 1:
                ax.set_xlabel("epoch")
    if same_axes:
        _same_limits(by_metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, title="layer", loc="upper right", fontsize=8, title_fontsize=8)
    fig.suptitle("Training dynamics per layer" + (f" ({split} split)" if split else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    return fig


def umap_figure(
    embeddings: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] | None = None,
    title: str = "UMAP of each layer at the last epoch",
) -> plt.Figure:
    """Scatter of 2-D embeddings, one row per run and one column per layer, coloured by class.

    ``embeddings`` maps (run, layer) to (points of shape (n, 2), labels of shape (n,)).
    """
    runs = sorted({run for run, _ in embeddings})
    layers = _layer_order({layer for _, layer in embeddings})
    fig, axes = plt.subplots(len(runs), len(layers), figsize=(2.8 * len(layers), 2.8 * len(runs)), squeeze=False)
    all_labels = np.unique(np.concatenate([labels for _, labels in embeddings.values()]))
    cmap = plt.get_cmap("tab10" if len(all_labels) <= 10 else "tab20" if len(all_labels) <= 20 else "nipy_spectral")
    colors = {label: cmap(i / max(1, len(all_labels) - 1)) if len(all_labels) > 20 else cmap(i)
              for i, label in enumerate(all_labels)}
    for row, run in enumerate(runs):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if (run, layer) not in embeddings:
                ax.set_axis_off()
                continue
            points, labels = embeddings[(run, layer)]
            size = float(np.clip(3000 / max(1, len(points)), 2, 10))  # legible for 400 or 5,000 points
            ax.scatter(points[:, 0], points[:, 1], c=[colors[label] for label in labels], s=size, alpha=0.7,
                       linewidths=0, rasterized=True)
            if row == 0:
                ax.set_title(layer, fontsize=11)
            if col == 0:
                ax.set_ylabel(run, fontsize=10)
    if len(all_labels) <= 20:
        names = list(class_names) if class_names is not None and len(class_names) >= len(all_labels) else None
        handles = [plt.Line2D([], [], marker="o", linestyle="none", color=colors[label], markersize=5,
                              label=names[int(label)] if names else str(label)) for label in all_labels]
        fig.legend(handles=handles, loc="center right", fontsize=8, title="class", title_fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    else:
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.suptitle(title, fontsize=11)
    return fig


def fine_vs_coarse_figure(table: pd.DataFrame, panels: Sequence[tuple[str, str]], split: str | None = "test") -> plt.Figure:
    """Per layer, the last epoch's metrics against fine and against coarse (super-class) labels.

    Expects a ``labels`` column with values ``fine`` and ``coarse``.
    """
    table = _select(table, split)
    last = table[table["epoch"] == table.groupby("run")["epoch"].transform("max")]
    runs = sorted(last["run"].unique())
    panels = [(m, t) for m, t in panels if m in set(last["metric"])]
    fig, axes = plt.subplots(len(runs), len(panels), figsize=(3.2 * len(panels), 2.8 * len(runs)), squeeze=False)
    for row, run in enumerate(runs):
        for col, (metric, title) in enumerate(panels):
            ax = axes[row][col]
            chosen = last[(last["run"] == run) & (last["metric"] == metric)]
            layers = _layer_order(chosen["layer"].unique())
            x = np.arange(len(layers))
            for shift, granularity, hatch in ((-0.2, "fine", None), (0.2, "coarse", "//")):
                values = chosen[chosen["labels"] == granularity].set_index("layer").reindex(layers)["value"]
                ax.bar(x + shift, values.to_numpy(dtype=float), width=0.38, hatch=hatch,
                       color=[layer_style(layer)["color"] for layer in layers], edgecolor="black",
                       linewidth=0.5, label=granularity)
            ax.set_xticks(x)
            ax.set_xticklabels(layers)
            _style_axes(ax, title if row == 0 else "", run if col == 0 else None)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch=h, label=l)
               for l, h in (("fine labels", None), ("coarse labels", "//"))]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle("Fine vs coarse (super-class) labels at the last epoch", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    return fig


def save_figure(fig: plt.Figure, folder: str | Path, name: str, formats: Sequence[str] = ("png", "pdf")) -> dict[str, Path]:
    """Write ``fig`` as ``folder/name.<format>`` for each format (PNG at 150 dpi) and close it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None, bbox_inches="tight")
        paths[fmt] = path
    plt.close(fig)
    return paths


def describe_settings(table: pd.DataFrame) -> str:
    """The settings behind the plotted numbers, for a figure caption, read from the table itself
    (e.g. "k-means: k 10, seeds 0,1,2, L2-normalised; silhouette: cosine; linear probe: lbfgs")."""
    parts = []
    for metric, label in (("nmi", "k-means"), ("silhouette_true", "silhouette"),
                          ("linear_top1", "linear probe"), ("knn_top1", "kNN")):
        rows = table[table["metric"] == metric]
        if rows.empty:
            continue
        row = rows.iloc[0]
        details = []
        for column, name in (("k", "k"), ("seeds", "seeds"), ("distance", ""), ("protocol", ""), ("evaluation", "")):
            value = row.get(column)
            if value is None or pd.isna(value) or str(value) == "":
                continue
            value = int(value) if column == "k" else value
            details.append(f"{name} {value}".strip())
        if metric == "nmi" and not pd.isna(row.get("normalize")) and bool(row.get("normalize")):
            details.append("L2-normalised")
        parts.append(f"{label}: {', '.join(details)}" if details else label)
    return "; ".join(parts)


def per_class_figure(views: Mapping[str, Mapping[str, object]], class_names: Sequence[str] | None = None) -> plt.Figure:
    """Per run (rows) and layer: the matched cluster/class contingency heatmap (row-normalised:
    the share of each class in each cluster) and, below it, the silhouette of each class.

    ``views``: {run: {layer: PerClassView}}.
    """
    runs = list(views)
    layers = _layer_order({layer for per_layer in views.values() for layer in per_layer})
    fig, axes = plt.subplots(2 * len(runs), len(layers), figsize=(2.9 * len(layers), 4.6 * len(runs)),
                             squeeze=False, gridspec_kw={"height_ratios": [3, 1.2] * len(runs)})
    for r, run in enumerate(runs):
        for c, layer in enumerate(layers):
            heat, bars = axes[2 * r][c], axes[2 * r + 1][c]
            view = views[run].get(layer)
            if view is None:
                heat.axis("off"), bars.axis("off")
                continue
            shares = view.contingency / np.maximum(view.contingency.sum(axis=1, keepdims=True), 1)
            heat.imshow(shares, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            heat.set_title(f"{run}: {layer} (ACC {view.accuracy:.2f})", fontsize=9)
            heat.set_xlabel("cluster (matched)", fontsize=8)
            heat.set_ylabel("class", fontsize=8)
            heat.tick_params(labelsize=7)
            colors = [layer_style(layer)["color"] if v >= 0 else "#999" for v in view.silhouette]
            bars.bar(np.arange(len(view.silhouette)), view.silhouette, color=colors)
            bars.axhline(0, color="#444", linewidth=0.8)
            bars.set_ylabel("silhouette", fontsize=8)
            bars.tick_params(labelsize=7)
            if class_names is not None and len(class_names) == len(view.silhouette) and len(class_names) <= 20:
                bars.set_xticks(np.arange(len(class_names)))
                bars.set_xticklabels(class_names, rotation=60, ha="right", fontsize=6)
    fig.suptitle("Per class at the last epoch: k-means clusters vs classes, and silhouette per class", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
