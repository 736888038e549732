"""The run directory's layout: the one place that knows its file names.

The trainer writes it, extraction and the metrics put their banks and caches into it, the report
reads it::

    runs/NAME/
      config.yaml                    the resolved training config
      checkpoints/epoch_XXXX.pt      after epoch N (epoch_0000.pt: the initialisation)
      last.pt                        newest resume state when it is not a checkpoint epoch
      log.csv, epochs.csv            per-step and per-epoch training logs
      tensorboard/                   optional
      features/<split>/epoch_XXXX/   feature banks (another data set or branch: analyses/<dataset>-<branch>/)
      metrics.csv                    the metrics cache

Epoch numbers are written zero-padded to four digits and parsed back as integers (any number of
digits; never sorted as text).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import ClusterprobeError

CONFIG_NAME = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
FEATURES_DIR = "features"
ANALYSES_DIR = "analyses"
METRICS_NAME = "metrics.csv"
LAST_NAME = "last.pt"

_EPOCH = re.compile(r"^epoch_(\d+)$")


def epoch_name(epoch: int) -> str:
    """``epoch_0010``: the name of an epoch's bank directory (and checkpoint, with ``.pt``)."""
    return f"epoch_{int(epoch):04d}"


def checkpoint_name(epoch: int) -> str:
    """``epoch_0010.pt``."""
    return epoch_name(epoch) + ".pt"


def parse_epoch(name: str, suffix: str = "") -> int | None:
    """The epoch of ``epoch_0010`` (with ``suffix``, e.g. ``.pt``: of ``epoch_0010.pt``), else None."""
    if suffix:
        if not name.endswith(suffix):
            return None
        name = name[: -len(suffix)]
    match = _EPOCH.match(name)
    return int(match.group(1)) if match else None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file holding a mapping.

    Raises:
        ClusterprobeError: the file is missing, cannot be parsed, or does not hold a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ClusterprobeError(f"Config file {path} is a directory; give the YAML or TOML file in it.")
    if not path.is_file():
        raise ClusterprobeError(f"Config file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ClusterprobeError(
            f"Config file {path} is not a text file (not UTF-8): give a YAML (.yaml) or TOML (.toml) file "
            "of settings, not a checkpoint or other binary file."
        ) from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ClusterprobeError(
                    f"Config file {path} is TOML, which needs Python 3.11 or later (tomllib) or the tomli "
                    "package here: pip install tomli, or write the settings as YAML."
                ) from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as error:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise ClusterprobeError(f"Config file {path} could not be parsed: {error}") from None
    if not isinstance(data, dict):
        raise ClusterprobeError(f"Config file {path} must hold a mapping of fields, not {type(data).__name__}.")
    return data


class RunLayout:
    """Paths inside one run directory (nothing is created or read by constructing it)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    config_path = property(lambda self: self.path / CONFIG_NAME)
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)
    last_path = property(lambda self: self.path / LAST_NAME)
    log_path = property(lambda self: self.path / "log.csv")
    epochs_path = property(lambda self: self.path / "epochs.csv")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    features_dir = property(lambda self: self.path / FEATURES_DIR)
    metrics_path = property(lambda self: self.path / METRICS_NAME)

    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / checkpoint_name(epoch)

    def checkpoints(self) -> dict[int, Path]:
        """epoch -> checkpoint file for every ``checkpoints/epoch_XXXX.pt``, in epoch order."""
        if not self.checkpoint_dir.is_dir():
            return {}
        found = {}
        for entry in self.checkpoint_dir.iterdir():
            epoch = parse_epoch(entry.name, ".pt")
            if epoch is not None:
                found[epoch] = entry
        return dict(sorted(found.items()))

    def bank_path(self, split: str, epoch: int) -> Path:
        """``features/<split>/epoch_XXXX``."""
        return self.features_dir / split / epoch_name(epoch)

    def variant(self, dataset: str | None = None, branch: str | None = None) -> "RunLayout":
        """Where this run's checkpoints are analysed on another ``dataset`` and/or as another
        ``branch`` than its own: ``<run>/analyses/<dataset>-<branch>/`` (with its own
        ``features/`` and ``metrics.csv``); this layout itself when neither is given.

        The metrics of a run read every bank under its ``features/`` as that run's, so banks of
        other data or of another branch must live apart, or they would be measured and labelled
        as the run's own. ``clusterprobe extract`` and the report both place them here."""
        name = "-".join(part for part in (dataset, branch) if part)
        return RunLayout(self.path / ANALYSES_DIR / name) if name else self

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.yaml`` as a plain mapping ({} when there is none).

        Raises:
            ClusterprobeError: the file exists but cannot be read as a mapping.
        """
        if not self.config_path.exists():
            return {}
        return read_config_file(self.config_path)


def run_of_checkpoint(path: str | os.PathLike) -> RunLayout | None:
    """The run a checkpoint belongs to (``<run>/checkpoints/epoch_XXXX.pt``), else None."""
    path = Path(path)
    if path.parent.name == CHECKPOINT_DIR and parse_epoch(path.name, ".pt") is not None:
        return RunLayout(path.parent.parent)
    return None
