"""Errors of the trainer; all derive from :class:`clusterprobe.errors.ClusterprobeError`."""

from __future__ import annotations

from ..errors import ClusterprobeError


class TrainingError(ClusterprobeError):
    """Training cannot start or cannot go on."""


class TrainConfigError(TrainingError, ValueError):
    """A training configuration is invalid (unknown method, batch too small, bad value...)."""


class RunDirectoryError(TrainingError):
    """The output directory holds another run, or a run cannot be resumed from it."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; training stopped before the bad update.

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
