"""Feature banks: per-layer feature matrices of one data set split, stored on disk.

On-disk format (a directory)::

    bank/
      meta.json            provenance: checkpoint, data set, split, layers and dims, settings
      H.npy, P0.npy, ...   float32 (or float16), shape (n, dim), rows in data set order
                           (memory-mappable)
      labels.npy           int64, shape (n,)            (when the data set has labels)
      coarse_labels.npy    int64, shape (n,)            (when known, e.g. CIFAR-100 super-classes)

A bank is written into ``bank.partial/`` beside its final place and renamed when complete, so a
directory named ``bank`` is always a finished bank. :class:`BankWriter` streams rows into the
partial directory chunk by chunk and records finished chunks, so an interrupted extraction
resumes where it stopped.

Storage dtype: float32 by default; ``float16`` halves the disk and page-cache footprint (a
1,281,167 x 2048 ImageNet bank: 5.2 GB instead of 10.5 GB) at a relative rounding of at most
2^-11 (~5e-4) per value. The metrics read such banks a chunk at a time and compute in float32.
float16 holds magnitudes up to 65,504: writing a larger finite value is refused (it would become
inf), with the advice to store float32. float16 banks carry format version 2, so a clusterprobe
too old to read them says "upgrade" instead of mistaking them for damaged banks.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from .errors import (FeatureBankError, LayerError, LockedError, NonFiniteFeaturesError, OutputPathError,
                     closest_name)
from .io import (atomic_write_json, describe_holder, exclusive_lock, free_bytes, lock_file_of,
                 preallocate, read_json, read_lock_holder, replace_directory, sha256_file)
from .linalg import l2_normalize

BANK_FORMAT = "clusterprobe.feature_bank"
BANK_FORMAT_VERSION = 2  # 2: float16 banks (float32 banks are still written as version 1)
#: Storage dtypes of feature banks.
BANK_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_LAYER_FILE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _layer_filename(layer: str) -> str:
    if not _LAYER_FILE.match(layer) or layer in {"labels", "coarse_labels", "meta"}:
        raise LayerError(
            f"Layer name {layer!r} cannot be stored in a feature bank: use letters, digits, "
            "'_', '-' and '.', and not the reserved names labels, coarse_labels or meta."
        )
    return f"{layer}.npy"


def bank_dtype(dtype) -> np.dtype:
    """``dtype`` ('float32', 'float16', a NumPy dtype) as a NumPy dtype, or a FeatureBankError."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in BANK_DTYPES:
        raise FeatureBankError(f"Feature banks store {' or '.join(BANK_DTYPES)}, not {dtype!r}; "
                               "use --dtype float32 (exact) or --dtype float16 (half the disk).")
    return resolved


def float16_overflow(values) -> int:
    """How many finite entries of ``values`` (a NumPy array or torch tensor) float16 cannot hold
    (magnitude above 65,504: they would be stored as inf)."""
    if hasattr(values, "detach"):
        import torch

        return int(((values.abs() > FLOAT16_MAX) & torch.isfinite(values)).sum())
    values = np.asarray(values)
    return int(np.count_nonzero((np.abs(values) > FLOAT16_MAX) & np.isfinite(values)))


def _library_version() -> str:
    from . import __version__

    return __version__


_OVERWRITE_HINT = " (`clusterprobe extract ... --overwrite`, overwrite=True) to replace it"


def _npy_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why the ``.npy`` file at ``path`` is not an intact (shape, dtype) array, or None."""
    if not path.exists():
        return "is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # 2.0 and 3.0 share a layout
            found_shape, fortran, found_dtype = read_header(handle)
            offset = handle.tell()
    except (ValueError, OSError, EOFError) as error:
        return f"has no readable .npy header ({size} bytes; {error})"
    if tuple(found_shape) != tuple(shape) or np.dtype(found_dtype) != dtype or fortran:
        return f"holds a {found_dtype} array of shape {tuple(found_shape)}, not {dtype} {tuple(shape)}"
    wanted = offset + int(np.prod(shape)) * dtype.itemsize
    if size != wanted:
        return f"has {size} bytes where its header implies {wanted} (truncated or padded)"
    return None


def _bytes(count: int) -> str:
    """``"176784 bytes (172.6 KiB)"``: exact, and readable."""
    text, value = f"{count} bytes", float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value /= 1024
        readable = f"{value:.1f} {unit}"
    return f"{text} ({readable})" if count >= 1024 else text


@contextlib.contextmanager
def lock_bank(path: str | os.PathLike, request: str | None,
              say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Be the only writer of the bank at ``path`` for a ``with`` block.

    The lock (:func:`~clusterprobe.io.exclusive_lock` on ``.<name>.lock`` beside the bank) records
    ``request`` (the bank's fingerprint). If another process holds it:

    - for the same request (same checkpoint, layers, data and transform), this one waits for it
      (``say`` is told) and the caller then finds the finished bank and reuses it, or resumes
      the partial bank if that process died;
    - for a different request (or ``request`` None: :meth:`FeatureBank.write`), it refuses at
      once with :class:`~clusterprobe.errors.LockedError` naming the path and the process: two
      writers would mix one request's meta.json with another's rows.
    """
    path = Path(path)
    what = f"the feature bank {path}"
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_lock(path, wait=False, what=what, info={"request": request}))
    except OutputPathError as error:
        blocker = _file_above(path)
        if blocker is not None:  # mkdir said "File exists" or "Not a directory": the real problem
            raise OutputPathError(
                f"Cannot write the feature bank {path}: {blocker} is a file, not a folder. Choose "
                "another output directory (--out, out=...), or move that file away.") from None
        raise OutputPathError(f"{error} Choose a writable output directory (--out, out=...).") from None
    except LockedError as error:
        holder = error.holder
        if not holder:  # it has the lock but has not written its details yet
            time.sleep(0.5)
            holder = read_lock_holder(path)
        if request is None or holder.get("request") != request:
            raise LockedError(
                f"The feature bank {path} is being written by {describe_holder(holder)} for a "
                f"different request (lock file {lock_file_of(path)}); two writers would mix their "
                "rows, so this one stops. Wait for that process to finish, or choose another "
                "output directory (--out, out=...).", holder) from None
        if say is not None:
            say(f"waiting for {describe_holder(holder)}, which is extracting the same bank into {path}")
        stack.enter_context(exclusive_lock(path, wait=True, what=what, info={"request": request}))
    with stack:
        yield


class FeatureBank:
    """Read access to a feature bank directory; arrays are memory-mapped lazily.

    >>> bank = FeatureBank.open("runs/resa/features/test/epoch_0010")  # doctest: +SKIP
    >>> bank.layers, bank.n, bank.dims
    (['H', 'P0', 'P1', 'Z'], 10000, {'H': 512, 'P0': 2048, 'P1': 2048, 'Z': 512})
    >>> X = bank["H"]            # np.memmap of shape (n, 512), float32, read-only
    >>> y = bank.labels          # np.ndarray of shape (n,), int64, or None
    """

    #: True when :func:`~clusterprobe.extract.extract_features` returned an existing bank
    #: instead of writing it.
    reused: bool = False

    def __init__(self, path: str | os.PathLike, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self._cache: dict[str, np.ndarray] = {}

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureBank":
        """Open a finished bank directory. Raises :class:`FeatureBankError` if there is none."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            hint = (
                f" An unfinished extraction is in {partial}; run the same extraction again to "
                "resume it."
                if partial.exists()
                else ""
            )
            raise FeatureBankError(f"No feature bank at {path}: the directory does not exist.{hint}")
        if not meta_path.exists():
            raise FeatureBankError(
                f"{path} is not a feature bank: it has no meta.json. Banks are made by "
                "`clusterprobe extract` or FeatureBank.write()."
            )
        try:
            meta = read_json(meta_path)
        except (ValueError, UnicodeDecodeError) as error:
            raise FeatureBankError(
                f"Feature bank {path} is damaged: {meta_path.name} is not valid JSON ({error}). "
                f"Extract it again{_OVERWRITE_HINT}."
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT:
            raise FeatureBankError(f"{meta_path} does not describe a clusterprobe feature bank.")
        if meta.get("format_version", 0) > BANK_FORMAT_VERSION:
            raise FeatureBankError(
                f"{path} was written by a newer clusterprobe (bank format "
                f"{meta['format_version']}); upgrade clusterprobe to read it."
            )
        bank = cls(path, meta)
        bank.check_files()
        return bank

    def check_files(self) -> None:
        """Check every array file against ``meta.json``: present, a readable ``.npy`` header with
        the recorded shape and dtype, and exactly the byte size that header implies.

        Cheap (headers and file sizes only), so it runs on every :meth:`open`: a truncated,
        emptied or swapped file is refused instead of being read as features.

        Raises:
            FeatureBankError: naming the damaged file and the fix.
        """
        try:
            expected = {str(info["file"]): ((self.n, int(info["dim"])), self.dtype)
                        for info in self.meta["layers"].values()}
            for name in ("labels", "coarse_labels"):
                if self.meta.get(name):
                    expected[f"{name}.npy"] = ((self.n,), np.dtype(np.int64))
        except FeatureBankError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise FeatureBankError(f"Feature bank {self.path} is damaged: meta.json lacks {error}. "
                                   f"Extract it again{_OVERWRITE_HINT}.") from None
        for file, (shape, dtype) in expected.items():
            problem = _npy_problem(self.path / file, shape, dtype)
            if problem:
                raise FeatureBankError(f"Feature bank {self.path} is damaged: {file} {problem}. "
                                       f"Extract it again{_OVERWRITE_HINT}.")

    def verify(self, content: bool = False) -> list[str]:
        """Check the bank against its ``meta.json``; returns notes on what was checked.

        Always: every array file's ``.npy`` header (shape, dtype) and byte size (:meth:`check_files`).
        With ``content``: also each file's SHA-256 against the one recorded when the bank was
        finished (reads every byte). Banks written before hashes were recorded pass with a note
        saying so.

        Raises:
            FeatureBankError: naming the damaged file and the fix.
        """
        self.check_files()
        files = [str(info["file"]) for info in self.meta["layers"].values()]
        files += [f"{name}.npy" for name in ("labels", "coarse_labels") if self.meta.get(name)]
        notes = [f"{len(files)} files ({', '.join(files)}): shapes, dtypes and sizes match meta.json "
                 f"({self.n} rows)"]
        if not content:
            return notes
        recorded = self.meta.get("sha256")
        if not isinstance(recorded, dict) or not recorded:
            notes.append("content not checked: this bank has no SHA-256 hashes recorded in meta.json "
                         "(written by an older clusterprobe); re-extract with --overwrite to record them")
            return notes
        for file in files:
            if file not in recorded:
                notes.append(f"{file}: no SHA-256 recorded, content not checked")
                continue
            if sha256_file(self.path / file) != recorded[file]:
                raise FeatureBankError(
                    f"Feature bank {self.path} is damaged: the content of {file} differs from the "
                    "SHA-256 recorded when the bank was written (changed or corrupted on disk). "
                    f"Extract it again{_OVERWRITE_HINT}.")
        notes.append(f"content matches the SHA-256 recorded for {sum(f in recorded for f in files)} files")
        return notes

    @classmethod
    def write(
        cls,
        path: str | os.PathLike,
        features: Mapping[str, np.ndarray],
        labels: np.ndarray | None = None,
        coarse_labels: np.ndarray | None = None,
        meta: Mapping | None = None,
        overwrite: bool = False,
        dtype: str = "float32",
    ) -> "FeatureBank":
        """Write in-memory arrays as a bank (atomically) and return it opened.

        ``features`` maps layer names to arrays of shape (n, dim); ``labels`` and
        ``coarse_labels`` have shape (n,). ``meta`` adds provenance keys (``dataset``,
        ``checkpoint``, ...) to the generated ``meta.json``. ``dtype`` is the storage type,
        'float32' or 'float16' (values beyond float16's range are refused, not stored as inf).
        """
        dtype = bank_dtype(dtype)
        if not features:
            raise FeatureBankError("A feature bank needs at least one layer of features.")
        arrays = {name: np.asarray(x) for name, x in features.items()}
        n = {x.shape[0] for x in arrays.values()}
        if len(n) != 1 or any(x.ndim != 2 for x in arrays.values()):
            shapes = {k: v.shape for k, v in arrays.items()}
            raise FeatureBankError(f"All layers must be 2-D with the same number of rows; got {shapes}.")
        (n,) = n
        for label_name, values in (("labels", labels), ("coarse_labels", coarse_labels)):
            if values is not None and np.asarray(values).shape != (n,):
                raise FeatureBankError(
                    f"{label_name} has shape {np.asarray(values).shape}, expected ({n},)."
                )
        dims = {k: int(v.shape[1]) for k, v in arrays.items()}
        if dtype == np.float16:
            too_large = {name: count for name, x in arrays.items() if (count := float16_overflow(x))}
            if too_large:
                raise FeatureBankError(float16_refusal(too_large))
        with lock_bank(path, request=None):
            writer = BankWriter(
                path,
                n=n,
                dims=dims,
                has_labels=labels is not None,
                has_coarse_labels=coarse_labels is not None,
                fingerprint=None,
                overwrite=overwrite,
                dtype=dtype,
            )
            writer.write_rows(
                0,
                arrays,
                labels=None if labels is None else np.asarray(labels),
                coarse_labels=None if coarse_labels is None else np.asarray(coarse_labels),
            )
            return writer.finalize(dict(meta or {}))

    # -- contents ----------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layer names in the order they were requested at extraction."""
        return list(self.meta["layer_order"])

    @property
    def n(self) -> int:
        """Number of samples (rows)."""
        return int(self.meta["n"])

    @property
    def dims(self) -> dict[str, int]:
        return {name: int(info["dim"]) for name, info in self.meta["layers"].items()}

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the features: float32 (default) or float16 (``meta.json``'s ``dtype``)."""
        return bank_dtype(self.meta.get("dtype", "float32"))

    @property
    def labels(self) -> np.ndarray | None:
        return self._array("labels") if self.meta.get("labels") else None

    @property
    def coarse_labels(self) -> np.ndarray | None:
        return self._array("coarse_labels") if self.meta.get("coarse_labels") else None

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def num_classes(self) -> int | None:
        if self.meta.get("num_classes") is not None:
            return int(self.meta["num_classes"])
        labels = self.labels
        return None if labels is None else int(np.unique(labels).size)

    def _array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            file = self.path / f"{name}.npy"
            if not file.exists():
                raise FeatureBankError(f"Feature bank {self.path} is incomplete: {file.name} is missing.")
            self._cache[name] = np.load(file, mmap_mode="r")
        return self._cache[name]

    def __getitem__(self, layer: str) -> np.ndarray:
        """Features of one layer, shape (n, dim), memory-mapped read-only, in the bank's
        :attr:`dtype` (float32, or float16: the metrics read it in float32 chunks)."""
        if layer not in self.meta["layers"]:
            raise LayerError(
                f"Layer {layer!r} is not in the feature bank at {self.path}; it holds "
                f"{', '.join(self.layers)}.{closest_name(layer, self.layers)}"
            )
        return self._array(layer)

    def __contains__(self, layer: object) -> bool:
        return layer in self.meta["layers"]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return self.n

    def features(self, layer: str, normalize: bool = False, dtype=np.float32) -> np.ndarray:
        """Features of ``layer`` loaded into memory (as ``dtype``), optionally L2-normalised row-wise."""
        x = np.asarray(self[layer], dtype=dtype)
        if normalize:
            x = l2_normalize(x)
        return x

    def check_finite(self, layers: Iterable[str] | None = None) -> None:
        """Raise :class:`NonFiniteFeaturesError` naming each layer holding NaN or inf values."""
        problems = []
        for layer in layers or self.layers:
            x = self[layer]
            rows = max(1, (16 * 2**20) // max(1, x.shape[1] * x.itemsize))  # 16 MiB at a time
            count = sum(int(np.count_nonzero(~np.isfinite(x[start : start + rows])))
                        for start in range(0, x.shape[0], rows))
            if count:
                problems.append(f"{layer}: {count} values")
        if problems:
            raise NonFiniteFeaturesError(
                f"Feature bank {self.path} holds non-finite (NaN/inf) features in "
                f"{'; '.join(problems)}. Re-extract from a healthy checkpoint."
            )

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        dataset = self.meta.get("dataset", {})
        where = f"{dataset.get('name', '?')}/{dataset.get('split', '?')}"
        return f"FeatureBank({str(self.path)!r}, n={self.n}, {where}, layers: {dims})"


def float16_refusal(too_large: Mapping[str, int]) -> str:
    return ("float16 cannot hold these features: "
            + ", ".join(f"layer {name}: {count} values beyond +-65,504" for name, count in too_large.items())
            + ". They would be stored as inf. Store the bank as float32 (--dtype float32, dtype='float32').")


def _file_above(path: str | os.PathLike) -> Path | None:
    """The nearest existing folder above ``path`` when it is not a folder (a file where a folder
    of the path belongs, e.g. ``x.txt`` of ``x.txt/bank``), else None."""
    above = _existing_ancestor(Path(path).absolute().parent)
    return None if above.is_dir() else above


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _bank_entry(entry: Path) -> bool:
    """Whether ``entry`` is something a feature bank folder holds: its arrays, meta.json, or a
    hidden file (temporary writes, locks)."""
    return entry.name == "meta.json" or entry.name.startswith(".") or (entry.suffix == ".npy" and entry.is_file())


def _check_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless it is a feature bank (finished or damaged) or empty:
    ``overwrite`` replaces banks, never a file or a folder of something else that an ``--out``
    typo named (it would be deleted)."""
    if not path.is_dir():
        raise OutputPathError(
            f"{path} is a file, not a feature bank: overwrite (--overwrite) replaces feature banks "
            "only. Choose another output directory, or remove the file yourself if it is not needed."
        )
    foreign = sorted(entry.name for entry in path.iterdir() if not _bank_entry(entry))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputPathError(
            f"{path} is not a feature bank (it holds {shown}): overwrite (--overwrite) replaces "
            "feature banks only, never other folders. Choose another output directory, or empty "
            "it yourself if its contents are not needed."
        )


class BankWriter:
    """Streams rows of every layer into ``<path>.partial/`` and renames it to ``path`` at the end.

    ``fingerprint`` identifies what is being extracted (checkpoint hash, layers, data set,
    split, transform). A partial directory with the same fingerprint and ``chunk_rows`` (rows per
    chunk id) is resumed: the chunks it marked done are not recomputed. Otherwise it is discarded.

    Several processes may write disjoint rows of one bank (distributed extraction): one creates
    the writer with ``create=True``, the others attach with ``create=False`` after a barrier.
    The creating process must hold :func:`lock_bank` for ``path`` until :meth:`finalize` returns,
    so that no other extraction recreates the partial bank under it. Creating reserves the disk
    space of every array file (:meth:`reserve_space`). ``dtype`` is the features' storage type
    ('float32' or 'float16'); rows are cast to it as they are written (callers check float16's
    range first: :func:`float16_overflow`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        dims: Mapping[str, int],
        has_labels: bool,
        has_coarse_labels: bool,
        fingerprint: str | None,
        overwrite: bool = False,
        create: bool = True,
        chunk_rows: int | None = None,
        dtype: str = "float32",
    ):
        self.path = Path(path)
        self.dtype = bank_dtype(dtype)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.n = int(n)
        self.dims = {k: int(v) for k, v in dims.items()}
        self.has_labels = has_labels
        self.has_coarse_labels = has_coarse_labels
        self.fingerprint = fingerprint
        self.overwrite = overwrite
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)
        self.files = {layer: _layer_filename(layer) for layer in self.dims}
        if create:
            self._prepare()
            self.reserve_space()
        self._arrays = self._open_arrays()

    def _spec(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "n": self.n,
            "dims": self.dims,
            "labels": self.has_labels,
            "coarse_labels": self.has_coarse_labels,
            # chunk ids mean row ranges of this size: a partial bank written with another chunk
            # size cannot be resumed (its done markers would cover the wrong rows)
            "chunk_rows": self.chunk_rows,
            # float32 partial banks of earlier versions (no dtype recorded) stay resumable
            **({"dtype": self.dtype.name} if self.dtype != np.float32 else {}),
        }

    def _prepare(self) -> None:
        if self.path.exists() and not self.overwrite:
            raise FeatureBankError(
                f"{self.path} already exists and holds a different feature bank (or something "
                "else). Choose another output directory, or pass overwrite=True (--overwrite) "
                "to replace it."
            )
        if self.path.exists():
            _check_replaceable(self.path)
        spec_file = self.partial / "writer.json"
        if self.partial.exists() and self.fingerprint is not None and spec_file.exists():
            try:
                if read_json(spec_file) == self._spec():
                    return  # resume
            except ValueError:
                pass
        if self.partial.exists():
            shutil.rmtree(self.partial)
        needed = self.nbytes()
        free = free_bytes(_existing_ancestor(self.partial.parent))
        if free < needed:
            raise self._no_space(needed, free)
        (self.partial / "done").mkdir(parents=True)
        for layer, file in self.files.items():
            np.lib.format.open_memmap(
                self.partial / file, mode="w+", dtype=self.dtype, shape=(self.n, self.dims[layer])
            ).flush()
        for name, present in (("labels", self.has_labels), ("coarse_labels", self.has_coarse_labels)):
            if present:
                np.lib.format.open_memmap(
                    self.partial / f"{name}.npy", mode="w+", dtype=np.int64, shape=(self.n,)
                ).flush()
        atomic_write_json(spec_file, self._spec())

    def nbytes(self) -> int:
        """Bytes the bank's array files take on disk (``.npy`` headers included)."""
        header = 128  # numpy's header for these shapes (padded to 64 bytes; 128 leaves room)
        total = sum(header + self.n * dim * self.dtype.itemsize for dim in self.dims.values())
        return total + (header + self.n * 8) * (int(self.has_labels) + int(self.has_coarse_labels))

    def reserve_space(self) -> None:
        """Reserve the disk blocks of every array file of the partial bank.

        The memory-mapped files are sparse: without this, a disk that fills up during the
        extraction kills the process with SIGBUS and no message.

        Raises:
            FeatureBankError: naming the bytes needed and free.
        """
        for file in sorted(self.partial.glob("*.npy")):
            try:
                preallocate(file)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                keep = bool(self.completed_chunks())
                if not keep:  # give back what the partial reservation took
                    shutil.rmtree(self.partial, ignore_errors=True)
                raise self._no_space(self.nbytes(), free_bytes(_existing_ancestor(self.partial)),
                                     keep) from None

    def _no_space(self, needed: int, free: int, kept: bool = False) -> FeatureBankError:
        where = (f" Its finished chunks are kept in {self.partial}: run the same extraction again "
                 "to resume." if kept else " Nothing was written.")
        return FeatureBankError(
            f"Not enough disk space for the feature bank at {self.path}: it needs {_bytes(needed)} "
            f"and {_bytes(free)} are free on that file system. Free some space, or write the bank elsewhere (--out, out=...).{where}")

    def _open_arrays(self) -> dict[str, np.memmap]:
        arrays = {layer: np.load(self.partial / file, mmap_mode="r+") for layer, file in self.files.items()}
        for name, present in (("labels", self.has_labels), ("coarse_labels", self.has_coarse_labels)):
            if present:
                arrays[f"__{name}"] = np.load(self.partial / f"{name}.npy", mmap_mode="r+")
        return arrays

    # -- chunks ------------------------------------------------------------------------------
    def chunk_done(self, chunk_id: int) -> bool:
        return (self.partial / "done" / f"{chunk_id:08d}").exists()

    def completed_chunks(self) -> set[int]:
        return {int(p.name) for p in (self.partial / "done").iterdir() if p.name.isdigit()}

    def mark_done(self, chunk_id: int) -> None:
        """Flush everything written so far, then record ``chunk_id`` as complete."""
        for array in self._arrays.values():
            array.flush()
        (self.partial / "done" / f"{chunk_id:08d}").touch()

    def write_rows(
        self,
        start: int,
        features: Mapping[str, np.ndarray],
        labels: np.ndarray | None = None,
        coarse_labels: np.ndarray | None = None,
    ) -> None:
        """Write rows ``start : start + len`` of each layer (and the labels)."""
        for layer, values in features.items():
            stop = start + len(values)
            self._arrays[layer][start:stop] = values
        if labels is not None:
            self._arrays["__labels"][start : start + len(labels)] = labels
        if coarse_labels is not None:
            self._arrays["__coarse_labels"][start : start + len(coarse_labels)] = coarse_labels

    # -- finishing ---------------------------------------------------------------------------
    def finalize(self, meta: Mapping) -> FeatureBank:
        """Write ``meta.json`` and move the finished bank into place."""
        for array in self._arrays.values():
            array.flush()
        self._arrays.clear()
        full_meta = {
            "format": BANK_FORMAT,
            # version 1 readers take float32 banks; only float16 ones need version 2
            "format_version": 2 if self.dtype == np.float16 else 1,
            "library_version": _library_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n": self.n,
            "fingerprint": self.fingerprint,
            "layer_order": list(self.dims),
        }
        full_meta.update(meta)
        layer_info = dict(meta.get("layers", {}))
        full_meta["layers"] = {
            layer: {**layer_info.get(layer, {}), "dim": dim, "file": self.files[layer]}
            for layer, dim in self.dims.items()
        }
        full_meta["dtype"] = self.dtype.name  # what the files hold, whatever meta says
        full_meta["labels"] = self.has_labels
        full_meta["coarse_labels"] = self.has_coarse_labels
        files = list(self.files.values())
        files += [f"{name}.npy" for name, present in (("labels", self.has_labels),
                                                       ("coarse_labels", self.has_coarse_labels)) if present]
        full_meta["sha256"] = {file: sha256_file(self.partial / file) for file in files}
        shutil.rmtree(self.partial / "done", ignore_errors=True)
        (self.partial / "writer.json").unlink(missing_ok=True)
        atomic_write_json(self.partial / "meta.json", full_meta)
        replace_directory(self.partial, self.path)
        return FeatureBank.open(self.path)
