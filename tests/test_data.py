import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from clusterprobe.data import (CIFAR100_COARSE_OF, CIFAR100_SUPERCLASSES, DIGITS_MEAN, DIGITS_STD,
                               load_dataset)
from clusterprobe.errors import DatasetError


def test_digits_is_a_stratified_deterministic_split_of_the_real_set():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1347, 450)
    digits = load_digits()
    # stratified: each class keeps its share (25 %) in the test split
    assert np.all(np.abs(np.bincount(test.targets) - 0.25 * np.bincount(digits.target)) <= 1)
    assert np.array_equal(load_dataset("digits", split="test").targets, test.targets)
    # The pixels are scikit-learn's own, rescaled from 0..16, normalised by the set's statistics.
    image, label = test[0]
    assert image.shape == (1, 8, 8) and label == test.targets[0]
    raw = (image * DIGITS_STD[0] + DIGITS_MEAN[0]) * 16
    matches = np.abs(digits.images - raw.numpy()[0]).max(axis=(1, 2)) < 0.05
    assert matches.any() and digits.target[np.argmax(matches)] == label


def test_digits_statistics_are_the_data_set_statistics():
    train = load_dataset("digits", split="train", transform=None)
    pixels = np.stack([np.asarray(train.image(i), dtype=np.float64) / 255 for i in range(len(train))])
    assert abs(pixels.mean() - DIGITS_MEAN[0]) < 0.01 and abs(pixels.std() - DIGITS_STD[0]) < 0.01


def test_cifar10_image_folder_layout(cifar10):
    test = load_dataset("cifar10", root=cifar10, split="test")
    assert len(test) == 10000 and test.classes[0] == "airplane"
    image, label = test[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert -2.5 < float(image.mean()) < 2.5 and test.description["layout"] == "imagefolder"


def test_cifar100_coarse_labels_from_an_image_folder(tmp_path):
    names = sorted(CIFAR100_COARSE_OF)
    for name in names:
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "test" / name / "0.png")
    data = load_dataset("cifar100", root=tmp_path, split="test")
    assert len(data) == 100 and data.coarse_classes[0] == "aquatic_mammals"
    beaver, tractor = data.classes.index("beaver"), data.classes.index("tractor")
    assert data.coarse_targets[beaver] == 0 and data.coarse_targets[tractor] == 19
    assert np.bincount(data.coarse_targets).tolist() == [5] * 20


def test_cifar100_superclass_table_is_complete():
    assert len(CIFAR100_SUPERCLASSES) == 20 and len(CIFAR100_COARSE_OF) == 100
    assert all(len(members) == 5 for members in CIFAR100_SUPERCLASSES.values())


def test_imagefolder_with_resize(tmp_path):
    for label, color in (("a", 0), ("b", 255)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (color, color, color)).save(tmp_path / label / f"{i}.jpg")
    data = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert len(data) == 6 and data.classes == ["a", "b"] and data[0][0].shape == (3, 16, 16)


def test_missing_data_root_says_how_to_fix_it(tmp_path):
    with pytest.raises(DatasetError, match="No cifar10 data under.*--download"):
        load_dataset("cifar10", root=tmp_path, split="test")
    with pytest.raises(DatasetError, match="needs a root directory"):
        load_dataset("cifar100")
    with pytest.raises(DatasetError, match="No image folder"):
        load_dataset("imagefolder", root=tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match="Did you mean 'cifar10'"):
        load_dataset("cifar-10")
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        load_dataset("digits", split="val")


def _digits_tree(root, split, n_per_class=5):
    """Grayscale digit images as PNG files in an ImageFolder tree (not ImageNet-like at all)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    offset = 0 if split == "train" else 500
    for label in range(3):
        folder = root / split / str(label)
        folder.mkdir(parents=True)
        picks = np.flatnonzero(digits.target == label)[offset // 100: offset // 100 + n_per_class]
        for i in picks:
            pixels = np.clip(np.rint(digits.images[i] * 255 / 16), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_is_normalised_with_its_own_statistics_from_the_train_split(tmp_path):
    _digits_tree(tmp_path, "train")
    _digits_tree(tmp_path, "test")
    train = load_dataset("imagefolder", root=tmp_path, split="train")
    test = load_dataset("imagefolder", root=tmp_path, split="test")
    files = sorted((tmp_path / "train").rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255 for f in files])
    expected_mean, expected_std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    np.testing.assert_allclose(train.info.mean, expected_mean, atol=1e-4)
    np.testing.assert_allclose(train.info.std, expected_std, atol=1e-4)
    assert test.info.mean == train.info.mean and test.info.std == train.info.std  # one normalisation
    assert train.description["statistics"]["images"] == len(files)
    assert abs(train.info.mean[0] - 0.485) > 0.1  # not ImageNet's
    # normalised train pixels have mean 0 and std 1 per channel
    batch = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(float(batch.mean())) < 1e-3 and abs(float(batch.std()) - 1) < 1e-2
    given = load_dataset("imagefolder", root=tmp_path, split="test", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert given.info.mean == (0.5,) * 3 and "statistics" not in given.description


def test_statistics_are_measured_again_when_the_images_are_regenerated_in_place(tmp_path):
    """The per-process cache of the statistics was keyed by the root alone: a notebook that
    regenerated its images in place and loaded them again normalised them with the old images'
    mean and std (and so extracted wrong features even into a new bank)."""
    for label, value in (("a", 40), ("b", 80)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (value, value, value)).save(tmp_path / label / f"{i}.png")
    first = load_dataset("imagefolder", root=tmp_path, split="train")
    signature = first.files_signature()
    assert first.info.mean == pytest.approx((60 / 255,) * 3, abs=1e-4)
    assert load_dataset("imagefolder", root=tmp_path, split="train").info.mean == first.info.mean  # cached
    for i in range(2):  # brighter images, same names
        Image.new("RGB", (8, 8), (200, 200, 200)).save(tmp_path / "a" / f"{i}.png")
    again = load_dataset("imagefolder", root=tmp_path, split="train")
    assert again.info.mean == pytest.approx((140 / 255,) * 3, abs=1e-4)
    assert again.files_signature() != signature


def test_cifar10_on_folders_with_other_class_names_warns(tmp_path):
    for name in "abcdefghij":
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "test" / name / "0.png")
    with pytest.warns(UserWarning, match="not CIFAR-10's.*--dataset imagefolder"):
        load_dataset("cifar10", root=tmp_path, split="test")


def test_training_on_imagefolder_without_image_size_suggests_the_images_size(tmp_path):
    from clusterprobe.errors import TrainConfigError
    from clusterprobe.trainer import train

    _digits_tree(tmp_path / "data", "train")
    with pytest.raises(TrainConfigError, match=r"--image-size.*8x8 pixels: --image-size 8"):
        train({"dataset": "imagefolder", "data_root": str(tmp_path / "data"), "out": str(tmp_path / "run"),
               "epochs": 1, "batch_size": 4, "width": 4, "progress": False})


def _tiny_tree(root, classes, n=2, size=(8, 8)):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (40 * label, 10 * i, 200)).save(root / name / f"{i}.png")


def test_a_missing_split_folder_is_refused_not_read_as_the_class_tree(tmp_path):
    """root/train/<class>/ without root/test/: the test split was read from root itself, whose
    only "class" is train/ (every training image labelled 0, silently measured as the test set)."""
    _tiny_tree(tmp_path / "train", ["a", "b", "c"])
    assert load_dataset("imagefolder", root=tmp_path, split="train").classes == ["a", "b", "c"]
    with pytest.raises(DatasetError, match=r"no test/ folder.*\(train/\).*rename train/ to test/"):
        load_dataset("imagefolder", root=tmp_path, split="test")
    _tiny_tree(tmp_path / "val", ["a", "b", "c"])  # ImageNet's naming
    with pytest.raises(DatasetError, match=r"\(train/, val/\).*rename val/ to test/"):
        load_dataset("imagefolder", root=tmp_path, split="test")
    # a flat root/<class>/ tree is still read as one: the same images for either split, which
    # the test split says (a probe scored train -> test on it scores its own training images)
    _tiny_tree(tmp_path / "flat", ["x", "y"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = load_dataset("imagefolder", root=tmp_path / "flat", split="train")
    with pytest.warns(UserWarning, match=r"no split folders, so its 'test' split is the same images as 'train'"):
        test = load_dataset("imagefolder", root=tmp_path / "flat", split="test")
    assert test.classes == train.classes == ["x", "y"] and test.targets.tolist() == train.targets.tolist()


@pytest.mark.parametrize("name", ["imagefolder", "cifar10"])
def test_splits_with_different_class_folders_are_refused(tmp_path, name):
    """train/{a,b,c} and test/{a,c}: test's c was labelled 1, train's b; nothing said so."""
    classes = list("abcdefghij") if name == "cifar10" else ["a", "b", "c"]
    _tiny_tree(tmp_path / "train", classes)
    _tiny_tree(tmp_path / "test", [c for c in classes if c != "b"] + (["z"] if name == "cifar10" else []))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cifar10 on folders with other names warns as well
        for split in ("train", "test"):
            with pytest.raises(DatasetError, match=r"differ \(.*only in train/: b\b.*different labels") as error:
                load_dataset(name, root=tmp_path, split=split)
            assert ("only in test/: z" in str(error.value)) == (name == "cifar10")
        _tiny_tree(tmp_path / "test", ["b"])  # the same folders: read, and a class has one label
        if name == "cifar10":
            shutil.rmtree(tmp_path / "test" / "z")
        train, test = (load_dataset(name, root=tmp_path, split=s) for s in ("train", "test"))
    assert train.classes == test.classes == classes
    assert test.targets[[test._images.path(i).endswith("/c/0.png") for i in range(len(test))]].tolist() == [2]


def test_16_bit_grey_images_are_scaled_from_their_full_range_and_float_images_refused(tmp_path):
    """PIL's convert('RGB') clips 16-bit pixels at 255: a 16-bit PNG became white wherever its
    value exceeded 255 of 65535 (all but the darkest pixels), silently."""
    rng = np.random.default_rng(0)
    originals = {}
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            pixels = rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)
            Image.fromarray(pixels).save(tmp_path / split / name / "0.png")
            originals[split, name] = pixels
    assert Image.open(tmp_path / "test" / "a" / "0.png").mode.startswith("I;16")
    data = load_dataset("imagefolder", root=tmp_path, split="test", transform=None)
    for index, name in enumerate(("a", "b")):
        expected = np.rint(originals["test", name].astype(np.float64) * 255 / 65535)
        got = np.asarray(data.image(index), dtype=np.float64)
        assert got.shape == (8, 8, 3) and np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)
    # the normalisation statistics are measured on the same (scaled) pixels: mean ~0.5, not ~1
    train = load_dataset("imagefolder", root=tmp_path, split="train")
    scaled = np.concatenate([np.rint(originals["train", n].astype(np.float64) * 255 / 65535).ravel() / 255 for n in ("a", "b")])
    np.testing.assert_allclose(train.info.mean, [scaled.mean()] * 3, atol=1e-4)

    Image.fromarray(rng.random((8, 8), dtype=np.float32)).save(tmp_path / "test" / "b" / "1.tif")
    data = load_dataset("imagefolder", root=tmp_path, split="test", transform=None)
    with pytest.raises(DatasetError, match=r"1\.tif cannot be read as 8-bit RGB: .*floating-point.*mode F.*Convert it"):
        data.image(2)
    skipped = load_dataset("imagefolder", root=tmp_path, split="test", skip_unreadable=True)
    assert len(skipped) == 2 and skipped.description["skipped_unreadable"][0]["file"].endswith("1.tif")


def test_normalisation_and_image_size_options_are_checked_and_one_value_means_every_channel(tmp_path):
    """--mean 0.5,0.5,0.5 on 1-channel digits and --std 0 ended in a torch traceback mid-extraction;
    --image-size 0 was silently taken as no resize; a negative size failed inside PIL."""
    with pytest.raises(DatasetError, match=r"mean has 3 values but digits images have 1 channel: .*--mean 0.5\)"):
        load_dataset("digits", mean=(0.5, 0.5, 0.5))
    with pytest.raises(DatasetError, match=r"std .* must be > 0"):
        load_dataset("digits", std=(0.0,))
    with pytest.raises(DatasetError, match=r"std has 2 values but imagefolder images have 3 channels: .*--std 0.5,0.5,0.5"):
        load_dataset("imagefolder", root=tmp_path, std=(0.2, 0.2))
    for size in (0, -3, 2.5, "big"):
        with pytest.raises(DatasetError, match=r"image_size must be a whole number of pixels >= 1"):
            load_dataset("digits", image_size=size)
    assert load_dataset("digits", split="test", image_size=16.0)[0][0].shape == (1, 16, 16)
    # one value is every channel's, and recorded as such
    _tiny_tree(tmp_path / "train", ["a", "b"])
    data = load_dataset("imagefolder", root=tmp_path, mean=(0.5,), std=(0.25,))
    assert data.info.mean == (0.5, 0.5, 0.5) and data.description["info"]["std"] == (0.25, 0.25, 0.25)
    pixels = np.asarray(data.image(1), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(data[1][0].numpy(), (pixels - 0.5) / 0.25, atol=1e-6)


def test_a_transform_that_is_not_one_is_refused_up_front():
    """transform='none' was stored as the transform: the first item failed with "'str' object is
    not callable"."""
    with pytest.raises(DatasetError, match=r"transform='none' is not a transform: use 'eval'.*None"):
        load_dataset("digits", transform="none")
    assert load_dataset("digits", split="test", transform=None).transform is None
    assert load_dataset("digits", split="test", transform=np.asarray)[0][0].shape == (8, 8)
