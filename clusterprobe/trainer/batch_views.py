"""Batched views: the recipes of :mod:`.views` applied to a whole batch at once, on its device.

:class:`BatchView` takes a uint8 batch (B, C, H, W) and returns normalised float views
(B, C, size, size), drawing **per-sample** random parameters from the same distributions as the
torchvision PIL pipeline :func:`~.views.make_view` builds from the same :class:`~.views.ViewSpec`:

- crop: torchvision's RandomResizedCrop sampling (up to 10 tries of area in ``scale`` and
  log-uniform aspect ratio, else the central crop of the clamped ratio), vectorised; the crops
  are resized (bilinear or bicubic, torch's ``grid_sample``) with torchvision's geometry, pixel
  edges to pixel edges (:func:`resized_crops`);
- colour jitter with probability ``jitter_p``: brightness, contrast, saturation and hue factors
  uniform in torchvision's ranges, applied in a random order **per sample** (torchvision's
  ColorJitter draws one permutation per image; kornia's draws one per batch, so the order is
  drawn here and kornia's colour functions do the work);
- grayscale, Gaussian blur (sigma uniform in 0.1-2, the kernel size of the spec's
  ``blur_kernel`` rule as in the PIL pipeline; kornia), solarisation (pixels >= 128/255
  inverted) and horizontal flip, each with its own per-sample probability.

Images are processed in [0, 1] floats without the uint8 rounding PIL applies between steps; the
distributions of the parameters are what matches (tests/test_train_batch_views.py checks them
against torchvision's own samplers).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn

from .views import BLUR_SIGMA, ViewSpec, blur_kernel_size

_ORDERS = torch.tensor(list(itertools.permutations(range(4))))  # brightness, contrast, saturation, hue


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (random parameters, row indices) on ``device`` without waiting for the device.

    A blocking copy from pageable host memory to a GPU ends in ``cudaStreamSynchronize``: the host
    would wait for every kernel queued so far (the previous training step) before making the next
    batch's views. A non-blocking copy from pageable memory is staged by CUDA before the call
    returns, so the source may be dropped at once, and the copied values are the same.
    """
    return tensor.to(device, non_blocking=True)


def sample_crop_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                      generator: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes ``(top, left, h, w)`` for ``n`` images, as torchvision samples them.

    torchvision (``RandomResizedCrop.get_params``): up to ``tries`` times, draw an area fraction
    uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``; the first box that fits is
    taken, at a uniform position; if none fits, the central crop with the ratio clamped to
    ``ratio``. Returns an int64 tensor (n, 4).
    """
    area = height * width
    fractions = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * fractions * aspect)).long()
    h = torch.round(torch.sqrt(area * fractions / aspect)).long()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    chosen_h, chosen_w = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    # torchvision draws the position with randint(0, H - h + 1) for the accepted box
    top = (torch.rand(n, generator=generator) * (height - chosen_h + 1)).floor().long()
    left = (torch.rand(n, generator=generator) * (width - chosen_w + 1)).floor().long()
    # fallback: the central crop with the aspect ratio clamped into range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    fallback = first < 0
    chosen_h = torch.where(fallback, torch.full_like(chosen_h, fh), chosen_h)
    chosen_w = torch.where(fallback, torch.full_like(chosen_w, fw), chosen_w)
    top = torch.where(fallback, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(fallback, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, chosen_h, chosen_w], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Each image's box ``(top, left, h, w)`` resized to ``size`` x ``size`` as torchvision's
    ``F.resized_crop`` (and PIL) places the samples: output pixel ``i`` reads the box at
    ``left - 0.5 + (i + 0.5) * w / size`` (pixel centres at integers), clamped to the box's outer
    pixel centres. (Mapping the outer pixel centres to the output's corners instead, as kornia's
    ``crop_and_resize`` does, zooms every crop by ``w / (w - 1)``.) Bicubic uses torch's kernel
    (a = -0.75; PIL's is -0.5)."""
    n, _, height, width = images.shape
    top, left, h, w = to_device(boxes.to(torch.float32), images.device).unbind(1)
    centres = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size

    def coordinates(start, extent, full):
        pixel = start[:, None] - 0.5 + centres[None] * extent[:, None]
        pixel = torch.minimum(torch.maximum(pixel, start[:, None]), (start + extent - 1)[:, None])
        return 2 * pixel / max(full - 1, 1) - 1  # grid_sample's [-1, 1], align_corners=True

    xs, ys = coordinates(left, w, width), coordinates(top, h, height)
    grid = torch.stack([xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)], dim=-1)
    return torch.nn.functional.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=True)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (torchvision's weights), keeping the channel count."""
    if x.shape[1] == 1:
        return x
    gray = (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return gray.expand_as(x)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift hue by ``factor`` (in turns, -0.5..0.5) per sample, via kornia's HSV conversion."""
    import kornia

    if x.shape[1] == 1:
        return x
    hsv = kornia.color.rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0:1] + factor.view(-1, 1, 1, 1) * 2 * math.pi, 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1)).clamp(0, 1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Apply per-sample brightness, contrast, saturation and hue ``factors`` (B, 4) in per-sample
    ``orders`` (B, 4; a permutation of 0..3 each), with torchvision's definitions.

    Position by position: at each of the 4 positions, each operation runs once on the samples
    that have it there. Every sample still gets its own order, and the work is 16 batched calls
    whatever the orders (one set of calls per distinct order, up to 24 x 4, would be hundreds of
    small GPU kernels per batch). The grouping is decided on the host from ``orders`` (moved there
    if needed), so it never waits for the device."""
    orders = orders.cpu()
    out = x.clone()
    for position in range(orders.shape[1]):
        for op in range(4):
            rows = torch.nonzero(orders[:, position] == op).flatten()
            if rows.numel() == 0:
                continue
            rows = to_device(rows, x.device)
            y, f = out[rows], factors[rows]
            if op == 0:
                y = (y * f[:, 0].view(-1, 1, 1, 1)).clamp(0, 1)
            elif op == 1:
                mean = _grayscale(y)[:, :1].mean(dim=(1, 2, 3), keepdim=True)
                y = _blend(y, mean.expand_as(y), f[:, 1])
            elif op == 2:
                y = _blend(y, _grayscale(y), f[:, 2])
            else:
                y = adjust_hue(y, f[:, 3])
            out[rows] = y
    return out


class BatchView(nn.Module):
    """One view of a :class:`ViewSpec` for whole batches: uint8 (B, C, H, W) -> float (B, C, size, size).

    ``forward(images, generator=None)`` draws every random parameter from ``generator`` (CPU;
    torch's global generator when None) and does the image work on the images' device; the
    parameters are decided on the host and copied to the device without waiting for it
    (:func:`to_device`), so making a batch's views never stalls a GPU's queue.
    """

    def __init__(self, spec: ViewSpec, size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.spec, self.size = spec, int(size)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every random parameter for ``n`` images (CPU tensors): the crop boxes, jitter mask,
        factors and orders, and the grayscale, blur (with sigma), solarize and flip masks."""
        spec = self.spec

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        params = {"boxes": sample_crop_boxes(n, height, width, spec.scale, spec.ratio, generator)}
        if spec.jitter is not None and spec.jitter_p > 0:
            b, c, s, h = spec.jitter
            ranges = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)]
            params["jitter"] = coin(spec.jitter_p)
            params["factors"] = torch.stack([torch.empty(n).uniform_(lo, hi, generator=generator) for lo, hi in ranges], 1)
            params["orders"] = _ORDERS[torch.randint(len(_ORDERS), (n,), generator=generator)]
        params["grayscale"] = coin(spec.grayscale_p)
        params["blur"] = coin(spec.blur_p)
        params["sigma"] = torch.empty(n).uniform_(*BLUR_SIGMA, generator=generator)
        params["solarize"] = coin(spec.solarize_p)
        params["flip"] = coin(spec.flip_p)
        return params

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        import kornia

        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"BatchView takes uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}.")
        n, _, height, width = images.shape
        params = params or self.sample(n, height, width, generator)
        device = images.device
        x = images.float().div_(255)
        x = resized_crops(x, params["boxes"], self.size, self.spec.interpolation).clamp(0, 1)
        if "jitter" in params:
            rows = params["jitter"].nonzero().flatten()
            if len(rows):
                on = to_device(rows, device)
                x[on] = color_jitter(x[on], to_device(params["factors"][rows], device), params["orders"][rows])
        rows = to_device(params["grayscale"].nonzero().flatten(), device)
        if len(rows):
            x[rows] = _grayscale(x[rows]).contiguous()
        chosen = params["blur"].nonzero().flatten()
        if len(chosen):
            k = blur_kernel_size(self.size, self.spec.blur_kernel)
            sigma = params["sigma"][chosen]  # kornia checks sigma > 0 on the host copy, then moves it
            rows = to_device(chosen, device)
            x[rows] = kornia.filters.gaussian_blur2d(x[rows], (k, k), torch.stack([sigma, sigma], 1), border_type="reflect")
        rows = to_device(params["solarize"].nonzero().flatten(), device)
        if len(rows):
            y = x[rows]
            x[rows] = torch.where(y >= 128 / 255 - 1e-6, 1 - y, y)
        rows = to_device(params["flip"].nonzero().flatten(), device)
        if len(rows):
            x[rows] = x[rows].flip(-1)
        return (x - self.mean) / self.std


class BatchViews(nn.Module):
    """Several :class:`BatchView` of the same images (e.g. a recipe's weak and strong views)."""

    def __init__(self, specs: Sequence[ViewSpec], size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.views = nn.ModuleList(BatchView(spec, size, mean, std) for spec in specs)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        return [view(images, generator) for view in self.views]
