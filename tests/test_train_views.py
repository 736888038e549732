"""Augmentation strengths against the references' own operations (solo-learn's CIFAR recipes and
the ReSA reference code blur with PIL's ``ImageFilter.GaussianBlur(radius=sigma)``)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from clusterprobe.trainer.batch_views import BatchView
from clusterprobe.trainer.views import ViewSpec, make_view

SIZE, CENTRE = 32, 16
BLUR_ONLY = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation="bilinear", jitter=None,
                     grayscale_p=0.0, blur_p=1.0, flip_p=0.0)


def impulse() -> np.ndarray:
    """A bright vertical line (a line, not a point, so that uint8 rounding keeps the tails)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, CENTRE] = 255
    return image


def spread(image: np.ndarray) -> float:
    """Variance (pixels^2) of the horizontal profile of the blurred line around its centre."""
    profile = np.asarray(image, float).sum(axis=0)
    profile /= profile.sum()
    return float((profile * (np.arange(SIZE) - CENTRE) ** 2).sum())


def pil_reference(sigma: float) -> float:
    blurred = Image.fromarray(impulse()[..., 0]).filter(ImageFilter.GaussianBlur(radius=sigma))
    return spread(np.asarray(blurred))


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_pil_view_blur_is_as_strong_as_pil_gaussian_blur(sigma):
    view = make_view(SIZE, (0.0,) * 3, (1.0,) * 3, BLUR_ONLY)
    blurs = [t.transforms[0] for t in view.transforms if isinstance(t, T.RandomApply)]
    assert len(blurs) == 1 and isinstance(blurs[0], T.GaussianBlur)
    blurs[0].sigma = [sigma, sigma]
    ours = spread(view(Image.fromarray(impulse()))[0].numpy())
    reference = pil_reference(sigma)
    assert reference == pytest.approx(sigma ** 2, rel=0.1)  # PIL's radius is the standard deviation
    assert ours == pytest.approx(reference, rel=0.15)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_batched_view_blur_is_as_strong_as_pil_gaussian_blur(sigma):
    view = BatchView(BLUR_ONLY, SIZE, (0.0,) * 3, (1.0,) * 3)
    images = torch.from_numpy(impulse()).permute(2, 0, 1)[None].contiguous()
    params = view.sample(1, SIZE, SIZE, torch.Generator().manual_seed(0))
    params.update(boxes=torch.tensor([[0, 0, SIZE, SIZE]]), blur=torch.tensor([True]),
                  sigma=torch.tensor([sigma]))
    ours = spread(view(images, params=params)[0, 0].numpy())
    assert ours == pytest.approx(pil_reference(sigma), rel=0.15)
