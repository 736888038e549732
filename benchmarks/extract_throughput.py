"""Extraction throughput (4 layers captured by hooks and written to disk) vs a raw forward.

Both sides run the same model, batch size and in-memory images in the same process, alternating
repeats (the best of each is kept, since these machines are noisy). Target: ratio >= 0.9.

    python benchmarks/extract_throughput.py [--width 32] [--n 2048] [--batch-size 256] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clusterprobe import build_model
from clusterprobe.devices import resolve_device
from clusterprobe.extract import extract_features


class InMemoryImages(Dataset):
    def __init__(self, n: int, size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.targets = np.arange(n) % 10
        self.description = {"name": "random-images", "n": n, "size": size}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], int(self.targets[index])


def raw_forward(model, dataset, batch_size, device) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for images, _ in loader:
            model(images.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(dataset) / (time.perf_counter() - start)


def extraction(model, dataset, batch_size, device, folder: Path, repeat: int) -> float:
    start = time.perf_counter()
    bank = extract_features(model, dataset, folder / f"bank{repeat}", layers=["H", "P0", "P1", "Z"],
                            batch_size=batch_size, device=device, progress=False)
    elapsed = time.perf_counter() - start
    assert bank.n == len(dataset)
    return len(dataset) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.backbone, width=args.width).to(device).eval()
    dims = model.layer_dims()
    dataset = InMemoryImages(args.n, args.image_size)
    raw_forward(model, torch.utils.data.Subset(dataset, range(args.batch_size)), args.batch_size, device)  # warm-up
    raw, extracted = [], []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            raw.append(raw_forward(model, dataset, args.batch_size, device))
            extracted.append(extraction(model, dataset, args.batch_size, device, Path(folder), repeat))
    bytes_per_image = 4 * sum(dims.values())
    print(f"model {args.backbone} width {args.width} ({', '.join(f'{k} {v}' for k, v in dims.items())}), "
          f"{args.n} images {args.image_size}x{args.image_size}, batch {args.batch_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"raw forward      : {max(raw):9.1f} img/s  (repeats: {', '.join(f'{r:.1f}' for r in raw)})")
    print(f"extract to disk  : {max(extracted):9.1f} img/s  (repeats: {', '.join(f'{r:.1f}' for r in extracted)}), "
          f"{bytes_per_image * args.n / 2**20:.1f} MiB written per run")
    ratio = max(extracted) / max(raw)
    print(f"ratio extract/raw: {ratio:.3f}  (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
