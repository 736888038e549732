"""Training configuration: one flat dataclass, method defaults, validation, YAML/TOML files.

A :class:`TrainConfig` leaves method-dependent fields at ``None`` ("the method's default");
:func:`resolve_config` fills them from :data:`METHOD_DEFAULTS` and validates everything, and the
resolved config is what a run saves as ``config.yaml``. :func:`build_config` decides where the
settings come from (method defaults < the saved run's ``config.yaml`` when resuming < a config
file < the fields given), for the command line and for notebooks alike.

Method defaults follow the ReSA specification for ReSA (CIFAR, ResNet-18) and solo-learn's
published CIFAR recipes for the baselines (the recipes behind the reference numbers quoted in the
specification): projector sizes, LARS/SGD, base LR per 256 images, weight decay, warm-up,
temperature and loss weights. The base LR is scaled by ``batch_size / 256``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..data import DATASETS
from ..devices import check_device_name
from ..errors import ClusterprobeError, DeviceError, RunDirectoryError, TrainConfigError, closest_name
from ..models.backbones import BACKBONES
from ..runs import RunLayout, read_config_file
from .optim import OPTIMIZERS
from .views import BLUR_KERNEL_RULES, LEGACY_BLUR_KERNEL, VIEW_RECIPES

METHODS = ("resa", "simclr", "byol", "vicreg", "swav", "barlow_twins")
#: Methods with a momentum (EMA) branch; their checkpoints are analysed on that branch.
MOMENTUM_METHODS = ("resa", "byol")

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "resa": dict(
        projector_dims=[2048, 2048, 512], projector_batch_norm=True, projector_last_batch_norm=True,
        predictor_dims=None, optimizer="sgd", lr=0.3, weight_decay=1e-4, warmup_epochs=2.0,
        lr_floor=0.1, ema_base=0.996, views="resa",
        options=dict(temperature=0.4, sinkhorn_epsilon=0.05, sinkhorn_iterations=3, transposed=False),
    ),
    "simclr": dict(
        projector_dims=[2048, 256], projector_batch_norm=False, projector_last_batch_norm=False,
        predictor_dims=None, optimizer="lars", lr=0.4, weight_decay=1e-4, warmup_epochs=10.0,
        lr_floor=0.0, ema_base=None, views="symmetric",
        options=dict(temperature=0.2),
    ),
    "byol": dict(
        projector_dims=[4096, 256], projector_batch_norm=True, projector_last_batch_norm=False,
        predictor_dims=[4096, 256], optimizer="lars", lr=1.0, weight_decay=1e-5, warmup_epochs=10.0,
        lr_floor=0.0, ema_base=0.99, views="asymmetric",
        options=dict(),
    ),
    "vicreg": dict(
        projector_dims=[2048, 2048, 2048], projector_batch_norm=True, projector_last_batch_norm=False,
        predictor_dims=None, optimizer="lars", lr=0.3, weight_decay=1e-4, warmup_epochs=10.0,
        lr_floor=0.0, ema_base=None, views="vicreg",
        options=dict(sim_weight=25.0, var_weight=25.0, cov_weight=1.0),
    ),
    "swav": dict(
        projector_dims=[2048, 128], projector_batch_norm=True, projector_last_batch_norm=False,
        predictor_dims=None, optimizer="lars", lr=0.6, weight_decay=1e-6, warmup_epochs=10.0,
        lr_floor=0.0, ema_base=None, views="symmetric",
        options=dict(num_prototypes=3000, temperature=0.1, sinkhorn_epsilon=0.05,
                     sinkhorn_iterations=3, freeze_prototypes_epochs=2, queue_size=3840,
                     queue_start_epoch=50),
    ),
    "barlow_twins": dict(
        projector_dims=[2048, 2048, 2048], projector_batch_norm=True, projector_last_batch_norm=False,
        predictor_dims=None, optimizer="lars", lr=0.3, weight_decay=1e-4, warmup_epochs=10.0,
        lr_floor=0.0, ema_base=None, views="asymmetric",
        options=dict(lambda_offdiag=0.0051, scale=0.1),
    ),
}

#: Smallest batch each method can train on (BatchNorm and the batch-wise losses need 2 samples).
MIN_BATCH_SIZE = {method: 2 for method in METHODS}

#: Fields that may differ when resuming (they do not change the computation).
RUNTIME_FIELDS = ("out", "num_workers", "pin_memory", "persistent_workers", "progress",
                  "monitor_every", "monitor_bank_size", "monitor_query_size", "tensorboard",
                  "log_every", "data_root", "download", "device", "save_every", "save_init",
                  "channels_last", "compile", "fused_optimizer")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``None`` fields take the method's default.

    Data: ``dataset`` (cifar10, cifar100, digits, imagefolder), ``data_root``, ``download``,
    ``limit_train`` (train on the first N images of a seeded permutation), ``image_size``
    (every data set is resized to it; None: the data set's own size). ``data_root`` is stored
    as an absolute path.

    Model: ``backbone`` (resnet18/34/50), ``width`` (first-stage channels, 64 = standard),
    ``cifar_stem`` (None: on for images <= 64 px), ``stem_padding`` (the CIFAR stem's zero
    padding: 2 as in the ReSA reference code and solo-learn; runs of earlier versions record 1),
    ``zero_init_residual`` (start each residual branch's last BatchNorm at zero; None: as ReSA's
    reference code does for ReSA, on except ResNet-18 with the CIFAR stem, off for the baselines;
    it changes only the initialisation, so resuming never depends on it),
    ``projector_dims`` (hidden sizes and output size), ``projector_batch_norm``,
    ``projector_last_batch_norm``, ``predictor_dims`` (ReSA's ImageNet option: [2048, 512]).

    Optimisation: ``epochs``, ``batch_size`` (global, over all processes), ``optimizer`` (sgd,
    lars), ``lr`` (per 256 images), ``weight_decay``, ``momentum`` (SGD), ``warmup_epochs`` (None:
    the method's, capped at a tenth of the run), ``lr_floor`` (final LR as a fraction of the peak),
    ``ema_base`` (momentum methods), ``amp`` / ``amp_dtype`` (CUDA only), ``seed``. Speed:
    ``channels_last`` (None: on CUDA), ``compile`` (``torch.compile`` of the encoders, keys
    unchanged), ``fused_optimizer`` (SGD's fused kernel, LARS's multi-tensor step; None: on
    CUDA); they change results only at the level of floating-point rounding and may differ
    between a run and its resume.

    Method: ``method``, ``views`` (augmentation recipe), ``views_on`` (``loader``: PIL pipelines
    in DataLoader workers; ``device``: batched on the training device from a uint8 copy of the
    data set, see :mod:`~clusterprobe.trainer.batch_views`; ``auto``: ``device`` on CUDA when the
    images are of one size and fit in a quarter of the free GPU memory), ``crop_scale``, ``blur`` (ReSA's
    ImageNet blur), ``blur_kernel`` (the rule for the Gaussian blur's kernel size, see
    :func:`~clusterprobe.trainer.views.blur_kernel_size`: ``3sigma``, as wide as PIL's untruncated
    blur of the references; runs of earlier versions, whose config.yaml has no ``blur_kernel``,
    were trained with ``10percent``, 3 taps at 32 px, and keep it when resumed), ``flip``
    (horizontal flips; off for digits-like data), ``options`` (method
    settings, see :data:`METHOD_DEFAULTS`: e.g. ReSA's temperature, Sinkhorn epsilon/iterations,
    transposed term).

    Run: ``out`` (run directory), ``name``, ``save_every`` (epochs), ``save_init`` (epoch_0000.pt),
    ``log_every`` (steps per CSV row), ``monitor_every`` (kNN monitor every N epochs, 0 = off),
    ``device`` (auto, cpu, cuda), loader settings (None: automatic).
    """

    method: str = "resa"
    dataset: str = "cifar10"
    data_root: str | None = None
    download: bool = False
    limit_train: int | None = None
    image_size: int | None = None

    backbone: str = "resnet18"
    width: int = 64
    cifar_stem: bool | None = None
    stem_padding: int = 2
    zero_init_residual: bool | None = None
    projector_dims: list[int] | None = None
    projector_batch_norm: bool | None = None
    projector_last_batch_norm: bool | None = None
    predictor_dims: list[int] | None = None

    epochs: int = 1000
    batch_size: int = 256
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    lr_floor: float | None = None
    ema_base: float | None = None
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool | None = None
    compile: bool = False
    fused_optimizer: bool | None = None
    seed: int = 0

    views: str | None = None
    views_on: str = "auto"
    crop_scale: list[float] | None = None
    blur: bool = False
    blur_kernel: str = "3sigma"
    flip: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    out: str = "runs/resa"
    name: str | None = None
    save_every: int = 1
    save_init: bool = True
    log_every: int = 1
    monitor_every: int = 0
    monitor_k: int = 5
    monitor_bank_size: int | None = 5000
    monitor_query_size: int | None = 2000
    tensorboard: bool = False
    progress: bool = True

    device: str = "auto"
    num_workers: int | None = None
    pin_memory: bool | None = None
    persistent_workers: bool | None = None

    # -- conversions --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        data = {str(k).replace("-", "_"): v for k, v in dict(data).items()}
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = "".join(closest_name(k, known) for k in unknown)
            raise TrainConfigError(
                f"Unknown training config field(s) {unknown}.{hints} Known fields: {', '.join(known)}."
            )
        return cls(**copy.deepcopy(data))

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @property
    def run_name(self) -> str:
        return self.name or Path(self.out).name

    @property
    def has_momentum(self) -> bool:
        return self.method in MOMENTUM_METHODS

    @property
    def eval_branch(self) -> str:
        return "momentum" if self.has_momentum else "online"

    def scaled_lr(self) -> float:
        """The peak learning rate: ``lr * batch_size / 256``."""
        return float(self.lr) * self.batch_size / 256.0


# ---------------------------------------------------------------------------------------------
def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a dict.

    Raises:
        TrainConfigError: missing, unparsable, or not a mapping.
    """
    try:
        return read_config_file(path)
    except ClusterprobeError as error:
        raise TrainConfigError(str(error)) from None


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the config as YAML (atomically)."""
    from ..io import atomic_write

    text = "# clusterprobe training config (resolved)\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def coerce_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike) -> TrainConfig:
    """Accept a TrainConfig, a dict of fields or a config file path."""
    if isinstance(config, TrainConfig):
        return TrainConfig.from_dict(config.to_dict())
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    return TrainConfig.from_dict(load_config_file(config))


# ---------------------------------------------------------------------------------------------
# Where the settings come from
def build_config(
    given: TrainConfig | Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainConfig:
    """The resolved config of a run, from its settings in increasing priority:

    1. the method's defaults (:data:`METHOD_DEFAULTS`);
    2. when resuming without a ``config_file``: the run's saved ``config.yaml`` (in ``given["out"]``);
    3. ``config_file`` (YAML or TOML, fields of :class:`TrainConfig`);
    4. ``given``: the fields set explicitly (on the command line: the options given). Its
       ``options`` are merged key by key into those of 2 or 3.

    ``clusterprobe train --out runs/x --epochs 20 --resume`` is
    ``build_config({"out": "runs/x", "epochs": 20}, resume=True)``. A complete
    :class:`TrainConfig` is taken as it is (only resolved): resuming with it refuses fields that
    differ from the saved run.

    Raises:
        TrainConfigError: no run directory (``out``) among the settings, an unreadable config
            file, or an invalid field (see :func:`resolve_config`).
        RunDirectoryError: the run to resume has an unreadable ``config.yaml``.
    """
    if isinstance(given, TrainConfig):
        if config_file is not None:
            _fail("Pass either a complete TrainConfig or a config file (with a mapping of the fields "
                  "that override it), not both.")
        return resolve_config(given)
    given = _field_names(given or {})
    settings = _file_or_saved_settings(given, config_file, resume)
    settings = _overlay(settings, given)
    if "out" not in settings:
        _fail("Give the run directory: --out runs/NAME on the command line, 'out:' in the config "
              "file, or out='runs/NAME' in a mapping.")
    return resolve_config(settings)


def _field_names(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy with ``batch-size`` spelled ``batch_size``."""
    return {str(key).replace("-", "_"): copy.deepcopy(value) for key, value in settings.items()}


def _file_or_saved_settings(given: Mapping[str, Any], config_file, resume: bool) -> dict[str, Any]:
    """The settings below the given ones: the config file, else (resuming) the saved run's."""
    if config_file is not None:
        return _field_names(load_config_file(config_file))
    if not resume:
        return {}
    if "out" not in given:
        _fail("Resuming needs the run directory: --out runs/NAME (out='runs/NAME' in a mapping).")
    run = RunLayout(given["out"])
    return load_saved_config(run).to_dict() if run.config_path.exists() else {}


def _overlay(settings: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` updated with ``given``; the ``options`` of both are merged key by key."""
    merged = {**settings, **given}
    if "options" in given and isinstance(settings.get("options"), Mapping) and isinstance(given["options"], Mapping):
        merged["options"] = {**settings["options"], **given["options"]}
    return merged


#: Fields added to :class:`TrainConfig` after runs were saved without them, with the value those
#: runs were trained with (which is not the default of new runs): a saved config.yaml without
#: the field is read with this value, so a resumed run keeps its computation.
FIELDS_OF_EARLIER_RUNS: dict[str, Any] = {"blur_kernel": LEGACY_BLUR_KERNEL}


def _with_recorded_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's fields, with :data:`FIELDS_OF_EARLIER_RUNS` filled in where it lacks them."""
    return {**FIELDS_OF_EARLIER_RUNS, **{str(k).replace("-", "_"): v for k, v in saved.items()}}


def load_saved_config(run: RunLayout | str | os.PathLike) -> TrainConfig:
    """The ``config.yaml`` a run directory holds, as a :class:`TrainConfig`.

    Fields it lacks because an earlier version wrote it take the value those versions trained
    with (:data:`FIELDS_OF_EARLIER_RUNS`: ``blur_kernel`` is ``10percent``), not today's default.

    Raises:
        RunDirectoryError: it cannot be read as a training config.
    """
    layout = run if isinstance(run, RunLayout) else RunLayout(run)
    try:
        return TrainConfig.from_dict(_with_recorded_defaults(layout.read_config()))
    except ClusterprobeError as error:
        raise RunDirectoryError(f"Cannot resume from {layout.path}: its config.yaml is unreadable ({error}).") from None


# ---------------------------------------------------------------------------------------------
# Method defaults and validation
def resolve_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike) -> TrainConfig:
    """Fill the method defaults into a copy of ``config`` and validate every field.

    Raises:
        TrainConfigError: with a message naming the field, the problem and the valid values.
    """
    config = coerce_config(config)
    _check_names(config)
    _absolute_data_root(config)
    _fill_method_defaults(config)
    _resolve_options(config)
    _check_model(config)
    _check_optimisation(config)
    _check_views(config)
    _check_run_settings(config)
    _check_method_options(config)
    return config


def _fail(message: str) -> None:
    raise TrainConfigError(message)


def _check_names(config: TrainConfig) -> None:
    """The method, backbone and data set exist."""
    if config.method not in METHODS:
        _fail(f"Unknown method {config.method!r}; the known methods are {', '.join(METHODS)}."
              f"{closest_name(config.method, METHODS)}")
    if config.backbone not in BACKBONES:
        _fail(f"Unknown backbone {config.backbone!r}; the known backbones are {', '.join(BACKBONES)}."
              f"{closest_name(config.backbone, BACKBONES)}")
    if config.dataset not in DATASETS:
        _fail(f"Unknown data set {config.dataset!r}; the known data sets are {', '.join(DATASETS)}."
              f"{closest_name(config.dataset, DATASETS)}")


def _absolute_data_root(config: TrainConfig) -> None:
    """``data_root`` as an absolute path, so config.yaml names the folder trained on: a relative
    one (the shipped configs' ``data``) would be read again from whatever folder a later
    ``extract``, ``report`` or ``--resume`` runs in, and an image folder there would be measured
    as the run's data set."""
    if config.data_root is not None and str(config.data_root) != "":
        config.data_root = str(Path(config.data_root).expanduser().resolve())


def _fill_method_defaults(config: TrainConfig) -> None:
    """Fields left at None take the method's recipe (warm-up: capped at a tenth of the run)."""
    defaults = METHOD_DEFAULTS[config.method]
    for key in ("projector_dims", "projector_batch_norm", "projector_last_batch_norm", "optimizer",
                "lr", "weight_decay", "lr_floor", "ema_base", "views"):
        if getattr(config, key) is None:
            setattr(config, key, copy.deepcopy(defaults[key]))
    if config.predictor_dims is None:
        config.predictor_dims = copy.deepcopy(defaults["predictor_dims"])
    if config.warmup_epochs is None:
        config.warmup_epochs = float(min(defaults["warmup_epochs"], config.epochs / 10))


def _resolve_options(config: TrainConfig) -> None:
    """The method's options: its defaults overridden by the given ones, cast to the defaults' types."""
    defaults = METHOD_DEFAULTS[config.method]["options"]
    if not isinstance(config.options, Mapping):
        _fail(f"options must be a mapping of method settings, got {config.options!r}.")
    unknown = sorted(set(config.options) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        _fail(f"Unknown option(s) {unknown} for method {config.method}; its options are: {valid}.")
    options = copy.deepcopy(defaults)
    for key, value in config.options.items():
        expected = type(options[key])
        try:
            options[key] = (value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")) \
                if expected is bool else expected(value)
        except (TypeError, ValueError):
            _fail(f"Option {key} of {config.method} must be a {expected.__name__}, got {value!r}.")
    config.options = options


def _check_model(config: TrainConfig) -> None:
    """Batch size, epochs, width and the projector/predictor sizes."""
    min_batch = MIN_BATCH_SIZE[config.method]
    if not isinstance(config.batch_size, int) or config.batch_size < min_batch:
        _fail(f"Batch size {config.batch_size} is too small for {config.method}: it needs at least "
              f"{min_batch} images per batch (BatchNorm and the loss are computed across the "
              "batch; the recipes use 256).")
    if config.epochs < 1:
        _fail(f"epochs must be at least 1, got {config.epochs}.")
    if config.width < 1:
        _fail(f"width must be a positive integer, got {config.width}.")
    if not config.projector_dims or any(int(d) < 1 for d in config.projector_dims):
        _fail(f"projector_dims must be a non-empty list of positive sizes, got {config.projector_dims}.")
    config.projector_dims = [int(d) for d in config.projector_dims]
    if config.predictor_dims is not None:
        if not config.predictor_dims or any(int(d) < 1 for d in config.predictor_dims):
            _fail(f"predictor_dims must be positive sizes or null, got {config.predictor_dims}.")
        config.predictor_dims = [int(d) for d in config.predictor_dims]
        if config.predictor_dims[-1] != config.projector_dims[-1]:
            _fail(f"The predictor must end at the projector's output size {config.projector_dims[-1]}, "
                  f"got predictor_dims {config.predictor_dims}.")
    if config.method == "byol" and not config.predictor_dims:
        _fail("BYOL needs a predictor (predictor_dims, e.g. [4096, 256]).")


def _check_optimisation(config: TrainConfig) -> None:
    """Optimizer, learning rate, weight decay, schedule and EMA rate."""
    if config.optimizer not in OPTIMIZERS:
        _fail(f"Unknown optimizer {config.optimizer!r}; use one of {', '.join(OPTIMIZERS)}.")
    if not (float(config.lr) > 0 and math.isfinite(float(config.lr))):
        _fail(f"lr must be a positive number, got {config.lr}.")
    if float(config.weight_decay) < 0:
        _fail(f"weight_decay must be >= 0, got {config.weight_decay}.")
    if not 0 <= float(config.lr_floor) <= 1:
        _fail(f"lr_floor is a fraction of the peak LR in [0, 1], got {config.lr_floor}.")
    if float(config.warmup_epochs) < 0:
        _fail(f"warmup_epochs must be >= 0, got {config.warmup_epochs}.")
    if float(config.warmup_epochs) > config.epochs:
        _fail(f"warmup_epochs {config.warmup_epochs:g} is longer than the run ({config.epochs} epochs): the "
              "learning rate would never reach its peak. Use fewer warm-up epochs or more epochs.")
    if config.method in MOMENTUM_METHODS:
        if config.ema_base is None or not 0 <= float(config.ema_base) < 1:
            _fail(f"ema_base must be in [0, 1) for {config.method}, got {config.ema_base}.")
    else:
        config.ema_base = None


def _check_views(config: TrainConfig) -> None:
    """The augmentation recipe and crop scale."""
    if config.views not in VIEW_RECIPES:
        _fail(f"Unknown view recipe {config.views!r}; use one of {', '.join(VIEW_RECIPES)}.")
    if config.blur_kernel not in BLUR_KERNEL_RULES:
        _fail(f"blur_kernel must be one of {', '.join(BLUR_KERNEL_RULES)} (3sigma for new runs; 10percent "
              f"is the rule of runs of earlier versions), got {config.blur_kernel!r}.")
    if config.views_on not in ("auto", "loader", "device"):
        _fail(f"views_on must be auto, loader or device, got {config.views_on!r}.")
    if config.crop_scale is not None:
        if len(config.crop_scale) != 2 or not 0 < config.crop_scale[0] <= config.crop_scale[1] <= 1:
            _fail(f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {config.crop_scale}.")
        config.crop_scale = [float(s) for s in config.crop_scale]


def _check_run_settings(config: TrainConfig) -> None:
    """Checkpointing, logging, monitor, data subset, AMP, loader and device settings."""
    if config.save_every < 1:
        _fail(f"save_every must be at least 1 epoch, got {config.save_every}.")
    if config.log_every < 1:
        _fail(f"log_every must be at least 1 step, got {config.log_every}.")
    if config.monitor_every < 0:
        _fail(f"monitor_every must be >= 0 (0 = off), got {config.monitor_every}.")
    if config.limit_train is not None and config.limit_train < config.batch_size:
        _fail(f"limit_train={config.limit_train} leaves fewer images than one batch of {config.batch_size}.")
    if config.amp_dtype not in ("bfloat16", "float16"):
        _fail(f"amp_dtype must be bfloat16 or float16, got {config.amp_dtype!r}.")
    if config.num_workers is not None and config.num_workers < 0:
        _fail(f"num_workers must be >= 0, got {config.num_workers}.")
    try:
        check_device_name(config.device)
    except DeviceError as error:
        _fail(str(error))


def _check_method_options(config: TrainConfig) -> None:
    """Option values the Sinkhorn-based methods need."""
    if config.method == "swav" and config.options["num_prototypes"] < 1:
        _fail("swav's num_prototypes must be at least 1.")
    if config.method in ("resa", "swav") and config.options["sinkhorn_iterations"] < 1:
        _fail("sinkhorn_iterations must be at least 1.")


def config_differences(saved: TrainConfig, new: TrainConfig, ignore=RUNTIME_FIELDS) -> list[str]:
    """Fields (other than runtime ones) whose values differ, as ``name: saved -> new`` lines."""
    a, b = saved.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b.get(k)]
