"""Reading checkpoint files safely: every failure becomes a clear :class:`CheckpointError`.

By default a file is read with ``torch.load(weights_only=True)``, which cannot run code: it
rebuilds tensors and plain Python values only. ``argparse.Namespace`` is allowed too (DINO and
many training scripts store their arguments as one); restoring it only sets attributes.

A file that stores other Python objects (Lightning hyper-parameters, an optimizer whose parameter
groups hold a function of the training script, as VICReg's ``model.pth`` does) is refused with an
explanation unless ``trust=True``. With ``trust=True`` the file is fully unpickled, and objects
whose class or function no longer exists (``__main__.exclude_bias_and_norm`` outside VICReg's
script) are replaced by inert placeholders, :class:`MissingObject`, instead of failing: they are
never part of the weights.
"""

from __future__ import annotations

import argparse
import pickle
import re
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError

#: Classes a weights-only load may rebuild besides tensors and plain values.
SAFE_GLOBALS = (argparse.Namespace,)

KNOWN_FORMATS = (
    "clusterprobe checkpoints, solo-learn Lightning .ckpt files (with their args.json), the full "
    "checkpoints of the official ReSA, MoCo v3, SwAV, DINO, VICReg and Barlow Twins code, lightly "
    "models' state dicts, and plain state dicts of torchvision/timm ResNets and ViTs or of a "
    "backbone + projector model (optionally under 'state_dict' or 'model')"
)


class MissingObject:
    """Stands in, in a trusted load, for a pickled object whose class or function cannot be found.

    ``qualname`` is what the file referred to (``module.name``); constructor arguments and state
    are kept as given, nothing is called.
    """

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # e.g. a pickled function applied by a reduce
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<missing {self.qualname}>"


def _tolerant_pickle_module(missing: list[str]) -> types.SimpleNamespace:
    """A ``pickle`` stand-in for ``torch.load`` whose Unpickler stubs globals it cannot import."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            try:
                return super().find_class(module, name)
            except (AttributeError, ImportError):
                qualname = f"{module}.{name}"
                missing.append(qualname)
                return type(name, (MissingObject,), {"qualname": qualname, "__module__": __name__})

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, dump=pickle.dump,
                                 Pickler=pickle.Pickler, __name__="clusterprobe_tolerant_pickle")


def read_checkpoint_file(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` a file on the CPU, turning every failure into a clear :class:`CheckpointError`.

    Raises:
        CheckpointError: missing, empty, truncated or foreign file.
        UnsafeCheckpointError: the file needs full unpickling and ``trust`` is False.
    """
    path = Path(path)
    _check_container(path)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of raw pickles before refusing them; our
            # UnsafeCheckpointError below says what matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            if not trust:
                with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                    return torch.load(path, map_location="cpu", weights_only=True)
            missing: list[str] = []
            raw = torch.load(path, map_location="cpu", weights_only=False,
                             pickle_module=_tolerant_pickle_module(missing))
    except pickle.UnpicklingError as error:
        text = str(error).lower()
        if trust or ("weights_only" not in text and "weights only" not in text):
            raise CheckpointError(f"{path} could not be unpickled: {error}") from error
        found = re.findall(r"GLOBAL ([\w.]+)", str(error))
        what = f" (it holds {found[0]})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded safely: it stores Python objects beyond tensors and plain "
            f"values{what}, and unpickling them can run arbitrary code. Load it only if you trust "
            "its source, with trust=True (load_checkpoint; on the command line `clusterprobe "
            "extract` and `clusterprobe layers` take --trust)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt and could not be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Use an earlier "
            "checkpoint or re-save it."
        ) from error
    except Exception as error:  # trusted full unpickling runs the file's own reduce functions
        raise CheckpointError(
            f"{path} could not be unpickled even with trust=True: {type(error).__name__}: {error}"
        ) from error
    if missing:
        warnings.warn(
            f"{path}: these pickled objects could not be imported here and were replaced by "
            f"placeholders: {', '.join(sorted(set(missing)))} (they are not weights; typically "
            "functions of the training script held by the optimizer state).",
            stacklevel=3,
        )
    return raw


def _check_container(path: Path) -> None:
    """Refuse missing, empty, non-PyTorch and truncated zip files before unpickling anything."""
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}: the file does not exist.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it.")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): the file was not written completely.")
    is_zip = head.startswith(b"PK")
    if not is_zip and head[:1] != b"\x80":
        raise CheckpointError(
            f"{path} is not a checkpoint: it is neither a PyTorch zip archive nor a pickle file. "
            f"Known formats: {KNOWN_FORMATS}."
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is truncated or corrupt: its zip archive has no central directory (the "
            "write was probably interrupted). Use an earlier checkpoint or re-save it."
        )
