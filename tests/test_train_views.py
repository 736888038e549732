"""Augmentation strengths against the references' own operations (solo-learn's CIFAR recipes and
the ReSA reference code blur with PIL's ``ImageFilter.GaussianBlur(radius=sigma)``)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from clusterprobe.trainer.batch_views import BatchView
from clusterprobe.errors import TrainConfigError
from clusterprobe.trainer.views import ViewSpec, blur_kernel_size, make_view, view_specs

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


# ---------------------------------------------------------------------------------------------
# the kernel rule a run records (config.blur_kernel): both view paths build the same kernel
def test_blur_kernel_rules():
    assert [blur_kernel_size(s) for s in (8, 32, 96, 224)] == [13, 13, 13, 23]
    assert [blur_kernel_size(s, "3sigma") for s in (8, 32, 96, 224)] == [13, 13, 13, 23]
    assert [blur_kernel_size(s, "10percent") for s in (8, 32, 96, 224)] == [3, 3, 9, 23]
    assert blur_kernel_size(4) == 7  # at most 2 * size - 1 (reflect padding)
    with pytest.raises(TrainConfigError, match=r"Unknown blur kernel rule '3-sigma'; use one of 3sigma, 10percent"):
        blur_kernel_size(32, "3-sigma")
    with pytest.raises(TrainConfigError, match="Unknown blur kernel rule"):
        view_specs("symmetric", blur_kernel="13")


def _pil_path_blur(image: np.ndarray, spec: ViewSpec, sigma: float) -> torch.Tensor:
    view = make_view(SIZE, (0.0,) * 3, (1.0,) * 3, spec)
    blur, = [t.transforms[0] for t in view.transforms if isinstance(t, T.RandomApply)]
    blur.sigma = [sigma, sigma]
    return view(Image.fromarray(image)), blur.kernel_size


def _batched_path_blur(image: np.ndarray, spec: ViewSpec, sigma: float) -> torch.Tensor:
    view = BatchView(spec, SIZE, (0.0,) * 3, (1.0,) * 3)
    params = view.sample(1, SIZE, SIZE, torch.Generator().manual_seed(0))
    params.update(boxes=torch.tensor([[0, 0, SIZE, SIZE]]), blur=torch.tensor([True]), sigma=torch.tensor([sigma]))
    return view(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), params=params)[0]


@pytest.mark.parametrize("recipe, blur", [("symmetric", False), ("resa", True)])
def test_both_view_paths_blur_by_the_recorded_rule(recipe, blur):
    """view_specs carries the run's rule into the PIL pipeline and the batched views alike: the
    same kernel size, the same blurred image (up to PIL's uint8 rounding), and the two rules give
    clearly different images at 32 px."""
    image = np.asarray(Image.fromarray(impulse()).resize((SIZE, SIZE)))
    image = np.concatenate([image[..., :1], np.roll(image, 5, 1)[..., 1:2], np.full_like(image[..., :1], 80)], -1)
    blurred = {}
    for rule, taps in (("3sigma", 13), ("10percent", 3)):
        specs = view_specs(recipe, blur=blur, blur_kernel=rule)
        spec, = [s for s in specs if s.blur_p > 0][:1]
        assert all(s.blur_kernel == rule for s in specs)
        spec = replace(spec, scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation="bilinear", jitter=None,
                       grayscale_p=0.0, solarize_p=0.0, blur_p=1.0, flip_p=0.0)
        pil, kernel = _pil_path_blur(image, spec, 2.0)
        batched = _batched_path_blur(image, spec, 2.0)
        assert tuple(kernel) == (taps, taps)
        torch.testing.assert_close(batched, pil, rtol=0, atol=1.01 / 255)  # PIL rounds to uint8
        blurred[rule] = batched
    assert (blurred["3sigma"] - blurred["10percent"]).abs().max() > 0.1
    # the narrow kernel keeps most of the line in its 3 columns; the wide one spreads it (sigma 2)
    line = lambda x: float(x[0, :, CENTRE - 1:CENTRE + 2].sum() / x[0].sum())
    assert line(blurred["10percent"]) > 0.9 and line(blurred["3sigma"]) < 0.6
