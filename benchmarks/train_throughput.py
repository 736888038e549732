"""Training throughput with the data pipeline included, against the step alone.

    python benchmarks/train_throughput.py --data-root ../shared/data/cifar10 --views-on loader
    python benchmarks/train_throughput.py --data-root ../shared/data/cifar10 --views-on device --device cuda \
        --width 64 --batch 256 --steps 50          # the issue's target: >= 10,000 images/s on one H100
    ... --log-every 50                             # the loop reading the losses every 50 steps

Builds the trainer's own data path (``clusterprobe.trainer.loop.build_data``: PIL views in
DataLoader workers, or batched views on the device) and method (``build_training``), then times
``--steps`` optimisation steps two ways in the same run:

1. **loop**: the trainer's own epoch loop (``clusterprobe.trainer.loop.train_one_epoch``, exactly
   what ``clusterprobe train`` runs: batches from the loader with decoding, augmentation and
   transfer, the step, the loss read back from the device and checked every ``--log-every``
   steps), on a loader cut after the timed steps;
2. **step**: the same number of steps on one pre-made batch already on the device (forward,
   backward, optimiser: no data, no loss read).

Prints images/s of both and the ratio loop / step (target: >= 0.9: the data pipeline and the
loop's bookkeeping hide behind the step). The first ``--warmup`` steps of each are not timed.
``--compile`` compiles the encoders (``torch.compile``; the warm-up steps then include the
compilation, so give it enough of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterprobe import distributed  # noqa: E402
from clusterprobe.trainer import resolve_config, TrainConfig  # noqa: E402
from clusterprobe.trainer.loop import build_data, build_training, train_one_epoch  # noqa: E402
from clusterprobe.trainer.optim import set_learning_rate  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(training, views, index):
    set_learning_rate(training.optimizer, training.lr_schedule(index))
    loss, _ = training.method.training_step(views, index, 0)
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    training.method.after_backward(0)
    training.scaler.step(training.optimizer)
    training.scaler.update()


class _TimedLoader:
    """The trainer's loader cut to ``warmup + steps`` batches, timing the last ``steps``: when the
    loop asks for batch ``warmup + 1`` (the warm-up steps are queued) and for the batch after the
    last, the device is synchronised and the time noted. No callback is involved: a step callback
    would make the loop read every step's loss back from the device."""

    def __init__(self, loader, warmup: int, steps: int, device):
        self.loader, self.warmup, self.steps, self.device = loader, warmup, steps, device
        self.marks: dict[str, float] = {}

    def __len__(self) -> int:
        return self.warmup + self.steps

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.warmup:
                sync(self.device)
                self.marks["start"] = time.perf_counter()
            elif index == self.warmup + self.steps:
                break
            yield batch
        sync(self.device)
        self.marks["stop"] = time.perf_counter()


def trainer_loop_rate(config, env, data, training, warmup: int, steps: int) -> float:
    """Images/s of steps ``warmup + 1 .. warmup + steps`` of the trainer's own epoch loop (losses
    read back every ``config.log_every`` steps, as ``clusterprobe train`` reads them)."""
    timed = _TimedLoader(data.loader, warmup, steps, env.device)
    train_one_epoch(config, env, None, dataclasses.replace(data, loader=timed), training, None, 0, 0, [])
    return steps * config.batch_size / (timed.marks["stop"] - timed.marks["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="CIFAR-10 (ImageFolder tree or torchvision files); default: digits")
    parser.add_argument("--method", default="resa")
    parser.add_argument("--views-on", default="loader", choices=["loader", "device"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--log-every", type=int, default=1,
                        help="the trainer's log_every: its loop reads the losses back from the device every N "
                             "steps (default 1, the trainer's default: every step)")
    args = parser.parse_args()

    fields = dict(method=args.method, epochs=1, batch_size=args.batch, width=args.width, out="unused",
                  views_on=args.views_on, device=args.device, num_workers=args.num_workers, amp=args.amp,
                  compile=args.compile, limit_train=args.limit_train, progress=False, log_every=args.log_every)
    if args.data_root:
        fields.update(dataset="cifar10", data_root=args.data_root)
    else:
        fields.update(dataset="digits")
    config = resolve_config(TrainConfig(**fields))
    env = distributed.init_distributed(config.device)
    started = time.perf_counter()
    data = build_data(config, env, print)
    print(f"data ready in {time.perf_counter() - started:.1f} s: {len(data.train_set)} images, "
          f"views on {'the device' if args.views_on == 'device' else 'the loader'}, {env.device}")
    training = build_training(config, env, data, print)
    needed = args.warmup + args.steps
    if data.steps_per_epoch < needed:
        sys.exit(f"the epoch has {data.steps_per_epoch} steps; ask for fewer (--steps, --warmup) or more data")

    loop_rate = trainer_loop_rate(config, env, data, training, args.warmup, args.steps)

    views, _ = next(iter(data.loader))
    fixed = [v.to(env.device) for v in views]
    for index in range(args.warmup):
        step(training, fixed, index)
    sync(env.device)
    start = time.perf_counter()
    for index in range(args.steps):
        step(training, fixed, index)
    sync(env.device)
    step_rate = args.steps * args.batch / (time.perf_counter() - start)
    print(f"loop (data + augmentation + step): {loop_rate:,.0f} images/s")
    print(f"step alone (pre-made batch):       {step_rate:,.0f} images/s")
    print(f"ratio loop / step: {loop_rate / step_rate:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
