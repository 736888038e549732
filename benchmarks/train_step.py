"""Time one training step of every method on the same backbone, batch and device.

    python benchmarks/train_step.py                       # CPU-friendly: width 8, batch 64, 32x32
    python benchmarks/train_step.py --batch 256 --width 8 # the issue's batch on a narrow ResNet-18
    python benchmarks/train_step.py --batch 256 --width 64 --device cuda   # ResNet-18 images/s

A step is what the trainer does per batch: the method's forward passes (online, and for ReSA/BYOL
the EMA update and the momentum forward), the loss, backward and the optimiser step, on synthetic
images already on the device (data loading is not timed). By default every method uses the same
projector (``--projector-dims``, ReSA's 2048-2048-512 scaled by the width) so the ratios compare
the methods' own work; ``--heads default`` uses each method's recipe heads instead. The methods
are timed round-robin (``--rounds`` rounds of ``--steps`` steps, median per method) so that a
shared or throttled machine affects all of them alike.

Prints ms/step, images/s and the ratio to BYOL's step (ReSA's target: <= 1.1), and the share of
a ReSA step spent on the Sinkhorn target (cosine matrix + 3 iterations; target: < 2 % at batch 256).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterprobe.trainer import METHODS, TrainConfig, build_method, resolve_config  # noqa: E402
from clusterprobe.devices import resolve_device  # noqa: E402
from clusterprobe.trainer.optim import build_optimizer  # noqa: E402
from clusterprobe.trainer.sinkhorn import resa_target  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_method(name, args, device):
    fields = dict(method=name, dataset="cifar10", epochs=1, batch_size=args.batch, width=args.width,
                  backbone=args.backbone, out="unused")
    if args.heads == "same":
        dims = [int(d) for d in args.projector_dims.split(",")] if args.projector_dims else \
            [max(16, 32 * args.width), max(16, 32 * args.width), max(8, 8 * args.width)]
        fields.update(projector_dims=dims)
        if name == "simclr":
            fields.update(projector_batch_norm=True)
        if name == "byol":
            fields.update(predictor_dims=[dims[0], dims[-1]])
        if name == "swav":
            fields.update(options={"queue_size": 0})
    config = resolve_config(TrainConfig(**fields))
    torch.manual_seed(0)
    method = build_method(config, 3, True, total_steps=10_000, steps_per_epoch=100).to(device)
    method.train()
    if args.amp and device.type == "cuda":
        import functools

        method.autocast = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    optimizer = build_optimizer(config.optimizer, method.trainable_parameters(), 0.01,
                                float(config.weight_decay))
    return method, optimizer


def time_steps(method, optimizer, views, steps, device, start_step):
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        loss, _ = method.training_step(views, start_step + i, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(10)
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def time_sinkhorn(batch, dim, device, repeats):
    h = torch.randn(batch, dim, device=device)
    h_m = h + 0.5 * torch.randn(batch, dim, device=device)
    for _ in range(3):
        resa_target(h, h_m)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        resa_target(h, h_m)
    sync(device)
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--heads", choices=("same", "default"), default="same")
    parser.add_argument("--projector-dims", default=None, help="e.g. 2048,2048,512 (default: 32w,32w,8w)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)
             for _ in range(2)]
    built = {name: make_method(name, args, device) for name in methods}
    for name, (method, optimizer) in built.items():  # warm-up (cudnn autotune, allocator)
        time_steps(method, optimizer, views, 2, device, 0)
    times = {name: [] for name in methods}
    for round_index in range(args.rounds):
        for name, (method, optimizer) in built.items():
            times[name].append(time_steps(method, optimizer, views, args.steps, device, 2 + round_index * args.steps))
    median = {name: statistics.median(values) for name, values in times.items()}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    h_dim = built[methods[0]][0].model.feature_dim
    print(f"device: {name}; {args.backbone} width {args.width} (H {h_dim}-d), batch {args.batch}, "
          f"{args.image_size}x{args.image_size}, heads: {args.heads}"
          + (f" (projector {built[methods[0]][0].config.projector_dims})" if args.heads == "same" else "")
          + f", {'bf16 autocast' if args.amp and device.type == 'cuda' else 'fp32'}; median of {args.rounds} x {args.steps} steps")
    print(f"{'method':<14}{'ms/step':>10}{'images/s':>11}{'vs BYOL':>9}")
    for method_name in methods:
        ratio = f"{median[method_name] / median['byol']:.2f}" if "byol" in median else "-"
        print(f"{method_name:<14}{1000 * median[method_name]:>10.1f}{args.batch / median[method_name]:>11.0f}{ratio:>9}")
    if "resa" in median and "byol" in median:
        ratio = median["resa"] / median["byol"]
        print(f"ReSA / BYOL step time: {ratio:.3f} ({'within' if ratio <= 1.1 else 'ABOVE'} the 1.1 target)")
    if "resa" in median:
        sinkhorn = time_sinkhorn(args.batch, h_dim, device, repeats=50)
        share = sinkhorn / median["resa"]
        print(f"Sinkhorn target (batch {args.batch}, {h_dim}-d H, 3 iterations): {1000 * sinkhorn:.3f} ms = "
              f"{100 * share:.3f} % of a ReSA step ({'under' if share < 0.02 else 'ABOVE'} the 2 % target)")


if __name__ == "__main__":
    main()
