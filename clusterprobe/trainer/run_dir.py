"""The run directory and what goes into it.

Layout of ``runs/NAME/``:

- ``config.yaml``: the resolved :class:`~clusterprobe.trainer.config.TrainConfig`.
- ``checkpoints/epoch_XXXX.pt``: after epoch N completes (1-based), every ``save_every`` epochs and
  after the last one; ``epoch_0000.pt`` is the initialisation (``save_init``). Each is a
  :func:`~clusterprobe.checkpoints.save_checkpoint` file (``weights_only``-loadable) that also
  holds the state needed to resume.
- ``last.pt``: the newest end-of-epoch state when that epoch was not a checkpoint epoch (resume
  point only; outside ``checkpoints/`` so analyses never pick it up).
- ``log.csv``: one row per ``log_every`` steps: epoch, step, loss, lr, ema, images_per_s, elapsed_s.
- ``epochs.csv``: one row per epoch: mean loss, last lr and ema, images/s, seconds, kNN accuracy
  of the monitor (when it ran).
- ``tensorboard/`` (optional).
"""

from __future__ import annotations

import contextlib
import csv
import random
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from ..errors import LockedError, OutputPathError, RunDirectoryError
from ..io import describe_holder, exclusive_lock, lock_file_of
from ..runs import CHECKPOINT_DIR, CONFIG_NAME, LAST_NAME, RunLayout
from .config import RUNTIME_FIELDS, TrainConfig, config_differences, load_saved_config

STEP_FIELDS = ["epoch", "step", "loss", "lr", "ema", "images_per_s", "elapsed_s"]
EPOCH_FIELDS = ["epoch", "step", "loss", "lr", "ema", "images_per_s", "epoch_s", "knn_acc"]
#: What a run directory may contain (``--overwrite`` removes only these).
RUN_ENTRIES = (CONFIG_NAME, CHECKPOINT_DIR, LAST_NAME, "log.csv", "epochs.csv", "tensorboard")


class RunDirectory(RunLayout):
    """A run's paths (:class:`~clusterprobe.runs.RunLayout`) and the checks made before training."""

    def lock(self):
        """Context manager: be the only process training into this directory.

        An advisory lock (:func:`~clusterprobe.io.exclusive_lock`, on ``.<name>.lock`` beside the
        directory) that the kernel releases when the process ends, however it ends.

        Raises:
            RunDirectoryError: another process holds it (the message names its pid).
        """
        return _locked_run(self.path)

    def holds_run(self) -> bool:
        return self.config_path.exists() or self.checkpoint_dir.exists()

    def saved_config(self) -> TrainConfig:
        """The run's ``config.yaml`` (:func:`~clusterprobe.trainer.config.load_saved_config`)."""
        return load_saved_config(self)

    def resume_point(self) -> Path | None:
        """The newest resumable state: the highest-epoch checkpoint, or last.pt when newer."""
        candidates = []
        for epoch, path in self.checkpoints().items():
            candidates.append((epoch, 1, path))
        if self.last_path.exists():
            from ..checkpoints import read_checkpoint_file

            try:
                epoch = int(read_checkpoint_file(self.last_path).get("epoch", -1))
                candidates.append((epoch, 0, self.last_path))
            except Exception:  # a damaged last.pt: fall back to the checkpoints
                pass
        return max(candidates)[2] if candidates else None

    # -- before training --------------------------------------------------------------------------
    def check(self, config: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
        """Decide what to do with the directory (no writes). Returns the state to resume from.

        Raises:
            RunDirectoryError: it holds another run and neither ``resume`` nor ``overwrite`` was
                given; it is a non-empty directory that is not a run; the resumed run's config
                differs in fields that change training.
        """
        if resume and overwrite:
            raise RunDirectoryError("Pass either resume or overwrite, not both.")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"The output path {self.path} is a file, not a directory.")
        if not self.path.exists() or not any(self.path.iterdir()):
            if resume:
                raise RunDirectoryError(f"Nothing to resume: {self.path} holds no run. Start it without --resume.")
            return None
        if not self.holds_run():
            raise RunDirectoryError(
                f"The output directory {self.path} is not empty and does not hold a clusterprobe "
                "run (no config.yaml or checkpoints/). Choose a new or empty directory."
            )
        if overwrite:
            return None
        if not resume:
            described = ""
            if self.config_path.exists():
                try:
                    saved = self.saved_config()
                    epochs = list(self.checkpoints())
                    described = (f" (method {saved.method}, data set {saved.dataset}, "
                                 f"{'epochs ' + str(epochs[0]) + '-' + str(epochs[-1]) if epochs else 'no checkpoints'})")
                except RunDirectoryError:
                    pass
            raise RunDirectoryError(
                f"The output directory {self.path} already holds a run{described}. Pass --resume to "
                "continue it, --overwrite to replace it, or choose another --out."
            )
        if not self.config_path.exists():
            raise RunDirectoryError(f"Cannot resume from {self.path}: it has no config.yaml.")
        saved = self.saved_config()
        if config.zero_init_residual is None:  # unspecified: the run's own (it only set the init)
            config.zero_init_residual = saved.zero_init_residual
        # More epochs extend the run (its schedules are recomputed over the new length); fewer
        # would change the schedules of epochs already trained under the old ones.
        differences = config_differences(saved, config, ignore=(*RUNTIME_FIELDS, "epochs"))
        if config.epochs < saved.epochs:
            differences.append(f"epochs: {saved.epochs} -> {config.epochs} (a run can be extended "
                               "to more epochs, not shortened; its checkpoints of earlier epochs are kept)")
        if saved.blur_kernel != config.blur_kernel:
            recorded = "blur_kernel" in self.read_config()
            differences = [d + _blur_kernel_hint(recorded) if d.startswith("blur_kernel:") else d
                           for d in differences]
        if differences:
            raise RunDirectoryError(
                f"Cannot resume {self.path} with a different configuration; these fields differ "
                f"(saved -> now): {'; '.join(differences)}. Resume with the saved config (omit "
                "those options) or start a new run."
            )
        point = self.resume_point()
        if point is None:
            raise RunDirectoryError(
                f"Cannot resume {self.path}: it has no checkpoint yet. Start it again with --overwrite."
            )
        return point

    def clear(self) -> None:
        """Remove a previous run's files (only the entries a run writes)."""
        for name in RUN_ENTRIES:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _blur_kernel_hint(recorded: bool) -> str:
    """Why a resumed run's ``blur_kernel`` cannot change (appended to its difference)."""
    where = "" if recorded else ("; its config.yaml predates the field, so it is the rule of the "
                                 "versions that wrote it")
    return (f" (the rule for the Gaussian blur's kernel size the run was trained with{where}: a "
            "resumed run keeps it, a new run may use another)")


@contextlib.contextmanager
def _locked_run(path: Path) -> Iterator[None]:
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_lock(path, wait=False, what=f"the run directory {path}"))
    except LockedError as error:
        raise RunDirectoryError(
            f"Another training process ({describe_holder(error.holder)}) is writing the run "
            f"directory {path} (lock file {lock_file_of(path)}). Two runs in one directory would "
            "mix their checkpoints and logs: wait for it to finish (then --resume continues it), "
            "or choose another --out.") from None
    except OutputPathError as error:
        raise RunDirectoryError(f"{error} Choose a writable --out.") from None
    with stack:
        yield


# ---------------------------------------------------------------------------------------------
class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after ``keep_until_step`` are dropped
    (they belong to the part of the interrupted run that is being redone)."""

    def __init__(self, path: Path, fields: list[str], keep_until_step: int | None = None):
        self.path = Path(path)
        self.fields = fields
        if keep_until_step is not None and self.path.exists():
            with open(self.path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= keep_until_step]
            self._rewrite(rows)
        elif keep_until_step is None or not self.path.exists():
            self._rewrite([])
        self._handle = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields, extrasaction="ignore")

    def _rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        from ..io import atomic_write

        def write(handle):
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(self.path, write, mode="w")

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


# ---------------------------------------------------------------------------------------------
# RNG states as plain values (weights_only-loadable)
def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), Python and NumPy generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position),
                  int(has_gauss), float(cached)],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
