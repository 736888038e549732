"""``clusterprobe train``: parse the options and call :func:`clusterprobe.trainer.train`.

Where the settings come from (method defaults < the run's saved ``config.yaml`` with ``--resume``
and no ``--config`` < a ``--config`` file < the options given) is decided by
:func:`clusterprobe.trainer.build_config`; this module only turns the options into fields.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from rich.markup import escape

from cli.common import console, friendly_errors, split_list

HELP = """Train a self-supervised model (ReSA or a baseline) and write a run directory:
config.yaml, checkpoints/epoch_XXXX.pt (epoch_0000 = initialisation), log.csv and epochs.csv.

Several processes: torchrun --nproc_per_node N -m cli.main train (then the same options).

Tiny CPU example: clusterprobe train --method resa --dataset digits --backbone resnet18 --width 8
--projector-dims 128,128,64 --batch-size 64 --epochs 5 --out runs/demo"""


def _ints(value: Optional[str], name: str) -> Optional[list[int]] | str:
    items = split_list(value)
    if items is None:
        return None
    if len(items) == 1 and items[0].lower() in ("none", "null", "off"):
        return "none"
    try:
        return [int(item) for item in items]
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, e.g. 2048,2048,512; got {value!r}.")


def _options(values: Optional[List[str]]) -> dict[str, Any]:
    import yaml

    options = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--option takes KEY=VALUE (e.g. temperature=0.4), got {item!r}.")
        options[key.strip().replace("-", "_")] = yaml.safe_load(raw)
    return options


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    @friendly_errors
    def train_command(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML or TOML file of settings (fields of TrainConfig)."),
        method: Optional[str] = typer.Option(None, help="resa (default), simclr, byol, vicreg, swav or barlow_twins."),
        dataset: Optional[str] = typer.Option(None, help="cifar10 (default), cifar100, digits or imagefolder."),
        data_root: Optional[str] = typer.Option(None, help="Data directory (torchvision files or an ImageFolder tree)."),
        download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Download CIFAR with torchvision if missing."),
        limit_train: Optional[int] = typer.Option(None, help="Train on a seeded subset of this many images."),
        image_size: Optional[int] = typer.Option(None, help="Size NxN of the training views, for any data set (default: the data set's own, 32 for CIFAR, 8 for digits; imagefolder needs it). Extraction and the report then use it too."),
        epochs: Optional[int] = typer.Option(None, help="Number of epochs (spec: 1000)."),
        batch_size: Optional[int] = typer.Option(None, help="Global batch size over all processes (spec: 256)."),
        backbone: Optional[str] = typer.Option(None, help="resnet18, resnet34 or resnet50."),
        width: Optional[int] = typer.Option(None, help="First-stage width (64 = standard ResNet; 8-16 trains on a CPU)."),
        cifar_stem: Optional[bool] = typer.Option(None, "--cifar-stem/--no-cifar-stem", help="3x3 stride-1 stem, no max-pool (default: on for images <= 64 px)."),
        stem_padding: Optional[int] = typer.Option(None, help="Zero padding of the CIFAR stem (default 2: the ReSA reference code and solo-learn; 1 rebuilds runs of earlier versions)."),
        projector_dims: Optional[str] = typer.Option(None, help="Projector hidden and output sizes, e.g. 2048,2048,512."),
        predictor_dims: Optional[str] = typer.Option(None, help="Predictor sizes (e.g. 2048,512 for ReSA's ImageNet variant), or none."),
        optimizer: Optional[str] = typer.Option(None, help="sgd or lars (default: the method's recipe)."),
        lr: Optional[float] = typer.Option(None, help="Base learning rate per 256 images (scaled by batch/256)."),
        weight_decay: Optional[float] = typer.Option(None, help="Weight decay."),
        warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up epochs."),
        lr_floor: Optional[float] = typer.Option(None, help="Final LR as a fraction of the peak (ReSA: 0.1)."),
        ema_base: Optional[float] = typer.Option(None, help="Starting EMA rate of the momentum branch (ReSA 0.996, BYOL 0.99)."),
        views: Optional[str] = typer.Option(None, help="Augmentation recipe: resa, asymmetric, symmetric or vicreg."),
        views_on: Optional[str] = typer.Option(None, "--views-on", help="Where views are made: loader (PIL, DataLoader workers), device (batched on the training device from a uint8 copy of the data set) or auto (device on CUDA when the data fits; default)."),
        crop_scale: Optional[str] = typer.Option(None, help="RandomResizedCrop scale range, e.g. 0.2,1.0."),
        flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Horizontal flips in the views (default on; off for digits-like data)."),
        option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Method setting KEY=VALUE, repeatable (e.g. -o temperature=0.4 -o transposed=true)."),
        seed: Optional[int] = typer.Option(None, help="Random seed."),
        amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA (the Sinkhorn target stays float32)."),
        amp_dtype: Optional[str] = typer.Option(None, help="bfloat16 or float16."),
        channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="channels_last memory format (default: on CUDA)."),
        compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the encoders (first steps are slow while it compiles)."),
        fused_optimizer: Optional[bool] = typer.Option(None, "--fused-optimizer/--no-fused-optimizer", help="torch's fused SGD kernel (default: on CUDA)."),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
        num_workers: Optional[int] = typer.Option(None, help="Data loader workers per process (default: 0 on CPU, up to 8 on GPU)."),
        out: Optional[str] = typer.Option(None, "--out", help="Run directory, e.g. runs/NAME."),
        name: Optional[str] = typer.Option(None, help="Run name recorded in checkpoints (default: the directory name)."),
        save_every: Optional[int] = typer.Option(None, help="Save checkpoints/epoch_XXXX.pt every N epochs (and after the last)."),
        save_init: Optional[bool] = typer.Option(None, "--save-init/--no-save-init", help="Save the initialisation as epoch_0000.pt."),
        log_every: Optional[int] = typer.Option(None, help="Write a log.csv row every N steps; the loss is read back from the GPU only then (and at each epoch's end), so N > 1 spares a host sync every step."),
        monitor_every: Optional[int] = typer.Option(None, help="kNN monitor (train bank -> test) every N epochs; 0 = off."),
        tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also log to runs/NAME/tensorboard (needs tensorboard)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch, FAISS and BLAS (default: each library's own; fewer than the cores when the machine is shared)."),
    ):
        from clusterprobe.devices import limit_threads
        from clusterprobe.trainer import build_config
        from clusterprobe.trainer import train as run_training

        limit_threads(threads)

        given = {
            "method": method, "dataset": dataset, "data_root": data_root, "download": download,
            "limit_train": limit_train, "image_size": image_size, "epochs": epochs,
            "batch_size": batch_size, "backbone": backbone, "width": width, "cifar_stem": cifar_stem,
            "stem_padding": stem_padding, "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs, "lr_floor": lr_floor, "ema_base": ema_base, "views": views, "views_on": views_on, "flip": flip,
            "seed": seed, "amp": amp, "amp_dtype": amp_dtype, "device": device,
            "channels_last": channels_last, "compile": compile_, "fused_optimizer": fused_optimizer,
            "num_workers": num_workers, "out": out, "name": name, "save_every": save_every,
            "save_init": save_init, "log_every": log_every, "monitor_every": monitor_every,
            "tensorboard": tensorboard,
        }
        given = {k: v for k, v in given.items() if v is not None}
        for key, value in (("projector_dims", projector_dims), ("predictor_dims", predictor_dims)):
            parsed = _ints(value, "--" + key.replace("_", "-"))
            if parsed is not None:
                given[key] = None if parsed == "none" else parsed
        if crop_scale is not None:
            try:
                given["crop_scale"] = [float(s) for s in split_list(crop_scale) or []]
            except ValueError:
                raise typer.BadParameter(f"--crop-scale takes two numbers, e.g. 0.2,1.0; got {crop_scale!r}.")
        if option:
            given["options"] = _options(option)
        given["progress"] = not quiet  # a runtime choice of this command, not the saved run's

        resolved = build_config(given, config_file=config, resume=resume)
        try:
            run_dir = run_training(resolved, resume=resume, overwrite=overwrite)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: saved checkpoints are kept; continue with the same "
                          f"command plus --resume.")
            sys.exit(130)
        console.print(escape(f"run written to {run_dir}"), highlight=False)
