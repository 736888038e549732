"""clusterprobe: clustering properties of self-supervised representations, layer by layer.

The pipeline runs one way: data -> models -> checkpoints -> extraction -> feature bank ->
metrics -> report, with the trainer writing checkpoints beside it. Every step is a plain
function or class importable from here; the command line only parses arguments and calls them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported lazily so `import clusterprobe` stays fast and torch-free until needed.
_EXPORTS = {
    "FeatureBank": "clusterprobe.bank",
    "ClusterprobeError": "clusterprobe.errors",
    "load_checkpoint": "clusterprobe.checkpoints",
    "save_checkpoint": "clusterprobe.checkpoints",
    "LoadedCheckpoint": "clusterprobe.checkpoints",
    "SSLModel": "clusterprobe.models",
    "ModelConfig": "clusterprobe.models",
    "LayerSpec": "clusterprobe.models",
    "build_model": "clusterprobe.models",
    "load_dataset": "clusterprobe.data",
    "extract_features": "clusterprobe.extract",
    "TrainConfig": "clusterprobe.train",
    "evaluate": "clusterprobe.metrics",
    "evaluate_arrays": "clusterprobe.metrics",
    "build_report": "clusterprobe.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clusterprobe' has no attribute {name!r}")
