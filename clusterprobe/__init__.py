"""clusterprobe: clustering properties of self-supervised representations, layer by layer.

The pipeline runs one way: data -> models -> checkpoints -> extraction -> feature bank ->
metrics -> report, with the trainer writing checkpoints beside it. Every step is a plain
function or class importable from here; the command line only parses arguments and calls them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported lazily so `import clusterprobe` stays fast and torch-free until needed;
# listed in the order of the pipeline.
_EXPORTS = {
    # data -> models -> checkpoints
    "load_dataset": "clusterprobe.data",
    "SSLModel": "clusterprobe.models",
    "ModelConfig": "clusterprobe.models",
    "LayerSpec": "clusterprobe.models",
    "build_model": "clusterprobe.models",
    "load_checkpoint": "clusterprobe.checkpoints",
    "save_checkpoint": "clusterprobe.checkpoints",
    "LoadedCheckpoint": "clusterprobe.checkpoints",
    # -> extraction -> feature bank
    "checkpoint_dataset": "clusterprobe.extract",
    "extract_features": "clusterprobe.extract",
    "FeatureBank": "clusterprobe.bank",
    # -> metrics -> report
    "MetricSettings": "clusterprobe.metrics",
    "evaluate": "clusterprobe.metrics",
    "evaluate_arrays": "clusterprobe.metrics",
    "ReportSettings": "clusterprobe.report",
    "build_report": "clusterprobe.report",
    # the trainer beside them
    "TrainConfig": "clusterprobe.trainer",
    "build_config": "clusterprobe.trainer",
    "train": "clusterprobe.trainer",
    # layout
    "RunLayout": "clusterprobe.runs",
    # errors a caller catches (all derive from ClusterprobeError) and the assumption warning
    **{name: "clusterprobe.errors" for name in (
        "ClusterprobeError",
        "DatasetError", "CheckpointError", "UnsafeCheckpointError", "ArchitectureMismatchError",
        "LayerError", "FeatureBankError", "NonFiniteFeaturesError", "DeviceError", "MetricsError",
        "ReportError", "TrainingError", "TrainConfigError", "TrainingInputError", "RunDirectoryError",
        "NonFiniteLossError", "CheckpointWriteError", "OutputPathError", "LockedError",
        "AssumptionWarning",
    )},
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'clusterprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (what tab completion in a notebook offers), plus the subpackages."""
    return sorted(set(globals()) | set(__all__))
