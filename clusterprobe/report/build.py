"""``build_report``: runs in, figures + tidy CSV + index.html out, computing only what is missing.

For every run and epoch: load the checkpoint -> extract train and test banks (reused when they
already exist) -> metrics (cached incrementally by :func:`clusterprobe.metrics.evaluate`). Then the
figures: layer comparison at the last epoch (the paper's Fig. 3), training dynamics per layer
(Fig. 4), UMAP per layer at the last epoch, and fine vs coarse labels when the data set has
super-classes (CIFAR-100). A run that cannot be analysed (data set missing, mixed architectures,
no readable checkpoint) is skipped with a warning; a corrupt checkpoint skips only its epoch.

Caches: a clusterprobe run keeps its banks in ``<run>/features/<split>/epoch_XXXX`` and its
metrics in ``<run>/metrics.csv``; solo-learn runs (whose folders are not ours to write into) keep
theirs in ``<out>/cache/<run>/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..checkpoints import BRANCHES, LoadedCheckpoint, canonical_branch, load_checkpoint
from ..data import DATASETS, LabeledImageDataset, load_dataset
from ..bank import FeatureBank, bank_dtype
from ..devices import check_device_name, resolve_device
from ..errors import (CheckpointError, ClusterprobeError, DatasetError, DeviceError, FeatureBankError, LayerError,
                      MetricsError, OutputPathError, ReportError, UnsafeCheckpointError, closest_name)
from ..extract import UncheckedDataWarning, extract_features
from ..io import atomic_write, exclusive_lock
from ..progress import format_duration, is_terminal
from ..runs import RunLayout
from .discovery import Run, describe_runs, discover_runs
from .figures import (describe_settings, fine_vs_coarse_figure, layer_comparison_figure, per_class_figure, save_figure,
                      training_dynamics_figure, umap_figure)
from . import tables as page_tables
from .html import FigureEntry, render_report_html

#: (metric, panel title) of the layer-comparison figure (the paper's Fig. 3).
COMPARISON_PANELS = (
    ("silhouette_true", "Silhouette, mean (true labels)"),
    ("silhouette_true_spread", "Silhouette, spread (std)"),
    ("ari", "ARI (k-means)"),
    ("nmi", "NMI (k-means)"),
    ("linear_top1", "Linear probe top-1"),
    ("knn_top1", "kNN top-1"),
)
#: panels of the training-dynamics figure (the paper's Fig. 4).
DYNAMICS_PANELS = COMPARISON_PANELS
COARSE_PANELS = (("nmi", "NMI"), ("ari", "ARI"), ("silhouette_true", "Silhouette (mean)"))


@dataclass
class ReportSettings:
    """What the report computes. Defaults: the run's own data set, H/P0/P1/Z, every epoch.

    ``dataset``/``data_root`` override each run's data set (e.g. to analyse on another one);
    ``cluster_splits`` chooses the splits clustering metrics are computed on (probes always
    train on ``train`` and score on ``test``); ``metric_overrides`` are
    :class:`~clusterprobe.metrics.MetricSettings` fields; ``branch`` (online, momentum, teacher,
    student) replaces each checkpoint's default branch. Analyses on another data set or of a named
    branch are cached apart, in ``<run>/analyses/<data set>-<branch>/``. ``dtype`` ('float32' or
    'float16': half the disk, see :func:`~clusterprobe.extract_features`) is how the banks the
    report extracts are stored; a bank already there is reused in the dtype it has.

    Every field is checked when the settings are built (and again by :func:`build_report`, before
    any work): an unknown device, branch, data set or dtype, a size below its minimum, a split
    other than train and test in ``cluster_splits``, a figure format matplotlib cannot write or a
    bad ``metric_overrides`` field raises a :class:`~clusterprobe.errors.ClusterprobeError` that
    names the option and what it accepts.
    """

    layers: tuple[str, ...] = ("H", "P0", "P1", "Z")
    dataset: str | None = None
    data_root: str | None = None
    epochs: tuple[int, ...] | None = None
    cluster_splits: tuple[str, ...] = ("test",)
    batch_size: int = 256
    device: str = "auto"
    umap: bool = True
    umap_max_points: int = 2000  # per embedding, stratified by class (UMAP's cost grows with it)
    formats: tuple[str, ...] = ("png", "pdf")
    metric_overrides: dict = field(default_factory=dict)
    branch: str | None = None
    same_axes: bool = True
    per_class: bool = True
    pixels: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        _check_settings(self)


#: The report's default layers: whichever of them each model has (an encoder alone has only H).
DEFAULT_LAYERS = ReportSettings.__dataclass_fields__["layers"].default
#: The splits the report extracts banks of, hence the only ones clustering metrics can run on.
REPORT_SPLITS = ("train", "test")
#: UMAP fails on a handful of points (its spectral layout needs more points than dimensions).
MIN_UMAP_POINTS = 10


def _check_settings(settings: ReportSettings) -> None:
    """Validate (and normalise in place) every field of ``settings`` that needs no run or disk:
    one error naming the option and what it accepts, before any work, rather than the same
    reason once per run and epoch after loading each checkpoint (or, for the figures' options,
    after all the extraction). Whether the layers exist and a GPU is present is checked by
    :func:`build_report`, which has the runs."""
    from ..metrics.settings import settings_with

    layers = _names(settings.layers)
    if not layers or not all(isinstance(layer, str) for layer in layers):
        raise LayerError(f"layers (--layers) must name at least one layer, e.g. H,P0,P1,Z or H,Z; got "
                         f"{settings.layers!r}.")
    settings.layers = tuple(dict.fromkeys(layer.strip() for layer in layers if layer.strip()))
    if not settings.layers:
        raise LayerError(f"layers (--layers) must name at least one layer, e.g. H,P0,P1,Z; got {layers!r}.")
    try:
        settings.device = check_device_name(settings.device)
    except DeviceError:
        raise DeviceError(f"Unknown device {settings.device!r} (--device, device=...): use auto (the GPU "
                          "when there is one, else the CPU), cpu, cuda or cuda:N (N = 0, 1, ...)."
                          f"{closest_name(str(settings.device), ('auto', 'cpu', 'cuda'))}") from None
    if settings.branch is not None and settings.branch not in BRANCHES:
        raise CheckpointError(f"Unknown branch {settings.branch!r} (--branch, branch=...): use "
                              f"{', '.join(BRANCHES[:-1])} or {BRANCHES[-1]}, or leave it out for each "
                              f"checkpoint's default branch.{closest_name(str(settings.branch), BRANCHES)}")
    for name, option, low in (("batch_size", "--batch-size", 1), ("umap_max_points", None, MIN_UMAP_POINTS)):
        value = getattr(settings, name)
        if not _is_int(value) or value < low:
            where = f" ({option}, {name}=...)" if option else ""
            raise ReportError(f"{name}{where} must be a whole number of at least {low}; got {value!r}.")
    settings.dtype = bank_dtype(settings.dtype).name  # FeatureBankError naming --dtype and the two dtypes
    if settings.dataset is not None and settings.dataset not in DATASETS:
        raise DatasetError(f"Unknown data set {settings.dataset!r} (--dataset, dataset=...): use one of "
                           f"{', '.join(DATASETS)}, or leave it out for each run's own data set."
                           f"{closest_name(str(settings.dataset), DATASETS)}")
    if settings.epochs is not None:
        epochs = _names(settings.epochs)
        if not epochs or not all(_is_int(e) and e >= 0 for e in epochs):
            raise ReportError(f"epochs (--epochs, epochs=...) must be epoch numbers (whole numbers from 0), "
                              f"e.g. 0,10,100, or None for every epoch; got {settings.epochs!r}.")
        settings.epochs = tuple(int(e) for e in epochs)
    if settings.cluster_splits is not None:  # None: every split the report extracts
        settings.cluster_splits = tuple(_names(settings.cluster_splits))
    settings.formats = tuple(_names(settings.formats) or ())
    from matplotlib.backend_bases import FigureCanvasBase

    known_formats = FigureCanvasBase.get_supported_filetypes()
    bad = [f for f in settings.formats if f not in known_formats]
    if not settings.formats or bad:
        raise ReportError(f"formats (formats=...) must name figure formats matplotlib writes, e.g. "
                          f"('png', 'pdf'): {', '.join(sorted(known_formats))}; got {settings.formats!r}."
                          + (closest_name(str(bad[0]), known_formats) if bad else ""))
    for name in ("umap", "same_axes", "per_class", "pixels"):
        if not isinstance(getattr(settings, name), (bool, np.bool_)):
            raise ReportError(f"{name} must be True or False; got {getattr(settings, name)!r}.")
    if not isinstance(settings.metric_overrides, dict):
        raise ReportError(f"metric_overrides must be a dict of MetricSettings fields, e.g. {{'seeds': 3}}; "
                          f"got {settings.metric_overrides!r}.")
    try:
        metrics = settings_with(None, _metric_overrides(settings))
    except MetricsError as error:  # an unknown field or value
        raise MetricsError(f"metric_overrides (--seeds, ...): {error}") from None
    check_device_name(metrics.device)
    splits = REPORT_SPLITS if metrics.cluster_splits is None else metrics.cluster_splits
    outside = [split for split in splits if split not in REPORT_SPLITS]
    if not splits or outside:
        raise ReportError(
            f"cluster_splits (--cluster-splits) must be train, test or both: the report extracts banks of "
            f"those two splits only, so clustering metrics on {', '.join(map(repr, outside)) or 'no split'} "
            f"would be missing from the whole report; got {splits!r}."
            + (closest_name(str(outside[0]), REPORT_SPLITS) if outside else ""))


def _names(value) -> list | None:
    """A comma-separated string or a sequence as a list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    try:
        return list(value)
    except TypeError:
        return [value]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _metric_overrides(settings: ReportSettings) -> dict:
    """The :class:`~clusterprobe.metrics.MetricSettings` fields the report's metrics run with."""
    return {"cluster_splits": settings.cluster_splits, "device": settings.device, **settings.metric_overrides}


@dataclass
class ReportResult:
    index_html: Path
    metrics_csv: Path
    table: pd.DataFrame
    figures: dict[str, Path]
    warnings: list[str]


class _Progress:
    """The report's one progress display, on stderr: a rich bar on a terminal, plain lines in a log
    (``nohup ... > log 2>&1``), or nothing.

    ``mode``: True or "auto" (the bar when stderr is a terminal, else lines), "bar", "lines", or
    False/None (silent). Lines: one per finished step, at most one every ``every`` seconds (the
    last step always), e.g. ``[report] resa epoch 10: banks ready (2/12 steps, 1m20s elapsed,
    about 9m left)``; the estimate assumes the remaining steps take as long as the finished ones
    on average. A step that runs long (metrics of many epochs) gets a "still working" line after
    ``heartbeat`` seconds of silence.
    """

    def __init__(self, total: int, mode: bool | str | None = True, every: float = 5.0,
                 heartbeat: float = 60.0, stream=None):
        if mode is True or mode == "auto":
            mode = "bar" if is_terminal(stream or sys.stderr) else "lines"
        if mode not in ("bar", "lines", False, None):
            raise ValueError(f"progress must be True, False, 'auto', 'bar' or 'lines', got {mode!r}")
        self.mode = mode or None
        self.enabled = self.mode is not None
        self.total, self.done = total, 0
        self.every, self.heartbeat = every, heartbeat
        self._stream = stream
        self._started = self._last_line = time.monotonic()
        self._printed_once = False
        self._text = ""
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            console = Console(file=stream) if stream is not None else Console(stderr=True)
            self._progress = Progress(TextColumn("[bold]report[/]"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                                      console=console)
            self._progress.start()
            self._task = self._progress.add_task("", total=total)

    def describe(self, text: str) -> None:
        """What is being worked on now (the bar shows it; lines only after a long silence)."""
        self._text = text
        if self.mode == "bar":
            self._progress.update(self._task, description=text)
        elif self.mode == "lines" and time.monotonic() - self._last_line >= self.heartbeat:
            self._line(f"still working: {text}")

    def add_total(self, amount: int) -> None:
        """Steps found (or, negative, dropped) after the start."""
        self.total = max(self.done, self.total + amount)
        if self.mode == "bar":
            self._progress.update(self._task, total=self.total)

    def advance(self, amount: int = 1, done: str | None = None) -> None:
        """``amount`` steps finished; ``done`` says which (default: the current description)."""
        self.done += amount
        if self.mode == "bar":
            self._progress.advance(self._task, amount)
        elif self.mode == "lines":
            now = time.monotonic()
            if not self._printed_once or now - self._last_line >= self.every or self.done >= self.total:
                self._line(done or self._text or "step finished")

    def _line(self, what: str) -> None:
        elapsed = time.monotonic() - self._started
        counts = f"{self.done}/{self.total} steps, {format_duration(elapsed)} elapsed"
        if self.done >= self.total:
            rest = "nothing left"
        elif self.done:
            rest = f"about {format_duration(elapsed / self.done * (self.total - self.done))} left"
        else:
            rest = "time left unknown yet"
        stream = self._stream or sys.stderr
        print(f"[report] {what} ({counts}, {rest})", file=stream, flush=True)
        self._last_line, self._printed_once = time.monotonic(), True

    def close(self) -> None:
        if self.mode == "bar":
            self._progress.stop()
        self.mode, self.enabled = None, False


def _cache_root(run: Run, out: Path) -> Path:
    return run.path if run.kind == "clusterprobe" else out / "cache" / run.name


def _layout(run: Run, out: Path, other_dataset: str | None, branch: str | None) -> RunLayout:
    """Where the report keeps a run's banks and metrics. Analyses on another data set or of a
    named branch get a folder of their own (``<root>/analyses/<data set>-<branch>/``): the metrics
    read every bank under a layout, so sharing one would mix them under one label."""
    return RunLayout(_cache_root(run, out)).variant(other_dataset, branch and canonical_branch(branch))


def _datasets_for(run: Run, settings: ReportSettings, cache: dict) -> tuple[str, dict[str, LabeledImageDataset]]:
    """The run's (train, test) data sets; raises ClusterprobeError when they are not available."""
    config = run.config
    name = settings.dataset or run.dataset
    if not name:
        raise ClusterprobeError("its data set is unknown (no config.yaml/args.json naming it); pass --dataset")
    root = settings.data_root or config.get("data_root")
    # the run's own images at the size it was trained on (imagefolder runs record it)
    image_size = config.get("image_size") if name == run.dataset else None
    key = (name, str(root), image_size)
    if key not in cache:
        cache[key] = {split: load_dataset(name, root=root, split=split, image_size=image_size)
                      for split in ("train", "test")}
    return name, cache[key]


def _architecture(loaded: LoadedCheckpoint) -> str:
    return json.dumps(loaded.model.config.to_dict(), sort_keys=True)


def _analyse_run(run: Run, settings: ReportSettings, out: Path, data_cache: dict, progress: _Progress,
                 warnings: list[str]) -> tuple[pd.DataFrame, Path] | None:
    """Extract and evaluate every epoch of one run: (metrics, last epoch's test bank), or None
    when the run is skipped (the reason goes to ``warnings``)."""
    from ..metrics import evaluate

    epochs = _epochs_to_report(run, settings)
    if not epochs:
        warnings.append(f"run {run.name} skipped: it has none of the requested epochs "
                        f"({_epoch_list(settings.epochs or ())}); its epochs are {_epoch_list(run.epochs)}")
        return None
    try:
        dataset_name, data = _datasets_for(run, settings, data_cache)
    except ClusterprobeError as error:
        warnings.append(f"run {run.name} skipped: {error}")
        progress.advance(len(epochs), done=f"{run.name}: skipped (see the warnings)")
        return None
    other_dataset = None if dataset_name == (run.dataset or dataset_name) else dataset_name
    layout = _layout(run, out, other_dataset, settings.branch)
    reference: tuple[int, str] | None = None
    done_epochs, failed_epochs, test_bank, unchecked = [], [], None, []
    for position, epoch in enumerate(epochs):
        progress.describe(f"{run.name} epoch {epoch}")
        try:
            loaded = load_checkpoint(run.checkpoints[epoch], branch=settings.branch)
            architecture = _architecture(loaded)
            reference = reference or (epoch, architecture)
            if architecture != reference[1]:
                warnings.append(
                    f"run {run.name} skipped: its checkpoints have mixed architectures (epoch {epoch} "
                    f"differs from epoch {reference[0]}); keep one architecture per run directory."
                )
                progress.advance(len(epochs) - position, done=f"{run.name}: skipped (see the warnings)")
                return None
            if reference[0] == epoch:  # the run's first readable checkpoint: its layers, said once
                wanted = _layers_of(loaded.model, settings.layers)
                lacking = [layer for layer in settings.layers if layer not in wanted]
                offers = ", ".join(loaded.model.layer_names())
                if not wanted:  # (never H: only a choice some other run has, see _check_layers_exist)
                    warnings.append(f"run {run.name} skipped: it has none of the requested layers "
                                    f"({', '.join(settings.layers)}); its model offers {offers}")
                    progress.advance(len(epochs) - position, done=f"{run.name}: skipped (see the warnings)")
                    return None
                if lacking and settings.layers != DEFAULT_LAYERS:
                    warnings.append(f"run {run.name} has no layer {', '.join(lacking)} (its model offers "
                                    f"{offers}): reported without {'it' if len(lacking) == 1 else 'them'}")
            with _warnings.catch_warnings(record=True) as said:  # one summary line per run, below
                _warnings.simplefilter("always", UncheckedDataWarning)
                banks = {split: _report_bank(
                    loaded, dataset, layout.bank_path(split, epoch), wanted,
                    batch_size=settings.batch_size, device=settings.device, progress=False, dtype=settings.dtype,
                    extra_meta={"run": run.name, "method": run.method, "epoch": epoch},
                ) for split, dataset in data.items()}
            for warning in said:
                if issubclass(warning.category, UncheckedDataWarning):
                    unchecked.append(epoch)
                else:
                    _warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        except ClusterprobeError as error:  # an unreadable checkpoint, a diverged one's NaN features
            warnings.append(f"run {run.name}, epoch {epoch} skipped: {_for_the_report(error, run.checkpoints[epoch], layout, data, epoch)}")
            failed_epochs.append(epoch)
            progress.advance(done=f"{run.name} epoch {epoch}: skipped (see the warnings)")
        else:
            done_epochs.append(epoch)
            test_bank = banks["test"].path
            progress.advance(done=f"{run.name} epoch {epoch}: banks ready")
    if unchecked:
        warnings.append(f"run {run.name}: the banks of epochs {_epoch_list(sorted(set(unchecked)))} were made "
                        f"before banks recorded their data files, so a change of the images since cannot be "
                        f"checked; delete {layout.features_dir} to extract them again, checked")
    if not done_epochs:
        if settings.epochs is None:
            warnings.append(f"run {run.name} skipped: none of its checkpoints could be analysed "
                            f"(epochs {_epoch_list(failed_epochs)} failed, reasons above)")
        else:
            warnings.append(f"run {run.name} skipped: the requested epochs "
                            f"{_epoch_list(settings.epochs)} could not be analysed (epochs "
                            f"{_epoch_list(failed_epochs)} of this run failed, reasons above; it has "
                            f"epochs {_epoch_list(run.epochs)})")
        return None
    overrides = _metric_overrides(settings)
    progress.describe(f"{run.name}: metrics")
    # only the requested layers: a reused bank may hold more
    table = evaluate(layout.path, epochs=done_epochs, splits=None, layers=wanted,
                     progress=lambda message: progress.describe(f"{run.name} metrics: {message}"),
                     **overrides).copy()
    progress.advance(done=f"{run.name}: metrics ready ({len(done_epochs)} epochs)")
    table["run"] = run.name
    table["method"] = run.method or table["method"]
    table["branch"] = loaded.branch
    return table, test_bank


def _epoch_list(epochs) -> str:
    return ", ".join(str(e) for e in epochs) or "none"


def _for_the_report(error: ClusterprobeError, checkpoint: Path, layout: RunLayout, split_of: dict,
                    epoch: int) -> str:
    """``error`` with the fix the report offers: the library's messages name ``--trust`` and
    ``--overwrite`` of ``clusterprobe extract``, which the report does not have."""
    if isinstance(error, UnsafeCheckpointError):
        return (f"{checkpoint} stores Python objects beyond tensors, and unpickling them can run "
                "arbitrary code; the report reads checkpoints only in the safe weights-only mode, so "
                "it skips this one. If you trust the file, analyse it with `clusterprobe extract "
                f"{checkpoint} --trust` and `clusterprobe metrics` instead.")
    if isinstance(error, FeatureBankError):
        banks = " and ".join(str(layout.bank_path(split, epoch)) for split in split_of)
        # extract's fix ("Choose another --out, or pass --overwrite") names options of `extract`
        text = re.sub(r" Choose another --out[^.]*\.", "", str(error))
        return (f"{text} (The report keeps its banks in {banks}: delete the damaged or different "
                "bank folder and run the report again to rebuild it.)")
    return str(error)


def _report_bank(loaded: LoadedCheckpoint, dataset, path: Path, layers: list[str], **options) -> FeatureBank:
    """The bank of ``loaded`` on ``dataset`` at ``path`` holding at least ``layers``.

    A finished bank of the same checkpoint and data that holds all of them (and maybe more) is
    reused; one that lacks some is extracted again in place with the union of its layers and the
    requested ones, so that nothing it held is lost and switching ``--layers`` back and forth
    extracts each layer once. The report owns these cache folders, so it replaces such a bank
    without ``--overwrite``; a bank of another checkpoint or data set, or a damaged one, is never
    replaced (the error says so). An existing bank keeps its dtype; ``options['dtype']`` applies to
    the banks extracted here.
    """
    try:
        found = FeatureBank.open(path)
        existing, stored = found.layers, {"dtype": found.dtype.name}
    except FeatureBankError:  # none yet, or damaged: extract_features says which
        existing, stored = None, {}
    if existing == layers:  # reused in the dtype it has (float16 or float32: the same features)
        return extract_features(loaded, dataset, path, layers=layers, **{**options, **stored})
    if existing is None:
        return extract_features(loaded, dataset, path, layers=layers, **options)
    try:
        # The bank's own layers: the same request (reused) when only the layer choice differs;
        # else extract_features refuses the "different feature bank" without touching it.
        bank = extract_features(loaded, dataset, path, layers=existing, **{**options, **stored})
    except LayerError:
        raise FeatureBankError(
            f"{path} already holds a different feature bank: its layers {', '.join(existing)} are not "
            "all layers of this checkpoint's model.") from None
    missing = [layer for layer in layers if layer not in existing]
    if not missing:
        return bank
    return extract_features(loaded, dataset, path, layers=existing + missing, overwrite=True, **options)


def _layers_of(model, layers: Sequence[str]) -> list[str]:
    """Those of ``layers`` that ``model`` has (names such as H, P0, Z, or module paths), as
    extraction resolves them."""
    return [layer for layer in layers if _has_layer(model, layer)]


def _has_layer(model, layer: str) -> bool:
    try:
        model.resolve_layer(layer)
    except LayerError:
        return False
    return True


def _first_model(run: Run, settings: ReportSettings):
    """The model of the run's first readable checkpoint among the requested epochs (the one
    :func:`_analyse_run` takes as the run's architecture), or None when none can be read (the
    analysis says why)."""
    for epoch in _epochs_to_report(run, settings):
        try:
            with _warnings.catch_warnings():  # said when the run is analysed, not twice
                _warnings.simplefilter("ignore")
                return load_checkpoint(run.checkpoints[epoch], branch=settings.branch).model
        except ClusterprobeError:
            continue
    return None


def _check_layers_exist(runs: Sequence[Run], settings: ReportSettings) -> None:
    """Refuse, before any work, a requested layer that none of the runs has (a misspelt name was
    dropped silently: ``--layers Q,H`` reported H alone, ``--layers Q`` every cached layer).

    A layer that some runs lack is left out of those runs with a warning (:func:`_analyse_run`);
    the default layers are whichever of H, P0, P1, Z each model has. Reads the first checkpoint of
    each run until every requested layer is found.
    """
    if settings.layers == DEFAULT_LAYERS:
        return
    missing, offered, example = list(settings.layers), {}, None
    for run in runs:
        model = _first_model(run, settings)
        if model is None:
            continue
        offered.setdefault(", ".join(model.layer_names()), []).append(run.name)
        example = example or model
        missing = [layer for layer in missing if not _has_layer(model, layer)]
        if not missing:
            return
    if example is None:  # no run's checkpoint could be read: the analysis says why, run by run
        return
    names = {name for listed in offered for name in listed.split(", ")}
    modules = [name for name, _ in example.named_modules() if name and name.count(".") <= 2]
    which = ", ".join(repr(layer) for layer in missing)
    where = "; ".join(f"{listed} ({'run' if len(runs_) == 1 else 'runs'} {', '.join(runs_)})"
                      for listed, runs_ in offered.items())
    stages = example.stage_paths()
    raise LayerError(
        f"Unknown layer{'s' if len(missing) > 1 else ''} {which} (--layers, layers=...): no run has "
        f"{'it' if len(missing) == 1 else 'them'}. The runs offer {where}, or module paths such as "
        f"{stages[-1] if stages else 'backbone'} (`clusterprobe layers CKPT` lists a checkpoint's)."
        f"{_suggestions(missing, sorted(names) + modules)}"
    )


def _suggestions(names: Sequence[str], candidates: Sequence[str]) -> str:
    """" Did you mean 'x'?" for one name, " Did you mean 'x' (for 'y')?" for each of several."""
    hints = [closest_name(name, candidates) for name in names]
    if len(names) == 1:
        return hints[0]
    return "".join(f"{hint[:-1]} (for {name!r})?" for name, hint in zip(names, hints) if hint)


def _check_report_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file, or lies below one, before any work (it ended in a
    NotADirectoryError traceback after all the extraction and metrics)."""
    if out.exists() and not out.is_dir():
        raise OutputPathError(
            f"The report folder {out} (--out) is a file: the report writes a folder (index.html, "
            "metrics.csv, figures/, tables/, cache/). Choose another --out (out=...), a new or "
            "existing folder, or move that file away.")
    above = out.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise OutputPathError(
            f"Cannot write the report into {out} (--out): {above} is a file, not a folder. Choose "
            "another --out (out=...), or move that file away.")


def _umap_embeddings(test_banks: dict[str, Path], out: Path, settings: ReportSettings,
                     bar: _Progress | None = None):
    from .embedding import cached_bank_embedding

    banks = {run_name: FeatureBank.open(path) for run_name, path in test_banks.items()}
    jobs = [(run_name, layer) for run_name, bank in banks.items() for layer in _requested(bank, settings)]
    if bar is not None:
        bar.add_total(len(jobs))
    embeddings, class_names = {}, _shared_class_names(banks.values())
    for run_name, layer in jobs:
        bank = banks[run_name]
        if bar is not None:
            bar.describe(f"UMAP {run_name} {layer}")
        embeddings[(run_name, layer)] = cached_bank_embedding(bank, layer, out / "cache" / "umap",
                                                              max_points=settings.umap_max_points)
        if bar is not None:
            bar.advance(done=f"UMAP {run_name} {layer} ready")
    return embeddings, class_names


def _requested(bank, settings: ReportSettings) -> list[str]:
    """The bank's layers the report was asked for (a reused bank may hold more), in bank order."""
    return [layer for layer in bank.layers if layer in settings.layers]


def _per_class_views(test_banks: dict[str, Path], settings: ReportSettings):
    """{run: {layer: PerClassView}} of each run's last test bank, and the class names."""
    from .per_class import per_class_view

    views, banks = {}, []
    for run_name, path in test_banks.items():
        bank = FeatureBank.open(path)
        banks.append(bank)
        views[run_name] = {layer: per_class_view(bank.features(layer), bank.labels, device=settings.device)
                           for layer in _requested(bank, settings)}
    return views, _shared_class_names(banks)


def _shared_class_names(banks) -> list[str] | None:
    """The class names of every bank when they all have the same ones, else None: runs on other
    data sets (digits and CIFAR-10, both 10 classes) would show one data set's names for the
    other's classes."""
    names = [bank.class_names for bank in banks]
    return names[0] if names and all(n == names[0] for n in names) else None


def _coarse_table(runs: Sequence[Run], test_banks: dict[str, Path], out: Path,
                  settings: ReportSettings) -> pd.DataFrame | None:
    """Fine vs coarse clustering metrics at the last epoch, for banks with coarse labels."""
    from ..metrics import evaluate_arrays

    frames = []
    for run in runs:
        if run.name not in test_banks:
            continue
        bank = FeatureBank.open(test_banks[run.name])
        if bank.coarse_labels is None:
            continue
        epoch = bank.meta.get("epoch")
        features = {layer: bank[layer] for layer in _requested(bank, settings)}
        for granularity, labels in (("fine", bank.labels), ("coarse", bank.coarse_labels)):
            frame = evaluate_arrays(features, labels, metrics="nmi,ari,silhouette", run=run.name,
                                    method=run.method or "", epoch=epoch, device=settings.device,
                                    cache=out / "cache" / run.name / f"{granularity}_labels_metrics.csv")
            frame = frame.assign(labels=granularity, split="test")
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None


def build_report(
    runs_dir: str | Path,
    out: str | Path | None = None,
    settings: ReportSettings | None = None,
    *,
    progress: bool | str = True,
) -> ReportResult:
    """Analyse every run below ``runs_dir`` and write the report to ``out`` (default ``runs_dir/report``).

    Returns the paths written, the tidy metrics table and the warnings (skipped runs/epochs).

    ``progress`` (on stderr): True (default) = a bar on a terminal and plain lines with the
    elapsed time and an estimate of what is left otherwise (a log); "bar" or "lines" to choose;
    False = quiet (the warnings are still returned in the result).

    Raises:
        ReportError: no run was found, or none could be analysed (the reasons are listed).
        LockedError: another process is writing a report into ``out``.
        OutputPathError: ``out`` is a file, or lies below one.
        DeviceError: the settings' device names a GPU this machine does not have.
        LayerError: a requested layer that no run has (the error lists the runs' layers).
        ClusterprobeError: a bad setting (see :class:`ReportSettings`). All of these come before
        any work.
    """
    # checked again (and copied): a field may have been changed since the settings were built
    settings = dataclasses.replace(settings) if settings is not None else ReportSettings()
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir / "report"
    runs, warnings = _runs_to_report(runs_dir, out)  # first: RUNS_DIR a file is the mistake to name
    _check_report_folder(out)
    # before any work: a GPU that is not there failed every epoch of every run, one warning each
    for device in dict.fromkeys((settings.device, _metric_overrides(settings)["device"])):
        resolve_device(device)
    _check_layers_exist(runs, settings)
    # steps: each epoch's banks, each run's metrics, the figures and page (UMAP adds its own)
    total = sum(len(_epochs_to_report(run, settings)) + 1 for run in runs) + 1
    # one report at a time per output folder: two would interleave figures, tables and caches
    with exclusive_lock(out, wait=False, what=f"the report folder {out}"), \
            _closing(_Progress(total, progress)) as bar:
        table, test_banks = _analyse_runs(runs, settings, out, bar, warnings)
        analysed = [run for run in runs if run.name in set(table["run"])]
        bar.describe("figures")
        figures, entries = _draw_figures(table, analysed, test_banks, settings, out, bar, warnings)
        metrics_csv = out / "metrics.csv"
        atomic_write(metrics_csv, lambda f: table.to_csv(f, index=False), mode="w")
        index = _write_page(out, runs_dir, settings, table, analysed, entries, warnings, metrics_csv)
        bar.advance(done=f"figures and page written: {index}")
    return ReportResult(index, metrics_csv, table, figures, warnings)


@contextlib.contextmanager
def _closing(bar: _Progress):
    try:
        yield bar
    finally:
        bar.close()


def _runs_to_report(runs_dir: Path, out: Path) -> tuple[list[Run], list[str]]:
    """The runs below ``runs_dir`` (not the report's own folder) and discovery's warnings."""
    try:
        runs, warnings = discover_runs(runs_dir)
    except ClusterprobeError as error:
        raise ReportError(str(error)) from None
    return [r for r in runs if out not in r.path.parents and r.path != out], warnings


def _epochs_to_report(run: Run, settings: ReportSettings) -> list[int]:
    return [e for e in run.epochs if settings.epochs is None or e in settings.epochs]


def _analyse_runs(runs: Sequence[Run], settings: ReportSettings, out: Path, bar: _Progress,
                  warnings: list[str]) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Every run's metrics table (concatenated) and its last analysed epoch's test bank."""
    data_cache: dict = {}
    tables, test_banks = [], {}
    for run in runs:
        analysed = _analyse_run(run, settings, out, data_cache, bar, warnings)
        if analysed is not None:
            tables.append(analysed[0])
            test_banks[run.name] = analysed[1]
        elif _epochs_to_report(run, settings):
            bar.add_total(-1)  # a skipped run has no metrics step
    if not tables:
        raise ReportError("No run could be analysed: " + "; ".join(warnings))
    if settings.pixels:
        from .pixels import pixel_reference

        overrides = _metric_overrides(settings)
        sizes = [(name, size) for name, _root, size in data_cache]
        for (name, root, size), data in data_cache.items():
            # one label per reference: the same data set at another image size or from another root
            label = name if size is None else f"{name} at {size}px"
            label += f", {root}" if sizes.count((name, size)) > 1 else ""
            bar.describe(f"raw pixels of {label}")
            try:
                tables.append(pixel_reference(label, data, out / "cache" / f"pixels-{name}.csv", **overrides))
            except ClusterprobeError as error:
                warnings.append(f"raw-pixels reference of {label} skipped: {error}")
    return pd.concat(tables, ignore_index=True), test_banks


def _draw_figures(table: pd.DataFrame, runs: Sequence[Run], test_banks: dict[str, Path],
                  settings: ReportSettings, out: Path, bar: _Progress,
                  warnings: list[str]) -> tuple[dict[str, Path], list[FigureEntry]]:
    """Save every figure under ``out/figures``; returns {name: png path} and the page's entries."""
    figures: dict[str, Path] = {}
    entries: list[FigureEntry] = []

    def add(name: str, title: str, fig, caption: str) -> None:
        paths = save_figure(fig, out / "figures", name, formats=settings.formats)
        figures[name] = paths.get("png") or next(iter(paths.values()))
        downloads = dict(paths)  # the full-size PNG and the PDF
        if "png" in paths:
            entries.append(FigureEntry(title, paths["png"], caption, downloads))

    add("layer_comparison", "Layers compared at the last epoch",
        layer_comparison_figure(table, COMPARISON_PANELS),
        "Per run, the last epoch's metrics of each layer on the test split: H (circles), "
        "P0/P1, Z (crosses); hollow markers: the same layer at epoch 0 (the random initialisation), "
        "'raw pixels': the same metrics on the flattened input images (grey diamonds), "
        "dotted line: chance (1 / classes for accuracies, 0 for ARI/NMI). Silhouette: mean over "
        "samples against the ground-truth classes; its spread is the std of the per-sample values. "
        "ARI/NMI: k-means with k = number of classes (mean &plusmn; std over seeds). "
        f"Settings: {describe_settings(table)}.")
    trained = table[table["method"] != "pixels"]  # the raw-pixels reference has no epochs
    if trained["epoch"].nunique() > 1:
        add("training_dynamics", "Training dynamics per layer",
            training_dynamics_figure(trained, DYNAMICS_PANELS, same_axes=settings.same_axes),
            "Each metric against the epoch, one line per layer, one row per run"
            + (", with one y-range per metric for all runs" if settings.same_axes else ", each panel zoomed on its run")
            + f"; dotted line: chance. Settings: {describe_settings(table)}.")
    else:
        warnings.append("only one epoch per run: the training-dynamics figure needs several")
    if settings.umap:
        bar.describe("UMAP")
        embeddings, class_names = _umap_embeddings(test_banks, out, settings, bar)
        if embeddings:
            add("umap", "UMAP per layer", umap_figure(embeddings, class_names),
                f"UMAP (cosine, 15 neighbours, 200 epochs) of each layer's test features at the last epoch "
                f"(at most {settings.umap_max_points} points per panel), coloured by class.")
    if settings.per_class and test_banks:
        bar.describe("per-class views")
        views, class_names = _per_class_views(test_banks, settings)
        if views:
            add("per_class", "Per class at the last epoch", per_class_figure(views, class_names),
                "For each run and layer at its last epoch (test split): top, the k-means clusters "
                "(k = classes, seed 0) against the classes, clusters matched to classes as for the "
                "clustering accuracy, each row the share of a class's samples per cluster (a clean "
                "clustering is a bright diagonal); bottom, the mean cosine silhouette of each class's "
                "samples against the true classes.")
    coarse = _coarse_table(runs, test_banks, out, settings)
    if coarse is not None:
        add("fine_vs_coarse", "Fine vs coarse labels", fine_vs_coarse_figure(coarse, COARSE_PANELS),
            "Clustering metrics against the fine classes and against the super-classes.")
    return figures, entries


def _last_epoch_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per split: the last epoch's metrics of each (run, layer), one column per metric, with each
    run's epoch 0 (the random initialisation) as a reference row ``<run> @ epoch 0``."""
    latest = table.groupby("run")["epoch"].transform("max")
    initial = table[(table["epoch"] == 0) & (latest > 0)].copy()
    initial["run"] = initial["run"] + " @ epoch 0"
    last = pd.concat([table[table["epoch"] == latest], initial], ignore_index=True)
    return {
        f"Last-epoch metrics ({split} split)": last[last["split"] == split].pivot_table(
            index=["run", "layer"], columns="metric", values="value", sort=False)
        for split in sorted(last["split"].dropna().unique())
    }


def _write_page(out: Path, runs_dir: Path, settings: ReportSettings, table: pd.DataFrame,
                runs: Sequence[Run], entries: list[FigureEntry], warnings: list[str],
                metrics_csv: Path) -> Path:
    """The self-contained ``index.html``."""
    described = pd.DataFrame(describe_runs(list(runs))).set_index("run")
    if "branch" in table:
        described.insert(2, "branch", table.groupby("run")["branch"].first().reindex(described.index))
    html_tables = {"Runs": described,
                   **_last_epoch_tables(table)}
    summary, summary_warnings = page_tables.summary(table[table["method"] != "pixels"])
    paper = {}
    for split, files in page_tables.write_paper_tables(table, out / "tables").items():
        values, stds = page_tables.paper_table(table, split)
        links = " ".join(f"<a href='tables/{p.name}'>{kind.upper() if kind == 'md' else 'LaTeX'}</a>"
                         for kind, p in files.items())
        paper[f"Paper table: last epoch ({split} split)"] = (page_tables.to_frame(values, stds), (
            "Mean ± std over k-means seeds where the metric is seeded; best per column in bold "
            f"(higher is better). Download: {links}"))
    return render_report_html(
        out / "index.html", "clusterprobe report", entries, html_tables,
        settings={"runs folder": runs_dir.resolve(), **dataclasses.asdict(settings),
                  "metrics table": metrics_csv.name},
        warnings=[*summary_warnings, *warnings], summary=summary, html_tables=paper,
        intro="Clustering properties of each run's encoder output <b>H</b>, projector hidden layers "
              "<b>P0, P1</b> and embedding <b>Z</b>. The tidy table of every number is in "
              f"<code>{metrics_csv.name}</code> beside this page.",
    )
