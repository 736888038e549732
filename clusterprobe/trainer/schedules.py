"""Per-iteration schedules: learning rate (linear warm-up, cosine decay to a floor) and the
momentum-encoder EMA rate (cosine from its base value to 1).

Both are pure functions of the global step, so resuming needs only the step number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Learning rate at each optimisation step.

    Args:
        base_lr: the peak learning rate (already scaled by batch / 256).
        total_steps: number of steps of the whole run.
        warmup_steps: steps of linear warm-up; step s < warmup gets ``base_lr * (s + 1) /
            warmup_steps`` (the first step is not wasted at LR 0).
        final_lr: the floor the cosine ends at (ReSA: 0.1 x base_lr; the baselines: 0).

    After the warm-up, ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (s - warmup) / (total - warmup)`` going from 0 to (nearly) 1.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    final_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class CosineEMASchedule:
    """EMA rate of the momentum branch at each step: ``1 - (1 - base) * (1 + cos(pi s / S)) / 2``,
    i.e. ``base`` at step 0 rising to 1 at the last step ``S = total_steps`` (BYOL's schedule,
    which ReSA uses with base 0.996)."""

    base: float
    total_steps: int
    final: float = 1.0

    def __call__(self, step: int) -> float:
        t = min(1.0, step / max(1, self.total_steps))
        return self.final - (self.final - self.base) * 0.5 * (1.0 + math.cos(math.pi * t))
