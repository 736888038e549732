"""Batched views (issue 11): per-sample parameters drawn from the same distributions as the
torchvision PIL pipeline's, and image operations equal to torchvision's functional ones."""

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from scipy import stats
from torchvision import transforms as T

from clusterprobe.trainer.batch_views import BatchView, BatchViews, color_jitter, sample_crop_boxes
from clusterprobe.trainer.loading import DeviceViewLoader, EpochSampler
from clusterprobe.trainer.views import ViewSpec, blur_kernel_size, view_specs

N = 3000


def same_distribution(a, b):
    return stats.ks_2samp(np.asarray(a, float), np.asarray(b, float)).pvalue > 1e-3


def close_to(count, n, p):
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (32, 32, (0.2, 1.0)), (12, 40, (0.5, 1.0))])
def test_crop_boxes_follow_torchvision(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    reference = torch.tensor([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(N)])
    ours = sample_crop_boxes(N, height, width, scale, ratio, torch.Generator().manual_seed(1))
    for column in range(4):  # top, left, h, w
        assert same_distribution(ours[:, column], reference[:, column]), column
    area = lambda boxes: boxes[:, 2] * boxes[:, 3] / (height * width)
    assert same_distribution(area(ours), area(reference))
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    if height == 12:  # a wide image: many tries fail, the central fallback must match too
        fallback = (ours[:, 2] == 12) & (ours[:, 3] == 16)
        reference_fallback = (reference[:, 2] == 12) & (reference[:, 3] == 16)
        assert fallback.sum() > 50 and close_to(int(fallback.sum()), N, float(reference_fallback.float().mean()))


def test_jitter_factors_order_and_probabilities_follow_torchvision():
    spec = ViewSpec(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2, solarize_p=0.2, blur_p=0.5)
    params = BatchView(spec, 32, (0.5,) * 3, (0.5,) * 3).sample(N, 32, 32, torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    jitter = T.ColorJitter(*spec.jitter)
    reference = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
                 for _ in range(N)]
    for column, index in enumerate((1, 2, 3, 4)):  # brightness, contrast, saturation, hue factors
        assert same_distribution(params["factors"][:, column], [r[index] for r in reference]), column
    orders = {tuple(o) for o in params["orders"].tolist()}
    assert orders == set(itertools.permutations(range(4)))
    counts = [sum(1 for r in reference if tuple(r[0].tolist()) == o) for o in itertools.permutations(range(4))]
    ours = [int((params["orders"] == torch.tensor(o)).all(1).sum()) for o in itertools.permutations(range(4))]
    assert stats.chisquare(ours).pvalue > 1e-3 and stats.chisquare(counts).pvalue > 1e-3
    for key, p in (("jitter", 0.8), ("grayscale", 0.2), ("solarize", 0.2), ("blur", 0.5), ("flip", 0.5)):
        assert close_to(int(params[key].sum()), N, p), key
    torch.manual_seed(4)
    sigmas = [T.GaussianBlur.get_params(0.1, 2.0) for _ in range(N)]
    assert same_distribution(params["sigma"], sigmas)


def test_colour_operations_equal_torchvision_functional():
    torch.manual_seed(5)
    x = torch.rand(24, 3, 16, 16)
    factors = torch.stack([torch.empty(24).uniform_(0.6, 1.4), torch.empty(24).uniform_(0.6, 1.4),
                           torch.empty(24).uniform_(0.8, 1.2), torch.empty(24).uniform_(-0.1, 0.1)], 1)
    orders = torch.tensor(list(itertools.permutations(range(4))))[torch.randperm(24)]
    ours = color_jitter(x, factors, orders)
    functions = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    for i in range(24):
        expected = x[i]
        for op in orders[i].tolist():
            expected = functions[op](expected, float(factors[i, op]))
        torch.testing.assert_close(ours[i], expected, rtol=0, atol=2e-5)


def test_each_step_equals_torchvision_at_probability_one():
    torch.manual_seed(6)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    full = torch.tensor([[0, 0, 16, 16]] * 5)

    def run(spec, **overrides):
        view = BatchView(spec, 16, mean, std)
        params = view.sample(5, 16, 16, torch.Generator().manual_seed(0))
        params["boxes"] = full
        params.update(overrides)
        return view(images, params=params) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)

    plain = ViewSpec(jitter=None, grayscale_p=0.0, flip_p=0.0)
    floats = images.float() / 255
    torch.testing.assert_close(run(plain), floats, rtol=0, atol=1e-5)  # the full box is the identity
    flipped = run(ViewSpec(jitter=None, grayscale_p=0.0, flip_p=1.0))
    torch.testing.assert_close(flipped, F.hflip(floats), rtol=0, atol=1e-5)
    gray = run(ViewSpec(jitter=None, grayscale_p=1.0, flip_p=0.0))
    torch.testing.assert_close(gray, F.rgb_to_grayscale(floats, 3), rtol=0, atol=1e-5)
    solarized = run(ViewSpec(jitter=None, grayscale_p=0.0, solarize_p=1.0, flip_p=0.0))
    torch.testing.assert_close(solarized, F.solarize(images, 128).float() / 255, rtol=0, atol=1e-5)
    sigma = torch.full((5,), 0.7)
    blurred = run(ViewSpec(jitter=None, grayscale_p=0.0, blur_p=1.0, flip_p=0.0), sigma=sigma)
    k = blur_kernel_size(16)
    torch.testing.assert_close(blurred, F.gaussian_blur(floats, [k, k], [0.7, 0.7]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_a_crop_is_resized_like_torchvision_resized_crop(mode):
    """The crop geometry of torchvision's RandomResizedCrop (F.resized_crop, pixel edges to pixel
    edges as PIL does): the box's outer pixels are not stretched to the output's corners, which
    would zoom every crop by w / (w - 1)."""
    torch.manual_seed(7)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 6), size=(32, 32), mode="bicubic",
                                             align_corners=False).clamp(0, 1)
    images = (smooth * 255).round().to(torch.uint8)
    view = BatchView(ViewSpec(interpolation=mode, jitter=None, grayscale_p=0.0, flip_p=0.0), 32, (0.0,) * 3, (1.0,) * 3)
    boxes = torch.tensor([[4, 8, 16, 16], [10, 3, 9, 11]])
    params = view.sample(2, 32, 32, torch.Generator().manual_seed(0))
    params["boxes"] = boxes
    out = view(images, params=params)
    interpolation = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[mode]
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = F.resized_crop(images[i].float() / 255, top, left, h, w, [32, 32], interpolation,
                                  antialias=False).clamp(0, 1)
        if mode == "bilinear":  # the same samples of the same pixels
            torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5)
        else:  # bicubic taps within 2 pixels of the box's edge may read its neighbours: the inside
            torch.testing.assert_close(out[i, :, 8:-8, 8:-8], expected[:, 8:-8, 8:-8], rtol=0, atol=1e-4)


def test_device_loader_is_reproducible_per_epoch_and_differs_across_epochs():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40)
    views = BatchViews(view_specs("resa"), 8, (0.5,) * 3, (0.25,) * 3)
    loader = DeviceViewLoader(images, labels, views, EpochSampler(40, seed=3), batch_size=16, seed=3)
    assert len(loader) == 2
    first = list(loader)
    again = list(loader)
    loader.sampler.set_epoch(1)
    other = list(loader)
    for (va, la), (vb, lb) in zip(first, again):
        assert torch.equal(la, lb) and all(torch.equal(a, b) for a, b in zip(va, vb))
    assert not torch.equal(first[0][1], other[0][1])
    assert first[0][0][0].shape == (16, 3, 8, 8) and len(first[0][0]) == 2
    assert not torch.equal(first[0][0][0], first[0][0][1])  # weak and strong views differ


def test_the_views_never_wait_for_the_device_when_copying_to_it(monkeypatch):
    """A blocking host-to-device copy from pageable memory ends in cudaStreamSynchronize: each of
    the up to 24 copies of random parameters and row indices a view made per batch waited for the GPU
    to finish the previous training step. Every copy to the images' device (recorded here on the
    CPU; kornia's own copies, which are non-blocking to a GPU, aside) is non-blocking, including the
    loader's row indices; the views are unchanged."""
    import sys
    spec = ViewSpec(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.5, grayscale_p=0.5, solarize_p=0.5, blur_p=0.5)
    images = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8)
    views = BatchViews([spec, spec], 16, (0.5,) * 3, (0.25,) * 3)
    loader = DeviceViewLoader(images, torch.arange(48), views, EpochSampler(48, seed=1), batch_size=16, seed=1)
    expected = [batch for batch, _ in loader]
    copies = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        ours = "clusterprobe" in sys._getframe(1).f_code.co_filename
        if ours and ("device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)):
            copies.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    batches = [batch for batch, _ in loader]
    assert len(copies) >= 3 * (1 + 2 * 6) and all(copies)  # per batch: rows, and per view crops ... flips
    assert all(torch.equal(a, b) for x, y in zip(batches, expected) for a, b in zip(x, y))
