"""The training loop: ``train(config) -> run directory``, read top to bottom.

:func:`train` resolves the config and joins torchrun's process group if there is one, then:

1. :func:`prepare_run_directory`: check the output directory (every rank; nothing is written)
   and find the state to resume from; rank 0 holds the directory's lock
   (:meth:`~clusterprobe.trainer.run_dir.RunDirectory.lock`) from here to the end, so a second
   ``train`` into the same ``out`` is refused;
2. :func:`build_data`: the two-view data set, its per-epoch sampler and the loader;
3. :func:`build_training`: seed, then the method (networks + loss), the optimiser, the AMP
   scaler and the learning-rate schedule;
4. :func:`start_or_resume`: start fresh (save ``config.yaml`` and ``epoch_0000.pt``) or restore
   the newest state;
5. for every epoch, :func:`train_one_epoch`: for every batch set the LR, compute the loss (the
   method does the EMA update and the momentum forward), backward, optimiser step, log; the
   losses are read back from the device at log steps (and every step when there are
   callbacks) and at the end of the epoch, and training stops on a non-finite one; then
   :func:`end_of_epoch`: the optional kNN monitor, a checkpoint and the ``epochs.csv`` row
   (rank 0 only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoints import read_checkpoint_file, save_checkpoint
from ..data import DatasetInfo, load_dataset, loader_batches
from ..progress import progress_bar
from ..errors import (CheckpointWriteError, NonFiniteLossError, TrainConfigError, TrainingError,
                      UnsafeCheckpointError)
from .. import distributed
from .config import TrainConfig, build_config, save_config
from .loading import (DeviceViewLoader, EpochSampler, SeededViews, build_loader, images_as_uint8,
                      loader_settings, subset_indices)
from .methods import Method, build_method
from .monitor import KnnMonitor
from .optim import build_optimizer, set_learning_rate
from .run_dir import (EPOCH_FIELDS, STEP_FIELDS, CsvLog, RunDirectory, capture_rng_state,
                      restore_rng_state)
from .schedules import WarmupCosineSchedule
from .batch_views import BatchViews
from .views import BLUR_KERNEL_RULES, blur_kernel_size, two_view_transform, view_specs

Callback = Callable[[str, Mapping[str, Any]], None]
Say = Callable[[str], None]


def train(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a self-supervised model and write its run directory; returns the directory.

    Args:
        config: a complete :class:`TrainConfig`; or a mapping of some of its fields, or a
            YAML/TOML file of them: these are completed by
            :func:`~clusterprobe.trainer.config.build_config` exactly like the command line's
            options (with ``resume``, over the run's saved ``config.yaml``), so
            ``train({"out": "runs/x", "epochs": 20}, resume=True)`` is
            ``clusterprobe train --out runs/x --epochs 20 --resume``.
        resume: continue the run in ``config.out`` from its newest checkpoint (bit-for-bit on the
            CPU: model, momentum model, optimiser, step, RNG and data order are restored). Fields
            that change training must equal the saved ones.
        overwrite: replace the run in ``config.out``.
        callbacks: functions called as ``callback(event, info)`` with event ``"step"`` (after
            each optimiser step) or ``"epoch"`` (after each epoch's checkpoint). The step info
            holds the loss as a float, so with callbacks every step's loss is read back from
            the device (on a GPU, the host then waits for each step; see
            :func:`train_one_epoch`).

    Torch's, NumPy's and Python's global generators are seeded from ``config.seed`` before the
    networks are built (and restored from the checkpoint when resuming); training depends on them.

    Under torchrun (``WORLD_SIZE`` > 1; ``torchrun --nproc_per_node N -m cli.main train ...``)
    every process calls this; the batch is split over them, BatchNorm and the losses see the
    global batch, and rank 0 writes the run directory.

    A second ``train`` into the same ``config.out`` while this one runs is refused with a
    :class:`~clusterprobe.errors.RunDirectoryError` naming this process.

    Raises:
        TrainConfigError, RunDirectoryError, NonFiniteLossError, CheckpointWriteError (all
        :class:`~clusterprobe.errors.ClusterprobeError`).
    """
    if isinstance(config, TrainConfig):
        config = build_config(config)
    elif isinstance(config, Mapping):
        config = build_config(config, resume=resume)
    else:
        config = build_config(config_file=config, resume=resume)
    env = distributed.init_distributed(config.device)
    try:
        # One training process per run directory (rank 0 holds the lock for all ranks).
        with RunDirectory(config.out).lock() if env.is_main else contextlib.nullcontext():
            return _train(config, env, resume, overwrite, list(callbacks))
    finally:
        distributed.shutdown(env)


def _train(config: TrainConfig, env: distributed.DistributedEnv, resume: bool, overwrite: bool,
           callbacks: list[Callback]) -> Path:
    say: Say = functools.partial(_say, enabled=env.is_main and config.progress)
    run, resume_from = prepare_run_directory(config, env, resume, overwrite)
    data = build_data(config, env, say)
    training = build_training(config, env, data, say)
    start_epoch, step = start_or_resume(config, env, run, resume_from, overwrite, training, say)
    if resume_from is not None:
        note = blur_kernel_note(config, run, data.image_size)
        if note:
            say(note)
    if start_epoch >= config.epochs:
        say(f"{run.path} has finished all {config.epochs} epochs; nothing to do.")
        return run.path

    logs = TrainingLogs.open(config, run, resumed_at=step if resume_from else None) if env.is_main else None
    monitor = KnnMonitor(config.dataset, config.data_root, config.image_size, config.monitor_bank_size,
                         config.monitor_query_size, config.seed, config.monitor_k)
    say(f"training {config.method} on {config.dataset} ({len(data.train_set)} images, {data.steps_per_epoch} "
        f"steps/epoch, {env.world_size} process(es) on {env.device}) -> {run.path}")
    try:
        for epoch in range(start_epoch, config.epochs):
            result = train_one_epoch(config, env, run, data, training, logs, epoch, step, callbacks)
            step = result.step
            end_of_epoch(config, env, run, training, logs, monitor, result, say, callbacks)
    finally:
        if logs is not None:
            logs.close()
    return run.path


# ---------------------------------------------------------------------------------------------
# 1. the run directory
def prepare_run_directory(config: TrainConfig, env: distributed.DistributedEnv, resume: bool,
                          overwrite: bool) -> tuple[RunDirectory, Path | None]:
    """Check ``config.out`` on every rank (no writes): the run directory and the state to resume
    from (None: start fresh)."""
    run = RunDirectory(config.out)
    resume_from = run.check(config, resume=resume, overwrite=overwrite)
    if config.batch_size % env.world_size:
        raise TrainConfigError(f"The batch size {config.batch_size} must be divisible by the "
                               f"{env.world_size} processes.")
    return run, resume_from


# ---------------------------------------------------------------------------------------------
# 2. data
@dataclass
class TrainingData:
    """The two-view training set, its sampler and loader (this rank's share of each batch)."""

    info: DatasetInfo
    train_set: SeededViews
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    cifar_stem: bool
    image_size: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)


def build_data(config: TrainConfig, env: distributed.DistributedEnv, say: Say = lambda _: None) -> TrainingData:
    """Load the train split (PIL images), wrap it in the two views and build the loader.

    A data set that needs files (CIFAR, imagefolder) is read from ``config.data_root``; without
    one, :func:`~clusterprobe.data.load_dataset` says what to pass.
    """
    base = load_dataset(config.dataset, config.data_root, "train", transform=None, download=config.download,
                        image_size=config.image_size)
    image_size = config.image_size or base.info.image_size
    if image_size is None:
        size = ""
        if len(base) and hasattr(base, "_images"):
            first, _ = base[0]
            size = (f" Its first image is {first.width}x{first.height} pixels: --image-size "
                    f"{min(first.size)} keeps that size (every image is resized and centre-cropped to it).")
        raise TrainConfigError(f"Set image_size (--image-size) for the {config.dataset} data set: training "
                               f"needs one size for all images.{size}")
    cifar_stem = config.cifar_stem if config.cifar_stem is not None else image_size <= 64
    views = two_view_transform(config.views, image_size, base.info.mean, base.info.std,
                               config.crop_scale, config.blur, config.flip, config.blur_kernel)
    train_set = SeededViews(base, views, subset_indices(len(base), config.limit_train, config.seed))
    if len(train_set) < config.batch_size:
        raise TrainConfigError(f"The training set has {len(train_set)} images, fewer than one batch "
                               f"of {config.batch_size}; lower the batch size.")
    sampler = EpochSampler(len(train_set), config.seed, env.rank, env.world_size)
    loader = _device_view_loader(config, env, base, train_set, sampler, image_size, say)
    if loader is None:
        settings = loader_settings(env.device, config.num_workers, config.pin_memory, config.persistent_workers,
                                   int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)))
        loader = build_loader(train_set, sampler, config.batch_size // env.world_size, settings)
    return TrainingData(base.info, train_set, sampler, loader, cifar_stem, image_size)


def _device_view_loader(config: TrainConfig, env: distributed.DistributedEnv, base, train_set: SeededViews,
                        sampler: EpochSampler, image_size: int, say: Say) -> DeviceViewLoader | None:
    """The batched-views loader when ``config.views_on`` asks for it (or ``auto`` allows it), else None."""
    if config.views_on == "loader" or (config.views_on == "auto" and env.device.type != "cuda"):
        return None
    loaded = images_as_uint8(base, train_set.indices)
    if loaded is None:
        if config.views_on == "device":
            raise TrainConfigError("views_on='device' needs images of one size; these differ. Set image_size "
                                   "(imagefolder) or use views_on='loader'.")
        say("note: the training images differ in size; augmenting them in DataLoader workers.")
        return None
    images, labels = loaded
    if config.views_on == "auto":
        free, _ = torch.cuda.mem_get_info(env.device)
        if images.numel() > free // 4:
            say(f"note: the training set ({images.numel() / 2**30:.1f} GiB as uint8) does not fit in a quarter "
                "of the free GPU memory; augmenting it in DataLoader workers.")
            return None
    specs = view_specs(config.views, config.crop_scale, config.blur, config.flip, config.blur_kernel)
    views = BatchViews(specs, image_size, base.info.mean, base.info.std).to(env.device)
    return DeviceViewLoader(images.to(env.device), labels.to(env.device), views, sampler,
                            config.batch_size // env.world_size, config.seed)


# ---------------------------------------------------------------------------------------------
# 3. method, optimiser, schedules
@dataclass
class Training:
    """What an optimisation step changes: the method's networks, the optimiser and the AMP
    scaler, with the LR schedule over all ``total_steps``."""

    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_schedule: WarmupCosineSchedule
    total_steps: int


def build_training(config: TrainConfig, env: distributed.DistributedEnv, data: TrainingData, say: Say) -> Training:
    """Seed the global generators from ``config.seed``, then build the method on the device
    (with AMP on CUDA when asked), the optimiser, the AMP scaler and the LR schedule."""
    device = env.device
    total_steps = data.steps_per_epoch * config.epochs
    _seed_everything(config.seed)
    method = build_method(config, data.info.channels, data.cifar_stem, total_steps, data.steps_per_epoch).to(device)
    method.train()
    use_amp = config.amp and device.type == "cuda"
    if config.amp and not use_amp:
        say("note: AMP is used on CUDA only; training in float32.")
    if use_amp:
        method.autocast = functools.partial(torch.autocast, "cuda", dtype=getattr(torch, config.amp_dtype))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if config.channels_last if config.channels_last is not None else device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    if config.compile:
        for model in (method.online.model, method.momentum):
            if model is not None:
                model.backbone.compile()  # in place: state-dict keys stay as they are
    method.distribute(env)
    peak_lr = config.scaled_lr()
    # the fast step (SGD's fused kernel, LARS's multi-tensor step) on CUDA unless the config says
    fused = config.fused_optimizer if config.fused_optimizer is not None else device.type == "cuda"
    optimizer = build_optimizer(config.optimizer, method.trainable_parameters(), peak_lr,
                                float(config.weight_decay), config.momentum, fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and config.amp_dtype == "float16")
    lr_schedule = WarmupCosineSchedule(peak_lr, total_steps, round(config.warmup_epochs * data.steps_per_epoch),
                                       peak_lr * float(config.lr_floor))
    return Training(method, optimizer, scaler, lr_schedule, total_steps)


# ---------------------------------------------------------------------------------------------
# 4. start or resume
def start_or_resume(config: TrainConfig, env: distributed.DistributedEnv, run: RunDirectory,
                    resume_from: Path | None, overwrite: bool, training: Training, say: Say) -> tuple[int, int]:
    """Restore ``resume_from``, or (rank 0) clear an overwritten run and write ``config.yaml``
    and the initialisation ``epoch_0000.pt``. Returns the (epoch, step) to continue from."""
    if resume_from is not None:
        start_epoch, step = _restore(resume_from, training)
        say(f"resuming {run.path} from {resume_from.name}: epoch {start_epoch}, step {step}")
        saved_epochs = run.saved_config().epochs
        if config.epochs != saved_epochs:
            _extend(config, env, run, training, saved_epochs, step, say)
    else:
        start_epoch, step = 0, 0
        if env.is_main:
            if overwrite:
                run.clear()
            run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            # the initialisation the default chose, so config.yaml says what was done
            save_config(dataclasses.replace(config, zero_init_residual=training.method.zero_init_residual),
                        run.config_path)
            if config.save_init:
                save_state(config, run, training, 0, 0, run.checkpoint_path(0))
    distributed.barrier()
    return start_epoch, step


def _extend(config: TrainConfig, env: distributed.DistributedEnv, run: RunDirectory, training: Training,
            saved_epochs: int, step: int, say: Say) -> None:
    """Continue a run to more epochs than it was started with: the LR and EMA schedules are
    recomputed over the new length (so the LR rises again at the resume step), and config.yaml
    records the new length (rank 0)."""
    old = dataclasses.replace(training.lr_schedule, total_steps=training.total_steps // config.epochs * saved_epochs)
    say(f"extending the run from {saved_epochs} to {config.epochs} epochs: the learning-rate and EMA "
        f"schedules are recomputed over {config.epochs} epochs, so at step {step} the learning rate "
        f"goes from {old(step):.4g} (end of the old schedule) to {training.lr_schedule(step):.4g}")
    if env.is_main:
        save_config(config, run.config_path)
    distributed.barrier()


def blur_kernel_note(config: TrainConfig, run: RunDirectory, image_size: int | None) -> str | None:
    """What a resumed run that blurs by an earlier version's kernel rule should be told (None:
    nothing to tell). The run keeps that rule (it is the augmentation it was trained with)."""
    newest = BLUR_KERNEL_RULES[0]
    if config.blur_kernel == newest or image_size is None:
        return None
    if not any(spec.blur_p > 0 for spec in view_specs(config.views, config.crop_scale, config.blur, config.flip)):
        return None
    old, new = blur_kernel_size(image_size, config.blur_kernel), blur_kernel_size(image_size, newest)
    if old == new:
        return None
    note = (f"note: {run.path} blurs its views with the kernel rule it was trained with, blur_kernel "
            f"{config.blur_kernel!r} ({old} taps at {image_size} px), and keeps it; new runs use {newest!r} "
            f"({new} taps), as wide as the references' PIL GaussianBlur(radius=sigma).")
    if "blur_kernel" not in run.read_config():
        note += (" Its config.yaml does not record the rule (it was written before clusterprobe recorded "
                 f"it), so the rule of those versions is assumed. A run started after the blur fix "
                 f"(git commit 33dfa00) but before the rule was recorded was trained with {newest!r}: for "
                 f"such a run add 'blur_kernel: {newest}' to its config.yaml before resuming.")
    return note


def _restore(path: Path, training: Training) -> tuple[int, int]:
    """Load a checkpoint's models and resume state; returns (epoch, step) to continue from."""
    try:
        raw = read_checkpoint_file(path)  # weights_only=True
    except UnsafeCheckpointError:
        raise TrainingError(f"{path} stores Python objects beyond tensors and plain values: it was not "
                            "written by clusterprobe train, so the run cannot resume from it. Start "
                            "the run again with --overwrite, or remove that file.") from None
    state = raw.get("train_state")
    if not state:
        raise TrainingError(f"{path} holds no training state (it was not written by the trainer); "
                            "cannot resume from it.")
    method = training.method
    method.model.load_state_dict(raw["state_dict"])
    if method.momentum is not None:
        method.momentum.load_state_dict(raw["momentum_state_dict"])
    method.load_state_for_resume(state.get("method") or {})
    training.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        training.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"])


def save_state(config: TrainConfig, run: RunDirectory, training: Training, epoch: int, step: int,
               path: Path) -> Path:
    """Write the model(s) and the resume state after ``epoch`` epochs (rank 0).

    Raises:
        CheckpointWriteError: the file could not be written; the previous state is intact.
    """
    method = training.method
    state = {"step": step, "epoch": epoch, "optimizer": training.optimizer.state_dict(),
             "scaler": training.scaler.state_dict(), "rng": capture_rng_state(),
             "method": method.state_for_resume(), "config": config.to_dict()}
    try:
        return save_checkpoint(path, method.model, epoch, step, method=config.method,
                               momentum_model=method.momentum, eval_branch=config.eval_branch,
                               dataset=config.dataset, run=config.run_name, train_state=state,
                               extra={"config": config.to_dict(), **method.extra_checkpoint()})
    except OSError as error:
        previous = run.resume_point()
        raise CheckpointWriteError(
            f"Could not write {path} ({error.strerror or error}); the disk may be full. "
            f"{'The previous state ' + str(previous) + ' is intact; ' if previous else ''}"
            "free some space and continue with --resume."
        ) from None


# ---------------------------------------------------------------------------------------------
# 5. the epochs
@dataclass
class TrainingLogs:
    """Rank 0's ``log.csv``, ``epochs.csv`` and optional TensorBoard writer."""

    steps: CsvLog
    epochs: CsvLog
    writer: Any = None

    @classmethod
    def open(cls, config: TrainConfig, run: RunDirectory, resumed_at: int | None) -> "TrainingLogs":
        """Start the logs, or (resuming at step ``resumed_at``) keep their rows up to that step."""
        steps = CsvLog(run.log_path, STEP_FIELDS, keep_until_step=resumed_at)
        epochs = CsvLog(run.epochs_path, EPOCH_FIELDS, keep_until_step=resumed_at)
        return cls(steps, epochs, _tensorboard(run.tensorboard_dir) if config.tensorboard else None)

    def write_step(self, row: Mapping[str, Any]) -> None:
        self.steps.write(row)
        if self.writer is not None:
            for key in ("loss", "lr", "ema", "images_per_s"):
                if row[key] is not None:
                    self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def write_epoch(self, row: Mapping[str, Any]) -> None:
        self.epochs.write(row)
        if self.writer is not None and row["knn_acc"] is not None:
            self.writer.add_scalar("monitor/knn_acc", row["knn_acc"], row["step"])

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()
        if self.writer is not None:
            self.writer.close()


@dataclass
class EpochResult:
    """One epoch's outcome: ``epoch`` (0-based) ended at ``step`` after ``seconds``, with the
    step losses, the last step's LR and method logs (e.g. its EMA rate)."""

    epoch: int
    step: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    lr: float | None = None
    logs: dict[str, Any] = field(default_factory=dict)


def train_one_epoch(config: TrainConfig, env: distributed.DistributedEnv, run: RunDirectory | None,
                    data: TrainingData, training: Training, logs: TrainingLogs | None, epoch: int,
                    step: int, callbacks: list[Callback]) -> EpochResult:
    """One pass over this epoch's batches, starting after optimisation step ``step``.

    The step losses stay on the device and are read back to the host (one synchronisation for
    all the losses not read yet) only where they are needed: before the update of each step that
    writes a log.csv row (every ``log_every`` steps and the run's last step), of every step when
    there are callbacks (they receive the loss as a float), and at the end of the epoch, before
    :func:`end_of_epoch` writes a checkpoint. With ``log_every`` 1 (the default) or callbacks
    every loss is read before its own update, as it always was; with ``log_every`` N and no
    callbacks, N - 1 of N steps queue their work on a GPU without waiting for it.

    Raises:
        NonFiniteLossError: a loss read back is NaN or infinite (``step``: the first such step).
            Read at its own step, training stopped before that update; read later, the updates
            up to the read were applied to the model in memory, but no checkpoint is written
            after a non-finite loss (every loss of an epoch is read before its checkpoint).
    """
    method, optimizer, scaler = training.method, training.optimizer, training.scaler
    data.sampler.set_epoch(epoch)
    result = EpochResult(epoch, step, 0.0)
    losses = DeferredLosses(step, epoch, run, config.log_every)
    read_every_step = config.log_every == 1 or bool(callbacks)
    epoch_start = last_time = time.perf_counter()
    last_step = step
    # a bar on a terminal or in a notebook; in a log, a line every 30 s of a long epoch (the
    # epoch's own summary line follows it)
    bar = progress_bar(loader_batches(data.loader), total=data.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="step", enabled=env.is_main and config.progress, leave=False, final_line=False)
    for views, _ in bar:
        views = [v.to(env.device, non_blocking=True) for v in views]
        lr = training.lr_schedule(step)
        set_learning_rate(optimizer, lr)

        loss, step_logs = method.training_step(views, step, epoch)

        losses.append(distributed.all_reduce_(loss.detach().float().clone(), op="mean"))
        logged = (step + 1) % config.log_every == 0 or step + 1 == training.total_steps
        loss_value = losses.read(updated=False) if read_every_step or logged else None
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        method.after_backward(epoch)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        result.step, result.lr, result.logs = step, lr, step_logs

        if logs is not None and logged:
            now = time.perf_counter()
            rate = (step - last_step) * config.batch_size / max(now - last_time, 1e-9)
            logs.write_step({"epoch": epoch + 1, "step": step, "loss": loss_value, "lr": lr,
                             "ema": step_logs.get("ema"), "images_per_s": rate,
                             "elapsed_s": now - epoch_start})
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", refresh=False)
            last_time, last_step = now, step
        for callback in callbacks:
            callback("step", {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, **step_logs})
    bar.close()
    losses.read(updated=True)  # before any checkpoint of this epoch: raises on a non-finite loss
    result.losses = losses.values
    result.seconds = time.perf_counter() - epoch_start
    return result


class DeferredLosses:
    """An epoch's step losses, kept on the device until :meth:`read` brings those not read yet
    back to the host in one transfer (the only point where the host waits for the device).

    ``first_step`` is the 0-based step before which the epoch started (``epoch``, 0-based, of the
    run in ``run``, read every ``log_every`` steps); ``values`` holds the losses read so far
    (floats, in step order).
    """

    def __init__(self, first_step: int, epoch: int, run: RunDirectory | None, log_every: int = 1):
        self.first_step, self.epoch, self.run, self.log_every = first_step, epoch, run, log_every
        self.values: list[float] = []
        self._pending: list[torch.Tensor] = []

    def append(self, loss: torch.Tensor) -> None:
        """The (reduced, detached) loss of the next step, a 0-d tensor on the device."""
        self._pending.append(loss)

    def read(self, updated: bool) -> float | None:
        """Read the pending losses; returns the newest (None if none was pending).

        ``updated``: whether the newest pending step's update has been applied (False when read
        between its forward and backward).

        Raises:
            NonFiniteLossError: at the first non-finite one.
        """
        if not self._pending:
            return None
        values = torch.stack(self._pending).tolist()  # one device -> host copy
        self._pending.clear()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                first_bad = self.first_step + len(self.values) + offset + 1  # 1-based
                newest = self.first_step + len(self.values) + len(values)  # 1-based
                raise _non_finite_loss(value, first_bad, newest if updated else newest - 1, self.epoch, self.run,
                                       self.log_every)
        self.values.extend(values)
        return values[-1]


def _non_finite_loss(value: float, step: int, applied_through: int, epoch: int,
                     run: RunDirectory | None, log_every: int) -> NonFiniteLossError:
    """The error for a non-finite loss at (1-based) ``step`` found when the updates up to step
    ``applied_through`` had been applied."""
    last = run.resume_point() if run is not None else None
    if applied_through < step:
        what = "training stopped before that update."
    else:
        updates = (f"the update of step {step} was" if applied_through == step else
                   f"the updates of steps {step}-{applied_through} were")
        what = (f"the losses are read from the device every {log_every} steps (log_every) and at the end "
                f"of each epoch, so it was read after step {applied_through}: {updates} applied to the model "
                "in memory, but nothing was saved after the loss became non-finite.")
    return NonFiniteLossError(
        f"The loss became {value} at step {step} (epoch {epoch + 1}); {what} The last good "
        f"checkpoint is {last if last else 'none'}. Lower the learning rate or check the data"
        + ("; log_every 1 stops before the first bad update." if applied_through >= step else "."),
        step=step, epoch=epoch + 1, last_checkpoint=str(last) if last else None,
    )


def end_of_epoch(config: TrainConfig, env: distributed.DistributedEnv, run: RunDirectory,
                 training: Training, logs: TrainingLogs | None, monitor: KnnMonitor,
                 result: EpochResult, say: Say, callbacks: list[Callback]) -> None:
    """After an epoch: the kNN monitor (every ``monitor_every`` epochs), then on rank 0 a
    checkpoint (``epoch_XXXX.pt`` every ``save_every`` epochs and after the last, else
    ``last.pt``) and the ``epochs.csv`` row; then the ``"epoch"`` callbacks."""
    done = result.epoch + 1
    knn = None
    if config.monitor_every and done % config.monitor_every == 0:
        if env.is_main:
            method = training.method
            knn = monitor((method.momentum if method.momentum is not None else method.model).backbone, env.device)
        distributed.barrier()
    if env.is_main:
        _save_epoch(config, run, training, done, result.step)
        row = {"epoch": done, "step": result.step, "loss": float(np.mean(result.losses)), "lr": result.lr,
               "ema": result.logs.get("ema"), "images_per_s": len(result.losses) * config.batch_size / result.seconds,
               "epoch_s": result.seconds, "knn_acc": knn}
        logs.write_epoch(row)
        say(f"epoch {done}/{config.epochs}: loss {row['loss']:.4f}, {row['images_per_s']:.0f} images/s"
            + (f", kNN accuracy {knn:.3f}" if knn is not None else ""))
    distributed.barrier()
    for callback in callbacks:
        callback("epoch", {"epoch": done, "step": result.step, "knn_acc": knn})


def _save_epoch(config: TrainConfig, run: RunDirectory, training: Training, done: int, step: int) -> None:
    """``checkpoints/epoch_XXXX.pt`` on checkpoint epochs (removing an older ``last.pt``), else
    ``last.pt``: the resume point that analyses never pick up."""
    if done % config.save_every == 0 or done == config.epochs:
        save_state(config, run, training, done, step, run.checkpoint_path(done))
        if run.last_path.exists():
            run.last_path.unlink()
    else:
        save_state(config, run, training, done, step, run.last_path)


# ---------------------------------------------------------------------------------------------
def _say(message: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("tensorboard=True needs the tensorboard package (pip install tensorboard).") from None
    return SummaryWriter(str(directory))
