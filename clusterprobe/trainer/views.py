"""Two-view augmentations.

Recipes (:data:`VIEW_RECIPES`), sized to the data set's image size:

- ``resa`` (ReSA specification): view 0 "weak" = RandomResizedCrop(scale 0.2-1, bilinear) +
  horizontal flip; view 1 "strong" = RandomResizedCrop(scale 0.2-1, bicubic) + ColorJitter(0.4,
  0.4, 0.2, 0.1) p=0.8 + RandomGrayscale p=0.2 + Solarize p=0.2 + horizontal flip; no blur at
  32x32 (``blur=True``, the ImageNet setting, adds GaussianBlur p=0.5 to the strong view).
- ``asymmetric`` (solo-learn CIFAR, BYOL and Barlow Twins): both views RandomResizedCrop(0.08-1)
  + ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8 + grayscale p=0.2 + flip; Solarize p=0 / p=0.2.
- ``symmetric`` (solo-learn CIFAR, SimCLR and SwAV): RandomResizedCrop(0.08-1) + ColorJitter(0.8,
  0.8, 0.8, 0.2) p=0.8 + grayscale p=0.2 + GaussianBlur p=0.5 + flip, for both views.
- ``vicreg`` (solo-learn CIFAR): RandomResizedCrop(0.2-1) + ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8
  + grayscale p=0.2 + Solarize p=0.1 + flip, for both views.

The blur's kernel size follows the run's rule (``blur_kernel``, :func:`blur_kernel_size`).
Every view ends with ToTensor + Normalize(data set mean, std). On 1-channel images (digits) the
saturation and hue jitter do nothing and grayscale keeps one channel. All randomness comes from
torch's global generator, which the training data set seeds per sample (see
:mod:`clusterprobe.trainer.loading`).

Each recipe is a pair of :class:`ViewSpec` (plain parameters). :func:`make_view` turns one into a
torchvision PIL pipeline (one image at a time, in DataLoader workers);
:class:`~clusterprobe.trainer.batch_views.BatchView` turns the same spec into a batched tensor
pipeline with per-sample random parameters (on the training device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..errors import TrainConfigError

VIEW_RECIPES = ("resa", "asymmetric", "symmetric", "vicreg")

_BILINEAR, _BICUBIC = InterpolationMode.BILINEAR, InterpolationMode.BICUBIC


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation parameters, in the order they are applied.

    RandomResizedCrop(``scale``, ratio 3/4-4/3, ``interpolation``) -> ColorJitter(``jitter`` =
    brightness, contrast, saturation, hue) with probability ``jitter_p`` -> grayscale with
    ``grayscale_p`` -> Gaussian blur (sigma 0.1-2, kernel :func:`blur_kernel_size` by the rule
    ``blur_kernel``) with ``blur_p`` -> solarize (pixels >= 128 of 255 inverted) with
    ``solarize_p`` -> horizontal flip with ``flip_p``.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    interpolation: str = "bicubic"
    jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    solarize_p: float = 0.0
    blur_p: float = 0.0
    flip_p: float = 0.5
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    blur_kernel: str = "3sigma"


BLUR_SIGMA = (0.1, 2.0)

#: The rules for the blur's kernel size (:func:`blur_kernel_size`), newest first. ``3sigma`` is
#: what new runs use; ``10percent`` is the rule of earlier versions, which a run's config.yaml
#: without ``blur_kernel`` was trained with (see :class:`~clusterprobe.trainer.config.TrainConfig`).
BLUR_KERNEL_RULES = ("3sigma", "10percent")
#: The rule of runs whose config.yaml does not record one (written before the rule was recorded).
LEGACY_BLUR_KERNEL = "10percent"


def blur_kernel_size(size: int, rule: str = "3sigma") -> int:
    """Gaussian blur kernel (taps, odd) for ``size``-pixel images, by ``rule``:

    - ``3sigma``: ~10 % of the image (SimCLR's rule) but at least +-3 of the largest sigma, at
      most ``2 * size - 1`` (what reflect padding allows): 13 taps at 32 px, 23 at 224 px.
    - ``10percent``: ~10 % of the image, at least 3 (earlier versions): 3 taps at 32 px, 23 at
      224 px. The two differ only below ~130 px.

    The references (solo-learn, the ReSA, BYOL and SwAV code) blur with PIL's
    ``ImageFilter.GaussianBlur(radius=sigma)``, a Gaussian of standard deviation ``sigma`` that is
    not truncated; 10 % of a 32-pixel image alone is a 3-tap kernel, whose blur at sigma 2 has a
    sixth of that variance.

    Raises:
        TrainConfigError: an unknown rule.
    """
    tenth = int(0.1 * size) // 2 * 2 + 1
    if rule == "3sigma":
        return min(max(tenth, 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1), 2 * int(size) - 1)
    if rule == "10percent":
        return max(3, tenth)
    raise TrainConfigError(f"Unknown blur kernel rule {rule!r}; use one of {', '.join(BLUR_KERNEL_RULES)} "
                           "(3sigma for new runs).")


def make_view(size: int, mean: Sequence[float], std: Sequence[float], spec: ViewSpec = ViewSpec()) -> T.Compose:
    """One augmentation pipeline: PIL image -> normalised (C, size, size) tensor."""
    interpolation = {"bilinear": _BILINEAR, "bicubic": _BICUBIC}[spec.interpolation]
    steps: list[Callable] = [T.RandomResizedCrop(size, scale=spec.scale, ratio=spec.ratio, interpolation=interpolation)]
    if spec.jitter is not None and spec.jitter_p > 0:
        steps.append(T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(T.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur_p > 0:
        k = blur_kernel_size(size, spec.blur_kernel)
        steps.append(T.RandomApply([T.GaussianBlur(kernel_size=k, sigma=BLUR_SIGMA)],
                                   p=spec.blur_p))
    if spec.solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=128, p=spec.solarize_p))
    if spec.flip_p > 0:
        steps.append(T.RandomHorizontalFlip(p=spec.flip_p))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class MultiView:
    """Apply each of ``transforms`` to the same image: PIL -> list of tensors (one per view)."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]

    def __repr__(self) -> str:
        inner = "\n".join(f"  view {i}: {' '.join(repr(t).split())}" for i, t in enumerate(self.transforms))
        return f"MultiView(\n{inner}\n)"


def view_specs(recipe: str, crop_scale: Sequence[float] | None = None, blur: bool = False,
               flip: bool = True, blur_kernel: str = "3sigma") -> list[ViewSpec]:
    """The two :class:`ViewSpec` of ``recipe`` (see the module doc).

    ``crop_scale`` overrides the RandomResizedCrop scale range; ``blur`` adds ReSA's ImageNet
    blur (p=0.5 on the strong view); ``flip=False`` drops the horizontal flips (for images whose
    mirror image is another class, such as digits); ``blur_kernel`` is the rule for the blur's
    kernel size (:func:`blur_kernel_size`; a run keeps the one it was trained with).
    """
    if blur_kernel not in BLUR_KERNEL_RULES:
        blur_kernel_size(1, blur_kernel)  # raises, naming the rules
    if recipe == "resa":
        scale = tuple(crop_scale or (0.2, 1.0))
        specs = [ViewSpec(scale, "bilinear", jitter=None, grayscale_p=0.0),
                 ViewSpec(scale, "bicubic", grayscale_p=0.2, solarize_p=0.2, blur_p=0.5 if blur else 0.0)]
    elif recipe == "asymmetric":
        scale = tuple(crop_scale or (0.08, 1.0))
        specs = [ViewSpec(scale, solarize_p=0.0), ViewSpec(scale, solarize_p=0.2)]
    elif recipe == "symmetric":
        scale = tuple(crop_scale or (0.08, 1.0))
        specs = [ViewSpec(scale, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2
    elif recipe == "vicreg":
        scale = tuple(crop_scale or (0.2, 1.0))
        specs = [ViewSpec(scale, solarize_p=0.1)] * 2
    else:
        raise TrainConfigError(f"Unknown view recipe {recipe!r}; use one of {', '.join(VIEW_RECIPES)}.")
    return [replace(spec, blur_kernel=blur_kernel, flip_p=spec.flip_p if flip else 0.0) for spec in specs]


def two_view_transform(
    recipe: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] | None = None,
    blur: bool = False,
    flip: bool = True,
    blur_kernel: str = "3sigma",
) -> MultiView:
    """The two views of ``recipe`` at ``size`` x ``size`` pixels, as PIL pipelines (see :func:`view_specs`)."""
    specs = view_specs(recipe, crop_scale, blur, flip, blur_kernel)
    return MultiView([make_view(size, mean, std, spec) for spec in specs])
