"""Finding runs and their per-epoch checkpoints in a folder.

Two kinds of run are recognised anywhere below the folder:

- **clusterprobe runs**: a directory with ``checkpoints/epoch_XXXX.pt`` (and normally
  ``config.yaml``), as written by ``clusterprobe train``;
- **solo-learn runs**: a directory holding ``*-ep=N.ckpt`` files and the ``args.json`` solo-learn
  writes beside them.

Epochs are parsed from the file names and sorted numerically, never by directory order. They
count epochs of training done: solo-learn's ``ep=N`` (Lightning's 0-based index of the epoch just
finished) is epoch N + 1 (:func:`clusterprobe.checkpoints.solo_learn_epoch`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ClusterprobeError
from ..runs import CHECKPOINT_DIR, CONFIG_NAME, RunLayout



@dataclass
class Run:
    """One training run: a name, its method and data set (when known) and its checkpoints.

    ``checkpoints`` maps epoch -> checkpoint path, in increasing epoch order.
    """

    name: str
    path: Path
    kind: str  # "clusterprobe" or "solo-learn"
    method: str | None = None
    dataset: str | None = None
    checkpoints: dict[int, Path] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # a clusterprobe run's config.yaml

    @property
    def epochs(self) -> list[int]:
        return sorted(self.checkpoints)

    @property
    def last_epoch(self) -> int | None:
        return max(self.checkpoints) if self.checkpoints else None


def _own_run(run_dir: Path, root: Path, warnings: list[str]) -> Run:
    layout = RunLayout(run_dir)
    try:
        config = layout.read_config()
    except ClusterprobeError as error:
        warnings.append(f"run {_run_name(run_dir, root)}: {error}; its method and data set are unknown")
        config = {}
    dataset = config.get("dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("name")
    return Run(
        name=_run_name(run_dir, root),
        path=run_dir,
        kind="clusterprobe",
        method=config.get("method"),
        dataset=dataset,
        checkpoints=layout.checkpoints(),
        config=config,
    )


def _solo_run(folder: Path, root: Path) -> Run:
    from ..checkpoints import read_solo_learn_args, solo_learn_epoch

    args = read_solo_learn_args(folder / "args.json") if (folder / "args.json").exists() else {}
    checkpoints = {epoch: p for p in folder.iterdir() if (epoch := solo_learn_epoch(p.name)) is not None}
    return Run(
        name=_run_name(folder, root),
        path=folder,
        kind="solo-learn",
        method=args.get("method"),
        dataset=args.get("dataset"),
        checkpoints=dict(sorted(checkpoints.items())),
    )


def _run_name(path: Path, root: Path) -> str:
    if path == root:
        return path.name
    return str(path.relative_to(root)).replace("/", "-")


def discover_runs(runs_dir: str | Path) -> tuple[list[Run], list[str]]:
    """Find every run below ``runs_dir``.

    Returns the runs with at least one checkpoint (sorted by name) and a list of warnings about
    directories that look like runs but hold no checkpoint.

    Raises:
        ClusterprobeError: the folder does not exist or holds no run at all.
    """
    root = Path(runs_dir)
    if root.is_file():
        raise ClusterprobeError(f"{root} is a file; the report takes a folder of runs (e.g. runs/, "
                                "holding run directories with checkpoints/epoch_XXXX.pt).")
    if not root.is_dir():
        raise ClusterprobeError(f"No runs folder at {root}: the directory does not exist.")
    runs: list[Run] = []
    warnings: list[str] = []
    candidates = {p.parent for p in root.rglob(CHECKPOINT_DIR) if p.is_dir()}
    candidates |= {p for p in [root] if (p / CHECKPOINT_DIR).is_dir()}
    # a run directory that lost (or never got) its checkpoints/ still has its config.yaml: say so
    for config in sorted(root.rglob(CONFIG_NAME)):
        folder = config.parent
        if folder not in candidates and "features" not in folder.relative_to(root).parts \
                and not (folder / "args.json").exists():
            warnings.append(f"run {_run_name(folder, root)} ({folder}) has a {CONFIG_NAME} but no "
                            f"{CHECKPOINT_DIR}/ folder: skipped")
    for run_dir in sorted(candidates):
        if "features" in run_dir.relative_to(root).parts:
            continue
        run = _own_run(run_dir, root, warnings)
        (runs if run.checkpoints else warnings).append(
            run if run.checkpoints else f"run {run.name} ({run_dir}) has no checkpoints yet: skipped"
        )
    solo_folders = {p.parent for p in root.rglob("*-ep=*.ckpt")} | {
        p.parent for p in root.rglob("args.json") if not (p.parent / CHECKPOINT_DIR).exists()
    }
    for folder in sorted(solo_folders):
        run = _solo_run(folder, root)
        (runs if run.checkpoints else warnings).append(
            run if run.checkpoints else f"solo-learn run {run.name} ({folder}) has no *-ep=N.ckpt files: skipped"
        )
    if not runs:
        detail = f" ({'; '.join(warnings)})" if warnings else ""
        raise ClusterprobeError(
            f"No runs found in {root}{detail}. A run is a directory with checkpoints/epoch_XXXX.pt "
            "(from `clusterprobe train`) or a solo-learn folder with *-ep=N.ckpt files and args.json."
        )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ClusterprobeError(f"Two runs below {root} have the same name: {sorted(names)}.")
    return sorted(runs, key=lambda r: r.name), warnings


def describe_runs(runs: list[Run]) -> list[dict]:
    """Plain rows (name, kind, method, data set, epochs) for tables and the HTML page."""
    return [
        {"run": r.name, "kind": r.kind, "method": r.method, "dataset": r.dataset,
         "epochs": json.dumps(r.epochs) if len(r.epochs) <= 12 else f"{r.epochs[0]}..{r.epochs[-1]} ({len(r.epochs)})"}
        for r in runs
    ]
