"""The built-in trainer: ReSA (per ``docs/resa.md``) and the SimCLR, BYOL, VICReg, SwAV and
Barlow Twins baselines, with per-epoch checkpoints, bit-for-bit resume and torchrun DDP.

Library use::

    from clusterprobe.trainer import TrainConfig, train
    run_dir = train(TrainConfig(method="resa", dataset="digits", epochs=5, batch_size=64,
                                width=8, projector_dims=[128, 128, 64], out="runs/demo"))
    # a mapping of some fields is completed like the command line's options; resuming, over
    # the run's saved config.yaml (== clusterprobe train --out runs/demo --epochs 5 --resume):
    train({"out": "runs/demo", "epochs": 5}, resume=True)

:func:`build_config` gives the resolved config such a call (or the command line) trains with.

Command line: ``clusterprobe train --method resa --dataset digits ...`` (``--help`` lists all
options); several processes: ``torchrun --nproc_per_node N -m cli.main train ...``.
"""

from .config import (METHOD_DEFAULTS, METHODS, TrainConfig, build_config, load_config_file,
                     load_saved_config, resolve_config, save_config)
from ..errors import (CheckpointWriteError, NonFiniteLossError, RunDirectoryError, TrainConfigError,
                     TrainingError)
from .losses import (ReSALoss, barlow_twins_loss, byol_loss, nt_xent_loss, resa_loss, swav_loss,
                     vicreg_loss)
from .loop import train
from .methods import METHOD_CLASSES, Method, OnlineNetwork, build_method, model_config_for
from ..runs import checkpoint_name
from .run_dir import RunDirectory
from .schedules import CosineEMASchedule, WarmupCosineSchedule
from .sinkhorn import resa_target, sinkhorn_knopp
from .views import VIEW_RECIPES, two_view_transform

__all__ = [
    "METHODS", "METHOD_DEFAULTS", "METHOD_CLASSES", "VIEW_RECIPES",
    "TrainConfig", "build_config", "load_config_file", "load_saved_config", "resolve_config", "save_config",
    "train",
    "TrainingError", "TrainConfigError", "RunDirectoryError", "NonFiniteLossError", "CheckpointWriteError",
    "resa_loss", "ReSALoss", "nt_xent_loss", "byol_loss", "vicreg_loss", "barlow_twins_loss", "swav_loss",
    "sinkhorn_knopp", "resa_target",
    "WarmupCosineSchedule", "CosineEMASchedule",
    "Method", "OnlineNetwork", "build_method", "model_config_for",
    "RunDirectory", "checkpoint_name", "two_view_transform",
]
