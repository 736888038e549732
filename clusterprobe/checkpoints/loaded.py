"""What loading a checkpoint gives: the model, its branch and where every fact came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import CheckpointError, closest_name
from ..models import SSLModel

#: Branch names. ``teacher``/``student`` are DINO's words for ``momentum``/``online``; either
#: word selects the same branch of any format, and the loaded branch carries the format's word.
BRANCHES = ("online", "momentum", "teacher", "student")
_ALIASES = {"teacher": "momentum", "student": "online"}


def canonical_branch(branch: str) -> str:
    """``online`` or ``momentum`` for any of :data:`BRANCHES`."""
    return _ALIASES.get(branch, branch)


def check_branch_name(branch: str | None) -> None:
    if branch is not None and branch not in BRANCHES:
        raise CheckpointError(
            f"Unknown branch {branch!r}; use one of {', '.join(BRANCHES)}.{closest_name(str(branch), BRANCHES)}"
        )


def pick_branch(requested: str | None, available: dict[str, Any], default: str, path: Path, what: str) -> str:
    """The key of ``available`` (a format's own branch names) that ``requested`` selects.

    ``requested`` None gives ``default``; aliases (teacher = momentum, student = online) match.
    A branch the file does not have is refused, naming the ones it has.
    """
    check_branch_name(requested)
    if requested is None:
        return default
    for name in available:
        if name == requested or canonical_branch(name) == canonical_branch(requested):
            return name
    raise CheckpointError(
        f"{path} ({what}) has no {requested} branch; it has {', '.join(available)} "
        f"(default: {default}). Pick one of those with branch= (--branch)."
    )


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint (in eval mode), with its provenance.

    Attributes:
        model: the :class:`~clusterprobe.models.SSLModel` holding the chosen branch's weights.
        format: which layout was recognised: ``clusterprobe``, ``solo-learn``, ``resa``,
            ``mocov3``, ``swav``, ``dino``, ``vicreg``, ``barlowtwins``, ``lightly`` or
            ``state-dict`` (plain torchvision/timm weights or a backbone + projector dict).
        branch: the branch loaded, in the format's own words (``online``/``momentum``;
            DINO: ``student``/``teacher``).
        branches: every branch the file holds; default_branch: the one loaded when none is asked for.
        z: what Z is for this format (e.g. "projector output after the affine-free BatchNorm").
        facts: what the format determined about the architecture (stem, head activation, ...).
        assumptions: what the file did not determine and a documented default filled in; each
            was also emitted as an :class:`~clusterprobe.errors.AssumptionWarning` and is recorded
            in every bank extracted from this checkpoint.
        epoch, step, method, dataset: what the file says, or None where it says nothing.
    """

    model: SSLModel
    path: Path
    format: str
    branch: str
    epoch: int | None = None
    step: int | None = None
    method: str | None = None
    dataset: str | None = None
    sha256: str | None = None
    branches: tuple[str, ...] = ()
    default_branch: str | None = None
    z: str | None = None
    facts: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return self.model.layer_names()

    def provenance(self) -> dict[str, Any]:
        """Plain description for a feature bank's meta.json."""
        return {
            "path": str(self.path.resolve()),
            "sha256": self.sha256,
            "format": self.format,
            "branch": self.branch,
            "epoch": self.epoch,
            "step": self.step,
            "method": self.method,
            "dataset": self.dataset,
            "model_config": self.model.config.to_dict(),
            **({"assumptions": list(self.assumptions)} if self.assumptions else {}),
            **({"run": self.extra["run"]} if "run" in self.extra else {}),
        }


def listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")
