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

Every view ends with ToTensor + Normalize(data set mean, std). On 1-channel images (digits) the
saturation and hue jitter do nothing and grayscale keeps one channel. All randomness comes from
torch's global generator, which the training data set seeds per sample (see
:mod:`clusterprobe.trainer.loading`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..errors import TrainConfigError

VIEW_RECIPES = ("resa", "asymmetric", "symmetric", "vicreg")

_BILINEAR, _BICUBIC = InterpolationMode.BILINEAR, InterpolationMode.BICUBIC


def _blur(size: int) -> T.GaussianBlur:
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the image, odd
    return T.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))


def make_view(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.2, 1.0),
    interpolation: InterpolationMode = _BICUBIC,
    jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    solarize_p: float = 0.0,
    blur_p: float = 0.0,
    flip_p: float = 0.5,
) -> T.Compose:
    """One augmentation pipeline: PIL image -> normalised (C, size, size) tensor."""
    steps: list[Callable] = [T.RandomResizedCrop(size, scale=scale, interpolation=interpolation)]
    if jitter is not None and jitter_p > 0:
        steps.append(T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p))
    if grayscale_p > 0:
        steps.append(T.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        steps.append(T.RandomApply([_blur(size)], p=blur_p))
    if solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=128, p=solarize_p))
    if flip_p > 0:
        steps.append(T.RandomHorizontalFlip(p=flip_p))
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


def two_view_transform(
    recipe: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] | None = None,
    blur: bool = False,
    flip: bool = True,
) -> MultiView:
    """The two views of ``recipe`` (see the module doc) at ``size`` x ``size`` pixels.

    ``crop_scale`` overrides the RandomResizedCrop scale range; ``blur`` adds ReSA's ImageNet
    blur (p=0.5 on the strong view); ``flip=False`` drops the horizontal flips (for images whose
    mirror image is another class, such as digits).
    """
    views = _two_views(recipe, size, mean, std, crop_scale, blur)
    if not flip:
        for view in views.transforms:
            view.transforms = [t for t in view.transforms if not isinstance(t, T.RandomHorizontalFlip)]
    return views


def _two_views(recipe, size, mean, std, crop_scale, blur) -> MultiView:
    if recipe == "resa":
        scale = tuple(crop_scale or (0.2, 1.0))
        weak = make_view(size, mean, std, scale, _BILINEAR, jitter=None, grayscale_p=0.0)
        strong = make_view(size, mean, std, scale, _BICUBIC, jitter=(0.4, 0.4, 0.2, 0.1),
                           grayscale_p=0.2, solarize_p=0.2, blur_p=0.5 if blur else 0.0)
        return MultiView([weak, strong])
    if recipe == "asymmetric":
        scale = tuple(crop_scale or (0.08, 1.0))
        return MultiView([
            make_view(size, mean, std, scale, solarize_p=0.0),
            make_view(size, mean, std, scale, solarize_p=0.2),
        ])
    if recipe == "symmetric":
        scale = tuple(crop_scale or (0.08, 1.0))
        view = dict(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
        return MultiView([make_view(size, mean, std, scale, **view), make_view(size, mean, std, scale, **view)])
    if recipe == "vicreg":
        scale = tuple(crop_scale or (0.2, 1.0))
        return MultiView([make_view(size, mean, std, scale, solarize_p=0.1),
                          make_view(size, mean, std, scale, solarize_p=0.1)])
    raise TrainConfigError(f"Unknown view recipe {recipe!r}; use one of {', '.join(VIEW_RECIPES)}.")
