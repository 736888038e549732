"""Data sets for extraction and training, each with its evaluation transform.

Known data sets (:data:`DATASETS`):

- ``cifar10`` / ``cifar100``: torchvision's on-disk format (``cifar-10-batches-py/`` under the
  root; downloaded only with ``download=True``) or an ImageFolder tree ``root/<split>/<class>/``.
  CIFAR-100 also carries its 20 super-class ("coarse") labels.
- ``imagefolder``: any ``root/<class>/*.jpg`` tree (or ``root/<split>/<class>/``), normalised
  with its own per-channel statistics (:func:`image_statistics`: measured on an evenly spread
  sample of the train split, the same for both splits, recorded in the description) unless
  ``mean``/``std`` are given. A flat tree gives the same images for both splits (its test split
  warns); a root with split folders but not the one asked for is refused.

In every ``root/<split>/<class>/`` layout a label is the position of its folder among the sorted
folder names, so the train and test splits must hold the same class folders (refused otherwise).
Images are read as RGB (16-bit grey scaled from its full range; 32-bit integer and float images
refused), digits as one channel.
- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 real images, shipped with
  scikit-learn, no files needed): the embedded default. Split deterministically, stratified,
  75 % train / 25 % test (seed 0).

The evaluation transform is ``ToTensor`` + the data set's ``Normalize`` with no augmentation.

Image files are checked where they are read: an empty class folder, a damaged or non-image file
and an image whose size differs from the others (with no resize) each raise a
:class:`~clusterprobe.errors.DatasetError` naming the file or folder and the fix.
``load_dataset(..., skip_unreadable=True)`` instead reads every image once up front and leaves out
those that cannot be decoded; they are listed in the data set's ``description["skipped_unreadable"]``
(and so in a feature bank's meta.json).

A data set read from files has a signature of them (:meth:`LabeledImageDataset.files_signature`:
each image's relative path, class, size and modification time, or torchvision's CIFAR batch
files'), part of the identity of its feature banks: images regenerated, added, removed or moved
to another class folder in place make a different bank, never a silently reused old one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import warnings
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from .errors import ClusterprobeError, DatasetError, closest_name

DATASETS = ("cifar10", "cifar100", "digits", "imagefolder")
SPLITS = ("train", "test")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Pixel statistics of scikit-learn's digits scaled to [0, 1] (all 1,797 images).
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)

#: CIFAR-100's 20 super-classes (index order of the data set's coarse labels) and their members.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE_OF = {
    fine: coarse for coarse, members in enumerate(CIFAR100_SUPERCLASSES.values()) for fine in members
}


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the toolkit needs to know about a data set."""

    name: str
    num_classes: int
    image_size: int | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ArrayImages:
    """Indexable PIL view of a uint8 array of images, shape (n, H, W) or (n, H, W, C).

    ``files``: the files the array was read from (torchvision's CIFAR batches), signed by
    :meth:`LabeledImageDataset.files_signature`; empty for data held in memory only.
    """

    def __init__(self, array: np.ndarray, files: Sequence[str | os.PathLike] = ()):
        self.array = array
        self.files = tuple(Path(file) for file in files)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(self.array[index])  # 2-D -> "L", (H, W, 3) -> "RGB"


#: What a damaged, truncated or non-image file raises while PIL decodes it.
_IMAGE_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

SKIP_HINT = ("or leave unreadable images out (clusterprobe extract --skip-unreadable; "
             "load_dataset(..., skip_unreadable=True)); they are listed in the bank's meta.json")


class _PixelFormatError(ValueError):
    """An image whose pixels have no known range to map to 8 bits (32-bit integer or float)."""


def _decode(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as image:
        if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
            # 16-bit grey (PNG opens as I;16, or I in older Pillow; TIFF): the full range 0..65535
            # onto 0..255 (x * 255 / 65535, rounded). PIL's own convert() clips at 255, which
            # turns every pixel above 255 of 65535 white.
            pixels = np.asarray(image, dtype=np.float64)
            return Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)).convert("RGB")
        if image.mode in ("I", "F") or image.mode.startswith(("I;32", "F;")):
            raise _PixelFormatError(
                f"its pixels are {'floating-point' if image.mode.startswith('F') else '32-bit integer'} "
                f"numbers (PIL mode {image.mode}), whose range is unknown: PIL's conversion to 8-bit RGB "
                "would clip them to black or white")
        return image.convert("RGB")  # convert() decodes every pixel: truncation shows here


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode the image file ``path`` fully, as RGB (16-bit grey scaled from its full range).

    Raises:
        DatasetError: the file is damaged, truncated or not an image, or its pixels are 32-bit
            integers or floats; the message names it.
    """
    try:
        return _decode(path)
    except _PixelFormatError as error:
        raise DatasetError(
            f"Image {path} cannot be read as 8-bit RGB: {error}. Convert it to an 8- or 16-bit "
            f"image (PNG, JPEG) with the range you mean, {SKIP_HINT}."
        ) from None
    except _IMAGE_READ_ERRORS as error:
        raise DatasetError(
            f"Image {path} could not be read ({type(error).__name__}: {error}): the file is damaged, "
            f"truncated or not an image. Remove or replace it, {SKIP_HINT}."
        ) from None


class FolderImages:
    """Indexable RGB PIL view of a torchvision ImageFolder's files (a damaged file is named)."""

    def __init__(self, folder: tv_datasets.ImageFolder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder.samples)

    def path(self, index: int) -> str:
        return self.folder.samples[index][0]

    def __getitem__(self, index: int) -> Image.Image:
        return read_image(self.path(index))


class LabeledImageDataset(Dataset):
    """A data set of (image tensor, label) pairs with labels available up front.

    Attributes:
        targets: int64 array of shape (n,), the class of each sample in order.
        coarse_targets: int64 array of shape (n,) (CIFAR-100 super-classes) or None.
        classes: class names. coarse_classes: super-class names or None.
        info: :class:`DatasetInfo`. description: plain provenance for feature banks.
    """

    def __init__(
        self,
        images: Sequence | Dataset,
        targets: np.ndarray,
        classes: Sequence[str],
        info: DatasetInfo,
        description: dict[str, Any],
        transform: Callable | None = None,
        coarse_targets: np.ndarray | None = None,
        coarse_classes: Sequence[str] | None = None,
    ):
        self._images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.coarse_targets = None if coarse_targets is None else np.asarray(coarse_targets, dtype=np.int64)
        self.classes = list(classes)
        self.coarse_classes = None if coarse_classes is None else list(coarse_classes)
        self.info = info
        self.description = description
        self.transform = transform
        # (path, (width, height)) of the reference image when the transform keeps image sizes
        # (evaluation without resize): another size would fail later, unnamed, in torch.stack.
        self._same_size_as: tuple[str, tuple[int, int]] | None = None
        # (the images it was computed for, signature): see files_signature()
        self._signature: tuple[Any, dict | None] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        """The untransformed PIL image of sample ``index``."""
        return self._images[index]

    def __getitem__(self, index: int):
        image = self.image(index)
        if self._same_size_as is not None and image.size != self._same_size_as[1]:
            reference, (width, height) = self._same_size_as
            path = self._images.path(index) if isinstance(self._images, FolderImages) else f"sample {index}"
            raise DatasetError(
                f"Image {path} is {image.size[0]}x{image.size[1]} pixels but {reference} is "
                f"{width}x{height}: images of different sizes cannot be batched without a resize. "
                "Resize and centre-crop every image to NxN: --image-size N (clusterprobe extract and "
                "train), image_size=N in load_dataset."
            )
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def files_signature(self) -> dict[str, Any] | None:
        """A cheap signature of the files this data set reads, or None when it reads none (digits,
        images held in memory).

        An image folder (imagefolder, CIFAR in folder layout): SHA-256 over the sorted
        (path relative to the root, class, size in bytes, modification time in ns) of every image
        file it holds; torchvision's CIFAR: over (name, size, modification time) of its batch
        files. Only the files' metadata is read (one ``stat`` each, no content): regenerated,
        added, removed or relabelled images change it, and so does a copy that did not keep the
        modification times (``cp`` without ``-p``), which is a false alarm on the safe side
        (see :func:`~clusterprobe.extract.extract_features`). Computed at the first call and kept
        on the object (recomputed if its images are replaced, e.g. by ``skip_unreadable``).

        Returns ``{"sha256", "count", "bytes", "of"}`` plus ``per_class`` (class: [files, bytes,
        SHA-256 prefix], up to :data:`SIGNATURE_CLASSES` classes) for folders or ``per_file``
        (name: [bytes, mtime_ns]) for batch files, which say what changed when two differ
        (:func:`describe_signature_change`).

        Raises:
            DatasetError: a file listed when the data set was loaded is gone.
        """
        images = self._images
        cached = getattr(self, "_signature", None)
        if cached is not None and cached[0] is images:
            return cached[1]
        if isinstance(images, FolderImages):
            classes = images.folder.classes
            signature = folder_signature(images.folder.root,
                                         ((path, classes[target]) for path, target in images.folder.samples))
        elif isinstance(images, ArrayImages) and images.files:
            signature = batch_files_signature(images.files)
        else:
            signature = None
        self._signature = (images, signature)
        return signature

    def with_transform(self, transform: Callable | None) -> "LabeledImageDataset":
        """A view of the same samples with another transform (e.g. training views)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.transform = transform
        clone._same_size_as = None  # another transform may resize or crop
        return clone


#: Classes listed one by one in a folder signature's ``per_class`` (beyond: the totals only, so
#: that meta.json stays small for data sets with very many classes).
SIGNATURE_CLASSES = 1000

#: What a folder signature covers (recorded with it).
FOLDER_SIGNED = "relative path, class, size in bytes, modification time (ns) of every image file"
BATCHES_SIGNED = "name, size in bytes, modification time (ns) of every batch file"


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DatasetError(
            f"{path} was part of the data set when it was loaded but is gone now: its files changed "
            "while it was in use. Load the data set again (run the command again)."
        ) from None


def folder_signature(root: str | os.PathLike, files: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Signature of the image files ``files`` ((path, class name) pairs) under ``root``: see
    :meth:`LabeledImageDataset.files_signature`."""
    root = str(root).rstrip(os.sep) + os.sep
    rows = []
    for path, name in files:
        st = _stat(path)
        relative = path[len(root):] if path.startswith(root) else os.path.relpath(path, root)
        if os.sep != "/":
            relative = relative.replace(os.sep, "/")
        rows.append((relative, name, st.st_size, st.st_mtime_ns))
    rows.sort()
    digest = hashlib.sha256()
    per_class: dict[str, list] = {}
    class_digests: dict[str, Any] = {}
    for relative, name, size, mtime in rows:
        line = f"{relative}\t{name}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape")
        digest.update(line)
        if name not in class_digests:
            class_digests[name] = hashlib.sha256()
            per_class[name] = [0, 0]
        class_digests[name].update(line)
        per_class[name][0] += 1
        per_class[name][1] += size
    signature: dict[str, Any] = {"sha256": digest.hexdigest(), "count": len(rows),
                                 "bytes": sum(row[2] for row in rows), "of": FOLDER_SIGNED}
    if len(per_class) <= SIGNATURE_CLASSES:
        signature["per_class"] = {name: [count, size, class_digests[name].hexdigest()[:16]]
                                  for name, (count, size) in sorted(per_class.items())}
    return signature


def batch_files_signature(files: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Signature of data files read whole (torchvision's CIFAR batches): name, size, mtime."""
    per_file = {}
    for file in files:
        st = _stat(str(file))
        per_file[Path(file).name] = [st.st_size, st.st_mtime_ns]
    digest = hashlib.sha256()
    for name, (size, mtime) in sorted(per_file.items()):
        digest.update(f"{name}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return {"sha256": digest.hexdigest(), "count": len(per_file),
            "bytes": sum(size for size, _ in per_file.values()), "of": BATCHES_SIGNED,
            "per_file": dict(sorted(per_file.items()))}


def describe_signature_change(then: Mapping[str, Any], now: Mapping[str, Any], limit: int = 5) -> str:
    """What differs between two signatures of :meth:`LabeledImageDataset.files_signature`, in
    words: the totals, then the classes (or batch files) that changed, ``limit`` of them at most."""
    def files(count: int) -> str:
        return f"{count:,} file{'' if count == 1 else 's'}"

    totals = [f"{files(s.get('count', 0))} ({_size(s.get('bytes', 0))})" for s in (then, now)]
    parts = [f"{totals[0]} then and now" if totals[0] == totals[1] else f"{totals[0]} then, {totals[1]} now"]
    changes: list[str] = []
    for key, unit in (("per_class", "class"), ("per_file", "file")):
        old, new = then.get(key), now.get(key)
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            continue
        for name in sorted(set(old) | set(new)):
            if name not in new:
                changes.append(f"{unit} {name} is gone")
            elif name not in old:
                changes.append(f"{unit} {name} is new" + (f" ({files(new[name][0])})" if unit == "class" else ""))
            elif list(old[name]) != list(new[name]):
                if unit == "file":
                    changes.append(f"{name} changed ({_size(old[name][0])} then, {_size(new[name][0])} now)"
                                   if old[name][0] != new[name][0] else
                                   f"{name} has the same size but another modification time")
                elif old[name][0] != new[name][0]:
                    changes.append(f"class {name}: {files(old[name][0])} then, {new[name][0]:,} now")
                elif old[name][1] != new[name][1]:
                    changes.append(f"class {name}: the same number of files, {_size(old[name][1])} then, "
                                   f"{_size(new[name][1])} now")
                else:
                    changes.append(f"class {name}: the same number of files and bytes, but other names or "
                                   "modification times (files rewritten with the same size, or copied)")
    if changes:
        parts.append("; ".join(changes[:limit]) + (f"; and {len(changes) - limit} more" if len(changes) > limit else ""))
    return "; ".join(parts)


def _size(count: int) -> str:
    return f"{count:,} bytes"


def eval_transform(info: DatasetInfo, resize: int | None = None) -> Callable:
    """ToTensor + Normalize (after Resize + CenterCrop when ``resize`` is given)."""
    steps: list = []
    if resize:
        steps += [T.Resize(resize), T.CenterCrop(resize)]
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    return T.Compose(steps)


def describe_transform(transform: Callable | None) -> str:
    return "none" if transform is None else " ".join(repr(transform).split())


# ---------------------------------------------------------------------------------------------
def load_dataset(
    name: str = "digits",
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Callable | str | None = "eval",
    download: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | None = None,
    skip_unreadable: bool = False,
) -> LabeledImageDataset:
    """Load a data set split with its evaluation transform (``transform="eval"``), another
    callable, or none (``transform=None``: PIL images).

    ``mean``/``std``/``image_size`` apply to ``imagefolder`` (defaults: ImageNet statistics, no
    resize); for the others they override the data set's own values.

    ``skip_unreadable`` (image files only): decode every image once now and leave out those that
    cannot be read, listed as ``{"file", "error"}`` in ``description["skipped_unreadable"]``. This
    costs one full read of the data set; without it a damaged file is reported by name when a
    batch reaches it.

    Raises:
        DatasetError: unknown name or split, a transform that is not 'eval', None or a callable,
            an ``image_size`` that is not a positive whole number, ``mean``/``std`` of another
            length than the channels (one value is every channel's) or a std <= 0, the data set
            is not under ``root``, a root with split folders but not ``split`` (imagefolder), the
            splits' class folders differ, a class folder holds no images, an image cannot be read
            or (evaluation without ``image_size``) has another size than the first image.
    """
    if name not in DATASETS:
        raise DatasetError(
            f"Unknown data set {name!r}; known: {', '.join(DATASETS)}.{closest_name(name, DATASETS)}"
        )
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; use 'train' or 'test'.")
    if not (transform is None or transform == "eval" or callable(transform)):
        raise DatasetError(
            f"transform={transform!r} is not a transform: use 'eval' (the evaluation transform), None "
            "(PIL images) or a callable."
        )
    image_size = _check_image_size(image_size)
    channels = 1 if name == "digits" else 3
    mean, std = _channel_values(mean, "mean", name, channels), _channel_values(std, "std", name, channels)
    if name == "digits":
        dataset = _digits(split)
    else:
        if root is None:
            raise DatasetError(
                f"Data set {name!r} needs a root directory (--data-root): where torchvision's files "
                "are (or should be downloaded to), or an ImageFolder tree."
            )
        root = Path(root).expanduser()
        if name == "imagefolder":
            dataset = _imagefolder(root, split, mean, std, image_size)
        else:
            dataset = _cifar(name, root, split, download)
    if skip_unreadable:
        _skip_unreadable(dataset)
    if (mean or std or image_size) and name != "imagefolder":
        info = dataset.info
        dataset.info = DatasetInfo(info.name, info.num_classes, image_size or info.image_size,
                                   info.channels, tuple(mean or info.mean), tuple(std or info.std))
    keeps_sizes = transform == "eval" and not image_size  # ToTensor + Normalize: sizes must agree
    if transform == "eval":
        transform = eval_transform(dataset.info, resize=image_size)
    dataset.transform = transform
    if keeps_sizes and isinstance(dataset._images, FolderImages) and len(dataset):
        dataset._same_size_as = _first_image_size(dataset._images)
    dataset.description.update(
        {"split": split, "num_classes": dataset.info.num_classes, "n": len(dataset),
         "transform": describe_transform(transform), "info": asdict(dataset.info)}
    )
    return dataset


def _check_image_size(image_size) -> int | None:
    """``image_size`` as an int >= 1 (or None).

    Raises:
        DatasetError: not a positive whole number (0 was taken as "no resize", a negative size
            failed inside PIL).
    """
    if image_size is None:
        return None
    try:
        size = int(image_size)
        whole = not isinstance(image_size, bool) and size == image_size
    except (TypeError, ValueError):
        whole = False
    if not whole or size < 1:
        raise DatasetError(
            f"image_size must be a whole number of pixels >= 1 (--image-size N), got {image_size!r}; "
            "leave it out to keep the images' own size."
        )
    return size


def _channel_values(values: Sequence[float] | None, what: str, name: str, channels: int) -> tuple[float, ...] | None:
    """``mean``/``std`` as one float per channel (a single value is used for every channel).

    Raises:
        DatasetError: another number of values than channels (torch failed on it mid-extraction,
            or broadcast it unnoticed), a value that is not finite, or a std that is not > 0.
    """
    if values is None:
        return None
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DatasetError(f"{what} must be numbers, one per channel; got {values!r}.") from None
    example = ",".join(["0.5"] * channels)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise DatasetError(
            f"{what} has {len(values)} values but {name} images have {channels} channel"
            f"{'s' if channels > 1 else ''}: give one value per channel (--{what} {example}) or one for all."
        )
    if not all(np.isfinite(values)) or (what == "std" and min(values) <= 0):
        raise DatasetError(f"{what} {values} is not usable: {'std values must be > 0' if what == 'std' else 'values must be finite'}.")
    return values


def _digits(split: str) -> LabeledImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        indices, test_size=0.25, stratify=digits.target, random_state=0
    )
    chosen = np.sort(train_idx if split == "train" else test_idx)
    pixels = np.clip(np.rint(digits.images[chosen] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = ArrayImages(pixels)
    info = DatasetInfo("digits", 10, 8, 1, DIGITS_MEAN, DIGITS_STD)
    return LabeledImageDataset(
        images, digits.target[chosen], [str(i) for i in range(10)], info,
        {"name": "digits", "root": None, "source": "sklearn.datasets.load_digits",
         "indices": "stratified 75/25 split, seed 0"},
    )


def _class_tree(path: Path) -> bool:
    return path.is_dir() and any(child.is_dir() for child in path.iterdir())


def _image_folder(path: Path) -> tv_datasets.ImageFolder:
    """torchvision's ImageFolder of ``path``, with an empty class folder named."""
    try:
        return tv_datasets.ImageFolder(str(path))
    except FileNotFoundError:
        extensions = tv_datasets.folder.IMG_EXTENSIONS
        empty = [
            str(child) for child in sorted(path.iterdir())
            if child.is_dir() and not any(
                f.is_file() and f.name.lower().endswith(extensions) for f in child.rglob("*"))
        ]
        raise DatasetError(
            f"Class folder{'s' if len(empty) > 1 else ''} {', '.join(empty) or 'under ' + str(path)} "
            f"hold{'' if len(empty) > 1 else 's'} no images (files ending in {', '.join(extensions)}): "
            "a class needs at least one image. Add its images or remove the empty folder."
        ) from None


def _first_image_size(images: FolderImages) -> tuple[str, tuple[int, int]]:
    """Path and (width, height) of the first image, from its header only."""
    path = images.path(0)
    try:
        with Image.open(path) as image:
            return path, image.size
    except _IMAGE_READ_ERRORS:
        read_image(path)  # raises the DatasetError naming the file
        raise


def _skip_unreadable(dataset: "LabeledImageDataset") -> None:
    """Leave out the images that cannot be decoded; record them in the description."""
    skipped: list[dict[str, str]] = []
    images = dataset._images
    if isinstance(images, FolderImages):
        keep = []
        for index in range(len(images)):
            try:
                _decode(images.path(index))
                keep.append(index)
            except _IMAGE_READ_ERRORS as error:
                skipped.append({"file": images.path(index), "error": f"{type(error).__name__}: {error}"})
        if skipped:
            folder = copy.copy(images.folder)
            folder.samples = [folder.samples[i] for i in keep]
            folder.imgs = folder.samples
            folder.targets = [folder.targets[i] for i in keep]
            dataset._images = FolderImages(folder)
            dataset.targets = dataset.targets[keep]
            if dataset.coarse_targets is not None:
                dataset.coarse_targets = dataset.coarse_targets[keep]
        if not len(dataset):
            raise DatasetError(
                f"None of the {len(images)} images under {dataset.description.get('root')} could be read "
                f"(first: {skipped[0]['file']}: {skipped[0]['error']}): nothing is left to use."
            )
    dataset.description["skipped_unreadable"] = skipped


def _from_image_folder(folder: tv_datasets.ImageFolder, info: DatasetInfo, description: dict,
                       coarse: np.ndarray | None = None, coarse_classes=None) -> LabeledImageDataset:
    return LabeledImageDataset(
        FolderImages(folder), np.asarray(folder.targets), folder.classes, info, description,
        coarse_targets=coarse, coarse_classes=coarse_classes,
    )


#: Folder names that mark ``root/<split>/<class>/`` layouts (``val``: ImageNet's and others').
SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")


def _split_root(root: Path, split: str) -> Path:
    """``root/<split>`` when it holds class folders; ``root`` itself only when it has no split
    folders at all (a flat ``root/<class>/`` tree).

    Raises:
        DatasetError: ``root`` has split folders but not ``split``: reading ``root`` as the class
            tree would make each split folder one "class" (all of another split's images under
            one label).
    """
    if _class_tree(root / split):
        return root / split
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if present:
        raise DatasetError(
            f"{root} has no {split}/ folder of class sub-directories, but it has split folders "
            f"({', '.join(name + '/' for name in present)}): read as one class tree, each of them would "
            f"be one class. Put the {split} images in {root}/{split}/<class>/ (e.g. rename "
            f"{present[-1]}/ to {split}/), or point the root (--data-root) at a folder of class folders."
        )
    return root


def _class_folders(path: Path) -> list[str]:
    """The class names torchvision's ImageFolder finds in ``path`` (sorted sub-directory names)."""
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


def _check_splits_agree(root: Path, split: str, classes: Sequence[str]) -> None:
    """Refuse ``root/<split>`` when the other split's class folders are not the same names.

    A label is the position of its folder among the split's own sorted folder names, so with
    another set of folders (a class missing from one split, a typo, an extra folder) one class
    gets different labels in the two splits: probes trained on one split and scored on the
    other, and every train/test comparison, would silently be wrong.

    Raises:
        DatasetError: the class folders differ; the message names the differences.
    """
    for other in SPLITS:
        if other == split or not _class_tree(root / other):
            continue
        theirs = _class_folders(root / other)
        if theirs == list(classes):
            continue
        parts = []
        for name, mine, others in ((split, classes, theirs), (other, theirs, classes)):
            only = sorted(set(mine) - set(others))
            if only:
                parts.append(f"only in {name}/: {', '.join(only[:5])}" + (f" and {len(only) - 5} more" if len(only) > 5 else ""))
        raise DatasetError(
            f"The class folders of {root / split} and {root / other} differ ({'; '.join(parts)}). A label is "
            "the position of its folder among a split's sorted folder names, so one class would get "
            "different labels in the two splits (probes and train/test comparisons would be wrong). Give "
            "both splits the same class folders."
        )


def _imagefolder(root: Path, split: str, mean, std, image_size) -> LabeledImageDataset:
    folder_root = _split_root(root, split) if root.is_dir() else root
    if not _class_tree(folder_root):
        raise DatasetError(
            f"No image folder at {root}: expected class sub-directories ({root}/<class>/*.jpg or "
            f"{root}/{split}/<class>/*.jpg)."
        )
    if folder_root != root:
        _check_splits_agree(root, split, _class_folders(folder_root))
    elif split == "test":
        warnings.warn(
            f"{root} has no split folders, so its 'test' split is the same images as 'train' (the whole "
            "tree): probes and kNN scored train -> test on it score the training images themselves. For "
            f"a held-out test split use {root}/train/<class>/ and {root}/test/<class>/.",
            UserWarning, stacklevel=3)
    folder = _image_folder(folder_root)
    description = {"name": "imagefolder", "root": str(folder_root.resolve())}
    if mean is None or std is None:
        # one normalisation for both splits: measured on the train split where there is one
        source = root / "train" if _class_tree(root / "train") else folder_root
        measured = image_statistics(source, image_size=image_size,
                                    _folder=folder if source == folder_root else None)
        if measured["images"]:
            mean, std = mean or measured["mean"], std or measured["std"]
            description["statistics"] = measured
        else:  # nothing readable: reading the data set says which files and what to do
            mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    info = DatasetInfo("imagefolder", len(folder.classes), image_size, 3, tuple(mean), tuple(std))
    return _from_image_folder(folder, info, description)


STATISTICS_SAMPLE = 1000


@functools.lru_cache(maxsize=32)
def _statistics(files: tuple[str, ...], stamps: tuple, image_size: int | None) -> tuple:
    """Mean, std and how many of ``files`` were read; ``stamps`` (their sizes and modification
    times) are part of the cache key only: files rewritten in place are measured again."""
    steps = ([T.Resize(image_size), T.CenterCrop(image_size)] if image_size else []) + [T.ToTensor()]
    transform = T.Compose(steps)
    total = np.zeros(3)
    squares = np.zeros(3)
    pixels = 0
    used = 0
    for file in files:
        try:
            x = transform(_decode(file)).double().numpy()
        except _IMAGE_READ_ERRORS:
            continue  # a damaged file is reported (or skipped) where the data set reads it
        total += x.sum(axis=(1, 2))
        squares += (x ** 2).sum(axis=(1, 2))
        pixels += x.shape[1] * x.shape[2]
        used += 1
    if not used:
        return None, None, 0
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean ** 2, 0))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(max(v, 1e-3)), 4) for v in std), used


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def image_statistics(root: str | os.PathLike, *, image_size: int | None = None,
                     sample: int = STATISTICS_SAMPLE, _folder: tv_datasets.ImageFolder | None = None) -> dict[str, Any]:
    """Per-channel mean and std of the RGB images of an ImageFolder tree, in [0, 1].

    Measured on ``sample`` images spread evenly over the tree's file list (deterministic), after
    the evaluation resize when ``image_size`` is given; cached per process as long as the tree
    lists the same files with the same sizes and modification times (images regenerated in
    place are measured again). Returns ``mean``, ``std`` (3 values each, rounded to 4 decimals),
    ``images`` (how many were read), ``of`` (how many the tree holds) and ``root``.
    """
    folder = _folder if _folder is not None else _image_folder(Path(root))
    n = len(folder.samples)
    picks = np.unique(np.linspace(0, n - 1, min(int(sample), n)).round().astype(int))
    files = tuple(os.path.abspath(folder.samples[index][0]) for index in picks)
    mean, std, used = _statistics(files, tuple(_stamp(file) for file in files), image_size)
    return {"mean": list(mean or ()), "std": list(std or ()), "images": used, "of": n, "root": str(Path(root).resolve())}


def _cifar(name: str, root: Path, split: str, download: bool) -> LabeledImageDataset:
    is_100 = name == "cifar100"
    num_classes = 100 if is_100 else 10
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if is_100 else (CIFAR10_MEAN, CIFAR10_STD)
    info = DatasetInfo(name, num_classes, 32, 3, mean, std)
    description = {"name": name}
    # ImageFolder layout: root/<split>/<class>/ (as in shared CIFAR-10 copies).
    if _class_tree(root / split):
        folder = _image_folder(root / split)
        _check_splits_agree(root, split, folder.classes)
        if len(folder.classes) != num_classes:
            raise DatasetError(
                f"{root / split} has {len(folder.classes)} class folders; {name} has {num_classes}."
            )
        if not is_100 and sorted(folder.classes) != sorted(CIFAR10_CLASSES):
            warnings.warn(
                f"{root / split} has 10 class folders but not CIFAR-10's ({', '.join(folder.classes[:4])}, "
                f"...; CIFAR-10's are {', '.join(CIFAR10_CLASSES[:4])}, ...): it is read as cifar10 with "
                "CIFAR-10's normalisation and labels in the folders' sorted order. For other images use "
                "--dataset imagefolder, which measures their own statistics.", UserWarning, stacklevel=3)
        coarse = coarse_classes = None
        if is_100:
            unknown = [c for c in folder.classes if c not in CIFAR100_COARSE_OF]
            if unknown:
                raise DatasetError(f"{root / split} has class folders that are not CIFAR-100 classes: {unknown[:5]}.")
            coarse = np.array([CIFAR100_COARSE_OF[folder.classes[t]] for t in folder.targets])
            coarse_classes = list(CIFAR100_SUPERCLASSES)
        description.update(root=str((root / split).resolve()), layout="imagefolder")
        return _from_image_folder(folder, info, description, coarse, coarse_classes)
    cls = tv_datasets.CIFAR100 if is_100 else tv_datasets.CIFAR10
    try:
        base = cls(str(root), train=split == "train", download=download)
    except RuntimeError as error:
        folder = "cifar-100-python" if is_100 else "cifar-10-batches-py"
        raise DatasetError(
            f"No {name} data under {root}: expected torchvision's {folder}/ there or an "
            f"ImageFolder tree {root}/{split}/<class>/. Pass download=True (--download) to fetch "
            f"it, or point the root (--data-root) at the data. ({error})"
        ) from None
    description.update(root=str(root.resolve()), layout="torchvision")
    folder = Path(base.root) / base.base_folder
    batches = [name for name, _ in (base.train_list if split == "train" else base.test_list)]
    images = ArrayImages(base.data, files=[folder / name for name in batches + [base.meta["filename"]]])
    coarse = coarse_classes = None
    if is_100:
        with open(Path(base.root) / base.base_folder / ("train" if split == "train" else "test"), "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the same file torchvision just read
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
        coarse_classes = list(CIFAR100_SUPERCLASSES)
    return LabeledImageDataset(images, np.asarray(base.targets), base.classes, info, description,
                               coarse_targets=coarse, coarse_classes=coarse_classes)


def collate_images(batch):
    """Default collate (kept explicit so DataLoader workers pickle a module-level function).

    Raises:
        DatasetError: the images have different sizes (the sizes seen are named).
    """
    images, labels = zip(*batch)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        counts = {shape: sum(tuple(image.shape) == shape for image in images) for shape in shapes}
        seen = ", ".join(f"{'x'.join(map(str, shape))} ({count} image{'s' if count > 1 else ''})"
                         for shape, count in sorted(counts.items()))
        raise DatasetError(
            f"The images of one batch have different sizes ({seen}) and cannot be stacked. Resize "
            "and centre-crop every image to NxN: --image-size N (clusterprobe extract and train), "
            "image_size=N in load_dataset."
        )
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


def loader_batches(loader: Iterable) -> Iterator:
    """Iterate ``loader`` (a DataLoader), re-raising our own errors from worker processes as they
    were raised.

    With ``num_workers > 0`` torch re-raises a worker's exception as a new one of the same class
    whose message is "Caught DatasetError in DataLoader worker process 0. Original Traceback ..."
    followed by the worker's traceback. For a :class:`~clusterprobe.errors.ClusterprobeError`
    (whose message already names the file and the fix) this gives back the original message, the
    same class and no worker traceback; any other exception passes unchanged (its worker
    traceback is what locates a bug).
    """
    try:
        yield from loader
    except ClusterprobeError as error:
        message = _worker_error_message(error)
        if message is None:
            raise
        error.args = (message,)
        raise error.with_traceback(None) from None


def _worker_error_message(error: BaseException) -> str | None:
    """The original message inside torch's "Caught X in DataLoader worker process N" text, or
    None when ``error`` is not such a re-raised worker error."""
    text = str(error)
    kind = type(error)
    head = text.split("\n", 1)[0]
    if not (head.startswith(f"Caught {kind.__name__} ") and "DataLoader worker process" in head):
        return None
    # traceback.format_exception ends with "<module>.<qualname>: <message>" (after any chained
    # exceptions, so the last occurrence is the error itself).
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = text.rfind(marker)
    if at < 0:
        return None
    return text[at + len(marker):].rstrip("\n")
