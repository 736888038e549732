"""``build_report``: runs in, figures + tidy CSV + index.html out, computing only what is missing.

For every run and epoch: load the checkpoint -> extract train and test banks (reused when they
already exist) -> metrics (cached incrementally by :func:`clusterprobe.metrics.evaluate`). Then the
figures: layer comparison at the last epoch (the paper's Fig. 3), training dynamics per layer
(Fig. 4), UMAP per layer at the last epoch, and fine vs coarse labels when the data set has
super-classes (CIFAR-100). A run that cannot be analysed (data set missing, mixed architectures,
no readable checkpoint) is skipped with a warning; a corrupt checkpoint skips only its epoch.

Caches: a clusterprobe run keeps its banks in ``<run>/features/<split>/epoch_XXXX`` and its
metrics in ``<run>/metrics.csv``; solo-learn runs (whose folders are not ours to write into) keep
theirs in ``<out>/cache/<run>/``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..checkpoints import LoadedCheckpoint, load_checkpoint
from ..data import LabeledImageDataset, load_dataset
from ..errors import ClusterprobeError
from ..extract import extract_features
from ..io import atomic_write
from ..runs import RunLayout
from .discovery import Run, describe_runs, discover_runs
from .figures import (fine_vs_coarse_figure, layer_comparison_figure, save_figure,
                      training_dynamics_figure, umap_figure)
from .html import FigureEntry, render_report_html

#: (metric, panel title) of the layer-comparison figure (the paper's Fig. 3).
COMPARISON_PANELS = (
    ("silhouette_true", "Silhouette, mean (true labels)"),
    ("silhouette_true_spread", "Silhouette, spread (std)"),
    ("ari", "ARI (k-means)"),
    ("nmi", "NMI (k-means)"),
    ("linear_top1", "Linear probe top-1"),
)
#: panels of the training-dynamics figure (the paper's Fig. 4).
DYNAMICS_PANELS = COMPARISON_PANELS + (("knn_top1", "kNN top-1"),)
COARSE_PANELS = (("nmi", "NMI"), ("ari", "ARI"), ("silhouette_true", "Silhouette (mean)"))


@dataclass
class ReportSettings:
    """What the report computes. Defaults: the run's own data set, H/P0/P1/Z, every epoch.

    ``dataset``/``data_root`` override each run's data set (e.g. to analyse on another one);
    ``cluster_splits`` chooses the splits clustering metrics are computed on (probes always
    train on ``train`` and score on ``test``); ``metric_overrides`` are
    :class:`~clusterprobe.metrics.MetricSettings` fields.
    """

    layers: tuple[str, ...] = ("H", "P0", "P1", "Z")
    dataset: str | None = None
    data_root: str | None = None
    epochs: tuple[int, ...] | None = None
    cluster_splits: tuple[str, ...] = ("test",)
    batch_size: int = 256
    device: str = "auto"
    umap: bool = True
    umap_max_points: int = 3000
    formats: tuple[str, ...] = ("png", "pdf")
    metric_overrides: dict = field(default_factory=dict)


@dataclass
class ReportResult:
    index_html: Path
    metrics_csv: Path
    table: pd.DataFrame
    figures: dict[str, Path]
    warnings: list[str]


class _Progress:
    """One progress display for the whole job (rich), or silence."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]report[/]"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"))
            self._progress.start()
            self._task = self._progress.add_task("", total=total)

    def describe(self, text: str) -> None:
        if self.enabled:
            self._progress.update(self._task, description=text)

    def advance(self, amount: int = 1) -> None:
        if self.enabled:
            self._progress.advance(self._task, amount)

    def close(self) -> None:
        if self.enabled:
            self._progress.stop()


def _cache_root(run: Run, out: Path) -> Path:
    return run.path if run.kind == "clusterprobe" else out / "cache" / run.name


def _datasets_for(run: Run, settings: ReportSettings, cache: dict) -> tuple[str, dict[str, LabeledImageDataset]]:
    """The run's (train, test) data sets; raises ClusterprobeError when they are not available."""
    config = run.config
    name = settings.dataset or run.dataset
    if not name:
        raise ClusterprobeError("its data set is unknown (no config.yaml/args.json naming it); pass --dataset")
    root = settings.data_root or config.get("data_root")
    key = (name, str(root))
    if key not in cache:
        cache[key] = {split: load_dataset(name, root=root, split=split) for split in ("train", "test")}
    return name, cache[key]


def _architecture(loaded: LoadedCheckpoint) -> str:
    return json.dumps(loaded.model.config.to_dict(), sort_keys=True)


def _analyse_run(run: Run, settings: ReportSettings, out: Path, data_cache: dict, progress: _Progress,
                 warnings: list[str]) -> tuple[pd.DataFrame, Path] | None:
    """Extract and evaluate every epoch of one run: (metrics, last epoch's test bank), or None
    when the run is skipped."""
    from ..metrics import evaluate

    epochs = [e for e in run.epochs if settings.epochs is None or e in settings.epochs]
    try:
        dataset_name, data = _datasets_for(run, settings, data_cache)
    except ClusterprobeError as error:
        warnings.append(f"run {run.name} skipped: {error}")
        progress.advance(len(epochs))
        return None
    root = _cache_root(run, out)
    reference: tuple[int, str] | None = None
    done_epochs = []
    test_bank = None
    for epoch in epochs:
        progress.describe(f"{run.name} epoch {epoch}")
        try:
            loaded = load_checkpoint(run.checkpoints[epoch])
        except ClusterprobeError as error:
            warnings.append(f"run {run.name}, epoch {epoch} skipped: {error}")
            progress.advance()
            continue
        architecture = _architecture(loaded)
        if reference is None:
            reference = (epoch, architecture)
        elif architecture != reference[1]:
            warnings.append(
                f"run {run.name} skipped: its checkpoints have mixed architectures (epoch {epoch} differs "
                f"from epoch {reference[0]}); keep one architecture per run directory."
            )
            progress.advance(len(epochs) - epochs.index(epoch))
            return None
        layers = [layer for layer in settings.layers if layer in loaded.model.layer_names()
                  or "." in layer]
        try:
            for split, dataset in data.items():
                other = None if dataset_name == (run.dataset or dataset_name) else dataset_name
                bank = extract_features(loaded, dataset, RunLayout(root).bank_path(split, epoch, other),
                                        layers=layers, batch_size=settings.batch_size, device=settings.device,
                                        progress=False,
                                        extra_meta={"run": run.name, "method": run.method, "epoch": epoch})
                if split == "test":
                    test_bank = bank.path
        except ClusterprobeError as error:  # e.g. a diverged checkpoint's NaN features
            warnings.append(f"run {run.name}, epoch {epoch} skipped: {error}")
            progress.advance()
            continue
        done_epochs.append(epoch)
        progress.advance()
    if not done_epochs:
        warnings.append(f"run {run.name} skipped: none of its checkpoints could be read")
        return None
    overrides = {"cluster_splits": settings.cluster_splits, **settings.metric_overrides}
    table = evaluate(root, epochs=done_epochs, splits=None, **overrides)
    table = table.copy()
    table["run"] = run.name
    table["method"] = run.method or table["method"]
    return table, test_bank


def _umap_embeddings(test_banks: dict[str, Path], out: Path, settings: ReportSettings):
    from ..bank import FeatureBank
    from .embedding import cached_bank_embedding

    embeddings, class_names = {}, None
    for run_name, path in test_banks.items():
        bank = FeatureBank.open(path)
        class_names = class_names or bank.class_names
        for layer in bank.layers:
            embeddings[(run_name, layer)] = cached_bank_embedding(bank, layer, out / "cache" / "umap",
                                                                  max_points=settings.umap_max_points)
    return embeddings, class_names


def _coarse_table(runs: Sequence[Run], test_banks: dict[str, Path], out: Path) -> pd.DataFrame | None:
    """Fine vs coarse clustering metrics at the last epoch, for banks with coarse labels."""
    from ..bank import FeatureBank
    from ..metrics import evaluate_arrays

    frames = []
    for run in runs:
        if run.name not in test_banks:
            continue
        bank = FeatureBank.open(test_banks[run.name])
        if bank.coarse_labels is None:
            continue
        epoch = bank.meta.get("epoch")
        features = {layer: bank[layer] for layer in bank.layers}
        for granularity, labels in (("fine", bank.labels), ("coarse", bank.coarse_labels)):
            frame = evaluate_arrays(features, labels, metrics="nmi,ari,silhouette", run=run.name,
                                    method=run.method or "", epoch=epoch,
                                    cache=out / "cache" / run.name / f"{granularity}_labels_metrics.csv")
            frame = frame.assign(labels=granularity, split="test")
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None


def build_report(
    runs_dir: str | Path,
    out: str | Path | None = None,
    settings: ReportSettings | None = None,
    progress: bool = True,
) -> ReportResult:
    """Analyse every run below ``runs_dir`` and write the report to ``out`` (default ``runs_dir/report``).

    Returns the paths written, the tidy metrics table and the warnings (skipped runs/epochs).
    """
    settings = settings or ReportSettings()
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir / "report"
    runs, warnings = discover_runs(runs_dir)
    runs = [r for r in runs if out not in r.path.parents and r.path != out]
    total = sum(len([e for e in r.epochs if settings.epochs is None or e in settings.epochs]) for r in runs)
    bar = _Progress(total, progress)
    data_cache: dict = {}
    tables, test_banks = [], {}
    try:
        for run in runs:
            analysed_run = _analyse_run(run, settings, out, data_cache, bar, warnings)
            if analysed_run is not None:
                tables.append(analysed_run[0])
                test_banks[run.name] = analysed_run[1]
        bar.describe("figures")
        if not tables:
            raise ClusterprobeError("No run could be analysed: " + "; ".join(warnings))
        table = pd.concat(tables, ignore_index=True)
        analysed = [r for r in runs if r.name in set(table["run"])]
        figures: dict[str, Path] = {}
        entries: list[FigureEntry] = []

        def add(name: str, title: str, fig, caption: str) -> None:
            paths = save_figure(fig, out / "figures", name, formats=settings.formats)
            figures[name] = paths.get("png") or next(iter(paths.values()))
            downloads = {fmt: p for fmt, p in paths.items() if fmt != "png"}
            if "png" in paths:
                entries.append(FigureEntry(title, paths["png"], caption, downloads))

        add("layer_comparison", "Layers compared at the last epoch",
            layer_comparison_figure(table, COMPARISON_PANELS),
            "Per run, the last epoch's metrics of each layer on the test split: H (circles), "
            "P0/P1, Z (crosses). Silhouette uses ground-truth classes; ARI/NMI use k-means with k = "
            "number of classes (mean &plusmn; std over seeds).")
        if table["epoch"].nunique() > 1:
            add("training_dynamics", "Training dynamics per layer",
                training_dynamics_figure(table, DYNAMICS_PANELS),
                "Each metric against the epoch, one line per layer, one row per run.")
        else:
            warnings.append("only one epoch per run: the training-dynamics figure needs several")
        if settings.umap:
            bar.describe("UMAP")
            embeddings, class_names = _umap_embeddings(test_banks, out, settings)
            if embeddings:
                add("umap", "UMAP per layer", umap_figure(embeddings, class_names),
                    f"UMAP (cosine, 15 neighbours) of each layer's test features at the last epoch "
                    f"(at most {settings.umap_max_points} points per panel), coloured by class.")
        coarse = _coarse_table(analysed, test_banks, out)
        if coarse is not None:
            add("fine_vs_coarse", "Fine vs coarse labels", fine_vs_coarse_figure(coarse, COARSE_PANELS),
                "Clustering metrics against the fine classes and against the super-classes.")
        metrics_csv = out / "metrics.csv"
        atomic_write(metrics_csv, lambda f: table.to_csv(f, index=False), mode="w")
        html_tables = {"Runs": pd.DataFrame(describe_runs(analysed)).set_index("run")}
        last = table[table["epoch"] == table.groupby("run")["epoch"].transform("max")]
        for split in sorted(last["split"].dropna().unique()):
            pivot = last[last["split"] == split].pivot_table(index=["run", "layer"], columns="metric",
                                                             values="value", sort=False)
            html_tables[f"Last-epoch metrics ({split} split)"] = pivot
        index = render_report_html(
            out / "index.html", "clusterprobe report", entries, html_tables,
            settings={"runs folder": runs_dir.resolve(), **{k: v for k, v in dataclasses.asdict(settings).items()},
                      "metrics table": metrics_csv.name},
            warnings=warnings,
            intro="Clustering properties of each run's encoder output <b>H</b>, projector hidden layers "
                  "<b>P0, P1</b> and embedding <b>Z</b>. The tidy table of every number is in "
                  f"<code>{metrics_csv.name}</code> beside this page.",
        )
    finally:
        bar.close()
    return ReportResult(index, metrics_csv, table, figures, warnings)
