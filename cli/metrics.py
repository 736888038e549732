"""``clusterprobe metrics``: the metric suite on a feature bank or a run directory."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import friendly_errors, int_list, split_list

# Short column headers for the printed table (the file keeps the full metric names).
HEADERS = {
    "nmi": "NMI",
    "ari": "ARI",
    "cluster_acc": "ACC",
    "silhouette_true": "sil(y)",
    "silhouette_true_spread": "sil(y) sd",
    "silhouette_kmeans": "sil(km)",
    "silhouette_kmeans_spread": "sil(km) sd",
    "davies_bouldin": "DB",
    "calinski_harabasz": "CH",
    "rankme": "RankMe",
    "linear_top1": "linear@1",
    "linear_top5": "linear@5",
    "knn_top1": "kNN@1",
    "knn_top5": "kNN@5",
}


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)


def _seeds(value: str):
    """'3' -> 3 seeds (0, 1, 2); '0,5,9' -> those seeds."""
    items = int_list(value, "--seeds") or []
    if len(items) == 1:
        return items[0]
    return tuple(items)


def _cell(value: float, std: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    digits = 1 if abs(value) >= 100 else 4
    text = f"{value:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)) and std > 0:
        text += f" ±{std:.{digits}f}"
    return text


def render_tables(frame) -> list[Table]:
    """One table per (run, epoch, split): a row per metric, a column per layer, ``value ±std``."""
    from pandas import isna

    shown = frame[frame["note"] == ""]
    layers = list(dict.fromkeys(shown["layer"]))
    order = {m: i for i, m in enumerate(HEADERS)}
    tables = []
    for (run, method, epoch, split), rows in shown.groupby(["run", "method", "epoch", "split"], sort=False, dropna=False):
        title = " · ".join(
            part for part in (
                str(run), str(method), "" if isna(epoch) else f"epoch {epoch}", split,
            ) if part
        )
        table = Table(title=escape(title), title_justify="left", header_style="bold")
        table.add_column("metric")
        present = [layer for layer in layers if layer in set(rows["layer"])]
        for layer in present:
            table.add_column(escape(str(layer)), justify="right")
        cells = {(r.metric, r.layer): _cell(r.value, r.std) for r in rows.itertuples()}
        for metric in sorted(dict.fromkeys(rows["metric"]), key=lambda m: order.get(m, len(order))):
            table.add_row(escape(HEADERS.get(metric, metric)), *[cells.get((metric, layer), "") for layer in present])
        evaluations = sorted(set(rows["evaluation"]) - {""})
        if evaluations:
            table.caption = escape("probes: " + "; ".join(evaluations))
            table.caption_justify = "left"
        tables.append(table)
    return tables


def _settings_line(settings) -> str:
    k = "number of classes" if settings.k is None else str(settings.k)
    seeds = ",".join(map(str, settings.seeds))
    return (
        f"k = {k}, {'L2-normalised' if settings.normalize else 'raw'} features, "
        f"{settings.distance} silhouette, k-means seeds {seeds}, linear probe {settings.probe}, "
        f"kNN {settings.knn}"
    )


def _write(frame, path: Path) -> None:
    from clusterprobe.io import atomic_write

    if path.suffix.lower() == ".parquet":
        atomic_write(path, lambda handle: frame.to_parquet(handle, index=False))
    else:
        atomic_write(path, lambda handle: frame.to_csv(handle, index=False), mode="w")


@friendly_errors
def metrics(
    source: Path = typer.Argument(..., help="A feature bank directory or a run directory (banks under features/<split>/epoch_XXXX/)."),
    metric_names: str = typer.Option("all", "--metrics", "-m", help="Comma-separated: nmi, ari, cluster_acc, silhouette (= silhouette_true + silhouette_kmeans), silhouette_true, silhouette_kmeans, linear, knn, davies_bouldin, calinski_harabasz, rankme; or all, kmeans (= nmi, ari, cluster_acc)."),
    k: Optional[int] = typer.Option(None, "--k", help="k-means clusters (default: the number of classes)."),
    distance: str = typer.Option("cosine", "--distance", help="Silhouette distance: cosine (exact, fast) or euclidean (exact, O(n^2))."),
    seeds: str = typer.Option("3", "--seeds", help="k-means seeds: a count (3 = seeds 0,1,2) or a list (0,5,9)."),
    normalize: bool = typer.Option(True, "--normalize/--raw", help="L2-normalise features for k-means and the silhouette (spherical), or use them raw."),
    layers: Optional[str] = typer.Option(None, "--layers", "-l", help="Comma-separated layers (default: all in the bank)."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits to use (default: all present)."),
    epochs: Optional[str] = typer.Option(None, "--epochs", help="Comma-separated epochs of a run directory (default: all)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Train-split bank for the probes when SOURCE is a single test bank."),
    probe: str = typer.Option("lbfgs", "--probe", help="Linear probe: lbfgs (fast, = scikit-learn LogisticRegression) or reference (Adam, 500 epochs)."),
    knn: str = typer.Option("weighted-cosine", "--knn", help="kNN protocol: weighted-cosine (k=20, T=0.07) or majority-euclidean (k=5)."),
    knn_k: Optional[int] = typer.Option(None, "--knn-k", help="Neighbours for kNN (default: 20 or 5 by protocol)."),
    sample_size: Optional[int] = typer.Option(None, "--sample-size", help="Silhouette on a random subset of this size (default: exact, all samples)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu or cuda."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the table here (a .csv or .parquet file; other suffixes are refused before any work)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Read and update the metrics cache beside the bank / in the run directory."),
    recompute: bool = typer.Option(False, "--recompute", help="Ignore cached values (and overwrite them)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch, FAISS and BLAS (default: each library's own; fewer than the cores when the machine is shared)."),
) -> None:
    """Clustering (k-means NMI/ARI/ACC, silhouette), probe (linear, kNN) and spectral metrics per layer and epoch.

    Under ``torchrun --nproc_per_node N -m cli.main metrics ...`` the N processes compute the
    exact silhouettes together (rank 0 does the rest, prints and writes the files)."""
    from clusterprobe import distributed
    from clusterprobe.devices import limit_threads
    from clusterprobe.metrics import MetricSettings

    epoch_list = int_list(epochs, "--epochs")
    if output is not None and output.suffix.lower() not in (".csv", ".parquet"):
        raise typer.BadParameter(f"--output writes a .csv or .parquet file; {output} ends in neither "
                                 f"(e.g. {output.with_suffix('.csv')}).")
    limit_threads(threads)

    settings = MetricSettings(
        metrics=metric_names, k=k, distance=distance, seeds=_seeds(seeds), normalize=normalize,
        probe=probe, knn=knn, knn_k=knn_k, silhouette_sample_size=sample_size, device=device,
    )
    env = distributed.init_distributed(device)  # a process group under torchrun, else nothing
    try:
        _run(source, settings, env.is_main, train=train, layers=layers, splits=splits, epochs=epoch_list, cache=cache,
             recompute=recompute, output=output)
    finally:
        distributed.shutdown(env)


def _run(source, settings, main: bool, *, train, layers, splits, epochs, cache, recompute, output) -> None:
    """The suite (with the other ranks under torchrun); rank 0 alone prints and writes files."""
    from clusterprobe.metrics import evaluate

    err = Console(stderr=True)
    with (err.status("computing metrics ...") if main else contextlib.nullcontext()) as status, \
            warnings.catch_warnings():
        # said once below, in the command's own words
        warnings.filterwarnings("ignore", message="Could not write the metrics cache")
        frame = evaluate(
            source, settings, train=train, layers=split_list(layers), splits=split_list(splits),
            epochs=epochs, cache=cache,
            recompute=recompute, progress=(lambda message: status.update(escape(message))) if main else False,
        )
    if not main:
        return
    out = Console()
    for table in render_tables(frame):
        out.print(table)
    out.print(f"[dim]{_settings_line(settings)}[/]", highlight=False)
    skipped = frame[frame["note"] != ""].drop_duplicates(["layer", "split", "unit", "note"])
    for row in skipped.itertuples():
        out.print(f"[yellow]{escape(str(row.unit))}[/] " + escape(f"({row.layer}, {row.split}): {row.note}"), highlight=False)
    if frame.attrs.get("cache_error"):
        out.print(f"[yellow]not cached:[/] {escape(str(frame.attrs['cache_error']))}; the values above were computed "
                  "but will be computed again next time (make its folder writable; --no-cache skips the cache)",
                  highlight=False, soft_wrap=True)
    elif frame.attrs.get("cache"):
        out.print(escape(f"cached in {frame.attrs['cache']}"), highlight=False, soft_wrap=True)
    if output is not None:
        _write(frame, output)
        out.print(escape(f"wrote {output}"), highlight=False, soft_wrap=True)
