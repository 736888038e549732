"""Where the metrics' inputs come from: feature banks on disk, run directories or arrays in memory.

A :class:`Group` is everything evaluated together for one model state (run, epoch): its splits
(``train``, ``test``, ...), each a :class:`SplitData` giving per-layer features, labels and an
identity (``data_id``) that changes whenever the data could have changed, which is what keeps
the metrics cache from ever answering for other data. :func:`groups_from_source` and
:func:`group_from_arrays` turn what a user passes into groups; features and labels are
validated here, once, as they are read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..bank import FeatureBank
from ..errors import FeatureBankError, LayerError, closest_name
from ..io import fingerprint
from ..runs import FEATURES_DIR, parse_epoch
from ._validation import MetricsError, as_features, as_labels


class SplitData:
    """One split (train, test, ...) of one model state: per-layer features and labels."""

    name: str
    split: str

    @property
    def layers(self) -> list[str]:
        raise NotImplementedError

    def dims(self) -> dict[str, int]:
        raise NotImplementedError

    def features(self, layer: str) -> np.ndarray:
        raise NotImplementedError

    def check_layer(self, layer: str) -> None:
        """Raise :class:`LayerError` (naming the closest layer) unless ``layer`` is here."""
        if layer not in self.dims():
            raise LayerError(
                f"Layer {layer!r} is not in the {self.name}; it holds {', '.join(self.layers)}."
                f"{closest_name(layer, self.layers)}"
            )

    def labels(self) -> np.ndarray | None:
        raise NotImplementedError

    def num_classes(self) -> int | None:
        labels = self.labels()
        return None if labels is None else int(np.unique(labels).size)

    def data_id(self, layer: str) -> str:
        raise NotImplementedError

    def checkpoint(self) -> dict:
        return {}

    def layer_specs(self) -> dict[str, dict]:
        return {}

    def dataset(self) -> dict:
        return {}


class BankSplit(SplitData):
    """A split backed by a :class:`FeatureBank` on disk."""

    def __init__(self, bank: FeatureBank, split: str | None = None):
        self.bank = bank
        self.split = split or bank.meta.get("dataset", {}).get("split") or bank.path.parent.name or "data"
        self.name = f"feature bank {bank.path}"

    @property
    def layers(self) -> list[str]:
        return self.bank.layers

    def dims(self) -> dict[str, int]:
        return self.bank.dims

    def features(self, layer: str) -> np.ndarray:
        return as_features(self.bank[layer], f"Layer {layer!r} of {self.name}")

    def labels(self) -> np.ndarray | None:
        if not hasattr(self, "_labels"):  # read and validated once, shared by every layer
            labels = self.bank.labels
            self._labels = (None if labels is None
                            else as_labels(np.asarray(labels), n=self.bank.n, name=f"labels of {self.name}"))
        return self._labels

    def num_classes(self) -> int | None:
        return self.bank.num_classes

    def data_id(self, layer: str) -> str:
        self.bank[layer]  # raises LayerError for an unknown layer
        files = [self.bank.path / self.bank.meta["layers"][layer].get("file", f"{layer}.npy")]
        if self.bank.meta.get("labels"):
            files.append(self.bank.path / "labels.npy")
        stamps = []
        for file in files:
            st = file.stat()
            stamps.append([file.name, st.st_size, st.st_mtime_ns])
        return fingerprint({"meta": self.bank.meta, "files": stamps})

    def checkpoint(self) -> dict:
        return dict(self.bank.meta.get("checkpoint") or {})

    def layer_specs(self) -> dict[str, dict]:
        return {name: dict(info) for name, info in self.bank.meta.get("layers", {}).items()}

    def dataset(self) -> dict:
        return dict(self.bank.meta.get("dataset") or {})


class ArraySplit(SplitData):
    """A split held in memory: ``{layer: (n, d) array}`` and optional labels (n,)."""

    def __init__(self, features: Mapping[str, np.ndarray], labels, split: str, hash_data: bool):
        self.split = split
        self.name = f"{split} arrays"
        self._features = {layer: as_features(x, f"{split} features of layer {layer!r}") for layer, x in features.items()}
        sizes = {x.shape[0] for x in self._features.values()}
        if len(sizes) != 1:
            raise MetricsError(f"{split} layers have different numbers of rows: {sorted(sizes)}.")
        self.n = sizes.pop()
        self._labels = None if labels is None else as_labels(labels, n=self.n, name=f"{split} labels")
        self._hash = hash_data
        self._ids: dict[str, str] = {}

    @property
    def layers(self) -> list[str]:
        return list(self._features)

    def dims(self) -> dict[str, int]:
        return {layer: int(x.shape[1]) for layer, x in self._features.items()}

    def features(self, layer: str) -> np.ndarray:
        if layer not in self._features:
            raise LayerError(
                f"Layer {layer!r} is not among the {self.split} arrays ({', '.join(self._features)})."
                f"{closest_name(layer, self._features)}"
            )
        return self._features[layer]

    def labels(self) -> np.ndarray | None:
        return self._labels

    def data_id(self, layer: str) -> str:
        if not self._hash:
            return ""
        if layer not in self._ids:
            digest = hashlib.blake2b(digest_size=16)
            x = self.features(layer)
            digest.update(repr((x.shape, str(x.dtype))).encode())
            digest.update(memoryview(x).cast("B"))
            if self._labels is not None:
                digest.update(memoryview(self._labels).cast("B"))
            self._ids[layer] = digest.hexdigest()
        return self._ids[layer]


@dataclass
class Group:
    """Splits of one model state (run, epoch) that are evaluated together."""

    run: str
    method: str
    epoch: int | None
    splits: dict[str, SplitData]
    train_split: str | None = None
    eval_split: str | None = None
    label: str = ""


TRAIN_NAMES = ("train",)
EVAL_NAMES = ("test", "val", "valid", "validation", "eval")


def pick_roles(splits: Mapping[str, SplitData]) -> tuple[str | None, str | None]:
    """(train split, eval split) among ``splits``: probes fit on the first and score on the second."""
    train = next((s for s in TRAIN_NAMES if s in splits), None)
    evaluation = next((s for s in EVAL_NAMES if s in splits), None)
    if evaluation is None:
        evaluation = next((s for s in splits if s != train), None)
    return train, evaluation


def _differs(a: dict, b: dict, key: str) -> bool:
    return a.get(key) is not None and b.get(key) is not None and a.get(key) != b.get(key)


def check_same_checkpoint(train: SplitData, test: SplitData) -> None:
    """Refuse two splits recorded as features of different checkpoints (sha256, else path and
    epoch; and the branch): one group is one model state, its rows labelled with one run/epoch."""
    ck_a, ck_b = train.checkpoint(), test.checkpoint()
    identity = ("sha256", "branch") if ck_a.get("sha256") and ck_b.get("sha256") else ("path", "epoch", "branch")
    for key in identity:
        if _differs(ck_a, ck_b, key):
            raise MetricsError(
                f"The {train.split} and {test.split} features come from different checkpoints ({key}: "
                f"{ck_a[key]!r} in {train.name}, {ck_b[key]!r} in {test.name}). They are evaluated as one "
                "model state (its run and epoch label every row; probes fit on one split and score on "
                "the other): extract the other split again from the same checkpoint."
            )


def check_pair(train: SplitData, test: SplitData, layers: Sequence[str]) -> None:
    """Refuse train/test data that do not belong together.

    Checks, where both sides record them: the checkpoint (sha256, else path and epoch), the
    branch (online/momentum), the architecture it was rebuilt as, the data set, the set of layers, each layer's definition and
    dimension. Raises :class:`MetricsError` naming the difference and the fix.
    """
    check_same_checkpoint(train, test)
    ck_a, ck_b = train.checkpoint(), test.checkpoint()
    if _differs(ck_a, ck_b, "model_config"):
        raise MetricsError(
            f"The train and test features come from the same checkpoint rebuilt as different "
            f"architectures (model config {ck_a['model_config']} in {train.name}, "
            f"{ck_b['model_config']} in {test.name}): they were extracted with different "
            "--stem-padding/--head-activation/--vit-heads. Extract both splits with the same options."
        )
    ds_a, ds_b = train.dataset().get("name"), test.dataset().get("name")
    if ds_a and ds_b and str(ds_a).lower() != str(ds_b).lower():
        raise MetricsError(
            f"The train features are of data set {ds_a!r} but the test features of {ds_b!r}; "
            "probes need two splits of one data set."
        )
    dims_a, dims_b = train.dims(), test.dims()
    missing = [layer for layer in layers if layer not in dims_a or layer not in dims_b]
    if missing or set(dims_a) != set(dims_b):
        raise MetricsError(
            f"The train and test features hold different layers (train: {', '.join(dims_a)}; "
            f"test: {', '.join(dims_b)}). Extract the same layers for both splits."
        )
    specs_a, specs_b = train.layer_specs(), test.layer_specs()
    for layer in layers:
        if dims_a[layer] != dims_b[layer]:
            raise MetricsError(
                f"Layer {layer!r} has {dims_a[layer]} dimensions in the train features but "
                f"{dims_b[layer]} in the test features: they cannot come from the same model. "
                "Re-extract one of them."
            )
        a, b = specs_a.get(layer, {}), specs_b.get(layer, {})
        for key in sorted(set(a) & set(b) - {"file", "dim"}):
            if a[key] != b[key]:
                raise MetricsError(
                    f"Layer {layer!r} is defined differently in the train and test features "
                    f"({key}: {a[key]!r} vs {b[key]!r}). Extract both splits with the same layer options."
                )



def _provenance(bank: FeatureBank, key: str):
    """``key`` (run, method, epoch) from the bank's checkpoint record, else from its top level."""
    value = (bank.meta.get("checkpoint") or {}).get(key)
    return value if value is not None else bank.meta.get(key)


def epoch_of(bank: FeatureBank) -> int | None:
    """The checkpoint epoch recorded in the bank, else the ``epoch_XXXX`` directory name, else None."""
    epoch = _provenance(bank, "epoch")
    if epoch is not None:
        return int(epoch)
    return parse_epoch(bank.path.name)


def group_from_banks(banks: dict[str, FeatureBank], run_hint: str = "") -> Group:
    """A group from ``{split: bank}`` of one checkpoint; run and method come from bank metadata."""
    any_bank = next(iter(banks.values()))
    splits = {split: BankSplit(bank, split) for split, bank in banks.items()}
    first = next(iter(splits.values()))
    for other in list(splits.values())[1:]:  # the run and epoch below are the first bank's
        check_same_checkpoint(first, other)
    train, evaluation = pick_roles(splits)
    epoch = epoch_of(any_bank)
    run = str(_provenance(any_bank, "run") or run_hint or "")
    label = f"{run} " if run else ""
    label += f"epoch {epoch}, " if epoch is not None else ""
    return Group(run, str(_provenance(any_bank, "method") or ""), epoch, splits, train, evaluation, label)


def find_banks(run_dir: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Banks of a run directory: ``{epoch_dir_name: {split: path}}`` from ``features/<split>/<epoch>/``.

    Unfinished extractions (``*.partial``) and hidden directories are ignored.
    """
    root = Path(run_dir) / FEATURES_DIR
    found: dict[str, dict[str, Path]] = {}
    if not root.is_dir():
        return found
    finished = lambda p: p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".partial")  # noqa: E731
    for split_dir in sorted(filter(finished, root.iterdir())):
        for bank_dir in sorted(filter(finished, split_dir.iterdir())):
            if (bank_dir / "meta.json").exists():
                found.setdefault(bank_dir.name, {})[split_dir.name] = bank_dir
    return found


# -- groups from what the user passed -------------------------------------------------------------
def is_bank(source) -> bool:
    """Whether ``source`` is a :class:`FeatureBank` or the directory of one (it has meta.json)."""
    return isinstance(source, FeatureBank) or (Path(source) / "meta.json").exists()


def open_bank(source) -> FeatureBank:
    return source if isinstance(source, FeatureBank) else FeatureBank.open(source)


def groups_from_source(
    source, *, train=None, splits: Sequence[str] | None = None, epochs: Iterable[int] | None = None
) -> list[Group]:
    """The groups to evaluate for a bank (with an optional ``train`` bank) or a run directory.

    A run directory gives one group per epoch directory under ``features/<split>/``; ``splits``
    and ``epochs`` keep only those splits and epochs.

    Raises:
        FeatureBankError: the path does not exist or holds no banks.
        MetricsError: ``train`` is the bank itself, or nothing is left after the filters.
    """
    if is_bank(source):
        bank = open_bank(source)
        split = BankSplit(bank).split
        banks = {split: bank}
        if train is not None:
            train_bank = open_bank(train)
            if train_bank.path.resolve() == bank.path.resolve():
                raise MetricsError(
                    f"train= is the same bank as the one evaluated ({bank.path}); pass the train "
                    "split's bank, or leave train out for a hold-out split."
                )
            # the rows are labelled 'train' and 'test' by role: a train= bank recorded as another
            # split (the two banks swapped) would have its rows labelled 'train' and the train
            # bank's 'test', and the probes fit on the test split
            recorded = (train_bank.meta.get("dataset") or {}).get("split")
            if recorded is not None and str(recorded) != "train":
                raise MetricsError(
                    f"train= is a bank of the {recorded!r} split ({train_bank.path}), and the evaluated "
                    f"bank's split is {split!r}: pass the train split's bank as train= and the bank to "
                    "score as the source (were the two swapped?)."
                )
            banks = {"train": train_bank, (split if split != "train" else "test"): bank}
        if splits:
            banks = {s: b for s, b in banks.items() if s in splits}
            if not banks:
                raise MetricsError(f"splits={list(splits)} leaves none of the banks given ({split}).")
        in_run = bank.path.parent.parent.name == FEATURES_DIR  # <run>/features/<split>/<epoch>
        group = group_from_banks(banks, run_hint=bank.path.parents[2].name if in_run else "")
        if epochs is not None and group.epoch not in set(epochs):
            raise MetricsError(
                f"epochs={list(epochs)} was given, but the bank {bank.path} holds epoch {group.epoch}: "
                "pass a run directory to choose among its epochs, or leave epochs out."
            )
        return [group]
    path = Path(source)
    if not path.exists():
        raise FeatureBankError(f"{path} does not exist; pass a feature bank directory or a run directory.")
    if train is not None:
        raise MetricsError(
            f"train= was given with the run directory {path}, whose banks are paired by epoch "
            "(features/train/epoch_XXXX with features/test/epoch_XXXX): pass a bank as the source "
            "to pair it with train=, or leave train out."
        )
    found = find_banks(path)
    if not found:
        raise FeatureBankError(
            f"{path} is neither a feature bank (no meta.json) nor a run directory with banks "
            "under features/<split>/epoch_XXXX/. Extract features first with `clusterprobe extract`."
        )
    wanted_epochs = None if epochs is None else set(epochs)
    groups = []
    seen: dict[tuple, str] = {}  # (run, method, epoch) -> the folder whose banks it labels
    for folder, by_split in found.items():
        if splits:
            by_split = {s: p for s, p in by_split.items() if s in splits}
        if not by_split:
            continue
        banks = {s: FeatureBank.open(p) for s, p in by_split.items()}
        # the epoch filter first: a folder left out is not checked (the report skips an epoch
        # whose banks could not be made, e.g. one holding another checkpoint's bank)
        if wanted_epochs is not None and not any(epoch_of(b) in wanted_epochs for b in banks.values()):
            continue
        group = group_from_banks(banks, run_hint=path.name)
        key = (group.run, group.method, group.epoch)
        if key in seen:  # their rows would carry the same labels (and displace each other in the cache)
            raise MetricsError(
                f"The bank folders {seen[key]!r} and {folder!r} under {path / FEATURES_DIR} both hold run "
                f"{group.run!r}, epoch {group.epoch}: their rows could not be told apart. Remove or move "
                "the extra copy, or pass epochs= to choose."
            )
        seen[key] = folder
        groups.append(group)
    if not groups:
        raise MetricsError(f"No banks in {path} match splits={splits} and epochs={epochs}.")
    return groups


def group_from_arrays(
    X_train, y_train, X_test, y_test, *, layer: str, run: str, method: str, epoch: int | None, hash_data: bool
) -> Group:
    """A group of in-memory arrays: ``train`` (and ``test`` when ``X_test`` is given).

    Each X is an (n, d) array or a dict ``{layer: array}``; labels are (n,) or None. The arrays
    are validated here (shapes, finite values, labels); ``hash_data`` gives them a data identity
    so that their results can be cached.
    """
    as_dict = lambda X: dict(X) if isinstance(X, Mapping) else {layer: X}  # noqa: E731
    splits: dict[str, SplitData] = {"train": ArraySplit(as_dict(X_train), y_train, "train", hash_data)}
    if X_test is not None:
        splits["test"] = ArraySplit(as_dict(X_test), y_test, "test", hash_data)
        check_pair(splits["train"], splits["test"], splits["train"].layers)
    elif y_test is not None:
        raise MetricsError("y_test was given without X_test; pass both or neither.")
    train, evaluation = pick_roles(splits)
    return Group(run, method, epoch, splits, train, evaluation if X_test is not None else None, "")
