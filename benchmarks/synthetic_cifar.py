"""Write a CIFAR-10-shaped ImageFolder tree of synthetic 32x32 JPEGs: data for the training
throughput benchmark on a machine without the CIFAR-10 files (the lent GPU machines reach no
network and take at most 64 MiB of carried files).

    python benchmarks/synthetic_cifar.py /tmp/cifar_like --train 50000 --test 10000
    python benchmarks/train_throughput.py --data-root /tmp/cifar_like --views-on device --device cuda

Throughput does not depend on what the pictures show: the JPEGs are decoded, cropped, jittered and
flipped exactly as CIFAR's are. Each class gets its own colour and stripe orientation under pixel
noise, so that a short training run on them still has something to learn. Writing 60,000 images
takes about 20 s on one core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write(root: Path, split: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    palette = np.random.default_rng(0).integers(40, 216, (len(CLASSES), 3))
    for c, name in enumerate(CLASSES):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        angle = np.pi * c / len(CLASSES)
        stripes = 40 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 2.0)
        for i in range(count // len(CLASSES) + (c < count % len(CLASSES))):
            image = palette[c] + stripes[..., None] + rng.normal(0, 25, (32, 32, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--test", type=int, default=10000)
    args = parser.parse_args()
    write(args.root, "train", args.train, seed=1)
    write(args.root, "test", args.test, seed=2)
    print(f"wrote {args.train} train and {args.test} test images to {args.root}")


if __name__ == "__main__":
    main()
