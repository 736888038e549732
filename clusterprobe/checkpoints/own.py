"""clusterprobe's own checkpoint format (written by ``clusterprobe train`` and :func:`save_checkpoint`).

A dict of tensors and plain values only, readable with ``torch.load(weights_only=True)``: format
name and version, the model config (enough to rebuild the architecture), the online and momentum
state dicts, the branch evaluated by default, epoch, step, method, data set, run name, and the
training state needed to resume.
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..io import atomic_write
from ..models import ModelConfig, SSLModel
from .assemble import load_strict, strip_prefixes
from .loaded import LoadedCheckpoint, pick_branch

CHECKPOINT_FORMAT = "clusterprobe.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path,
    model: SSLModel,
    epoch: int,
    step: int = 0,
    method: str | None = None,
    momentum_model: SSLModel | None = None,
    eval_branch: str | None = None,
    dataset: str | None = None,
    run: str | None = None,
    train_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a clusterprobe checkpoint atomically (a crash or full disk keeps the old file).

    Everything stored is a tensor or a plain Python value, so :func:`load_checkpoint` reads it
    with ``weights_only=True``. ``eval_branch`` (``online``/``momentum``) is the branch analysed
    by default; it defaults to ``momentum`` when a momentum model is given. ``train_state`` holds
    what resuming needs (optimiser, scheduler, RNG states) and must be plain too.
    """
    if eval_branch is None:
        eval_branch = "momentum" if momentum_model is not None else "online"
    if eval_branch not in ("online", "momentum"):
        raise CheckpointError(f"eval_branch must be 'online' or 'momentum', got {eval_branch!r}.")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "momentum_state_dict": (
            None
            if momentum_model is None
            else {k: v.detach().cpu() for k, v in momentum_model.state_dict().items()}
        ),
        "momentum_model_config": None if momentum_model is None else momentum_model.config.to_dict(),
        "eval_branch": eval_branch,
        "epoch": int(epoch),
        "step": int(step),
        "method": method,
        "dataset": dataset,
        "run": run,
        "train_state": dict(train_state) if train_state is not None else None,
        "extra": dict(extra or {}),
    }
    buffer = _io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def load_own(raw: Mapping, path: Path, branch: str | None) -> LoadedCheckpoint:
    """Rebuild a clusterprobe checkpoint's model for ``branch`` (None: the branch it records)."""
    if raw.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer clusterprobe (checkpoint format "
            f"{raw['format_version']}); upgrade clusterprobe to read it."
        )
    available = {"online": raw["state_dict"]}
    if raw.get("momentum_state_dict") is not None:
        available["momentum"] = raw["momentum_state_dict"]
    what = f"clusterprobe checkpoint{' of ' + raw['method'] if raw.get('method') else ''}"
    branch = pick_branch(branch, available, raw.get("eval_branch", "online"), path, what)
    state = available[branch]
    config = raw["model_config"]
    if branch == "momentum" and raw.get("momentum_model_config") is not None:
        config = raw["momentum_model_config"]  # e.g. without the online-only predictor
    model = SSLModel(ModelConfig.from_dict(config))
    load_strict(model, strip_prefixes(state), "model described by the checkpoint's config", path)
    return LoadedCheckpoint(
        model=model, path=path, format="clusterprobe", branch=branch, epoch=raw.get("epoch"),
        step=raw.get("step"), method=raw.get("method"), dataset=raw.get("dataset"),
        branches=tuple(available), default_branch=raw.get("eval_branch", "online"), z=_describe_z(model.config),
        facts=["architecture: rebuilt from the model config stored in the file"],
        extra={"run": raw.get("run")} if raw.get("run") else {},
    )


def _describe_z(config: ModelConfig) -> str:
    if not config.projector:
        return "none (no projector)"
    last = config.projector[-1]
    if last["type"] == "batchnorm" and not last.get("affine", True):
        return "projector output after its affine-free BatchNorm"
    return "projector output"
