"""``clusterprobe extract`` and ``clusterprobe layers``."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import console, friendly_errors, split_list

BRANCH_OPTION = typer.Option(None, "--branch", help="online, momentum, teacher or student (teacher = momentum, student = online; default: the branch the method's own evaluation uses, e.g. ReSA momentum, DINO teacher, MoCo v3 base encoder).")
STEM_PADDING_OPTION = typer.Option(None, "--stem-padding", help="Zero padding of a 3x3 CIFAR stem, for files that do not record it (default 2, as ReSA and solo-learn).")
HEAD_ACTIVATION_OPTION = typer.Option(None, "--head-activation", help="relu or gelu: the projector's activation, for files that do not determine it (default relu).")
VIT_HEADS_OPTION = typer.Option(None, "--vit-heads", help="Attention heads of a ViT whose file does not name its architecture (default embed_dim / 64).")


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
    app.command("layers")(layers)
    app.command("verify")(verify)


@friendly_errors
def extract(
    checkpoint: Path = typer.Argument(..., help="Checkpoint: clusterprobe .pt, solo-learn .ckpt (args.json beside it) or a plain state dict."),
    layers: str = typer.Option("H,P0,P1,Z", "--layers", "-l", help="Comma-separated layer names (H, P0, P1, Z) or module paths (backbone.layer3)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cifar10, cifar100, digits (embedded, no files) or imagefolder (default: the data set the checkpoint names, else digits)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data set directory (torchvision files or an ImageFolder tree; default: the data_root of the checkpoint's run config.yaml, else ./data for CIFAR)."),
    split: str = typer.Option("test", "--split", help="train or test."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bank directory (default: <run>/features/<split>/<epoch> beside the checkpoint)."),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda or cuda:N."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader worker processes (0: read in this process)."),
    branch: Optional[str] = BRANCH_OPTION,
    trust: bool = typer.Option(False, "--trust", help="Allow full unpickling of the checkpoint (runs code from the file: trusted files only)."),
    stem_padding: Optional[int] = STEM_PADDING_OPTION,
    head_activation: Optional[str] = HEAD_ACTIVATION_OPTION,
    vit_heads: Optional[int] = VIT_HEADS_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different bank already at --out."),
    download: bool = typer.Option(False, "--download", help="Download CIFAR if it is not under --data-root."),
    pre_activation: bool = typer.Option(False, "--pre-activation", help="Tap P0, P1, ... before the activation instead of after it."),
    args_json: Optional[Path] = typer.Option(None, "--args-json", help="solo-learn's args.json, if not beside the checkpoint."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Resize + centre-crop every image to NxN, for any data set (default: the image_size the checkpoint's run trained at, from its config.yaml; else the images' own size). Images of mixed sizes need it."),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="Leave out images that cannot be decoded (listed in the bank's meta.json)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Normalisation mean per channel, e.g. 0.5,0.5,0.5 (default: the data set's; imagefolder: measured on its images)."),
    std: Optional[str] = typer.Option(None, "--std", help="Normalisation std per channel (see --mean)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch, FAISS and BLAS (default: each library's own; fewer than the cores when the machine is shared)."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage type of the features: float32, or float16 (half the disk, values rounded to ~3 digits; the metrics compute in float32)."),
) -> None:
    """Run a data set through a checkpoint once and write the chosen layers to a feature bank."""
    from clusterprobe.devices import limit_threads

    limit_threads(threads)
    from clusterprobe.extract import UncheckedDataWarning, checkpoint_dataset, extract_features

    loaded = _load(checkpoint, branch=branch, trust=trust, args_json=args_json, stem_padding=stem_padding,
                   head_activation=head_activation, vit_heads=vit_heads)
    data = checkpoint_dataset(loaded, dataset, split=split, root=data_root, download=download,
                              image_size=image_size, skip_unreadable=skip_unreadable,
                              mean=_floats(mean, "--mean"), std=_floats(std, "--std"))
    with _warnings_as_lines(UncheckedDataWarning):
        bank = extract_features(
            loaded, data, out, layers=split_list(layers) or [], batch_size=batch_size, device=device,
            num_workers=num_workers, overwrite=overwrite, pre_activation=pre_activation, dtype=dtype,
        )
    if int(os.environ.get("RANK", "0")) == 0:
        dims = ", ".join(f"{name} {dim}-d" for name, dim in bank.dims.items()) + f", {bank.dtype.name}"
        if bank.reused:
            typer.echo(f"reused the bank at {bank.path} ({bank.n} samples, {dims}): it was already "
                       "extracted from this checkpoint with these layers and data; nothing was "
                       "recomputed (--overwrite extracts it again)")
        else:
            typer.echo(f"wrote {bank.n} samples ({dims}) to {bank.path}")


@friendly_errors
def verify(
    bank: Path = typer.Argument(..., help="Feature bank directory."),
    content: bool = typer.Option(True, "--content/--quick", help="Also compare every file's SHA-256 with the one recorded when the bank was written (reads every byte); --quick checks only shapes, dtypes and sizes."),
) -> None:
    """Check a feature bank against its meta.json: file shapes, dtypes, sizes and content hashes."""
    from clusterprobe.bank import FeatureBank

    opened = FeatureBank.open(bank)
    notes = opened.verify(content=content)
    typer.echo(f"{opened.path}: ok")
    for note in notes:
        typer.echo(f"  {note}")


@friendly_errors
def layers(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file."),
    branch: Optional[str] = BRANCH_OPTION,
    trust: bool = typer.Option(False, "--trust", help="Allow full unpickling (trusted files only)."),
    args_json: Optional[Path] = typer.Option(None, "--args-json", help="solo-learn's args.json, if not beside the checkpoint."),
    stem_padding: Optional[int] = STEM_PADDING_OPTION,
    head_activation: Optional[str] = HEAD_ACTIVATION_OPTION,
    vit_heads: Optional[int] = VIT_HEADS_OPTION,
) -> None:
    """Show what a checkpoint is: format, branch, stem, each layer's module and dim, and any assumption."""
    loaded = _load(checkpoint, branch=branch, trust=trust, args_json=args_json, stem_padding=stem_padding,
                   head_activation=head_activation, vit_heads=vit_heads, warn=False)
    model = loaded.model
    others = [b for b in loaded.branches if b != loaded.branch]
    typer.echo(f"{checkpoint}: {loaded.format} checkpoint, {loaded.branch} branch"
               + (f" (also: {', '.join(others)})" if others else "")
               + (f", epoch {loaded.epoch}" if loaded.epoch is not None else "")
               + (f", method {loaded.method}" if loaded.method else ""))
    table = Table()
    table.add_column("layer")
    table.add_column("dim", justify="right")
    table.add_column("module")
    table.add_column("what")
    for name, dim in model.layer_dims().items():
        spec = model.resolve_layer(name)
        what = {"H": "encoder output (pooled)", "Z": loaded.z or "projector output"}.get(
            name, "projector hidden layer, after its activation")
        table.add_row(escape(name), str(dim), escape(spec.module), escape(what))
    Console().print(table)
    for fact in loaded.facts:
        typer.echo(f"  {fact}")
    if loaded.assumptions:
        typer.echo("Assumed (the file does not say; recorded in every bank extracted from it):")
        for assumption in loaded.assumptions:
            typer.echo(f"  - {assumption}")
    else:
        typer.echo("Assumed: nothing; the file and its format determine the whole architecture.")
    stages = model.stage_paths()
    shown = ", ".join(stages[:4]) + (f" ... {stages[-1]}" if len(stages) > 4 else "")
    typer.echo(f"Any module path is a layer too, e.g. {shown}.")


def _floats(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in split_list(text) or [])
    except ValueError:
        raise typer.BadParameter(f"{flag} takes numbers separated by commas, e.g. 0.5,0.5,0.5; got {text!r}.")


@contextlib.contextmanager
def _warnings_as_lines(*categories, show: bool = True):
    """Warnings of ``categories`` raised inside the block, printed as one ``warning: ...`` line
    each (instead of Python's ``file:line: Category:`` format); others pass through as they are."""
    with warnings.catch_warnings(record=True) as caught:
        for category in categories:
            warnings.simplefilter("always", category)
        yield
    for warning in caught:
        if issubclass(warning.category, categories):
            if show:
                console.print(f"[yellow]warning:[/] {escape(str(warning.message))}", highlight=False, soft_wrap=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _load(checkpoint: Path, *, warn: bool = True, **options):
    """load_checkpoint, printing its assumptions as one-line warnings instead of Python's format."""
    from clusterprobe.checkpoints import load_checkpoint
    from clusterprobe.errors import AssumptionWarning

    with _warnings_as_lines(AssumptionWarning, show=warn):
        loaded = load_checkpoint(checkpoint, **options)
    return loaded
