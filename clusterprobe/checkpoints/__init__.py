"""Reading and writing checkpoints, safely and exactly.

:func:`load_checkpoint` reads clusterprobe's own checkpoints (:mod:`.own`) and the layouts of
other SSL code bases (:mod:`.formats`: solo-learn, the official ReSA, MoCo v3, SwAV, DINO,
VICReg and Barlow Twins code, lightly models, plain torchvision/timm ResNets and ViTs). Each
format's architecture is rebuilt as that method's code builds it (stem, head activation, what Z
is); where a file does not determine part of it, a documented default is used, recorded as an
assumption (warned, and kept in every bank extracted from it) with the option that settles it.

Files are read with ``torch.load(weights_only=True)``, which cannot run code (:mod:`.files`).
A file that needs full unpickling is refused with an explanation unless ``trust=True``.
``module.`` (DDP) and ``_orig_mod.`` (torch.compile) key prefixes are stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import CheckpointError
from ..io import sha256_file
from ..models.heads import ACTIVATIONS
from .assemble import Hints, Parts, assemble, infer_backbone_config, strip_prefixes
from .files import KNOWN_FORMATS, MissingObject, read_checkpoint_file
from .formats import Layout, read_solo_learn_args, recognise, solo_learn_epoch
from .loaded import BRANCHES, LoadedCheckpoint, canonical_branch, check_branch_name, pick_branch
from .own import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, load_own, save_checkpoint

__all__ = [
    "BRANCHES",
    "CHECKPOINT_FORMAT",
    "KNOWN_FORMATS",
    "LoadedCheckpoint",
    "canonical_branch",
    "infer_backbone_config",
    "load_checkpoint",
    "read_checkpoint_file",
    "read_solo_learn_args",
    "save_checkpoint",
    "solo_learn_epoch",
    "strip_prefixes",
]


def load_checkpoint(
    path: str | Path,
    *,
    branch: str | None = None,
    trust: bool = False,
    args_json: str | Path | None = None,
    stem_padding: int | None = None,
    head_activation: str | None = None,
    vit_heads: int | None = None,
    hash_file: bool = True,
) -> LoadedCheckpoint:
    """Load a checkpoint of any known format into an :class:`SSLModel` in eval mode.

    Args:
        path: checkpoint file.
        branch: ``online``, ``momentum``, ``teacher`` or ``student`` (teacher = momentum,
            student = online, in any format); None takes the branch the method's own
            evaluation uses (ReSA: momentum encoder, DINO: teacher, MoCo v3: base encoder,
            solo-learn and lightly: online; clusterprobe checkpoints record theirs).
        trust: allow full unpickling (can run code from the file); only for trusted files.
        args_json: solo-learn's args.json, if not beside the checkpoint.
        stem_padding: zero padding of a 3x3 CIFAR stem, for files that do not determine it
            (plain state dicts, lightly); default 2, recorded as an assumption.
        head_activation: ``relu`` or ``gelu`` for projector/predictor heads of files that do
            not determine it (plain state dicts); default ReLU, recorded as an assumption.
        vit_heads: attention heads of a ViT whose file does not name its architecture;
            default embed_dim / 64, recorded as an assumption.
        hash_file: record the file's SHA-256 (for provenance).

    Raises:
        CheckpointError: missing, truncated, unknown or mismatching file (the message says which
            keys), UnsafeCheckpointError when the file needs ``trust=True``.
    """
    path = Path(path)
    check_branch_name(branch)
    if head_activation is not None and head_activation not in ACTIVATIONS:
        raise CheckpointError(f"head_activation must be one of {', '.join(ACTIVATIONS)}, got {head_activation!r}.")
    if stem_padding is not None and (not isinstance(stem_padding, int) or stem_padding < 0):
        raise CheckpointError(f"stem_padding must be a non-negative integer, got {stem_padding!r}.")
    raw = read_checkpoint_file(path, trust=trust)
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(raw).__name__}, not a dict of weights. Known formats: {KNOWN_FORMATS}."
        )
    if raw.get("format") == CHECKPOINT_FORMAT:
        if args_json is not None:
            raise CheckpointError(
                f"args_json (--args-json) describes a solo-learn checkpoint, but {path} was written by "
                "clusterprobe's trainer, which records its own architecture. Leave it out."
            )
        loaded = load_own(raw, path, branch)
    else:
        loaded = _load_layout(recognise(raw, path, Path(args_json) if args_json else None), path, branch,
                              Hints().merged(stem_padding=stem_padding, activation=head_activation,
                                             vit_heads=vit_heads))
    loaded.model.eval()
    if hash_file:
        loaded.sha256 = sha256_file(path)
    return loaded


def _load_layout(layout: Layout, path: Path, branch: str | None, given: Hints) -> LoadedCheckpoint:
    name = pick_branch(branch, layout.branches, layout.default, path, f"a {layout.format} checkpoint")
    hints = layout.hints.merged(**{k: v for k, v in vars(given).items() if v is not None})
    what = f"{layout.format} model ({name} branch)"
    built = assemble(layout.branches[name], hints, path, what)
    return LoadedCheckpoint(
        model=built.model, path=path, format=layout.format, branch=name, epoch=layout.epoch,
        step=layout.step, method=layout.method, dataset=layout.dataset, branches=tuple(layout.branches),
        default_branch=layout.default,
        z=layout.z if built.model.projector is not None else "none (encoder only)",
        facts=layout.facts + built.facts, assumptions=built.assumptions,
        extra={"run": layout.run} if layout.run else {},
    )
