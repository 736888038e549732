"""Time one LARS step: the per-parameter loop against the multi-tensor (foreach) step.

    OMP_NUM_THREADS=1 python benchmarks/optim_step.py               # CPU: ResNet-18 CIFAR + projector
    OMP_NUM_THREADS=1 python benchmarks/optim_step.py --width 8     # a narrow one: launch overhead dominates
    python benchmarks/optim_step.py --device cuda                   # where the foreach step is the default

The parameters are the trainer's (``build_method`` of ``--method``'s CIFAR recipe: ResNet-18
with the CIFAR stem, the recipe's projector, and for BYOL its predictor), with seeded gradients
already in place: only ``optimizer.step()`` is timed (no forward or backward). Both LARS steps
start from the same state with the momentum buffer already allocated, and are timed
round-robin (``--rounds`` rounds of ``--steps`` steps, median per implementation) so that a shared
or throttled machine affects both alike. torch's SGD (fused kernel on CUDA, as the trainer uses it
for ReSA) is timed alongside for reference.

Prints ms/step for each and the loop / foreach ratio (> 1: foreach is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterprobe.devices import resolve_device  # noqa: E402
from clusterprobe.trainer import TrainConfig, build_method, resolve_config  # noqa: E402
from clusterprobe.trainer.optim import LARS  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_params(args, device) -> list[torch.nn.Parameter]:
    config = resolve_config(TrainConfig(method=args.method, dataset="cifar10", epochs=1, batch_size=256,
                                        width=args.width, backbone=args.backbone, out="unused"))
    torch.manual_seed(0)
    method = build_method(config, 3, True, total_steps=10_000, steps_per_epoch=100).to(device)
    params = [p for p in method.trainable_parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-2).to(device)
    return params


def time_steps(optimizer, steps, device):
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr", help="whose CIFAR recipe heads (default: simclr)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    params = make_params(args, device)
    options = dict(lr=1e-6, momentum=0.9, weight_decay=1e-4)  # tiny steps: the weights stay put
    optimizers = {
        "LARS loop": LARS(params, foreach=False, **options),
        "LARS foreach": LARS(params, foreach=True, **options),
        "SGD" + (" fused" if device.type == "cuda" else ""):
            torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=1e-4,
                            **({"fused": True} if device.type == "cuda" else {})),
    }
    for optimizer in optimizers.values():  # warm-up: momentum buffers, allocator, kernels
        time_steps(optimizer, 2, device)
    times = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            times[name].append(time_steps(optimizer, args.steps, device))
    median = {name: statistics.median(values) for name, values in times.items()}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    adapted = sum(p.ndim > 1 for p in params)
    print(f"device: {name}; {args.backbone} width {args.width}, CIFAR stem, {args.method} heads: "
          f"{len(params)} parameters ({adapted} adapted), {sum(p.numel() for p in params) / 1e6:.2f} M values; "
          f"median of {args.rounds} x {args.steps} steps")
    print(f"{'optimizer':<16}{'ms/step':>10}")
    for optimizer_name, seconds in median.items():
        print(f"{optimizer_name:<16}{1000 * seconds:>10.3f}")
    print(f"LARS loop / foreach: {median['LARS loop'] / median['LARS foreach']:.2f}x")


if __name__ == "__main__":
    main()
