"""Feature extraction: one forward pass per batch captures every requested layer into a bank.

Each requested layer (H, P0, P1, Z or a module path) is captured by a forward hook on its module;
the model runs in ``eval()`` mode under ``torch.inference_mode()``, so BatchNorm statistics are
never touched. Rows stream to a :class:`~clusterprobe.bank.BankWriter` chunk by chunk: an
interrupted extraction resumes from its finished chunks. Under ``torchrun`` each process takes
every ``world_size``-th chunk of the same bank, and the result equals the single-process one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .bank import FeatureBank, BankWriter, bank_dtype, float16_overflow, float16_refusal, lock_bank
from .checkpoints import LoadedCheckpoint, canonical_branch, load_checkpoint
from .data import (DATASETS, LabeledImageDataset, describe_signature_change, describe_transform, load_dataset,
                   loader_batches)
from . import distributed
from .errors import ClusterprobeError, FeatureBankError, LayerError, NonFiniteFeaturesError
from .io import fingerprint
from .progress import progress_bar
from .models import LayerSpec, SSLModel
from .runs import FEATURES_DIR, parse_epoch, run_of_checkpoint

DEFAULT_LAYERS = ("H", "P0", "P1", "Z")


class LayerCapture:
    """Context manager that records the outputs of the given layers during a forward pass.

    >>> with LayerCapture(model, [model.resolve_layer("H"), model.resolve_layer("Z")]) as capture:
    ...     model(images)                                           # doctest: +SKIP
    >>> capture.outputs["H"].shape                                   # doctest: +SKIP
    torch.Size([batch, 512])

    Outputs are detached float32 copies (torchvision's in-place ReLU would otherwise change a
    captured tensor after the hook); 4-D maps are average-pooled over space when ``spec.pool``, and
    a transformer block's tokens reduced to the class token (or their mean) per ``spec.tokens``.
    """

    def __init__(self, model: nn.Module, specs: Sequence[LayerSpec]):
        self.model = model
        self.specs = list(specs)
        self.outputs: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def _hook(self, spec: LayerSpec):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            value = output.detach()
            if value.ndim == 4 and spec.pool:
                value = value.float().mean(dim=(2, 3))  # a new tensor: safe from in-place ops
            elif value.ndim == 3 and spec.tokens is not None:  # transformer tokens (B, N, D)
                value = (value[:, 0].float().clone() if spec.tokens == "cls"
                         else value[:, spec.skip_tokens:].float().mean(dim=1))
            else:
                value = value.flatten(1).float().clone()
            self.outputs[spec.name] = value
            self._calls[spec.name] = self._calls.get(spec.name, 0) + 1

        return hook

    def __enter__(self) -> "LayerCapture":
        modules = dict(self.model.named_modules())
        for spec in self.specs:
            self._handles.append(modules[spec.module].register_forward_hook(self._hook(spec)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``images`` and return {layer name: (batch, dim) tensor} for every spec."""
        self.outputs, self._calls = {}, {}
        self.model(images)
        missing = [s.name for s in self.specs if s.name not in self.outputs]
        if missing:
            raise LayerError(f"Layers {missing} were not reached by the model's forward pass.")
        repeated = {s.module: self._calls[s.name] for s in self.specs if self._calls[s.name] > 1}
        if repeated:  # only the last call would be kept: an output nobody asked for, mislabelled
            raise LayerError(
                "These modules run more than once per forward pass, so their output is not one layer: "
                + ", ".join(f"{module} ({calls} times)" for module, calls in repeated.items())
                + ". Tap the module that contains them (e.g. the whole block) or one that runs once."
            )
        return {s.name: self.outputs[s.name] for s in self.specs}


# ---------------------------------------------------------------------------------------------
def _as_model(source) -> tuple[SSLModel, dict[str, Any]]:
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source)
    if isinstance(source, LoadedCheckpoint):
        provenance = source.provenance()
        if not provenance.get("sha256"):  # loaded with hash_file=False: identify the weights themselves
            provenance["weights_sha256"] = state_hash(source.model)
        return source.model, provenance
    if isinstance(source, SSLModel):
        return source, {"path": None, "format": "in-memory model", "weights_sha256": state_hash(source),
                        "model_config": source.config.to_dict()}
    raise TypeError(f"Expected a checkpoint path, LoadedCheckpoint or SSLModel, got {type(source).__name__}.")


def state_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state (names and tensor bytes): identifies in-memory weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


#: The key of a data set description that holds the signature of its files
#: (:meth:`~clusterprobe.data.LabeledImageDataset.files_signature`).
SIGNATURE_KEY = "files_signature"


def _dataset_description(dataset: Dataset) -> dict[str, Any]:
    """What identifies the rows of ``dataset`` (part of a bank's fingerprint): its recorded
    description, with the size and transform it has now (``with_transform`` or a replaced
    ``transform`` keeps the description it was loaded with) and the signature of the files it
    reads (``files_signature``, where it reads files); a ``Subset`` names its indices."""
    if isinstance(dataset, Subset):
        indices = np.asarray(dataset.indices, dtype=np.int64)
        return {"name": "Subset", "n": len(dataset), "of": _dataset_description(dataset.dataset),
                "indices_sha256": hashlib.sha256(indices.tobytes()).hexdigest()}
    description = dict(getattr(dataset, "description", {}) or {})
    description.setdefault("name", type(dataset).__name__)
    description["n"] = len(dataset)
    if "transform" in description and hasattr(dataset, "transform"):
        description["transform"] = describe_transform(dataset.transform)
    description.pop(SIGNATURE_KEY, None)  # only ever the one computed now
    signature = dataset.files_signature() if callable(getattr(dataset, "files_signature", None)) else None
    if signature is not None:
        description[SIGNATURE_KEY] = signature
    return description


def _without_signature(description: Mapping[str, Any]) -> dict[str, Any]:
    """``description`` as it was before data sets had file signatures (a Subset's base too)."""
    plain = {key: value for key, value in description.items() if key != SIGNATURE_KEY}
    if isinstance(plain.get("of"), Mapping) and plain.get("name") == "Subset":
        plain["of"] = _without_signature(plain["of"])
    return plain


def _signature_of(description: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, Mapping[str, Any]]:
    """The file signature of a description (or of a Subset's base) and the description holding it."""
    if description.get("name") == "Subset" and isinstance(description.get("of"), Mapping):
        return _signature_of(description["of"])
    signature = description.get(SIGNATURE_KEY)
    return (signature if isinstance(signature, Mapping) else None), description


def _with_signature(description: Mapping[str, Any], signature: Mapping[str, Any] | None) -> dict[str, Any]:
    """``description`` with ``signature`` in place of its own (a Subset's base's)."""
    if description.get("name") == "Subset" and isinstance(description.get("of"), Mapping):
        return {**description, "of": _with_signature(description["of"], signature)}
    result = _without_signature(description)
    if signature is not None:
        result[SIGNATURE_KEY] = dict(signature)
    return result


#: Where CIFAR's files are looked for when no root is given (the project's ``data/`` folder).
DEFAULT_DATA_ROOT = Path("data")


def checkpoint_dataset(
    checkpoint: LoadedCheckpoint,
    name: str | None = None,
    *,
    split: str = "test",
    root: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    skip_unreadable: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LabeledImageDataset:
    """The data set to extract ``checkpoint`` on, with its evaluation transform.

    ``name`` defaults to the data set the checkpoint names (``digits`` when it names none or
    one this toolkit does not know). For a checkpoint of a run directory, on the run's own data
    set, ``root`` and ``image_size`` default to what the run's ``config.yaml`` records (the
    images at the size it was trained on, where the report measures it too); otherwise CIFAR's
    ``root`` defaults to :data:`DEFAULT_DATA_ROOT`. ``skip_unreadable`` leaves out images that
    cannot be decoded (listed in the bank's meta.json); ``mean``/``std`` replace the
    normalisation (imagefolder: its own measured statistics).
    """
    if name is None:
        name = checkpoint.dataset if checkpoint.dataset in DATASETS else "digits"
    run = run_of_checkpoint(checkpoint.path) if checkpoint.path is not None else None
    config = run.read_config() if run is not None else {}
    if config.get("dataset") == name:
        root = root if root is not None else config.get("data_root")
        image_size = image_size if image_size is not None else config.get("image_size")
    if root is None and name in ("cifar10", "cifar100"):
        root = DEFAULT_DATA_ROOT
    return load_dataset(name, root=root, split=split, download=download, image_size=image_size,
                        skip_unreadable=skip_unreadable, mean=mean, std=std)


@dataclass
class _Extraction:
    """One extraction's fixed inputs, shared by its steps."""

    model: SSLModel
    specs: list[LayerSpec]
    dataset: Dataset
    device: torch.device
    rank: int
    world: int
    batch_size: int
    num_workers: int
    progress: bool
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]


def extract_features(
    source: str | os.PathLike | LoadedCheckpoint | SSLModel,
    dataset: Dataset | None = None,
    out: str | os.PathLike | None = None,
    *,
    layers: Iterable[str] = DEFAULT_LAYERS,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    overwrite: bool = False,
    pre_activation: bool = False,
    chunk_batches: int | None = None,
    check_finite: bool = True,
    progress: bool = True,
    extra_meta: Mapping[str, Any] | None = None,
    dtype: str = "float32",
) -> FeatureBank:
    """Run ``dataset`` through the model once and write the requested layers to a bank at ``out``.

    Args:
        source: checkpoint path, :class:`LoadedCheckpoint` or :class:`SSLModel`.
        dataset: yields ``(image tensor, label)``; ``LabeledImageDataset`` also supplies coarse
            labels, class names and provenance. Default: the test split of the data set the
            checkpoint names (:func:`checkpoint_dataset`).
        out: bank directory. If it already holds the same bank (same checkpoint, layers, data,
            transform and data set files), it is returned without recomputation; a different bank
            is refused unless ``overwrite`` (one made before the data set's files changed says
            what changed: files regenerated, added or removed, per class). A bank made before
            clusterprobe signed data set files is reused as before, with an
            :class:`UncheckedDataWarning` (once per bank and process) that its files could not
            be checked. Default (for a checkpoint file): :func:`default_bank_path`,
            e.g. ``<run>/features/test/epoch_0010``.
        layers: names such as ``H``, ``P0``, ``P1``, ``Z`` or module paths (``backbone.layer3``).
        pre_activation: tap P_i before the activation instead of after it.
        chunk_batches: batches per resumable chunk (default: about 8,192 rows a chunk).
        check_finite: refuse to write features holding NaN/inf (the error names layer and count).
        progress: show a progress bar (rank 0 only).
        extra_meta: more provenance for ``meta.json`` (e.g. run, method, epoch).
        dtype: storage type of the features, 'float32' (default) or 'float16' (half the disk;
            each value rounded to float16, relative error <= 2^-11; the metrics still compute in
            float32). A layer with values beyond float16's range (65,504) is refused, naming it.

    Returns:
        The finished :class:`FeatureBank` (rows in data set order); its ``reused`` attribute is
        True when an existing bank was returned without recomputation. Under torchrun every rank
        returns it.

    Two extractions into one ``out`` never mix (:func:`~clusterprobe.bank.lock_bank`): while one
    writes, another for the same request waits and then reuses its bank; one for a different
    request is refused (:class:`~clusterprobe.errors.LockedError`). Under torchrun rank 0 holds
    the lock for all ranks. A bank that is reused is first checked against its ``meta.json``
    (file shapes, dtypes and sizes); a damaged one is refused (``overwrite`` replaces it).
    """
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source)
    if dataset is None:
        if not isinstance(source, LoadedCheckpoint):
            raise ClusterprobeError("Pass the data set to extract an in-memory model on (dataset=...).")
        dataset = checkpoint_dataset(source)
    out = Path(out) if out is not None else _default_out(source, dataset)
    model, checkpoint_info = _as_model(source)
    specs = _layer_specs(model, layers, pre_activation)
    dtype = bank_dtype(dtype)
    if batch_size < 1:
        raise ClusterprobeError(f"batch_size must be at least 1, got {batch_size}.")
    if len(dataset) == 0:
        raise ClusterprobeError("The data set is empty: there is nothing to extract.")

    env = distributed.init_distributed(device)
    modes = [(module, module.training) for module in model.modules()]  # the caller's, restored after
    job = _Extraction(model.to(env.device).eval(), specs, dataset, env.device, env.rank, env.world_size,
                      batch_size, num_workers, progress and env.is_main, dtype)
    description = _dataset_description(dataset)
    request = _Request(checkpoint_info, specs, description, dtype)
    key = request.key
    try:
        # a finished bank needs no lock (nor write access)
        existing = _reusable_bank(out, request, overwrite, say=env.is_main)
        if existing is not None:
            return _mark_reused(existing, True)
        with _lock_on_rank0(job, out, key) as waited:
            # Under the lock: the process we waited for may have finished this very bank.
            existing, failure = None, None
            if env.is_main:
                try:
                    existing = _reusable_bank(out, request, overwrite and not waited)
                except Exception as error:  # noqa: BLE001 - e.g. a damaged bank: told to the other ranks
                    failure = error
            _stop_with_rank0(job, failure, f"check the feature bank at {out}")
            flag = torch.tensor([int(existing is not None)], device=job.device)
            if int(distributed.all_reduce_(flag).item()):
                return _mark_reused(FeatureBank.open(out), True)
            dims = _layer_dims(job, description)
            chunk = batch_size * (chunk_batches or max(1, math.ceil(8192 / batch_size)))
            writer = _open_writer(job, out, dims, key, overwrite, chunk)
            nonfinite, overflow = _extract_pending_chunks(job, writer, chunk)
            if check_finite:
                _refuse_nonfinite(job, writer, nonfinite)
            _refuse_float16_overflow(job, writer, overflow)
            distributed.barrier()
            if env.is_main:
                writer.finalize(_bank_meta(job, description, checkpoint_info, pre_activation, extra_meta))
            distributed.barrier()
            return _mark_reused(FeatureBank.open(out), False)
    finally:
        for module, training in modes:  # an in-memory model in training stays in training mode
            module.training = training
        distributed.shutdown(env)


def _mark_reused(bank: FeatureBank, reused: bool) -> FeatureBank:
    bank.reused = reused
    return bank


@contextlib.contextmanager
def _lock_on_rank0(job: _Extraction, out: Path, key: str):
    """Rank 0 holds ``out``'s bank lock (the other ranks attach to what it creates); yields
    whether it had to wait for another process extracting the same bank.

    If rank 0 cannot take it (another request holds it, a read-only folder), every rank stops
    at once: rank 0 with its error, the others with one pointing to it (otherwise they would
    wait in the next collective until the process group times out, or die of a peer's exit)."""
    waited: list[str] = []

    def say(message: str) -> None:
        waited.append(message)
        if job.progress:
            print(message, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        failure = None
        if job.rank == 0:
            try:
                stack.enter_context(lock_bank(out, key, say=say))
            except Exception as error:  # noqa: BLE001 - told to the other ranks, then re-raised
                failure = error
        _stop_with_rank0(job, failure, f"take the lock of the feature bank {out}")
        yield bool(waited)


def _stop_with_rank0(job: _Extraction, failure: BaseException | None, step: str) -> None:
    """All ranks learn whether rank 0 failed ``step``; then rank 0 raises ``failure`` and the
    others a :class:`FeatureBankError` saying so. A no-op when rank 0 succeeded."""
    failed = failure is not None
    if job.world > 1:
        flag = torch.tensor([int(failed)], device=job.device)
        failed = bool(distributed.all_reduce_(flag).item())
    if failure is not None:
        raise failure
    if failed:
        raise FeatureBankError(f"Rank 0 could not {step}; rank {job.rank} stops with it (rank 0's "
                               "error says why and what to do).")


def _default_out(source, dataset: Dataset) -> Path:
    description = _dataset_description(dataset)
    if not isinstance(source, LoadedCheckpoint) or "split" not in description:
        raise ClusterprobeError("Pass the bank directory (out=...): there is no default place for it "
                                "without a checkpoint file and a data set split.")
    return default_bank_path(source, description["name"], description["split"])


def _layer_specs(model: SSLModel, layers: Iterable[str], pre_activation: bool) -> list[LayerSpec]:
    """The requested layers, resolved on ``model`` (a LayerError names the closest layer)."""
    names = [layer.strip() for layer in layers if layer.strip()]
    if not names:
        raise LayerError(f"No layers requested; this model offers {', '.join(model.layer_names())}.")
    if len(set(names)) != len(names):
        raise LayerError(f"Layers requested twice: {names}.")
    return [model.resolve_layer(name, pre_activation=pre_activation) for name in names]


def _bank_fingerprint(checkpoint_info: Mapping[str, Any], specs: Sequence[LayerSpec],
                      description: Mapping[str, Any], dtype: np.dtype = np.dtype(np.float32)) -> str:
    """What makes two banks the same: the weights, the layer definitions, the data and the
    storage dtype (float32 banks keep the fingerprint they had before dtypes existed)."""
    checkpoint = ({k: checkpoint_info.get(k) for k in ("sha256", "branch", "path")}
                  if checkpoint_info.get("sha256") else dict(checkpoint_info))
    if checkpoint_info.get("format") not in (None, "clusterprobe"):
        # A foreign file's architecture also depends on options (stem padding, head activation,
        # ViT heads): the same file rebuilt differently is a different bank.
        checkpoint["model_config"] = checkpoint_info.get("model_config")
    what = {"checkpoint": checkpoint, "layers": [s.to_dict() for s in specs], "dataset": dict(description)}
    if dtype != np.float32:
        what["dtype"] = dtype.name
    return fingerprint(what)


class UncheckedDataWarning(UserWarning):
    """A reused feature bank whose data set files could not be checked against the data set's
    files now (a bank made before file signatures, or a data set object that gives none)."""


#: Banks already said to be unchecked in this process (said once each).
_UNCHECKED_SAID: set[str] = set()


@dataclass
class _Request:
    """What is asked for: the parts of a bank's fingerprint (:func:`_bank_fingerprint`)."""

    checkpoint_info: Mapping[str, Any]
    specs: Sequence[LayerSpec]
    description: Mapping[str, Any]
    dtype: np.dtype

    @property
    def key(self) -> str:
        return _bank_fingerprint(self.checkpoint_info, self.specs, self.description, self.dtype)

    def key_with(self, signature: Mapping[str, Any] | None) -> str:
        """The key of this request were the data set's files those of ``signature`` (None: the
        key of banks made before file signatures)."""
        return self.key_with_dataset(_with_signature(self.description, signature))

    def key_with_dataset(self, description: Mapping[str, Any]) -> str:
        """The key of this request on the data set ``description`` (the same checkpoint, layers
        and dtype)."""
        return _bank_fingerprint(self.checkpoint_info, self.specs, description, self.dtype)


def _reusable_bank(out: Path, request: _Request, overwrite: bool, say: bool = True) -> FeatureBank | None:
    """The finished bank at ``out`` when it is the one asked for and intact; refuse a different
    or damaged one (overwrite=True replaces either).

    A bank made before data sets had file signatures (its fingerprint is the request's without
    one) is reused as before, with an :class:`UncheckedDataWarning` (``say``: once per bank and
    process) that its files could not be checked. A bank whose only difference is the signature
    of the data set's files is refused with a message saying what changed."""
    if overwrite or not (out / "meta.json").exists():
        return None
    bank = FeatureBank.open(out)  # refuses a damaged bank (truncated files, bad meta.json)
    existing = bank.meta
    found = existing.get("fingerprint")
    if found == request.key:
        return bank
    now, holder = _signature_of(request.description)
    then, _ = _signature_of(existing.get("dataset") or {})
    root = holder.get("root") or holder.get("name")
    if found == request.key_with(None):  # made before file signatures: it cannot be checked
        if say and now is not None:
            _say_unchecked(out, f"The feature bank {out} was made before clusterprobe recorded a signature of "
                                f"the data set's files, so whether the files of {root} changed since it was made "
                                "cannot be checked; it is reused as before. Extract it again (--overwrite, "
                                "overwrite=True) for a bank whose files are checked from then on.")
        return bank
    recorded = existing.get("dataset")
    if (then is not None and now is not None and then.get("sha256") != now.get("sha256")
            and found == request.key_with_dataset(recorded)  # the same checkpoint, layers and dtype
            and all(_signature_of(recorded)[1].get(k) == holder.get(k) for k in ("name", "root", "split", "layout"))):
        # the same data set, whose files changed (and with them what follows from them: the
        # number of images, measured statistics)
        raise FeatureBankError(_files_changed(out, existing, then, now, root))
    if then is not None and found == request.key_with(then):
        if now is None:  # e.g. a wrapper that copies the description: the files cannot be signed
            if say:
                _say_unchecked(out, f"The feature bank {out} records a signature of the files of {root}, but the "
                                    "data set given does not say which files it reads (no files_signature()), "
                                    "so whether they changed since the bank was made is not checked; it is "
                                    "reused.")
            return bank
        raise FeatureBankError(_files_changed(out, existing, then, now, root))
    changed = ""
    if then is not None and now is not None and then.get("sha256") != now.get("sha256"):
        changed = f" The files of {root} also changed since it was made ({describe_signature_change(then, now)})."
    raise FeatureBankError(
        f"{out} already holds a different feature bank (made from "
        f"{existing.get('checkpoint', {}).get('path')}, layers "
        f"{existing.get('layer_order')}, {existing.get('dataset', {}).get('name')}/"
        f"{existing.get('dataset', {}).get('split')}).{changed} Choose another --out, or pass "
        "--overwrite (overwrite=True) to replace it."
    )


def _files_changed(out: Path, existing: Mapping[str, Any], then: Mapping[str, Any], now: Mapping[str, Any],
                   root: str) -> str:
    """The refusal of a bank of the same request made from other files of its data set."""
    created = existing.get("created")
    copied = ""
    if then.get("count") == now.get("count") and then.get("bytes") == now.get("bytes"):
        copied = (" (Files copied without their modification times, e.g. by cp without -p or rsync without "
                  "-t, look changed too: the features would then be the same, but the bank cannot tell, so "
                  "extracting again is the safe answer.)")
    return (f"{out} holds this checkpoint's features of these layers, but the files of {root} changed since "
            f"the bank was made{f' ({created})' if created else ''}: {describe_signature_change(then, now)}. "
            f"Its features are those of the files as they were then, so it is not reused.{copied} Choose "
            "another --out, or pass --overwrite (overwrite=True) to extract it again from the files as they "
            "are now.")


def _say_unchecked(out: Path, message: str) -> None:
    """Warn (:class:`UncheckedDataWarning`) once per bank and process."""
    where = str(Path(out).resolve())
    if where in _UNCHECKED_SAID:
        return
    _UNCHECKED_SAID.add(where)
    warnings.warn(message, UncheckedDataWarning, stacklevel=4)


def _layer_dims(job: _Extraction, description: Mapping[str, Any]) -> dict[str, int]:
    """Each layer's width, from one forward pass of the first image (checks the image fits)."""
    first, _ = job.dataset[0]
    expected = job.model.config.in_channels
    if first.ndim != 3 or first.shape[0] != expected:
        raise ClusterprobeError(
            f"The model takes {expected}-channel images but the data set "
            f"{description.get('name')!r} gives images of shape {tuple(first.shape)}. Extract "
            "with the data set the checkpoint was trained on (--dataset)."
        )
    with torch.inference_mode(), LayerCapture(job.model, job.specs) as capture:
        outputs = capture.run(first.unsqueeze(0).to(job.device))
    return {name: int(value.shape[1]) for name, value in outputs.items()}


def _open_writer(job: _Extraction, out: Path, dims: dict[str, int], key: str, overwrite: bool,
                 chunk: int) -> BankWriter:
    """Rank 0 creates (or reopens, to resume) ``out``'s partial bank; the others open it after."""
    coarse = getattr(job.dataset, "coarse_targets", None)
    args = dict(n=len(job.dataset), dims=dims, has_labels=True, has_coarse_labels=coarse is not None,
                fingerprint=key, overwrite=overwrite, chunk_rows=chunk, dtype=job.dtype)
    writer, failure = None, None
    if job.rank == 0:
        try:
            writer = BankWriter(out, create=True, **args)
        except PermissionError as error:  # e.g. a read-only partial bank left by another user
            failure = FeatureBankError(f"Cannot write the feature bank at {out}: {error.filename or out} is "
                                       f"not writable ({error.strerror}). Choose another --out.")
        except Exception as error:  # noqa: BLE001 - e.g. too little disk space: told to the other ranks
            failure = error
    _stop_with_rank0(job, failure, f"create the partial feature bank of {out}")  # also the barrier
    return writer if writer is not None else BankWriter(out, create=False, **args)


def _extract_pending_chunks(job: _Extraction, writer: BankWriter, chunk: int) -> tuple[dict[str, int], dict[str, int]]:
    """Extract this rank's unfinished chunks; returns the counts per layer, summed over all ranks,
    of non-finite values and of finite values beyond float16's range (0 for float32 banks)."""
    n = len(job.dataset)
    n_chunks = math.ceil(n / chunk)
    mine = [c for c in range(n_chunks) if c % job.world == job.rank and not writer.chunk_done(c)]
    nonfinite = {name: 0 for name in job.names}
    overflow = {name: 0 for name in job.names}
    if mine:
        _extract_chunks(job, writer, mine, chunk, nonfinite, overflow)
    counts = distributed.all_reduce_(torch.tensor([nonfinite[name] for name in job.names]
                                                  + [overflow[name] for name in job.names], device=job.device))
    counts = counts.tolist()
    return dict(zip(job.names, counts[: len(job.names)])), dict(zip(job.names, counts[len(job.names):]))


def _refuse_nonfinite(job: _Extraction, writer: BankWriter, nonfinite: dict[str, int]) -> None:
    """Remove the partial bank and raise when any layer produced NaN/inf values."""
    bad = {name: count for name, count in nonfinite.items() if count}
    if not bad:
        return
    _discard_partial(job, writer)
    raise NonFiniteFeaturesError(
        "The model produced non-finite (NaN/inf) features: "
        + ", ".join(f"layer {name}: {count} values" for name, count in bad.items())
        + ". No bank was written. The checkpoint may come from a diverged run; try an "
        "earlier epoch, or pass check_finite=False to write the features anyway."
    )


def _refuse_float16_overflow(job: _Extraction, writer: BankWriter, overflow: dict[str, int]) -> None:
    """Remove the partial bank and raise when a float16 bank would have stored inf for values
    beyond float16's range."""
    bad = {name: count for name, count in overflow.items() if count}
    if not bad:
        return
    _discard_partial(job, writer)
    raise FeatureBankError(float16_refusal(bad) + " No bank was written.")


def _discard_partial(job: _Extraction, writer: BankWriter) -> None:
    """Every rank waits, then rank 0 removes the partial bank (its rows are not to be kept)."""
    distributed.barrier()
    if job.rank == 0:
        import shutil

        shutil.rmtree(writer.partial, ignore_errors=True)


def _bank_meta(job: _Extraction, description, checkpoint_info, pre_activation: bool, extra_meta) -> dict:
    return {
        "layers": {s.name: s.to_dict() for s in job.specs},
        "dataset": description,
        "num_classes": description.get("num_classes"),
        "class_names": getattr(job.dataset, "classes", None),
        "coarse_class_names": getattr(job.dataset, "coarse_classes", None),
        "checkpoint": checkpoint_info,
        "extraction": {"batch_size": job.batch_size, "device": str(job.device), "world_size": job.world,
                       "model_mode": "eval", "pre_activation": pre_activation},
        **dict(extra_meta or {}),
    }


def _extract_chunks(job: _Extraction, writer: BankWriter, chunks: list[int], chunk: int,
                    nonfinite: dict[str, int], overflow: dict[str, int]) -> None:
    """Forward the pending chunks, write their rows, mark each chunk done when complete."""
    n = len(job.dataset)
    indices = [i for c in chunks for i in range(c * chunk, min(n, (c + 1) * chunk))]
    coarse = getattr(job.dataset, "coarse_targets", None)
    loader = DataLoader(
        Subset(job.dataset, indices), batch_size=job.batch_size, shuffle=False,
        num_workers=job.num_workers, pin_memory=job.device.type == "cuda", persistent_workers=False,
    )
    bar = progress_bar(total=len(indices), unit="img", unit_scale=True, desc="extract", enabled=job.progress)
    chunk_iter = iter(chunks)
    current = next(chunk_iter)
    chunk_end = min(n, (current + 1) * chunk)
    position = indices[0]
    with torch.inference_mode(), LayerCapture(job.model, job.specs) as capture:
        for images, labels in loader_batches(loader):  # worker errors keep their message
            outputs = capture.run(images.to(job.device, non_blocking=True))
            rows = {}
            for name, value in outputs.items():
                nonfinite[name] += int((~torch.isfinite(value)).sum())
                if job.dtype == np.float16:  # rounded on the device: half the transfer
                    overflow[name] += float16_overflow(value)
                    value = value.to(torch.float16)
                rows[name] = value.cpu().numpy()
            stop = position + len(labels)
            writer.write_rows(
                position, rows, labels=labels.numpy(),
                coarse_labels=None if coarse is None else np.asarray(coarse[position:stop]),
            )
            bar.update(len(labels))
            position = stop
            if position >= chunk_end:  # batches never straddle chunks: chunk % batch_size == 0
                writer.mark_done(current)
                current = next(chunk_iter, None)
                if current is not None:
                    position = current * chunk
                    chunk_end = min(n, (current + 1) * chunk)
    bar.close()


def default_bank_path(checkpoint: LoadedCheckpoint, dataset_name: str, split: str) -> Path:
    """Where a checkpoint's bank goes by default.

    For a run directory's ``<run>/checkpoints/epoch_0010.pt``: ``<run>/features/<split>/epoch_0010``;
    on a data set other than the run's, or of a branch other than the checkpoint's default, in
    ``<run>/analyses/<dataset>-<branch>/features/...`` (:meth:`RunLayout.variant`, where the report
    keeps them too), so that the run's own metrics never take them for its own. Elsewhere:
    ``<checkpoint folder>/features/<checkpoint name>/<dataset>-<split>``.
    """
    path = checkpoint.path
    run = run_of_checkpoint(path)
    if run is not None:
        other = None if checkpoint.dataset in (None, dataset_name) else dataset_name
        branch = canonical_branch(checkpoint.branch)
        if checkpoint.default_branch is None or canonical_branch(checkpoint.default_branch) == branch:
            branch = None
        return run.variant(other, branch).bank_path(split, parse_epoch(path.name, ".pt"))
    return path.parent / FEATURES_DIR / path.stem / f"{dataset_name}-{split}"
