"""``clusterprobe report`` and ``clusterprobe demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rich.markup import escape

from .common import console, friendly_errors, int_list, split_list


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("demo")(demo)


def _print_result(result) -> None:
    for message in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    typer.echo(f"metrics table: {result.metrics_csv}")
    typer.echo(f"report: {result.index_html}")


@friendly_errors
def report(
    runs_dir: Path = typer.Argument(..., help="Folder holding runs (clusterprobe run directories or solo-learn checkpoint folders)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: RUNS_DIR/report)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Analyse on this data set instead of each run's own."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Where the data set is."),
    layers: str = typer.Option("H,P0,P1,Z", "--layers", "-l", help="Layers to analyse."),
    epochs: Optional[str] = typer.Option(None, "--epochs", help="Only these epochs, e.g. 0,10,100 (default: all)."),
    cluster_splits: str = typer.Option("test", "--cluster-splits", help="Splits to compute clustering metrics on."),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    device: str = typer.Option("auto", "--device"),
    umap: bool = typer.Option(True, "--umap/--no-umap", help="Draw the UMAP figure."),
    per_class: bool = typer.Option(True, "--per-class/--no-per-class", help="Draw the per-class views (clusters vs classes, silhouette per class)."),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels", help="Add the raw-pixels reference: the same metrics on the flattened input images, once per data set (cached)."),
    zoom_per_run: bool = typer.Option(False, "--zoom-per-run", help="Zoom each training-dynamics panel on its own run instead of one y-range per metric for all runs."),
    seeds: int = typer.Option(3, "--seeds", help="k-means seeds."),
    dtype: str = typer.Option("float32", "--dtype", help="How the banks the report extracts are stored: float32, or float16 (half the disk; the metrics compute in float32). Existing banks are reused as they are."),
    branch: Optional[str] = typer.Option(None, "--branch", help="online, momentum, teacher or student instead of each checkpoint's default branch (cached apart)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch, FAISS and BLAS (default: each library's own; fewer than the cores when the machine is shared)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (errors and warnings are still shown). Without it: a bar on a terminal, one line per finished step with the elapsed and remaining time in a log."),
) -> None:
    """Extract, measure and plot every run below RUNS_DIR; reuses every cached bank and metric."""
    from clusterprobe.devices import limit_threads
    from clusterprobe.report import ReportSettings, build_report

    epoch_list = int_list(epochs, "--epochs")
    limit_threads(threads)

    settings = ReportSettings(
        layers=tuple(split_list(layers) or ()), dataset=dataset, data_root=data_root,
        epochs=tuple(epoch_list) if epoch_list is not None else None,
        cluster_splits=tuple(split_list(cluster_splits) or ("test",)), batch_size=batch_size,
        device=device, umap=umap, metric_overrides={"seeds": seeds}, branch=branch,
        per_class=per_class, same_axes=not zoom_per_run, pixels=pixels, dtype=dtype,
    )
    _print_result(build_report(runs_dir, out, settings, progress=not quiet))


@friendly_errors
def demo(
    out: Path = typer.Option(Path("clusterprobe-demo"), "--out", "-o", help="Folder for the demo's runs and report."),
    epochs: int = typer.Option(6, "--epochs", min=1, help="Training epochs per method (runs already in --out with fewer are extended; with more, refused)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda or cuda:N."),
) -> None:
    """Train ReSA and BYOL briefly on the embedded digits (a few CPU minutes, no download), then report."""
    from clusterprobe.demo import run_demo

    result = run_demo(out, epochs=epochs, device=device)
    _print_result(result)
    typer.echo(f"demo finished in {result.elapsed_s / 60:.1f} min")
