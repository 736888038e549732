"""Projector and predictor MLPs as flat ``nn.Sequential`` stacks, described by plain data.

A head is a flat sequence of layers (``Linear``, ``BatchNorm1d``, activation), so its state dict
keys are ``projector.0.weight``, ``projector.1.running_mean``, ... exactly as in solo-learn and
most SSL code. The sequence is described by a list of plain dicts (JSON- and
``weights_only``-safe), which is what checkpoints store to rebuild the head, and which can also
be inferred from a state dict (:func:`describe_from_state_dict`).

Hidden blocks are ``Linear -> BatchNorm1d -> activation``. **P0, P1, ...** are tapped at the
output of each block's activation (post-activation, the default) or at the module just before it
(pre-activation, ``LayerSpec(..., pre_activation=True)``).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ArchitectureMismatchError, ClusterprobeError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def mlp_description(
    dims: Sequence[int],
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_batch_norm_affine: bool = False,
    bias: bool | None = None,
    activation: str = "relu",
) -> list[dict]:
    """Describe an MLP ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Each hidden block is ``Linear -> BatchNorm1d -> activation`` (no BN if ``batch_norm`` is
    false); the output layer is a ``Linear``, followed by a ``BatchNorm1d`` when
    ``last_batch_norm`` (ReSA uses an affine-free one). ``bias=None`` gives Linear layers a bias
    only where no BN follows (a bias before BN is redundant).

    >>> len(mlp_description([512, 2048, 2048, 512], last_batch_norm=True))  # ReSA projector
    10
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ClusterprobeError(f"An MLP needs at least an input and an output size >= 1, got {dims}.")
    if activation not in ACTIVATIONS:
        raise ClusterprobeError(f"Unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}.")
    layers: list[dict] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        followed_by_bn = last_batch_norm if last else batch_norm
        layers.append({"type": "linear", "in": d_in, "out": d_out,
                       "bias": (not followed_by_bn) if bias is None else bool(bias)})
        if followed_by_bn:
            layers.append({"type": "batchnorm", "dim": d_out,
                           "affine": last_batch_norm_affine if last else True})
        if not last:
            layers.append({"type": activation})
    return layers


def build_sequential(description: Iterable[Mapping]) -> nn.Sequential:
    """Build the ``nn.Sequential`` a description (see :func:`mlp_description`) stands for."""
    modules: list[nn.Module] = []
    for layer in description:
        kind = layer["type"]
        if kind == "linear":
            modules.append(nn.Linear(int(layer["in"]), int(layer["out"]), bias=bool(layer["bias"])))
        elif kind == "batchnorm":
            modules.append(nn.BatchNorm1d(int(layer["dim"]), affine=bool(layer.get("affine", True))))
        elif kind in ACTIVATIONS:
            modules.append(ACTIVATIONS[kind](inplace=True) if kind == "relu" else ACTIVATIONS[kind]())
        else:
            raise ClusterprobeError(f"Unknown head layer type {kind!r} in {dict(layer)}.")
    return nn.Sequential(*modules)


def describe_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str, activation: str = "relu"
) -> list[dict] | None:
    """Infer the description of a flat sequential head stored under ``prefix`` (e.g. ``projector.``).

    Linear layers are recognised by a 2-D ``weight``, BatchNorm by ``running_mean`` (affine when
    it has a ``weight``); an index with no tensors is a parameter-free activation. Returns None
    when no key starts with ``prefix``.
    """
    indices: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        index, _, name = key[len(prefix):].partition(".")
        if not index.isdigit() or "." in name:
            raise ClusterprobeError(
                f"Cannot infer the head under {prefix!r}: key {key!r} is not of the flat "
                f"'{prefix}<index>.<tensor>' form."
            )
        indices.setdefault(int(index), {})[name] = value
    if not indices:
        return None
    description: list[dict] = []
    for i in range(max(indices) + 1):
        tensors = indices.get(i)
        if not tensors:
            description.append({"type": activation})
        elif "running_mean" in tensors:
            description.append({"type": "batchnorm", "dim": int(tensors["running_mean"].shape[0]),
                                "affine": "weight" in tensors})
        elif "weight" in tensors and tensors["weight"].ndim == 2:
            out_dim, in_dim = tensors["weight"].shape
            description.append({"type": "linear", "in": int(in_dim), "out": int(out_dim),
                                "bias": "bias" in tensors})
        else:
            raise ClusterprobeError(
                f"Cannot infer layer {prefix}{i} from its tensors {sorted(tensors)}: it is neither a "
                "Linear nor a BatchNorm1d layer."
            )
    # A trailing activation has no tensors and no later index: heads end in Linear or BN.
    _check_chain(description, indices, prefix)
    return description


def _check_chain(description: Sequence[Mapping], indices: Mapping[int, Mapping[str, torch.Tensor]],
                 prefix: str) -> None:
    """Refuse an inferred head that is not one chain of layers, naming the keys that break it.

    A stray key (``projector.9.weight`` beside a 0..7 head) would otherwise invent layers: an
    activation for each empty index before it and a Linear that fails later in a matmul, or, worse,
    one that fits and adds a made-up P-layer. A head is a chain: no two activations in a row, each
    Linear and BatchNorm taking the width the layer before gives, and nothing after an affine-free
    BatchNorm (the output normalisation that ends a head, as in ReSA).
    """
    width: int | None = None
    for i, layer in enumerate(description):
        reason = None
        previous = description[i - 1] if i > 0 else {"type": None}
        if previous["type"] == "batchnorm" and not previous["affine"]:
            reason = (f"{prefix}{i - 1} is an affine-free BatchNorm, which ends a head, yet "
                      f"layers follow it")
        elif layer["type"] in ACTIVATIONS:
            if previous["type"] in ACTIVATIONS:
                reason = f"{prefix}{i - 1} and {prefix}{i} hold no tensors (a gap in the layer indices)"
        elif layer["type"] == "linear":
            if width is not None and layer["in"] != width:
                reason = (f"{prefix}{i}.weight has shape {tuple(indices[i]['weight'].shape)}: it takes "
                          f"{layer['in']} inputs but the layer before gives {width}")
            width = layer["out"]
        elif layer["type"] == "batchnorm":
            if width is not None and layer["dim"] != width:
                reason = (f"{prefix}{i} is a BatchNorm of {layer['dim']} features but the layer "
                          f"before gives {width}")
        if reason is not None:
            start = i + 1 if layer["type"] in ACTIVATIONS else i
            stray = [f"{prefix}{j}.{name}" for j in sorted(indices) if j >= start for name in sorted(indices[j])]
            raise ArchitectureMismatchError(
                f"Cannot infer the head under {prefix!r}: {reason}. The keys from there on do not "
                f"continue the head: {', '.join(stray)}. If they are stray, remove them from the "
                "state dict and save it again; if the head really is built this way, save the "
                "model with clusterprobe.save_checkpoint, which records its architecture."
            )


def head_dims(description: Sequence[Mapping]) -> tuple[int, int]:
    """(input dim, output dim) of a described head."""
    linears = [layer for layer in description if layer["type"] == "linear"]
    if not linears:
        raise ClusterprobeError("A head needs at least one Linear layer.")
    return int(linears[0]["in"]), int(linears[-1]["out"])


def hidden_taps(description: Sequence[Mapping], pre_activation: bool = False) -> list[int]:
    """Indices in the sequential whose output is P0, P1, ...: each activation (or the layer before)."""
    taps = [i for i, layer in enumerate(description) if layer["type"] in ACTIVATIONS]
    return [i - 1 for i in taps] if pre_activation else taps
