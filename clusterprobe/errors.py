"""Exceptions raised by clusterprobe.

Every error a user can trigger with bad input derives from :class:`ClusterprobeError`, so a
notebook can catch them all at once and the command line can print them as one clear paragraph
(without a traceback) that names the problem and the fix.
"""

from __future__ import annotations

import difflib


class ClusterprobeError(Exception):
    """Base class of the errors caused by bad input, with a message naming problem and fix."""


class CheckpointError(ClusterprobeError):
    """A checkpoint file is missing, corrupt, of an unknown format or unsafe to load."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs full unpickling, which can run arbitrary code; pass ``trust=True``."""


class ArchitectureMismatchError(CheckpointError):
    """The weights do not fit the architecture that was built for them."""


class LayerError(ClusterprobeError, KeyError):
    """A requested layer does not exist in the model or bank."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(ClusterprobeError):
    """A data set is unknown or not present at the given root."""


class FeatureBankError(ClusterprobeError):
    """A feature bank on disk is missing, incomplete or different from what was asked for."""


class NonFiniteFeaturesError(ClusterprobeError, ValueError):
    """Captured or supplied features contain NaN or infinite values."""


class DeviceError(ClusterprobeError, ValueError):
    """A device name is unknown, or names a GPU this machine does not have."""


class MetricsError(ClusterprobeError, ValueError):
    """Inputs to a metric are unusable: wrong shapes, too few classes, k out of range, ..."""


class ReportError(ClusterprobeError):
    """A report cannot be built: no runs found, or none could be analysed."""


# -- training ---------------------------------------------------------------------------------
class TrainingError(ClusterprobeError):
    """Training cannot start or cannot go on."""


class TrainConfigError(TrainingError, ValueError):
    """A training configuration is invalid (unknown method, batch too small, bad value...)."""


class TrainingInputError(TrainingError, ValueError):
    """A tensor given to a loss, the Sinkhorn target or a BatchNorm has the wrong shape or size."""


class RunDirectoryError(TrainingError):
    """The output directory holds another run, or a run cannot be resumed from it."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; no checkpoint was written after it.

    With the loss read every step (``log_every`` 1, or callbacks) training stopped before the
    bad update; with ``log_every`` N > 1 the loss is read every N steps, so up to N - 1 later
    updates were applied in memory (never saved) and the message says so.

    ``step`` is the 1-based number of the failed optimisation step (log.csv's ``step`` counts
    completed steps, so its last row is ``step - 1``); ``epoch`` is 1-based too.
    """

    def __init__(self, message: str, step: int, epoch: int, last_checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.last_checkpoint = last_checkpoint


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (e.g. the disk is full); earlier ones are intact."""


def closest_name(name: str, candidates) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            matches = [lowered[name.lower()]]
    return f" Did you mean '{matches[0]}'?" if matches else ""


# -- files and folders --------------------------------------------------------------------------
class OutputPathError(ClusterprobeError):
    """An output path cannot be written: a read-only folder, a file where a folder belongs..."""


class LockedError(ClusterprobeError):
    """Another process holds the lock of a bank, run or report folder (see ``holder``).

    ``holder`` is what that process wrote into the lock file (``pid``, ``host``, ``since``, plus
    whatever its caller recorded, e.g. ``request``), or an empty dict if it could not be read.
    """

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = dict(holder or {})


# -- warnings -----------------------------------------------------------------------------------
class AssumptionWarning(UserWarning):
    """A checkpoint did not determine part of the architecture, and a documented default was used.

    The assumption is also recorded in the loaded checkpoint (``LoadedCheckpoint.assumptions``) and
    in every feature bank extracted from it; the warning names the option that settles it.
    """
