"""The training loop: ``train(config) -> run directory``, readable top to bottom.

1. resolve the config, join torchrun's process group if there is one, check the run directory;
2. build the two-view data set and its loader, the method (networks + loss), the optimiser and
   the schedules;
3. start fresh (save ``config.yaml`` and ``epoch_0000.pt``) or restore the newest state;
4. for every epoch, for every batch: set the LR, compute the loss (the method does the EMA
   update and the momentum forward), stop on a non-finite loss, backward, optimiser step, log;
5. after every epoch: the optional kNN monitor, then a checkpoint (rank 0 only).
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoints import save_checkpoint
from ..data import default_data_root, load_dataset
from . import distributed
from .config import TrainConfig, resolve_config, save_config
from ..errors import CheckpointWriteError, NonFiniteLossError, TrainConfigError, TrainingError
from .loading import EpochSampler, SeededViews, build_loader, loader_settings, subset_indices
from .methods import Method, build_method
from .monitor import knn_accuracy, limited
from .optim import build_optimizer, set_learning_rate
from .run_dir import (EPOCH_FIELDS, STEP_FIELDS, CsvLog, RunDirectory, capture_rng_state,
                      restore_rng_state)
from .schedules import WarmupCosineSchedule
from .views import two_view_transform

Callback = Callable[[str, Mapping[str, Any]], None]


def train(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a self-supervised model and write its run directory; returns the directory.

    Args:
        config: a :class:`TrainConfig`, a dict of its fields or a YAML/TOML file.
        resume: continue the run in ``config.out`` from its newest checkpoint (bit-for-bit on the
            CPU: model, momentum model, optimiser, step, RNG and data order are restored).
        overwrite: replace the run in ``config.out``.
        callbacks: functions called as ``callback(event, info)`` with event ``"step"`` (after
            each optimiser step) or ``"epoch"`` (after each epoch's checkpoint).

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; the batch is split over them,
    BatchNorm and the losses see the global batch, and rank 0 writes the run directory.

    Raises:
        TrainConfigError, RunDirectoryError, NonFiniteLossError, CheckpointWriteError (all
        :class:`~clusterprobe.errors.ClusterprobeError`).
    """
    config = resolve_config(config)
    env = distributed.init_distributed(config.device)
    try:
        return _train(config, env, resume, overwrite, list(callbacks))
    finally:
        distributed.shutdown(env)


def _train(config: TrainConfig, env: distributed.DistributedEnv, resume: bool, overwrite: bool,
           callbacks: list[Callback]) -> Path:
    device, main = env.device, env.is_main
    say = functools.partial(_say, enabled=main and config.progress)

    # -- 1. the run directory (checked on every rank, written by rank 0) ------------------------
    run = RunDirectory(config.out)
    resume_from = run.check(config, resume=resume, overwrite=overwrite)
    if config.batch_size % env.world_size:
        raise TrainConfigError(f"The batch size {config.batch_size} must be divisible by the "
                               f"{env.world_size} processes.")
    local_batch = config.batch_size // env.world_size

    # -- 2. data -----------------------------------------------------------------------------------
    data_root = config.data_root or (default_data_root() if config.dataset == "cifar10" else None)
    base = load_dataset(config.dataset, data_root, "train", transform=None, download=config.download,
                        image_size=config.image_size)
    image_size = config.image_size or base.info.image_size
    if image_size is None:
        raise TrainConfigError(f"Set image_size for the {config.dataset} data set (e.g. 224).")
    cifar_stem = config.cifar_stem if config.cifar_stem is not None else image_size <= 64
    views = two_view_transform(config.views, image_size, base.info.mean, base.info.std,
                               config.crop_scale, config.blur, config.flip)
    train_set = SeededViews(base, views, subset_indices(len(base), config.limit_train, config.seed))
    if len(train_set) < config.batch_size:
        raise TrainConfigError(f"The training set has {len(train_set)} images, fewer than one batch "
                               f"of {config.batch_size}; lower the batch size.")
    sampler = EpochSampler(len(train_set), config.seed, env.rank, env.world_size)
    settings = loader_settings(device, config.num_workers, config.pin_memory, config.persistent_workers,
                               int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)))
    loader = build_loader(train_set, sampler, local_batch, settings)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs

    # -- 3. method, optimiser, schedules -----------------------------------------------------------
    _seed_everything(config.seed)
    method = build_method(config, base.info.channels, cifar_stem, total_steps, steps_per_epoch).to(device)
    method.train()
    use_amp = config.amp and device.type == "cuda"
    if config.amp and not use_amp:
        say("note: AMP is used on CUDA only; training in float32.")
    if use_amp:
        method.autocast = functools.partial(torch.autocast, "cuda", dtype=getattr(torch, config.amp_dtype))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method.distribute(env)
    peak_lr = config.scaled_lr()
    optimizer = build_optimizer(config.optimizer, method.trainable_parameters(), peak_lr,
                                float(config.weight_decay), config.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and config.amp_dtype == "float16")
    lr_schedule = WarmupCosineSchedule(peak_lr, total_steps, round(config.warmup_epochs * steps_per_epoch),
                                       peak_lr * float(config.lr_floor))

    def save(epoch: int, step: int, path: Path) -> Path:
        """Write the model(s) and the resume state after ``epoch`` epochs (rank 0)."""
        state = {"step": step, "epoch": epoch, "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": capture_rng_state(),
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

    # -- 4. start or resume --------------------------------------------------------------------------
    if resume_from is not None:
        start_epoch, step = _restore(resume_from, method, optimizer, scaler)
        say(f"resuming {run.path} from {resume_from.name}: epoch {start_epoch}, step {step}")
    else:
        start_epoch, step = 0, 0
        if main:
            if overwrite:
                run.clear()
            run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run.config_path)
            if config.save_init:
                save(0, 0, run.checkpoint_path(0))
    distributed.barrier()
    if start_epoch >= config.epochs:
        say(f"{run.path} has finished all {config.epochs} epochs; nothing to do.")
        return run.path

    step_log = epoch_log = writer = None
    if main:
        step_log = CsvLog(run.log_path, STEP_FIELDS, keep_until_step=step if resume_from else None)
        epoch_log = CsvLog(run.epochs_path, EPOCH_FIELDS, keep_until_step=step if resume_from else None)
        writer = _tensorboard(run.tensorboard_dir) if config.tensorboard else None
    monitor_sets = None
    say(f"training {config.method} on {config.dataset} ({len(train_set)} images, {steps_per_epoch} "
        f"steps/epoch, {env.world_size} process(es) on {device}) -> {run.path}")

    # -- 5. the epochs -------------------------------------------------------------------------------------
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            losses = []
            epoch_start = last_time = time.perf_counter()
            last_step = step
            bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not (main and config.progress), leave=False, dynamic_ncols=True)
            for views, _ in bar:
                views = [v.to(device, non_blocking=True) for v in views]
                lr = lr_schedule(step)
                set_learning_rate(optimizer, lr)

                loss, logs = method.training_step(views, step, epoch)

                loss_value = distributed.all_reduce_(loss.detach().float().clone(), op="mean").item()
                if not math.isfinite(loss_value):
                    last = run.resume_point()
                    raise NonFiniteLossError(
                        f"The loss became {loss_value} at step {step + 1} (epoch {epoch + 1}); "
                        f"training stopped before that update. The last good checkpoint is "
                        f"{last if last else 'none'}. Lower the learning rate or check the data.",
                        step=step + 1, epoch=epoch + 1, last_checkpoint=str(last) if last else None,
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                method.after_backward(epoch)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                losses.append(loss_value)

                if main and (step % config.log_every == 0 or step == total_steps):
                    now = time.perf_counter()
                    rate = (step - last_step) * config.batch_size / max(now - last_time, 1e-9)
                    row = {"epoch": epoch + 1, "step": step, "loss": loss_value, "lr": lr,
                           "ema": logs.get("ema"), "images_per_s": rate, "elapsed_s": now - epoch_start}
                    step_log.write(row)
                    if writer is not None:
                        for key in ("loss", "lr", "ema", "images_per_s"):
                            if row[key] is not None:
                                writer.add_scalar(f"train/{key}", row[key], step)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", refresh=False)
                    last_time, last_step = now, step
                for callback in callbacks:
                    callback("step", {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, **logs})
            bar.close()

            # -- end of epoch: monitor, checkpoint, log -------------------------------------------------
            epoch_seconds = time.perf_counter() - epoch_start
            done = epoch + 1
            knn = None
            if config.monitor_every and done % config.monitor_every == 0:
                if main:
                    monitor_sets = monitor_sets or _monitor_sets(config, data_root)
                    encoder = (method.momentum if method.momentum is not None else method.model).backbone
                    knn = knn_accuracy(encoder, *monitor_sets, device, k=config.monitor_k)
                distributed.barrier()
            if main:
                if done % config.save_every == 0 or done == config.epochs:
                    save(done, step, run.checkpoint_path(done))
                    if run.last_path.exists():
                        run.last_path.unlink()
                else:
                    save(done, step, run.last_path)
                epoch_row = {"epoch": done, "step": step, "loss": float(np.mean(losses)), "lr": lr,
                             "ema": logs.get("ema"), "images_per_s": len(losses) * config.batch_size / epoch_seconds,
                             "epoch_s": epoch_seconds, "knn_acc": knn}
                epoch_log.write(epoch_row)
                if writer is not None and knn is not None:
                    writer.add_scalar("monitor/knn_acc", knn, step)
                say(f"epoch {done}/{config.epochs}: loss {epoch_row['loss']:.4f}, "
                    f"{epoch_row['images_per_s']:.0f} images/s"
                    + (f", kNN accuracy {knn:.3f}" if knn is not None else ""))
            distributed.barrier()
            for callback in callbacks:
                callback("epoch", {"epoch": done, "step": step, "knn_acc": knn})
    finally:
        for log in (step_log, epoch_log):
            if log is not None:
                log.close()
        if writer is not None:
            writer.close()
    return run.path


# ---------------------------------------------------------------------------------------------
def _say(message: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _restore(path: Path, method: Method, optimizer: torch.optim.Optimizer, scaler) -> tuple[int, int]:
    """Load a checkpoint's models and resume state; returns (epoch, step) to continue from."""
    from ..checkpoints import read_checkpoint_file

    raw = read_checkpoint_file(path)  # weights_only=True
    state = raw.get("train_state")
    if not state:
        raise TrainingError(f"{path} holds no training state (it was not written by the trainer); "
                            "cannot resume from it.")
    method.model.load_state_dict(raw["state_dict"])
    if method.momentum is not None:
        method.momentum.load_state_dict(raw["momentum_state_dict"])
    method.load_state_for_resume(state.get("method") or {})
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"])


def _monitor_sets(config: TrainConfig, data_root):
    """(bank, queries) for the kNN monitor: evaluation-transformed train and test subsets."""
    bank = load_dataset(config.dataset, data_root, "train", transform="eval", image_size=config.image_size)
    queries = load_dataset(config.dataset, data_root, "test", transform="eval", image_size=config.image_size)
    return limited(bank, config.monitor_bank_size, config.seed), limited(queries, config.monitor_query_size, config.seed)


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("tensorboard=True needs the tensorboard package (pip install tensorboard).") from None
    return SummaryWriter(str(directory))
